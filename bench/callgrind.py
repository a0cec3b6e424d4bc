#!/usr/bin/python3
"""Instructions per message, counted by callgrind: what one accepted message
costs the ingress, what one delivered message costs the worker, and what
each asks of Redis, in user-space instructions (Ir) of one process, a figure that
does not drift with the machine's load as times do, so a refactor can be
compared with the code before it.

Ingress: Redis (AOF, appendfsync always) and the ingress of peers.Sealpost,
but the ingress runs under `valgrind --tool=callgrind`; smtp-source sends N
messages of 4 KB over 10 sessions (a new connection per message unless
--kept), then SIGTERM makes callgrind write its file. Worker: N messages are
stored through the ordinary ingress, which is then stopped, and the worker
runs under callgrind, delivering to smtp-sink (the [routes] entry of
example.test), until smtp-sink has them all and the queue is empty; then
SIGTERM. Redis: redis-server itself runs under callgrind, the ingress and
the worker as they are; once while the ingress stores N messages
("accepted"), once while it stores them and one worker delivers them all
("accepted and delivered": the difference of the two is what a delivery
asks of Redis). Each is run with two counts, and

    Ir per message = (Ir(N2) - Ir(N1)) / (N2 - N1)

so start-up and shut-down cancel out. What does not cancel is work done by
the clock (the ingress asks Redis for the key directory's version every
250 ms, whatever the traffic) in a run that lasts longer under valgrind
with more messages: two idle runs of different lengths (counted from the
moment the ingress listens, or from the worker's start) give that rate per
second, and the table shows the figure with it taken out as well.

Per function and per shared object, the same difference of the two runs'
self (and inclusive) costs, read from the callgrind files, shows where the
instructions of one message go. Only user space is counted: system calls,
the kernel's network stack and fsync are not in Ir.

usage: bench/callgrind.py [--build DIR] [--counts N1,N2] [--sessions S] [--size BYTES]
                          [--kept] [--idle S1,S2] [--only ingress|worker|redis] [--top K]
                          [--keep DIR] [--out FILE]
"""
import argparse
import datetime
import json
import os
import re
import shutil
import subprocess
import sys
import time
from collections import defaultdict
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from peers import (ROOT, Sealpost, Server, SmtpSink, emit, smtp_source, wait_port,  # noqa: E402
                   workdir)

STARTUP_TIMEOUT = 180  # seconds: callgrind starts the process about 50 times slower
DRAIN_TIMEOUT = 900


# ---- reading a callgrind file ----

NAME = re.compile(r"\((\d+)\)(?: (.*))?")


class Profile:
    """The total Ir of a callgrind out file, and each function's self and
    inclusive Ir, keyed by (object, function): the parts of a function that
    callgrind files under other source files (inlined headers) are added
    together, which callgrind_annotate lists apart."""

    def __init__(self, path):
        self.path = path
        self.total = 0
        self.self_ir = defaultdict(int)
        self.calls_ir = defaultdict(int)
        self.edges = defaultdict(int)  # (caller, callee) -> Ir spent in the callee for it
        names = {"ob": {}, "fl": {}, "fn": {}}
        space = {"ob": "ob", "cob": "ob", "fl": "fl", "fi": "fl", "fe": "fl", "cfi": "fl",
                 "cfl": "fl", "fn": "fn", "cfn": "fn"}
        ob = fn = ""
        callee_ob = callee_fn = None
        after_call = False
        with open(path) as f:
            for line in f:
                if line[0].isdigit() or line[0] in "+-*":
                    parts = line.split()
                    ir = int(parts[1]) if len(parts) > 1 else 0
                    if after_call:
                        self.calls_ir[(ob, fn)] += ir
                        self.edges[((ob, fn), (callee_ob or ob, callee_fn))] += ir
                        callee_ob = None
                    else:
                        self.self_ir[(ob, fn)] += ir
                    after_call = False
                    continue
                key, _, value = line.rstrip("\n").partition("=")
                if key in space:
                    m = NAME.fullmatch(value)
                    table = names[space[key]]
                    if m:
                        if m.group(2) is not None:
                            table[m.group(1)] = m.group(2)
                        value = table.get(m.group(1), value)
                    if key == "ob":
                        ob = value
                    elif key == "fn":
                        fn = value
                    elif key == "cob":
                        callee_ob = value
                    elif key == "cfn":
                        callee_fn = value
                elif key == "calls":
                    after_call = True
                elif line.startswith(("summary:", "totals:")):
                    self.total = int(line.split()[1])
        counted = sum(self.self_ir.values())
        if self.total == 0:
            self.total = counted
        elif abs(counted - self.total) > self.total // 1000:
            raise RuntimeError(f"{path}: the functions add up to {counted} Ir, "
                               f"the file says {self.total}")

    def inclusive(self):
        keys = set(self.self_ir) | set(self.calls_ir)
        return {k: self.self_ir[k] + self.calls_ir[k] for k in keys}

    def by_object(self):
        out = defaultdict(int)
        for (ob, _), ir in self.self_ir.items():
            out[ob] += ir
        return out


