#!/usr/bin/python3
"""Accept rate: smtp-source into sealpost (ingress + Redis with appendfsync
always), Postfix (smtpd queueing to disk, then the discard transport),
Haraka (npm, two processes, queue/discard) and smtp-sink (stores nothing:
the bound), in one run, on the same machine, with the same client.

For each message size (4 KB, 100 KB), number of parallel sessions (1, 10,
50) and connection mode (a new connection per message, or kept), each server
gets the same messages; the table shows messages/s (median of the runs, min
and max; the servers take turns run by run), server CPU seconds per 1000 messages (every process of the server,
Redis included for sealpost), the server's peak memory (PSS: shared pages split between the processes sharing them), and
sealpost's rate divided by each peer's.

usage: bench/accept.py [--build DIR] [--runs N] [--quick] [--out FILE]
"""
import argparse
import datetime
import statistics
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from peers import ROOT, workdir, Haraka, Meter, Postfix, Sealpost, SmtpSink, emit, smtp_source, summary  # noqa: E402

SIZES = {"4 KB": 4096, "100 KB": 102400}
SESSIONS = (1, 10, 50)


def count_for(size, sessions):
    """Enough messages for a couple of seconds from the slowest server."""
    base = {1: 300, 10: 1000, 50: 2000}[sessions]
    return base if size <= 4096 else base // 3


def measure_once(server, size, sessions, reuse):
    """One run: (messages/s, server CPU seconds per 1000 messages, peak PSS)."""
    count = count_for(size, sessions)
    meter = Meter(server.pids())
    meter.start()
    took, _ = smtp_source(server.port, count, sessions, size, reuse)
    meter.stop()
    return count / took, meter.cpu / count * 1000, meter.peak


def measure(servers, size, sessions, reuse, runs):
    """Every server once per run, in turn (run 1 of each, then run 2 of
    each...), so a slow spell of the machine falls on all of them rather
    than on one; each peer's ratio is the median of the ratios of runs made
    side by side."""
    got = {name: [] for name in servers}
    for _ in range(runs):
        for name, server in servers.items():
            if name == "sealpost":
                empty_redis(server)
            got[name].append(measure_once(server, size, sessions, reuse))
    by = {}
    ours = [rate for rate, _, _ in got["sealpost"]]
    for name, runs_of in got.items():
        rates = [rate for rate, _, _ in runs_of]
        by[name] = {"rate": summary(rates),
                    "cpu": statistics.median(cpu for _, cpu, _ in runs_of),
                    "mem": max(peak for _, _, peak in runs_of),
                    "ratio": statistics.median(o / r for o, r in zip(ours, rates))}
    return by


def empty_redis(server):
    """sealpost keeps what it accepted (no worker here): start each case
    from an empty queue, as the other servers do."""
    port = server.conf.read_text().split("redis://127.0.0.1:")[1].split()[0]
    subprocess.run(["redis-cli", "-p", port, "FLUSHALL"], check=True, capture_output=True)


def table(results, servers, runs):
    out = [f"### accept ({datetime.date.today()}, {runs} runs per case; smtp-source; "
           "sealpost = ingress + Redis with appendfsync always, no worker; Postfix = smtpd "
           "writing its queue file, then qmgr and the discard transport; Haraka = "
           "queue/discard, which stores nothing before its 250)", ""]
    out.append("| size | sessions | connection | server | msg/s median | min | max | "
               "CPU s / 1000 msg | peak PSS MB | sealpost ÷ this (median of paired runs) |")
    out.append("|---|---|---|---|---|---|---|---|---|---|")
    for (size, sessions, reuse), by in results.items():
        for name in servers:
            r = by[name]
            med, lo, hi = r["rate"]
            ratio = "" if name == "sealpost" else f"{r['ratio']:.2f}"
            out.append(f"| {size} | {sessions} | {'kept' if reuse else 'new'} | {name} | "
                       f"{med:.0f} | {lo:.0f} | {hi:.0f} | {r['cpu']:.2f} | "
                       f"{r['mem'] / 2**20:.0f} | {ratio} |")
    return "\n".join(out) + "\n"


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--build", default=str(ROOT / "build"))
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--quick", action="store_true", help="the goal cases only: 4 KB over 50 sessions, new connections; 100 KB over one kept")
    ap.add_argument("--out", help="append the table to this file")
    args = ap.parse_args()
    with workdir() as (tmp, servers):
        servers["sealpost"] = Sealpost(tmp, args.build)
        servers["postfix"] = Postfix(tmp)
        servers["haraka"] = Haraka(tmp, nodes=2)
        servers["smtp-sink"] = SmtpSink(tmp)
        cases = [("4 KB", 50, False), ("100 KB", 1, True)] if args.quick else [
            (size, s, reuse) for size in SIZES for s in SESSIONS for reuse in (False, True)]
        results = {}
        for size, sessions, reuse in cases:
            results[(size, sessions, reuse)] = by = measure(servers, SIZES[size], sessions,
                                                            reuse, args.runs)
            for name in servers:
                print(f"{size} {sessions} {'kept' if reuse else 'new'} {name}: "
                      f"{by[name]['rate'][0]:.0f} msg/s, {by[name]['cpu']:.2f} CPU s / 1000",
                      flush=True)
        text = table(results, list(servers), args.runs)
        emit(text, args.out)


if __name__ == "__main__":
    sys.exit(main())
