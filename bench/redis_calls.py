#!/usr/bin/python3
"""What sealpost asks of Redis per message, call by call: how many times
each function (FCALL) and command runs per message accepted and delivered,
and how long Redis spends in each, from Redis's own SLOWLOG with its
threshold at 0 (every command is logged with the microseconds Redis spent
executing it). The Lua interpreter is stripped in Debian's redis-server, so
callgrind (bench/callgrind.py) shows it as addresses; this names the
functions.

Redis (AOF, appendfsync always), one ingress and one worker (or --workers)
of peers.Sealpost, routing example.test to smtp-sink; smtp-source sends N
messages of 4 KB over 50 sessions, a new connection per message, while the
worker delivers; the log is read once smtp-sink has them all and the queue
is empty. The time is Redis's execution time only: neither the fsync (done
once per event-loop turn for all the writes in it) nor reading and writing
the sockets are in it. Logging every command costs Redis a little too, the
same for every call.

usage: bench/redis_calls.py [--build DIR] [--count N] [--workers W] [--out FILE]
"""
import argparse
import datetime
import sys
import time
from collections import defaultdict
from pathlib import Path

import redis as redis_py

sys.path.insert(0, str(Path(__file__).resolve().parent))
from peers import ROOT, Sealpost, SmtpSink, emit, smtp_source, workdir  # noqa: E402

DRAIN_TIMEOUT = 300
SHARDS = 128  # [redis] shards, peers.Sealpost's (the default)
BENCH_CLIENT = "redis-calls-bench"
LOG_MAX = 1_000_000


def call_name(args):
    """FCALL's function, else the command, as Redis logged it."""
    cmd = args[0].decode(errors="replace").upper()
    if cmd in ("FCALL", "FCALL_RO") and len(args) > 1:
        return args[1].decode(errors="replace")
    return cmd


def measure(tmp, running, args):
    sink = running["sink"] = SmtpSink(tmp)
    server = running["sealpost"] = Sealpost(tmp, args.build, workers=args.workers,
                                            next_hop=sink.port)
    r = redis_py.Redis(port=server.redis_port)
    r.config_set("slowlog-max-len", LOG_MAX)
    r.config_set("slowlog-log-slower-than", 0)
    r.slowlog_reset()
    base = sink.count()
    smtp_source(server.port, args.count, 50, 4096, False)
    deadline = time.monotonic() + DRAIN_TIMEOUT
    # delivered, and every completion recorded: no shard's T:age holds a
    # message with open jobs (asked on a connection of our own, left out below)
    r.client_setname(BENCH_CLIENT)
    ages = [f"{{mq:{s}}}:age" for s in range(SHARDS)]
    while sink.count() < base + args.count or r.exists(*ages):
        if time.monotonic() > deadline:
            raise RuntimeError(f"{sink.count() - base} of {args.count} delivered")
        time.sleep(0.1)
    r.config_set("slowlog-log-slower-than", 10_000_000)
    entries = r.execute_command("SLOWLOG", "GET", -1)
    if len(entries) >= LOG_MAX:
        raise RuntimeError("the slow log filled up: lower --count")
    # a command a function runs is logged too, by the script's client, whose
    # address Redis gives as "?:0"
    calls = {True: defaultdict(int), False: defaultdict(int)}
    micros = {True: defaultdict(int), False: defaultdict(int)}
    for entry in entries:
        name = call_name(entry[3])
        if name in ("CONFIG", "SLOWLOG") or entry[5] == BENCH_CLIENT.encode():
            continue
        top = entry[4] != b"?:0"
        calls[top][name] += 1
        micros[top][name] += int(entry[2])
    return calls, micros


def rows(calls, micros, n, total):
    for name in sorted(micros, key=micros.get, reverse=True):
        yield (f"| {name} | {calls[name]} | {calls[name] / n:.2f} | "
               f"{micros[name] / calls[name]:.1f} | {micros[name] / n:.1f} | "
               f"{100 * micros[name] / total:.1f}% |")


def report(calls, micros, args):
    n = args.count
    total = sum(micros[True].values())
    head = ["| call | calls | per message | µs per call | µs per message | share |",
            "|---|---|---|---|---|---|"]
    lines = [f"### Redis calls per message ({datetime.date.today()}, {n} messages of 4 KB, "
             f"smtp-source 50 sessions, a new connection each, accepted while {args.workers} "
             "worker(s) delivered them to smtp-sink; the µs Redis spent executing each call, "
             "from SLOWLOG at threshold 0: no fsync, no socket I/O)", "",
             "Calls sent by sealpost (a function's time includes the commands it runs):", "",
             *head, *rows(calls[True], micros[True], n, total),
             f"| all | {sum(calls[True].values())} | {sum(calls[True].values()) / n:.2f} | | "
             f"{total / n:.1f} | 100% |", "",
             "Commands run inside the functions (share: of the time of all calls above):", "",
             *head, *rows(calls[False], micros[False], n, total), ""]
    return "\n".join(lines)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--build", default=str(ROOT / "build"))
    ap.add_argument("--count", type=int, default=2000)
    ap.add_argument("--workers", type=int, default=1)
    ap.add_argument("--out", help="append the table to this file")
    args = ap.parse_args()
    args.build = str(Path(args.build).resolve())
    with workdir() as (tmp, running):
        calls, micros = measure(tmp, running, args)
    emit(report(calls, micros, args), args.out)


if __name__ == "__main__":
    sys.exit(main())