def per_message(small, large, dn):
    """What each key costs one message: the difference of two runs' tables."""
    return {k: (large.get(k, 0) - small.get(k, 0)) / dn for k in set(small) | set(large)}


# ---- running a process under callgrind ----

class Valgrinded(Server):
    """One sealpost command under callgrind; stop() sends SIGTERM and waits
    for the out file callgrind writes at exit (a forked child, such as
    GPGME's, writes its own file under its own pid, which is not read)."""

    def __init__(self, tmp, build, command, conf, tag):
        super().__init__()
        self.dir = tmp / f"callgrind-{tag}"
        self.dir.mkdir()
        self.log = self.dir / "stderr.log"
        # Redis requests time out after 2 s by default; the first ones of a
        # valgrinded worker wait that long behind its start-up (loading the
        # CA bundle), and a timeout would drop and reopen the connection.
        env = dict(os.environ, TMPDIR=str(tmp), SEALPOST_REDIS_TIMEOUT_MS="120000")
        self.procs.append(subprocess.Popen(
            ["valgrind", "--tool=callgrind", f"--callgrind-out-file={self.dir}/callgrind.out.%p",
             str(Path(build) / "sealpost"), command, "-c", str(conf)],
            env=env, stderr=open(self.log, "wb")))
        self.proc = self.procs[0]
        self.started = time.monotonic()

    def finish(self):
        """SIGTERM, the exit, and the profile of the process itself."""
        self.proc.terminate()
        try:
            rc = self.proc.wait(STARTUP_TIMEOUT)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            raise RuntimeError(f"no exit after SIGTERM; see {self.log}")
        self.procs = []
        out = self.dir / f"callgrind.out.{self.proc.pid}"
        if rc != 0 or not out.exists():
            raise RuntimeError(f"exit {rc}, {out.name} {'written' if out.exists() else 'missing'}: "
                               f"{self.tail()}")
        profile = Profile(out)
        # valgrind keeps some descriptors: the ingress's warning that the
        # open-files limit is below max_connections is expected here.
        profile.warnings = [line for line in self.log.read_text().splitlines()
                            if re.search(r"level=(warn|error)", line)
                            and "open_files_low" not in line]
        return profile

    def tail(self):
        """The end of the process's log, for an error message: the folder
        is gone once the error is reported."""
        return self.log.read_text(errors="replace")[-1500:]


def queue_stats(build, conf):
    r = subprocess.run([str(Path(build) / "sealpost"), "queue", "stats", "--json", "-c",
                        str(conf)], capture_output=True, text=True, check=True)
    return json.loads(r.stdout)


def stop_ingress(server):
    """The ordinary ingress of a peers.Sealpost stopped, its Redis kept."""
    server.ingress.terminate()
    server.ingress.wait(30)
    server.procs.remove(server.ingress)


