#!/usr/bin/python3
"""The cost of a DKIM signature per message: crypto/dkim.c (through
build/tests/dkim_tool bench, which times dkim_sign alone, in-process)
against dkimpy (`dkim.sign`, in this process), per algorithm (ed25519-sha256
and rsa-sha256 with a 2048-bit key), relaxed/relaxed, on the same 4 KB and
100 KB messages, N signatures each, the median of several runs.

Both sign the same fields (From over-signed, To, Subject, Date, Message-ID,
MIME-Version, Content-Type) and hash the whole body, so the work is the
same; dkimpy's keys are made by openssl for this run, ours by dkim_tool.
The ratio is dkimpy's time over ours.

usage: bench/dkim.py [--build DIR] [--count N] [--runs N] [--out FILE]
"""
import argparse
import base64
import datetime
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

# This file is called dkim.py too: dkimpy is imported with the script's own
# folder off the path, and peers with it back on.
HERE = Path(__file__).resolve().parent
sys.path = [p for p in sys.path if Path(p or ".").resolve() != HERE]
import dkim  # noqa: E402

sys.path.insert(0, str(HERE))
from peers import ROOT, emit  # noqa: E402

HEADERS = [b"from", b"to", b"subject", b"date", b"message-id", b"mime-version", b"content-type",
           b"from"]


def message(size):
    """A plain text message of about size octets, CRLF line ends."""
    header = ("From: Alice <alice@origin.test>\r\nTo: Bob <bob@dest.test>\r\n"
              "Subject: quarterly figures\r\nDate: Mon, 1 Jan 2024 00:00:00 +0000\r\n"
              "Message-ID: <bench@origin.test>\r\nMIME-Version: 1.0\r\n"
              "Content-Type: text/plain; charset=utf-8\r\n\r\n")
    line = "The quick brown fox jumps over the lazy dog,  twice \t and again.\r\n"
    body = line * ((size - len(header)) // len(line) + 1)
    return (header + body).encode()[:size - 2] + b"\r\n"


def dkimpy_keys(tmp):
    """dkimpy's forms: the ed25519 seed in base64, RSA as PKCS#1 PEM."""
    ed = tmp / "ed.pem"
    subprocess.run(["openssl", "genpkey", "-algorithm", "ed25519", "-out", str(ed)], check=True,
                   capture_output=True)
    der = subprocess.run(["openssl", "pkey", "-in", str(ed), "-outform", "DER"], check=True,
                         capture_output=True).stdout
    rsa = subprocess.run(["openssl", "genrsa", "-traditional", "2048"], check=True,
                         capture_output=True).stdout
    return {"ed25519": (b"ed25519-sha256", base64.b64encode(der[-32:])),
            "rsa": (b"rsa-sha256", rsa)}


def ours(tool, msg, count):
    """µs per signature by algorithm, as dkim_tool bench prints them."""
    out = subprocess.run([str(tool), "bench", str(count)], input=msg, check=True,
                         capture_output=True, text=False).stdout.decode()
    return {name: float(us) for name, us in (line.split() for line in out.splitlines())}


def theirs(msg, alg, key, count):
    start = time.perf_counter()
    for _ in range(count):
        dkim.sign(msg, b"s1", b"origin.test", key, signature_algorithm=alg,
                  canonicalize=(b"relaxed", b"relaxed"), include_headers=HEADERS)
    return (time.perf_counter() - start) / count * 1e6


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--build", default=str(ROOT / "build"))
    ap.add_argument("--count", type=int, default=300, help="signatures per run and message")
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--out", help="append the table to this file")
    args = ap.parse_args()
    tool = Path(args.build) / "tests" / "dkim_tool"
    if not tool.exists():
        raise SystemExit(f"{tool} is not built (cmake --build {args.build})")
    with tempfile.TemporaryDirectory(prefix="sealpost-bench-dkim-") as d:
        keys = dkimpy_keys(Path(d))
    rows = []
    for size in (4 * 1024, 100 * 1024):
        msg = message(size)
        mine = {name: [] for name in keys}
        other = {name: [] for name in keys}
        for _ in range(args.runs):
            for name, us in ours(tool, msg, args.count).items():
                mine[name].append(us)
            for name, (alg, key) in keys.items():
                other[name].append(theirs(msg, alg, key, args.count))
        for name in keys:
            a, b = statistics.median(mine[name]), statistics.median(other[name])
            rows.append(f"| {size // 1024} KB | {name} | {a:.1f} | {min(mine[name]):.1f} | "
                        f"{b:.1f} | {min(other[name]):.1f} | {b / a:.1f} |")
    nl = "\n"
    emit(f"""### dkim ({datetime.date.today()}, {args.runs} runs of {args.count} signatures per message and algorithm; RSA 2048)

| message | algorithm | sealpost µs/msg (median) | min | dkimpy µs/msg (median) | min | dkimpy ÷ sealpost |
|---|---|---|---|---|---|---|
{nl.join(rows)}
""", args.out)


if __name__ == "__main__":
    main()
