#!/usr/bin/python3
"""What a key look-up costs at RCPT TO (issue 16), on loopback: the time
from RCPT to its reply for a recipient whose key the ingress looks up by
WKD while the RCPT waits, against the same ingress with the answer already
filed in Redis (cached: a key, or a miss), and against an ingress without
discovery, all in one run. The WKD server is Python's http.server over TLS
(tests/integration/wkd.py) on 127.0.1.1:443, names come from dnsmasq, so
the look-up's time is mostly that server's TLS handshake; a real one is
slower by the network's round trips. Port 443 must be ours, so `make bench`
runs it in a network namespace of its own (tests/netns.sh).

Cases, each over N recipients (one SMTP session, a transaction per RCPT):
  off        discovery off, keyless recipients: key_lookup in Redis alone
  found      discovery on, a new address each time whose key WKD serves:
             DNS, TLS, GET, gpg reading the key in the thread pool, filing
  not_found  discovery on, a new address each time, WKD answers 404
  cached     the found and not_found addresses again: Redis has the answer

usage: bench/discovery.py [--build DIR] [--count N] [--out FILE]
"""
import argparse
import smtplib
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.append(str(Path(__file__).resolve().parent.parent / "tests" / "integration"))
from peers import ROOT, Sealpost, emit, free_port, percentile, workdir  # noqa: E402
from wkd import Pki, WebServer  # noqa: E402

WEB = "127.0.1.1"


def make_keys(home, addresses):
    """A key of its own (Curve25519, one user ID) for each address; their
    binary exports by address."""
    home.mkdir(mode=0o700)
    gpg = ["gpg", "--homedir", str(home), "--batch", "--passphrase", "", "--quiet"]
    keys = {}
    for a in addresses:
        subprocess.run(gpg + ["--quick-gen-key", f"Bench <{a}>", "future-default", "default",
                              "never"], check=True, capture_output=True)
        keys[a] = subprocess.run(gpg + ["--export", f"<{a}>"], check=True,
                                 capture_output=True).stdout
    return keys


def rcpt_times(port, rcpts):
    """Seconds from each RCPT to its reply, one transaction each."""
    times = []
    with smtplib.SMTP("127.0.0.1", port, timeout=30) as c:
        c.ehlo()
        for r in rcpts:
            c.mail("bench@origin.test")
            start = time.perf_counter()
            code, text = c.rcpt(r)
            times.append(time.perf_counter() - start)
            if code != 250:
                raise SystemExit(f"RCPT {r}: {code} {text!r}")
            c.rset()
    return times


def line(name, times, base):
    p50, p99 = percentile(times, 50) * 1000, percentile(times, 99) * 1000
    return (f"| {name} | {len(times)} | {p50:.2f} | {p99:.2f} | "
            f"{p50 / base:.1f}× |")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--build", default=str(ROOT / "build"))
    ap.add_argument("--count", type=int, default=30)
    ap.add_argument("--out")
    args = ap.parse_args()
    n = args.count
    found = [f"found{i}@example.test" for i in range(n)]
    missing = [f"missing{i}@example.test" for i in range(n)]
    with workdir() as (tmp, _):
        pki = Pki(tmp / "pki", ["openpgpkey.example.test", "example.test"])
        web = WebServer(WEB, pki)
        keys = make_keys(tmp / "gnupg", found)
        for a in found:
            web.publish_wkd(a, keys[a])
        dns_port = free_port()
        dns = subprocess.Popen(
            ["dnsmasq", "--no-daemon", "--conf-file=/dev/null", f"--port={dns_port}",
             "--listen-address=127.0.0.1", "--bind-interfaces", "--no-resolv", "--no-hosts",
             "--local=/test/", "--pid-file=", f"--host-record=openpgpkey.example.test,{WEB}",
             f"--host-record=example.test,{WEB}"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        time.sleep(0.3)
        disc = (f"[discovery]\nenabled = yes\ndns_servers = 127.0.0.1:{dns_port}\n"
                f"ca_file = {pki.ca}\nmax_parallel = 64\n")
        try:
            off = Sealpost(tmp, args.build)
            base_times = rcpt_times(off.port, missing + found)
            off.stop()
            on = Sealpost(tmp, args.build, extra=disc)
            rcpt_times(on.port, ["warmup@other.test"])
            t_found = rcpt_times(on.port, found)
            t_missing = rcpt_times(on.port, missing)
            time.sleep(0.5)  # the last filings written
            t_cached = rcpt_times(on.port, found + missing)
            on.stop()
        finally:
            dns.terminate()
            web.close()
        asked = len(web.key_requests())
    base = percentile(base_times, 50) * 1000
    text = "\n".join([
        f"### Key discovery at RCPT, loopback ({n} addresses per case; "
        f"the WKD server was asked {asked} times: one per new address)",
        "",
        "| case | RCPTs | p50 ms | p99 ms | p50 ÷ off |",
        "|---|---|---|---|---|",
        line("off (no discovery)", base_times, base),
        line("found (WKD, key filed)", t_found, base),
        line("not_found (WKD 404, miss filed)", t_missing, base),
        line("cached (key or miss in Redis)", t_cached, base),
        ""])
    emit(text, args.out)


if __name__ == "__main__":
    main()