def run_ingress(tmp, running, args, count, idle=None):
    """Ir of an ingress that accepts count messages (or, with idle, none for
    that many seconds after it listens) and is then stopped; and the
    seconds from listening to SIGTERM."""
    tag = f"ingress-{count}" if idle is None else f"ingress-idle-{idle}"
    server = running[tag + "-peers"] = Sealpost(tmp, args.build)
    stop_ingress(server)
    vg = running[tag] = Valgrinded(tmp, args.build, "ingress", server.conf, tag)
    wait_port(server.port, STARTUP_TIMEOUT)
    t0 = time.monotonic()
    if idle is None:
        smtp_source(server.port, count, args.sessions, args.size, args.kept)
        stored = queue_stats(args.build, server.conf)["messages"]
        if stored != count:
            raise RuntimeError(f"the ingress stored {stored} of {count} messages")
    else:
        time.sleep(idle)
    took = time.monotonic() - t0
    profile = vg.finish()
    server.stop()
    keep(args, vg, tag)
    return profile, took


def run_worker(tmp, running, sink, args, count, idle=None):
    """Ir of a worker that delivers count messages stored beforehand (or,
    with idle, runs that many seconds on an empty queue); and the seconds
    from its start to SIGTERM."""
    tag = f"worker-{count}" if idle is None else f"worker-idle-{idle}"
    server = running[tag + "-peers"] = Sealpost(tmp, args.build, next_hop=sink.port)
    if count:
        smtp_source(server.port, count, args.sessions, args.size, args.kept)
    stop_ingress(server)
    stored = queue_stats(args.build, server.conf)
    if stored["messages"] != count or stored["due"] != count:
        raise RuntimeError(f"before the worker: {stored}, not {count} due messages")
    base = sink.count()
    vg = running[tag] = Valgrinded(tmp, args.build, "worker", server.conf, tag)
    t0 = vg.started
    if idle is None:
        deadline = time.monotonic() + DRAIN_TIMEOUT
        while sink.count() < base + count or queue_stats(args.build, server.conf)["messages"]:
            if time.monotonic() > deadline or vg.proc.poll() is not None:
                raise RuntimeError(f"{sink.count() - base} of {count} delivered: {vg.tail()}")
            time.sleep(0.2)
    else:
        time.sleep(idle)
    took = time.monotonic() - t0
    profile = vg.finish()
    if sink.count() != base + count:
        raise RuntimeError(f"smtp-sink got {sink.count() - base} messages, not {count}")
    server.stop()
    keep(args, vg, tag)
    return profile, took


def run_redis(tmp, running, sink, args, count, deliver, idle=None):
    """Ir of redis-server (appendfsync always) while an ordinary ingress
    stores count messages and, with deliver, a worker delivers them all (or,
    with idle, that many seconds of an ingress and a worker with nothing to
    do); and the seconds from the ingress's start to SIGTERM. Redis's
    SIGTERM is its ordinary shutdown, after which callgrind writes."""
    what = "delivered" if deliver else "accepted"
    tag = f"redis-{what}-{count}" if idle is None else f"redis-{what}-idle-{idle}"
    d = tmp / f"callgrind-{tag}"
    d.mkdir()
    prefix = ["valgrind", "--tool=callgrind", f"--callgrind-out-file={d}/callgrind.out.%p",
              f"--log-file={d}/valgrind.log"]
    server = running[tag] = Sealpost(tmp, args.build, workers=1 if deliver else 0,
                                     next_hop=sink.port, redis_prefix=prefix)
    redis = server.procs[0]
    base = sink.count()
    t0 = time.monotonic()
    if idle is None:
        smtp_source(server.port, count, args.sessions, args.size, args.kept)
        deadline = time.monotonic() + DRAIN_TIMEOUT
        while deliver and (sink.count() < base + count or
                           queue_stats(args.build, server.conf)["messages"]):
            if time.monotonic() > deadline:
                raise RuntimeError(f"{sink.count() - base} of {count} delivered")
            time.sleep(0.2)
        stored = queue_stats(args.build, server.conf)["messages"]
        if stored != (0 if deliver else count):
            raise RuntimeError(f"redis holds {stored} messages after {count} {what}")
    else:
        time.sleep(idle)
    took = time.monotonic() - t0
    for p in server.procs[1:]:
        p.terminate()
        p.wait(30)
    redis.terminate()
    redis.wait(STARTUP_TIMEOUT)
    server.procs = []
    del running[tag]
    profile = Profile(d / f"callgrind.out.{redis.pid}")
    profile.warnings = []
    if args.keep:
        shutil.copytree(d, Path(args.keep) / tag, dirs_exist_ok=True)
    return profile, took


