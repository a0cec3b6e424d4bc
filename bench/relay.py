#!/usr/bin/python3
"""Relay, end to end: smtp-source -> server -> smtp-sink as the next hop, for
sealpost (ingress + 1 and + 2 workers, Redis with appendfsync always),
Postfix (queue on disk, smtp client) and Haraka (two processes,
queue/smtp_forward), in one run.

Capacity: N messages (4 KB, 50 sessions, a new connection each), timed from
the first connection until the last of them arrived at the next hop
(smtp-sink's own counter); messages/s is the median of the runs, the
servers (all started first) taking turns run by run, and the ratio to
Postfix the median of the ratios of runs made side by side.

Latency at half load: for some seconds, ten times a second a burst of a
twentieth of the server's measured capacity (so half of it in all) goes to
the next hop while a probe sends 20 messages a second to probe.test, routed
to a recorder of our own: the time from the server's 250 to the probe's
arrival at the recorder, median and p99. Haraka forwards before it answers
250, so its figure is below zero. Half of each server's own capacity puts a
faster server under more load; --load RATE runs every server at the same
RATE messages/s instead, to compare two builds or two servers at one load.

--dkim ed25519|rsa gives the sender's domain (origin.test, smtp-source's and
the probe's) a DKIM key of that algorithm in sealpost's key store (`sealpost
dkim keygen`, RSA 2048 bits) before the runs, so every message the workers
send is signed; the recorder counts the probes that arrived signed, which
shows that it was on. --quick: sealpost alone (no Postfix, no Haraka), one
run of 1000 messages and a 3 s latency phase.

usage: bench/relay.py [--build DIR] [--runs N] [--count N] [--seconds S] [--load RATE]
                      [--dkim none|ed25519|rsa] [--quick] [--peers postfix,haraka]
                      [--out FILE]
"""
import argparse
import datetime
import smtplib
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from peers import (ROOT, workdir, emit, Haraka, Meter, Postfix, Sealpost, SmtpSink, free_port,  # noqa: E402
                   percentile, smtp_source, summary)

from aiosmtpd.controller import Controller  # noqa: E402

TICKS = 10  # bursts a second in the half-load phase


class Recorder:
    """The probes' next hop: the arrival time of every message, by token."""

    def __init__(self):
        self.port = free_port()
        self.arrived = {}
        self.signed = 0  # probes that arrived with a DKIM signature on top
        self.controller = Controller(self, hostname="127.0.0.1", port=self.port)
        self.controller.start()

    async def handle_DATA(self, server, session, envelope):
        now = time.monotonic()
        token = envelope.original_content.split(b"Subject: ", 1)[1].split(b"\r\n", 1)[0]
        self.arrived[token.decode()] = now
        self.signed += envelope.original_content.startswith(b"DKIM-Signature:")
        return "250 2.0.0 ok"

    def stop(self):
        self.controller.stop()


