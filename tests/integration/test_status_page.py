"""The status page (GET / on the metrics port), rendered by headless
Chromium: the queue's figures, top destinations and recent bounces, with no
script needed for them."""
import json
import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from conftest import BIN, free_port, wait_for
from test_queue_admin import send

CHROMIUM = shutil.which("chromium")
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--disable-javascript"]


def chromium(tmp_path, *args):
    profile = tmp_path / "chromium-profile"
    r = subprocess.run([CHROMIUM, *FLAGS, f"--user-data-dir={profile}", *args],
                       capture_output=True, timeout=90)
    return r.stdout.decode(errors="replace")


@pytest.mark.skipif(not CHROMIUM, reason="Debian's chromium is not installed (make setup)")
def test_status_page_shows_the_queue(stack, tmp_path):
    replies = {"later": "451 4.2.0 busy, try later", "gone": "550 5.1.1 no such user"}
    stack.sink.rcpt_reply = lambda a: replies.get(a.split("@")[0])
    port = free_port()
    stack.ingress(extra=f"[metrics]\nlisten = 127.0.0.1:{port}\n[worker]\nmin_backoff = 600\n"
                        "max_backoff = 600\n")
    stack.worker(extra="[worker]\nmin_backoff = 600\nmax_backoff = 600\n")
    send(stack, ["later@example.test"])
    send(stack, ["later@example.test"])
    send(stack, ["gone@example.test"])
    wait_for(lambda: stack.sink.count() == 1, what="the bounce delivered to the sender")

    def figures():
        path = stack.tmp / "page.conf"
        path.write_text(stack.config())
        out = subprocess.run([BIN, "queue", "stats", "--json", "-c", str(path)],
                             capture_output=True, text=True, check=True).stdout
        return json.loads(out)
    wait_for(lambda: figures()["scheduled"] == 2, what="two deferred jobs")

    url = f"http://127.0.0.1:{port}/"
    dom = chromium(tmp_path, "--dump-dom", url)
    cards = dict(re.findall(r'<b id="(\w+)">([^<]*)</b>', dom))
    st = figures()
    assert int(cards["scheduled"]) == st["scheduled"] == 2
    assert int(cards["due"]) == st["due"] and int(cards["held"]) == st["held"] == 0
    assert int(cards["messages"]) == st["messages"] == 2
    destinations = re.search(r'<table id="destinations">(.*?)</table>', dom, re.S).group(1)
    assert re.search(r"<td>example\.test</td><td class=\"n\">2</td>", destinations), destinations
    bounces = re.search(r'<table id="bounces">(.*?)</table>', dom, re.S).group(1)
    assert "gone@example.test" in bounces and "550 5.1.1 no such user" in bounces
    # self-contained: no script, no asset from elsewhere
    assert "<script" not in dom
    assert not re.search(r'(src|href)="(https?:)?//', dom)

    # make test keeps it in the build tree: build-asan/test-output/status.png
    out = Path(os.environ.get("SEALPOST_TEST_OUTPUT", tmp_path))
    out.mkdir(parents=True, exist_ok=True)
    shot = out / "status.png"
    shot.unlink(missing_ok=True)
    chromium(tmp_path, "--window-size=1100,1000", f"--screenshot={shot}", url)
    assert shot.exists() and shot.stat().st_size > 10_000
    print(f"status page screenshot: {shot}")


@pytest.mark.skipif(not CHROMIUM, reason="Debian's chromium is not installed (make setup)")
def test_status_page_redacts_addresses_when_the_logs_do(stack, tmp_path):
    stack.sink.rcpt_reply = lambda a: f"550 5.1.1 <{a}>: no such user" if "secret" in a else None
    port = free_port()
    stack.ingress(extra=f"[metrics]\nlisten = 127.0.0.1:{port}\n[log]\nredact_addresses = yes\n")
    stack.worker()
    send(stack, ["secret.person@example.test"])
    wait_for(lambda: stack.sink.count() == 1, what="the bounce delivered to the sender")
    dom = chromium(tmp_path, "--dump-dom", f"http://127.0.0.1:{port}/")
    bounces = re.search(r'<table id="bounces">(.*?)</table>', dom, re.S).group(1)
    assert "secret.person" not in bounces and "@example.test" in bounces
    assert "550 5.1.1" in bounces