def keep(args, vg, tag):
    if args.keep:
        dest = Path(args.keep) / tag
        shutil.rmtree(dest, ignore_errors=True)
        shutil.copytree(vg.dir, dest)


# ---- the report ----

def source_root(build):
    """The source folder the build was made from, to shorten file names."""
    try:
        for line in (Path(build) / "CMakeCache.txt").read_text().splitlines():
            if line.startswith("CMAKE_HOME_DIRECTORY:"):
                return line.split("=", 1)[1] + "/"
    except OSError:
        pass
    return str(ROOT) + "/"


def short(key, root):
    ob, fn = key
    obj = Path(ob).name if ob else "?"
    return f"{fn} ({'sealpost' if obj == 'sealpost' else obj})".replace(root, "")


def measure(label, run, counts, idle):
    """Runs counts[0], counts[1] and, with idle, the two idle lengths; the
    per-message figures."""
    n1, n2 = counts
    (p1, t1), (p2, t2) = run(n1), run(n2)
    dn = n2 - n1
    m = {"label": label, "n": counts, "ir": (p1.total, p2.total), "secs": (t1, t2),
         "per_msg": (p2.total - p1.total) / dn,
         "self": per_message(p1.self_ir, p2.self_ir, dn),
         "incl": per_message(p1.inclusive(), p2.inclusive(), dn),
         "objects": per_message(p1.by_object(), p2.by_object(), dn),
         "edges": per_message(p1.edges, p2.edges, dn),
         "warnings": p1.warnings + p2.warnings}
    if idle:
        (q1, s1), (q2, s2) = run(0, idle[0]), run(0, idle[1])
        rate = (q2.total - q1.total) / (s2 - s1)
        m["idle_rate"] = rate
        m["corrected"] = (p2.total - p1.total - rate * (t2 - t1)) / dn
        m["warnings"] += q1.warnings + q2.warnings
    print(f"{label}: {m['per_msg']:,.0f} Ir per message "
          f"(Ir {p1.total:,} for {n1}, {p2.total:,} for {n2}; {t1:.1f} s, {t2:.1f} s)", flush=True)
    return m


def ours(key):
    return Path(key[0]).name == "sealpost"


def top(table, k, root, keep=lambda key: True):
    rows = sorted(((ir, key) for key, ir in table.items() if keep(key)), key=lambda r: -r[0])[:k]
    return [f"| {ir:,.0f} | {short(key, root)} |" for ir, key in rows]


def calls_out(edges, k, root):
    """Where our code hands the work to a library: the calls from a sealpost
    function into another object, by the Ir spent below them."""
    calls_back = {a for (a, b) in edges if not ours(a) and ours(b)}
    rows = sorted(((ir, a, b) for (a, b), ir in edges.items()
                   if ours(a) and not ours(b) and not a[1].startswith(("(below main)", "cmd_"))),
                  key=lambda r: -r[0])[:k]
    return [f"| {ir:,.0f} | {short(a, root)} | {short(b, root)}"
            f"{' ↺' if b in calls_back else ''} |"
            for ir, a, b in rows]