def arrived(sink, count, timeout=300):
    """The time the next hop has count messages."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if sink.count() >= count:
            return time.monotonic()
        time.sleep(0.02)
    raise RuntimeError(f"only {sink.count()} of {count} messages at the next hop")


def capacity_once(server, sink, count):
    """One run: (messages/s end to end, server CPU seconds per 1000 messages)."""
    meter = Meter(server.pids())
    meter.start()
    base = sink.count()
    t0 = time.monotonic()
    smtp_source(server.port, count, 50, 4096, False)
    done = arrived(sink, base + count)
    meter.stop()
    return count / (done - t0), meter.cpu / count * 1000


def probe(port, stop, sent):
    """20 messages a second to probe.test; the time of each 250, by token."""
    i = 0
    while not stop.is_set():
        token = f"p{i}"
        i += 1
        msg = f"From: s@origin.test\r\nTo: p@probe.test\r\nSubject: {token}\r\n\r\nprobe\r\n"
        try:
            with smtplib.SMTP("127.0.0.1", port, timeout=30) as c:
                c.sendmail("s@origin.test", ["p@probe.test"], msg)
                sent[token] = time.monotonic()  # the 250, before QUIT
        except (OSError, smtplib.SMTPException):
            pass
        stop.wait(0.05)


def latency(server, sink, recorder, load, seconds):
    """Probes while bursts make load messages/s in all."""
    stop, sent = threading.Event(), {}
    base = sink.count()
    t = threading.Thread(target=probe, args=(server.port, stop, sent), daemon=True)
    t.start()
    burst, ticks = max(1, int(load / TICKS)), seconds * TICKS
    for _ in range(ticks):
        t0 = time.monotonic()
        smtp_source(server.port, burst, 10, 4096, False)
        time.sleep(max(0.0, 1 / TICKS - (time.monotonic() - t0)))
    stop.set()
    t.join()
    arrived(sink, base + burst * ticks)
    time.sleep(0.5)
    lat = [(recorder.arrived[k] - v) * 1000 for k, v in sent.items() if k in recorder.arrived]
    return percentile(lat, 50), percentile(lat, 99), len(lat), len(sent)


def dkim_key(server, build, algorithm):
    """A key of algorithm for origin.test in server's key store; the workers
    load it within a second (their poll)."""
    r = subprocess.run([str(Path(build) / "sealpost"), "dkim", "keygen", "origin.test",
                        "--selector", "bench", "--algorithm", algorithm, "-c", str(server.conf)],
                       capture_output=True, text=True, timeout=60)
    if r.returncode != 0:
        raise RuntimeError(f"sealpost dkim keygen: {r.stderr}")
    time.sleep(1.5)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--build", default=str(ROOT / "build"))
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--count", type=int, default=2000)
    ap.add_argument("--seconds", type=int, default=10, help="of the half-load phase")
    ap.add_argument("--load", type=float, help="msg/s in the latency phase (default: half "
                    "of each server's measured capacity)")
    ap.add_argument("--dkim", choices=("none", "ed25519", "rsa"), default="none",
                    help="sealpost signs every message with a key of this algorithm")
    ap.add_argument("--quick", action="store_true",
                    help="sealpost alone, one run of 1000 messages, a 3 s latency phase")
    ap.add_argument("--peers", default="postfix,haraka", help="which of postfix,haraka")
    ap.add_argument("--out", help="append the table to this file")
    args = ap.parse_args()
    if args.quick:
        args.runs, args.count, args.seconds = 1, 1000, 3
    with workdir() as (tmp, running):
        sink = running["sink"] = SmtpSink(tmp)
        recorder = running["recorder"] = Recorder()
        rows = []
        routes = {"probe.test": f"127.0.0.1:{recorder.port}"}
        makers = [
            ("sealpost, 1 worker", lambda: Sealpost(tmp, args.build, workers=1, next_hop=sink.port,
                                                    routes=routes)),
            ("sealpost, 2 workers", lambda: Sealpost(tmp, args.build, workers=2, next_hop=sink.port,
                                                     routes=routes)),
        ]
        peers = {"postfix": lambda: Postfix(tmp, next_hop=sink.port, routes=routes),
                 "haraka": lambda: Haraka(tmp, nodes=2, next_hop=sink.port, routes=routes)}
        if not args.quick:
            makers += [(name, peers[name]) for name in args.peers.split(",")]
        servers = {}
        for label, make in makers:
            servers[label] = running[label] = make()
            if isinstance(servers[label], Sealpost) and args.dkim != "none":
                dkim_key(servers[label], args.build, args.dkim)
        # the servers take turns run by run, so that a slow spell of the
        # machine falls on each of them rather than on one
        runs = {label: [] for label in servers}
        for _ in range(args.runs):
            for label, server in servers.items():
                runs[label].append(capacity_once(server, sink, args.count))
        for label, server in servers.items():
            signed_before = recorder.signed
            (rate, lo, hi) = summary([r for r, _ in runs[label]])
            cpu = statistics.median(c for _, c in runs[label])
            load = args.load or rate / 2
            p50, p99, seen, sent = latency(server, sink, recorder, load, args.seconds)
            server.stop()
            del running[label]
            rows.append((label, rate, lo, hi, cpu, p50, p99, seen, sent))
            print(f"{label}: {rate:.0f} msg/s, {cpu:.2f} CPU s / 1000, 250 to arrival p50 "
                  f"{p50:.1f} ms p99 {p99:.1f} ms, probes signed {recorder.signed - signed_before}"
                  f"/{seen}", flush=True)
        postfix = next((r for r in rows if r[0] == "postfix"), None)
        paired = {label: statistics.median(o / p for (o, _), (p, _) in zip(r, runs["postfix"]))
                  for label, r in runs.items()} if postfix else {}
        phase = f"at {args.load:.0f} msg/s" if args.load else "half load"
        signing = "" if args.dkim == "none" else f"; sealpost signs with DKIM ({args.dkim})"
        text = [f"### relay ({datetime.date.today()}, 4 KB, smtp-source 50 sessions with a new "
                f"connection each, {args.count} messages per run, {args.runs} runs; next hop "
                f"smtp-sink{signing})", "",
                "| server | msg/s end to end, median | min | max | CPU s / 1000 msg | "
                f"250 → arrival p50 ms ({phase}) | p99 ms | probes arrived | "
                "msg/s ÷ Postfix (median of paired runs) | p99 ÷ Postfix's |",
                "|---|---|---|---|---|---|---|---|---|---|"]
        for label, rate, lo, hi, cpu, p50, p99, seen, sent in rows:
            ratio = f"{paired[label]:.2f}" if postfix else "—"
            tail = f"{p99 / postfix[6]:.2f}" if postfix and postfix[6] > 0 else "—"
            text.append(f"| {label} | {rate:.0f} | {lo:.0f} | {hi:.0f} | {cpu:.2f} | "
                        f"{p50:.1f} | {p99:.1f} | {seen}/{sent} | {ratio} | {tail} |")
        out = "\n".join(text) + "\n"
        emit(out, args.out)


if __name__ == "__main__":
    sys.exit(main())
