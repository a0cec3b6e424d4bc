"""The chaos suite under pytest: the short run of `make test` by default
(CHAOS_SECONDS=40), the long one of `make chaos` with a larger CHAOS_SECONDS.
See chaos.py for what it does and for the knobs."""

import os
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))
import chaos  # noqa: E402


def test_acknowledged_mail_survives_kills(tmp_path):
    """2 ingress, 3 workers, one Redis; workers, ingress nodes and Redis are
    SIGKILLed and restarted at random moments under load. Every recipient of
    every message acknowledged with 250 is delivered or bounced; duplicates
    are printed, and each must follow from a kill that can cause one
    (chaos.explain_repeats); every process exits cleanly at the end with no
    sanitizer report."""
    if not Path(chaos.BIN).exists():
        pytest.fail(f"sealpost binary not found at {chaos.BIN}; set SEALPOST_BIN")
    out = os.environ.get("SEALPOST_TEST_OUTPUT")
    report = Path(out) / "chaos-report.txt" if out else None
    text, failures = chaos.run(tmp_path, chaos.Settings(), report)
    assert not failures, "\n\n".join(failures) + f"\n\nlogs: {tmp_path}\n{text}"