def report(results, args, root):
    kind = "kept connections" if args.kept else "a new connection per message"
    version = subprocess.run(["valgrind", "--version"], capture_output=True,
                             text=True).stdout.strip()
    out = [f"### callgrind ({datetime.date.today()}, build {args.build}, {version}; {args.size} B "
           f"messages, smtp-source {args.sessions} sessions, {kind}; Ir = user-space instructions "
           "of the process named (the sealpost ingress or worker, or redis-server); per message = (Ir(N2) - Ir(N1)) / (N2 - N1))", ""]
    out.append("| process | N1 | N2 | Ir(N1) | Ir(N2) | run s (N1, N2) | Ir per message | "
               "idle Ir/s | Ir per message, idle work out |")
    out.append("|---|---|---|---|---|---|---|---|---|")
    for m in results:
        idle = f"{m['idle_rate']:,.0f}" if "idle_rate" in m else ""
        corr = f"{m['corrected']:,.0f}" if "corrected" in m else ""
        out.append(f"| {m['label']} | {m['n'][0]} | {m['n'][1]} | {m['ir'][0]:,} | "
                   f"{m['ir'][1]:,} | {m['secs'][0]:.1f}, {m['secs'][1]:.1f} | "
                   f"{m['per_msg']:,.0f} | {idle} | {corr} |")
    for m in results:
        # The loop and the entry points include everything: they say nothing.
        trunk = 0.98 * m["per_msg"]
        out += ["", f"{m['label']}, Ir per message by shared object (self cost):", "",
                "| Ir / msg | share | object |", "|---|---|---|"]
        for ob, ir in sorted(m["objects"].items(), key=lambda kv: -kv[1]):
            if abs(ir) >= max(1.0, m["per_msg"] / 1000):
                out.append(f"| {ir:,.0f} | {ir / m['per_msg']:.1%} | {Path(ob).name or '?'} |")
        out += ["", f"{m['label']}, top {args.top} functions per message, self cost:", "",
                "| Ir / msg | function (object) |", "|---|---|"] + top(m["self"], args.top, root)
        if m["label"].startswith("redis"):
            out += ["", f"{m['label']}, top {args.top} functions per message, inclusive cost "
                    "(below the event loop's trunk):", "", "| Ir / msg | function |", "|---|---|"]
            out += top(m["incl"], args.top, root, lambda key: m["incl"][key] < trunk)
            continue
        out += ["", f"{m['label']}, top {args.top} of our functions per message, inclusive cost "
                "(below the event loop's trunk):", "", "| Ir / msg | function |", "|---|---|"]
        out += top(m["incl"], args.top, root, lambda key: ours(key) and m["incl"][key] < trunk)
        out += ["", f"{m['label']}, top {args.top} calls from our code into libraries, per message "
                "(inclusive; ↺: the library calls back into our code, which is included):", "",
                "| Ir / msg | caller | callee (object) |", "|---|---|---|"]
        out += calls_out(m["edges"], args.top, root)
        if m["warnings"]:
            out += ["", f"{m['label']}: warnings logged during the runs:", ""]
            out += [f"    {w[:200]}" for w in m["warnings"][:10]]
    return "\n".join(out) + "\n"


def pair(text):
    a, b = (float(x) for x in text.split(","))
    return a, b


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--build", default=str(ROOT / "build"))
    ap.add_argument("--counts", default="200,600", help="N1,N2 messages per run")
    ap.add_argument("--sessions", type=int, default=10)
    ap.add_argument("--size", type=int, default=4096)
    ap.add_argument("--kept", action="store_true", help="smtp-source -d: kept connections")
    ap.add_argument("--idle", default="5,15",
                    help="S1,S2: seconds of the idle runs that measure work done by the clock "
                         "(0,0: none)")
    ap.add_argument("--top", type=int, default=10)
    ap.add_argument("--only", choices=("ingress", "worker", "redis"))
    ap.add_argument("--keep", help="copy the callgrind files into this folder")
    ap.add_argument("--out", help="append the table to this file")
    args = ap.parse_args()
    args.build = str(Path(args.build).resolve())
    counts = tuple(int(x) for x in args.counts.split(","))
    if len(counts) != 2 or not 0 <= counts[0] < counts[1]:
        raise SystemExit("--counts N1,N2 with N1 < N2")
    idle = pair(args.idle)
    idle = idle if idle[1] > idle[0] else None
    if shutil.which("valgrind") is None:
        raise SystemExit("valgrind is not installed (apt-get install valgrind)")
    results = []
    with workdir() as (tmp, running):
        if args.only in (None, "ingress"):
            results.append(measure(
                "ingress", lambda n, s=None: run_ingress(tmp, running, args, n, s), counts, idle))
        sink = running["sink"] = SmtpSink(tmp)
        if args.only in (None, "worker"):
            results.append(measure(
                "worker", lambda n, s=None: run_worker(tmp, running, sink, args, n, s), counts,
                idle))
        if args.only in (None, "redis"):
            for deliver in (False, True):
                results.append(measure(
                    "redis, accepted" if not deliver else "redis, accepted and delivered",
                    lambda n, s=None, dl=deliver: run_redis(tmp, running, sink, args, n, dl, s),
                    counts, idle))
        emit(report(results, args, source_root(args.build)), args.out)


if __name__ == "__main__":
    sys.exit(main())
