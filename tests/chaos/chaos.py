"""The chaos suite (issue 7, item 6): the promise of docs/architecture.md under fire.

A load of messages to several domains goes through 2 ingress nodes to 3
workers on one Redis (AOF, appendfsync always), while a driver, at random
moments, SIGKILLs and restarts a worker, an ingress and redis-server itself.
At the end every message that got a 250 must have reached each of its
accepted recipients or come back to its sender in a bounce; none may be
lost. Duplicates are counted and printed (at-least-once is the promise, not
exactly-once), and bounded: each must follow from a kill that can cause one
(see explain_repeats). A message that got a 4xx, a 5xx or no reply is not the
queue's responsibility and never counts as lost; whether it was delivered
anyway is printed.

Everything is real: redis-server, the sealpost binary (SEALPOST_BIN, the
sanitizer build in `make test`), aiosmtpd sinks on loopback, smtplib
clients. The helpers come from tests/integration/conftest.py.

Run it with pytest (tests/chaos/test_chaos.py) or directly:

    SEALPOST_BIN=build-asan/sealpost /usr/bin/python3 tests/chaos/chaos.py --seconds 600

Knobs (environment, or the options of the command line): CHAOS_SECONDS
(load phase), CHAOS_RATE (messages per second offered, all clients
together), CHAOS_KILLS (kills per kind: worker, ingress, redis), CHAOS_SEED,
CHAOS_DRAIN_SECONDS (how long the queue may take to empty afterwards),
CHAOS_CLIENTS (client threads).
"""

import argparse
import email
import importlib.util
import json
import os
import random
import re
import smtplib
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from collections import Counter, defaultdict
from datetime import datetime, timedelta, timezone
from email import policy
from pathlib import Path

_HERE = Path(__file__).resolve().parent
_CONFTEST = (_HERE.parent / "integration" / "conftest.py").resolve()
# The integration suite's helpers; the very module pytest loaded when both
# suites run in one session (one set of handed-out ports), else a copy.
it = sys.modules.get("conftest")
if it is None or Path(getattr(it, "__file__", "") or "").resolve() != _CONFTEST:
    _spec = importlib.util.spec_from_file_location("sealpost_integration_conftest", _CONFTEST)
    it = importlib.util.module_from_spec(_spec)
    _spec.loader.exec_module(it)

BIN = it.BIN
N_INGRESS, N_WORKERS = 2, 3
LEASE_SECONDS = 3
CONCURRENCY = 10  # deliveries at once per worker
# A node not ready this long while Redis answers PING is stuck (see Cluster.check_ready).
STALL_SECONDS = 10.0
SHARDS = 128

# Recipient domains and what their sinks do.
ACCEPT_DOMAINS = ("a.test", "b.test")  # one sink, two domains: two jobs per message
FLAKY_DOMAIN = "c.test"               # its sink answers 451 to a share of RCPTs
PERM_DOMAIN = "perm.test"             # its sink answers 550 to everyone: bounces
SENDER_DOMAIN = "origin.test"         # where bounces go
NOBODY = "nobody"                     # in a.test: a user that does not exist (550)
FLAKY_SHARE = 0.3

SANITIZER_MARKS = ("ERROR: AddressSanitizer", "ERROR: LeakSanitizer", "runtime error:",
                   "ERROR: UndefinedBehaviorSanitizer")


def utc(t=None):
    """A wall-clock stamp in the format of sealpost's log lines (UTC)."""
    t = time.time() if t is None else t
    return datetime.fromtimestamp(t, timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3]


def epoch(stamp):
    """The time.time() of a utc() stamp."""
    return datetime.fromisoformat(stamp).replace(tzinfo=timezone.utc).timestamp()


def env_number(name, default, kind=float):
    value = os.environ.get(name)
    return kind(value) if value not in (None, "") else default



def redis_answers(port, timeout=0.5):
    """Whether a redis-server answers PING (so it has loaded its data)."""
    try:
        c = it.redis_py.Redis(port=port, socket_timeout=timeout, socket_connect_timeout=timeout)
        try:
            return c.ping()
        finally:
            c.close()
    except it.redis_py.RedisError:
        return False

class Settings:
    def __init__(self, seconds=None, rate=None, kills=None, seed=None, drain=None, clients=None):
        self.seconds = seconds if seconds is not None else env_number("CHAOS_SECONDS", 40.0)
        self.rate = rate if rate is not None else env_number("CHAOS_RATE", 20.0)
        default_kills = max(4, int(round(self.seconds / 25)))
        self.kills = kills if kills is not None else env_number("CHAOS_KILLS", default_kills, int)
        self.seed = seed if seed is not None else env_number(
            "CHAOS_SEED", random.SystemRandom().randrange(1 << 30), int)
        self.drain = drain if drain is not None else env_number(
            "CHAOS_DRAIN_SECONDS", max(60.0, self.seconds / 2))
        self.clients = clients if clients is not None else env_number("CHAOS_CLIENTS", 4, int)


# ---------------------------------------------------------------- the cluster

class Cluster:
    """redis-server, the sinks, 2 ingress nodes and 3 workers, each of which
    can be SIGKILLed and started again on the same port and data."""

    def __init__(self, tmp: Path, rng: random.Random):
        self.tmp = tmp
        self.rng = rng
        self.redis = it.RedisServer(tmp)
        self.good = it.Sink()          # a.test, b.test
        self.flaky = it.Sink()         # c.test
        self.perm = it.Sink()          # perm.test
        self.bounces = it.Sink()       # origin.test
        self.flaky_lock = threading.Lock()
        self.flaky_rng = random.Random(rng.random())
        self.good.rcpt_reply = self._good_reply
        self.flaky.rcpt_reply = self._flaky_reply
        self.perm.rcpt_reply = lambda addr: "550 5.1.1 no mailbox here"
        self.ingress_ports = [it.free_port() for _ in range(N_INGRESS)]
        self.ingress = []
        self.workers = []
        self.lock = threading.Lock()  # the driver and the watchdog both start processes
        self.expected_down = set()    # names of the processes the driver took down
        self.crashes = []             # (name, exit code, log tail): deaths nobody asked for
        self.unready = {}             # name -> (since, monotonic) while not ready, Redis up
        self.stalls = {}              # (name, start utc) -> seconds: not ready too long
        self.longest_unready = Counter()

    @staticmethod
    def _good_reply(addr):
        if addr.split("@")[0].startswith(NOBODY):
            return "550 5.1.1 <%s>: no such user" % addr
        return None

    def _flaky_reply(self, addr):
        with self.flaky_lock:
            if self.flaky_rng.random() < FLAKY_SHARE:
                return "451 4.3.2 try again later"
        return None

    def config(self, name, listen_port, metrics_port):
        routes = "\n".join(
            [f"{d} = 127.0.0.1:{self.good.port}" for d in ACCEPT_DOMAINS]
            + [f"{FLAKY_DOMAIN} = 127.0.0.1:{self.flaky.port}",
               f"{PERM_DOMAIN} = 127.0.0.1:{self.perm.port}",
               f"{SENDER_DOMAIN} = 127.0.0.1:{self.bounces.port}"])
        domains = " ".join(ACCEPT_DOMAINS + (FLAKY_DOMAIN, PERM_DOMAIN, SENDER_DOMAIN))
        return f"""
[redis]
url = redis://127.0.0.1:{self.redis.port}
timeout_ms = 1000

[ingress]
listen = 127.0.0.1:{listen_port}
hostname = {name}.sealpost.test
relay_domains = {domains}

[worker]
helo_name = {name}.sealpost.test
concurrency = {CONCURRENCY}
lease_seconds = {LEASE_SECONDS}
min_backoff = 1
max_backoff = 2
connect_timeout = 5
command_timeout = 10
stop_grace = 2

[routes]
{routes}

[seal]
keys = {it.SEAL_KEY}

[metrics]
listen = 127.0.0.1:{metrics_port}

[log]
level = info
"""

    def start(self):
        self.redis.start()
        for s in (self.good, self.flaky, self.perm, self.bounces):
            s.start()
        for i, port in enumerate(self.ingress_ports):
            mport = it.free_port()
            p = it.Sealpost(self.tmp, f"ingress{i}", self.config(f"ingress{i}", port, mport),
                            "ingress")
            p.name, p.port, p.metrics_port = f"ingress{i}", port, mport
            self.ingress.append(p)
        for i in range(N_WORKERS):
            # a worker's config names an ingress port nobody uses: it only needs [worker]
            mport = it.free_port()
            p = it.Sealpost(self.tmp, f"worker{i}",
                            self.config(f"worker{i}", it.free_port(), mport), "worker")
            p.name, p.port, p.metrics_port = f"worker{i}", None, mport
            self.workers.append(p)
        for p in self.ingress:
            self._launch(p)
        for p in self.workers:
            self._launch(p)
        for p in self.ingress:
            it.wait_for(lambda: it.port_open("127.0.0.1", p.port) or p.proc.poll() is not None,
                        timeout=30, what=f"{p.name} to listen")
            assert p.proc.poll() is None, p.read_log()[-3000:]
        for p in self.workers:
            it.wait_for(lambda: "event=worker_started" in p.read_log() or p.proc.poll() is not None,
                        timeout=30, what=f"{p.name} to start")
            assert p.proc.poll() is None, p.read_log()[-3000:]

    def _launch(self, p):
        with open(p.log_path, "ab") as f:
            f.write(f"=== chaos: start at {utc()} ===\n".encode())
        p.start()  # no waiting: with Redis down it keeps polling before it listens

    def processes(self):
        return self.ingress + self.workers

    # -- the driver's side

    def kill(self, p):
        with self.lock:
            self.expected_down.add(p.name)
            p.kill()
            if p.log and not p.log.closed:
                p.log.close()

    def restart(self, p):
        with self.lock:
            self._launch(p)
            self.expected_down.discard(p.name)

    def kill_redis(self):
        with self.lock:
            self.expected_down.add("redis")
            self.redis.proc.kill()
            self.redis.proc.wait(10)

    def restart_redis(self):
        with self.lock:
            self.redis.start()  # same port, same dir: the AOF is read back
            self.expected_down.discard("redis")

    # -- the watchdog's side

    def check_alive(self):
        """Records and restarts any process that died without being killed."""
        with self.lock:
            for p in self.processes():
                if p.name in self.expected_down or p.proc is None:
                    continue
                code = p.proc.poll()
                if code is not None:
                    if p.log and not p.log.closed:
                        p.log.close()
                    tail = p.read_log()[-6000:]
                    self.crashes.append((p.name, code, utc(), tail))
                    print(f"[{utc()}] !!! {p.name} died on its own (exit {code}); restarting",
                          flush=True)
                    self._launch(p)
            if "redis" not in self.expected_down and self.redis.proc.poll() is not None:
                self.crashes.append(("redis", self.redis.proc.returncode, utc(),
                                     (self.redis.dir / "redis.log").read_text()[-4000:]))
                self.redis.start()

    def redis_answers(self):
        """Whether redis-server runs and has its data loaded (PING, not -LOADING)."""
        return "redis" not in self.expected_down and redis_answers(self.redis.port)

    @staticmethod
    def ready(p):
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{p.metrics_port}/readyz",
                                        timeout=2) as resp:
                return resp.status == 200
        except (OSError, ValueError):
            return False

    def check_ready(self):
        """A node may be not ready while Redis is down or while it starts; one
        that stays not ready for STALL_SECONDS while Redis answers is stuck:
        the ingress refuses every client, the worker delivers nothing."""
        redis_ok = self.redis_answers()
        now = time.monotonic()
        for p in self.processes():
            with self.lock:
                running = p.name not in self.expected_down and p.proc and p.proc.poll() is None
            if not running or not redis_ok:
                self.unready.pop(p.name, None)
                continue
            if self.ready(p):
                self.unready.pop(p.name, None)
                continue
            since = self.unready.setdefault(p.name, (utc(), now))
            took = now - since[1]
            self.longest_unready[p.name] = max(self.longest_unready[p.name], took)
            if took > STALL_SECONDS:
                first = (p.name, since[0]) not in self.stalls
                self.stalls[(p.name, since[0])] = took
                if first:
                    print(f"[{utc()}] !!! {p.name} not ready for {took:.0f}s while Redis answers "
                          f"(since {since[0]})", flush=True)

    def queue_stats(self):
        out = subprocess.run([BIN, "queue", "stats", "--json", "-c", str(self.workers[0].path)],
                             capture_output=True, text=True, timeout=30)
        if out.returncode != 0:
            return None
        return json.loads(out.stdout)

    def queue_cli(self, *args):
        out = subprocess.run([BIN, "queue", *args, "-c", str(self.workers[0].path)],
                             capture_output=True, text=True, timeout=60)
        return out.stdout + out.stderr

    def stop_all(self):
        """SIGTERM every sealpost process; returns {name: (exit code, problem or None)}."""
        results = {}
        for p in self.processes():
            try:
                code = p.stop(timeout=20)
                problem = None if code == 0 else f"exit {code}"
            except AssertionError as e:
                code, problem = None, str(e)
            results[p.name] = (code, problem)
        return results

    def sanitizer_reports(self):
        found = []
        for p in self.processes():
            log = p.read_log()
            for mark in SANITIZER_MARKS:
                at = log.find(mark)
                if at >= 0:
                    found.append((p.name, log[max(0, at - 500):at + 4000]))
                    break
        return found

    def close(self):
        for p in self.processes():
            p.kill()
        self.redis.stop()
        for s in (self.good, self.flaky, self.perm, self.bounces):
            try:
                s.stop()
            except Exception:  # noqa: BLE001 - best effort on the way out
                pass


# ---------------------------------------------------------------- the load

class Record:
    __slots__ = ("token", "sender", "rcpts", "accepted", "outcome", "reply", "qid", "ingress",
                 "t0", "t1", "body")

    def __init__(self, token, sender, rcpts, ingress, body):
        self.token, self.sender, self.rcpts, self.ingress = token, sender, rcpts, ingress
        self.accepted = []
        self.outcome = None  # "250", "4xx", "5xx", "noreply"
        self.reply = ""
        self.qid = None
        self.t0 = time.time()
        self.t1 = None
        self.body = body


QUEUED = re.compile(r"queued as (\S+)")


class Load:
    """Client threads that send through both ingress nodes with smtplib and
    record, per message, what the server answered."""

    def __init__(self, cluster, settings, rng):
        self.cluster = cluster
        self.settings = settings
        self.rng = rng
        self.records = []
        self.lock = threading.Lock()
        self.connect_failures = 0
        self.timeouts = 0
        self.stop = threading.Event()
        self.seq = 0
        self.run_id = "%08x" % rng.randrange(1 << 32)

    def recipients(self, rng, n):
        """1 to 4 recipients over the domains; every address is unique to its message."""
        out = []
        choices = [ACCEPT_DOMAINS[0], ACCEPT_DOMAINS[1], FLAKY_DOMAIN, PERM_DOMAIN]
        for i in range(rng.randint(1, 4)):
            domain = rng.choice(choices)
            local = f"u{n}x{i}"
            if domain == ACCEPT_DOMAINS[0] and rng.random() < 0.1:
                local = f"{NOBODY}{n}x{i}"
            out.append(f"{local}@{domain}")
        # a.test most of the time, so a 550 and a 250 often share one transaction
        if rng.random() < 0.5:
            out.append(f"u{n}x9@{ACCEPT_DOMAINS[0]}")
        return out

    def next_token(self):
        with self.lock:
            self.seq += 1
            return self.seq

    def message(self, token, sender, rcpts, rng):
        body = f"chaos body {token}\r\n" + "".join(
            f"line {i} {rng.randrange(1 << 30):08x}\r\n" for i in range(rng.randint(1, 40)))
        head = (f"From: <{sender}>\r\nTo: {', '.join('<%s>' % r for r in rcpts)}\r\n"
                f"Subject: chaos {token}\r\nX-Chaos-Token: {token}\r\n"
                f"Message-ID: <{token}@{SENDER_DOMAIN}>\r\n\r\n")
        return (head + body).encode(), body.encode()

    def client(self, seed):
        rng = random.Random(seed)
        per_second = self.settings.rate / self.settings.clients
        next_at = time.monotonic()
        while not self.stop.is_set():
            which = rng.randrange(N_INGRESS)
            port = self.cluster.ingress_ports[which]
            try:
                s = smtplib.SMTP("127.0.0.1", port, timeout=20)
                code, _ = s.ehlo("client.chaos.test")
                if code != 250:  # a node not ready says so in its greeting or here
                    s.close()
                    raise smtplib.SMTPResponseException(code, "EHLO refused")
            except (OSError, smtplib.SMTPException):
                with self.lock:
                    self.connect_failures += 1
                time.sleep(0.1)
                continue
            try:
                for _ in range(rng.randint(1, 5)):
                    if self.stop.is_set():
                        break
                    next_at = max(next_at + 1.0 / per_second, time.monotonic() - 1.0)
                    delay = next_at - time.monotonic()
                    if delay > 0:
                        time.sleep(delay)
                    if not self.send_one(s, rng, which):
                        break
                else:
                    try:
                        s.quit()
                    except (OSError, smtplib.SMTPException):
                        pass
            finally:
                try:
                    s.close()
                except OSError:
                    pass

    def send_one(self, s, rng, which):
        """One transaction on an open session; False when the session is gone."""
        n = self.next_token()
        token = f"{self.run_id}-{n}"
        sender = f"s{n}@{SENDER_DOMAIN}"
        rcpts = self.recipients(rng, n)
        content, body = self.message(token, sender, rcpts, rng)
        rec = Record(token, sender, rcpts, f"ingress{which}", body)
        with self.lock:
            self.records.append(rec)
        try:
            code, reply = s.mail(sender)
            if code != 250:
                return self.refused(s, rec, code, reply)
            for r in rcpts:
                code, reply = s.rcpt(r)
                if code // 100 == 2:
                    rec.accepted.append(r)
                elif code == 421 or code < 400:
                    return self.refused(s, rec, code, reply, session_over=True)
            if not rec.accepted:
                return self.refused(s, rec, code, reply)
            try:
                code, reply = s.data(content)
            except smtplib.SMTPDataError as e:  # no 354
                return self.refused(s, rec, e.smtp_code, e.smtp_error)
            rec.t1 = time.time()
            rec.reply = f"{code} {reply.decode(errors='replace')}"
            if code == 250:
                rec.outcome = "250"
                m = QUEUED.search(rec.reply)
                rec.qid = m.group(1) if m else None
                return True
            rec.outcome = "5xx" if code >= 500 else "4xx"
            return code != 421
        except (OSError, smtplib.SMTPException) as e:
            rec.t1 = time.time()
            rec.outcome = "noreply"
            rec.reply = repr(e)
            if isinstance(e, socket.timeout):
                with self.lock:
                    self.timeouts += 1
            return False

    @staticmethod
    def refused(s, rec, code, reply, session_over=False):
        rec.t1 = time.time()
        rec.outcome = "5xx" if code >= 500 else "4xx"
        if isinstance(reply, bytes):
            reply = reply.decode(errors="replace")
        rec.reply = f"{code} {reply}"
        if session_over or code == 421:
            return False
        try:
            s.rset()
            return True
        except (OSError, smtplib.SMTPException):
            return False

    def run(self):
        threads = [threading.Thread(target=self.client, args=(self.rng.random(),), daemon=True)
                   for _ in range(self.settings.clients)]
        for t in threads:
            t.start()
        return threads


# ---------------------------------------------------------------- the driver

class Driver:
    """At random moments in the load phase: SIGKILL one process of a kind and
    start it again after a random pause. Each kind (worker, ingress, redis)
    has its own schedule and thread, so kills of different kinds may overlap
    (a worker restarting while Redis is down). Every kill is printed with a
    UTC timestamp comparable with the ts= of sealpost's logs."""

    KINDS = ("worker", "ingress", "redis")
    DOWN = {"worker": (0.0, 2.0), "ingress": (0.0, 2.0), "redis": (0.3, 3.0)}

    def __init__(self, cluster, settings, rng, t_start):
        self.cluster = cluster
        span = max(settings.seconds - 3.0, 1.5)
        self.plans = {kind: (random.Random(rng.random()),
                             sorted(rng.uniform(1.0, span) for _ in range(settings.kills)))
                      for kind in self.KINDS}
        self.t_start = t_start
        self.log = []  # (utc, kind, name, down seconds)
        self.kills = Counter()
        self.lock = threading.Lock()
        self.stop_flag = threading.Event()
        self.errors = []
        self.threads = [threading.Thread(target=self.run, args=(kind,), daemon=True)
                        for kind in self.KINDS]

    def start(self):
        for t in self.threads:
            t.start()

    def join(self, timeout):
        for t in self.threads:
            t.join(timeout)

    def run(self, kind):
        try:
            self.run_plan(kind)
        except Exception as e:  # noqa: BLE001 - reported as a failure of the run
            self.errors.append(f"the {kind} driver failed: {e!r}")
            print(f"[{utc()}] !!! the {kind} driver failed: {e!r}", flush=True)

    def run_plan(self, kind):
        rng, times = self.plans[kind]
        for at in times:
            wait = self.t_start + at - time.monotonic()
            if wait > 0 and self.stop_flag.wait(wait):
                return
            if self.stop_flag.is_set():
                return
            lo, hi = self.DOWN[kind]
            down = rng.uniform(lo, hi)
            if kind == "redis":
                name = "redis"
                stamp = utc()
                self.cluster.kill_redis()
            else:
                pool = self.cluster.workers if kind == "worker" else self.cluster.ingress
                p = rng.choice(pool)
                name = p.name
                stamp = utc()
                self.cluster.kill(p)
            print(f"[{stamp}] SIGKILL {name}; back in {down:.2f}s", flush=True)
            with self.lock:
                self.log.append((stamp, kind, name, down))
                self.kills[kind] += 1
            time.sleep(down)
            if kind == "redis":
                self.cluster.restart_redis()
            else:
                self.cluster.restart(p)
            print(f"[{utc()}] restarted {name}", flush=True)


class Watchdog(threading.Thread):
    def __init__(self, cluster):
        super().__init__(daemon=True)
        self.cluster = cluster
        self.stop_flag = threading.Event()

    def run(self):
        while not self.stop_flag.wait(0.5):
            self.cluster.check_alive()
            self.cluster.check_ready()


# ---------------------------------------------------------------- reconciling

TOKEN_HEADER = re.compile(rb"^X-Chaos-Token: (\S+)\r?$", re.M | re.I)


def parse_dsn(content):
    """(queue id, {final recipient: action}, token of the original) of a bounce."""
    msg = email.message_from_bytes(content, policy=policy.compat32)
    qid, actions, token = None, {}, None
    if msg.get_content_type() != "multipart/report":
        return qid, actions, token
    for part in msg.get_payload():
        ctype = part.get_content_type()
        if ctype == "message/delivery-status":
            blocks = part.get_payload()
            qid = blocks[0].get("X-Sealpost-Queue-ID")
            for b in blocks[1:]:
                rcpt = (b.get("Final-Recipient") or "").split(";", 1)[-1].strip()
                actions[rcpt] = (b.get("Action") or "").strip()
        elif ctype in ("text/rfc822-headers", "message/rfc822"):
            raw = part.get_payload(decode=False)
            raw = raw if isinstance(raw, str) else str(raw[0]) if raw else ""
            m = re.search(r"^X-Chaos-Token: (\S+)", raw, re.M | re.I)
            token = m.group(1) if m else None
    return qid, actions, token


class Result:
    pass


def reconcile(cluster, load):
    r = Result()
    by_token = {rec.token: rec for rec in load.records}
    delivered = Counter()   # (token, rcpt) -> deliveries
    bounced = Counter()     # (token, rcpt) -> failure reports
    r.corrupted = []        # (token, rcpt): delivered, but not the body that was sent
    r.phantoms = []         # deliveries of tokens nobody sent
    r.bad_bounces = []      # bounces that do not parse or name the wrong message
    transactions = []       # (time stored, HELO name, what it delivered), for it.repeats
    for sink in (cluster.good, cluster.flaky, cluster.perm):
        with sink.lock:
            messages = list(zip(sink.messages, sink.arrivals))
        for (mail_from, rcpts, content), (at, helo) in messages:
            m = TOKEN_HEADER.search(content)
            token = m.group(1).decode() if m else None
            rec = by_token.get(token)
            if rec is None:
                r.phantoms.append((mail_from, rcpts, content[:300]))
                continue
            if rec.body not in content:
                r.corrupted.extend((token, x) for x in rcpts)
            for x in rcpts:
                delivered[(token, x)] += 1
            transactions.append((at, helo, [("delivered", token, x) for x in rcpts]))
    with cluster.bounces.lock:
        bounce_msgs = list(zip(cluster.bounces.messages, cluster.bounces.arrivals))
    r.bounce_messages = len(bounce_msgs)
    for (mail_from, rcpts, content), (at, helo) in bounce_msgs:
        if mail_from not in ("", "<>"):
            r.bad_bounces.append(("not from the null sender", mail_from, content[:300]))
            continue
        qid, actions, token = parse_dsn(content)
        rec = by_token.get(token)
        if rec is None:
            r.bad_bounces.append(("no known token", qid, content[:600]))
            continue
        if rcpts != [rec.sender]:
            r.bad_bounces.append(("sent to the wrong address", rcpts, rec.sender))
        if rec.qid and qid != rec.qid:
            r.bad_bounces.append(("queue id differs from the 250", qid, rec.qid))
        for rcpt, action in actions.items():
            if action == "failed":
                bounced[(token, rcpt)] += 1
        transactions.append((at, helo, [("bounced", token, x)
                                        for x, action in actions.items() if action == "failed"]))

    r.sent = len(load.records)
    r.outcomes = Counter(rec.outcome or "unfinished" for rec in load.records)
    r.acked = [rec for rec in load.records if rec.outcome == "250"]
    r.ack_rcpts = sum(len(rec.accepted) for rec in r.acked)
    r.lost = []            # (rec, rcpt): 250, and neither delivered nor bounced
    r.wrong_bounce = []    # (rec, rcpt): a deliverable recipient bounced
    r.wrong_delivery = []  # (rec, rcpt): delivered where the sink refuses
    r.delivered_rcpts = r.bounced_rcpts = 0
    for rec in r.acked:
        for x in rec.accepted:
            d, b = delivered[(rec.token, x)], bounced[(rec.token, x)]
            should_bounce = x.endswith("@" + PERM_DOMAIN) or x.startswith(NOBODY)
            if d:
                r.delivered_rcpts += 1
            elif b:
                r.bounced_rcpts += 1
            else:
                r.lost.append((rec, x))
            if b and not should_bounce:
                r.wrong_bounce.append((rec, x))
            if d and should_bounce:
                r.wrong_delivery.append((rec, x))
    r.unacked_delivered = sum(
        1 for rec in load.records if rec.outcome != "250"
        and any(delivered[(rec.token, x)] or bounced[(rec.token, x)] for x in rec.rcpts))
    # a recipient the ingress refused must never be delivered
    r.refused_rcpt_delivered = [
        (rec, x) for rec in load.records for x in rec.rcpts
        if x not in rec.accepted and rec.outcome == "250" and delivered[(rec.token, x)]]
    r.dup_deliveries = sum(c - 1 for c in delivered.values() if c > 1)
    r.dup_bounces = sum(c - 1 for c in bounced.values() if c > 1)
    r.dup_examples = [k for k, c in delivered.items() if c > 1][:5]
    r.repeats = it.repeats(transactions)  # the deliveries and bounces made again
    return r


def explain_repeats(repeats, driver):
    """Matches each repeated delivery or bounce to a kill that can have
    caused it (it.unexplained_repeats); returns (repeats left unexplained,
    the most repeats one kill of each kind explains)."""
    kills = []
    for stamp, kind, name, _ in driver.log:
        if kind == "worker":
            # A worker SIGKILLed between a final dot and its completion
            # reaching Redis: the job stays leased and is delivered again
            # once the lease runs out. Only that worker's deliveries, and at
            # most those in flight: CONCURRENCY.
            kills.append(it.Kill(epoch(stamp), f"{name}.sealpost.test", CONCURRENCY, kind))
        elif kind == "redis":
            # Redis SIGKILLed (appendfsync always: what it answered is on
            # disk, what it did not may be lost) between a worker's renewal
            # right before the dot and the completion being written: the
            # completion fails or is lost, the lease runs out, the job goes
            # again. A renewal lost with it stops the worker before its dot
            # instead, so that one is not repeated. Any worker's delivery in
            # flight: at most N_WORKERS * CONCURRENCY.
            kills.append(it.Kill(epoch(stamp), None, N_WORKERS * CONCURRENCY, kind))
        # An ingress killed after Redis stored a message but before the
        # client read its 250 causes no repeat here: the message is
        # delivered once, and the client never sends a message again (every
        # try is a new token), so it counts as "not acknowledged but
        # delivered anyway". Redis killed with a store unanswered: the same.
    left, given = it.unexplained_repeats(repeats, kills)
    most = Counter()
    for i, explained in given.items():
        most[kills[i].what] = max(most[kills[i].what], len(explained))
    return left, most


def table(r, load, driver, cluster, seconds, wall, drained_in, settings, most_repeats):
    rows = [
        ("seed", settings.seed),
        ("load phase / wall time", f"{seconds:.0f} s / {wall:.0f} s"),
        ("queue drained after load in",
         "NOT DRAINED" if drained_in is None else f"{drained_in:.1f} s"),
        ("messages sent (MAIL given)", r.sent),
        ("  acknowledged (250)", len(r.acked)),
        ("  refused 4xx", r.outcomes.get("4xx", 0)),
        ("  refused 5xx", r.outcomes.get("5xx", 0)),
        ("  no reply (connection lost/timeout)", r.outcomes.get("noreply", 0)),
        ("  of those, client timeouts", load.timeouts),
        ("  not acknowledged but delivered anyway", r.unacked_delivered),
        ("sessions refused before MAIL (node down/not ready)", load.connect_failures),
        ("recipients acknowledged", r.ack_rcpts),
        ("  delivered", r.delivered_rcpts),
        ("  bounced", r.bounced_rcpts),
        ("  LOST", len(r.lost)),
        ("bounce messages received", r.bounce_messages),
        ("duplicate deliveries", r.dup_deliveries),
        ("duplicate bounces (same recipient)", r.dup_bounces),
        ("transactions repeated (deliveries and bounces)", len(r.repeats)),
        ("  most repeats from one kill: worker / redis",
         f"{most_repeats['worker']} / {most_repeats['redis']}"),
        ("wrongly bounced / wrongly delivered", f"{len(r.wrong_bounce)} / {len(r.wrong_delivery)}"),
        ("corrupted bodies / phantom messages", f"{len(r.corrupted)} / {len(r.phantoms)}"),
        ("kills: worker / ingress / redis",
         f"{driver.kills['worker']} / {driver.kills['ingress']} / {driver.kills['redis']}"),
        ("unexpected process deaths", len(cluster.crashes)),
        ("longest not-ready with Redis up", ", ".join(
            f"{n} {cluster.longest_unready[n]:.1f}s" for n in sorted(cluster.longest_unready))
         or "-"),
        (f"nodes stuck not ready > {STALL_SECONDS:.0f}s", len(cluster.stalls)),
    ]
    width = max(len(k) for k, _ in rows)
    lines = ["", "=" * (width + 16), "chaos run"]
    lines += [f"{k:<{width}}  {v}" for k, v in rows]
    lines.append("=" * (width + 16))
    return "\n".join(lines)


NOISE = ("event=refused reason=not_ready", "event=accepted", "event=delivered", "event=bounce",
         "event=deferred")


def log_window(p, stamp, before, after):
    """The lines of a process's log from `before` seconds ahead of stamp to
    `after` seconds past it, without the per-message lines."""
    at = datetime.fromisoformat(stamp)
    lo = (at - timedelta(seconds=before)).isoformat(timespec="milliseconds")
    hi = (at + timedelta(seconds=after)).isoformat(timespec="milliseconds")
    out = []
    for ln in p.read_log().splitlines():
        ts = ln[3:26] if ln.startswith("ts=") else None
        if ts and lo <= ts <= hi and not any(n in ln for n in NOISE):
            out.append(ln)
    return out[-40:]


def evidence(cluster, driver, rec, rcpts):
    """What the logs and the queue's trace say about one message with lost recipients."""
    out = [f"--- LOST: token={rec.token} qid={rec.qid} via {rec.ingress}, sent {utc(rec.t0)} "
           f"acked {utc(rec.t1) if rec.t1 else '-'}",
           f"  lost recipients: {rcpts}; all accepted: {rec.accepted}"]
    if rec.qid:
        for p in cluster.processes():
            lines = [ln for ln in p.read_log().splitlines() if rec.qid in ln]
            if lines:
                out.append(f"  {p.name}.log:")
                out += [f"    {ln}" for ln in lines[:30]]
        out.append("  queue trace:")
        out += ["    " + ln for ln in cluster.queue_cli("trace", rec.qid).splitlines()[:30]]
    near = [f"{s} {name} (down {d:.2f}s)" for s, _, name, d in sorted(driver.log)
            if rec.t0 - 10 <= epoch(s) <= (rec.t1 or rec.t0) + 10]
    out.append("  kills from 10 s before to 10 s after: " + "; ".join(near))
    return "\n".join(out)


# ---------------------------------------------------------------- the run

def run(tmp: Path, settings: Settings, report_path=None):
    """Runs the whole thing; returns (report text, list of failures)."""
    print(f"\nchaos: seed={settings.seed} seconds={settings.seconds} rate={settings.rate}/s "
          f"kills/kind={settings.kills} clients={settings.clients} dir={tmp} bin={BIN}",
          flush=True)
    rng = random.Random(settings.seed)
    cluster = Cluster(tmp, rng)
    failures = []
    t_wall = time.monotonic()
    try:
        cluster.start()
        watchdog = Watchdog(cluster)
        watchdog.start()
        load = Load(cluster, settings, rng)
        t0 = time.monotonic()
        driver = Driver(cluster, settings, rng, t0)
        threads = load.run()
        driver.start()
        time.sleep(settings.seconds)
        load.stop.set()
        for t in threads:
            t.join(60)
        driver.stop_flag.set()
        driver.join(30)  # lets a pending restart finish
        load_end = time.monotonic()
        print(f"[{utc()}] load over: {len(load.records)} messages; waiting for the queue to drain",
              flush=True)

        # Every node up again, then the queue must empty: nothing due, scheduled or leased.
        drained_in, stats = None, None
        deadline = load_end + settings.drain
        while time.monotonic() < deadline:
            stats = cluster.queue_stats()
            if stats and stats["due"] + stats["scheduled"] + stats["leased"] == 0:
                drained_in = time.monotonic() - load_end
                break
            time.sleep(1.0)
        print(f"[{utc()}] queue: {stats}", flush=True)
        # Past a lease and a backoff: a late duplicate or a last delivery shows up now.
        time.sleep(LEASE_SECONDS + 2)
        final = cluster.queue_stats()
        # Every node ready at the end, or found stuck by the watchdog.
        end = time.monotonic() + STALL_SECONDS + 3
        while time.monotonic() < end and not all(cluster.ready(p) for p in cluster.processes()):
            time.sleep(0.5)
        watchdog.stop_flag.set()
        watchdog.join()
        cluster.check_alive()

        exits = cluster.stop_all()
        sanitizer = cluster.sanitizer_reports()
        r = reconcile(cluster, load)
        unexplained, most_repeats = explain_repeats(r.repeats, driver)
        wall = time.monotonic() - t_wall
        text = table(r, load, driver, cluster, settings.seconds, wall, drained_in, settings,
                     most_repeats)
        kills = "\n".join(f"  {s} {kind:<8} {name:<9} down {d:.2f}s"
                          for s, kind, name, d in sorted(driver.log))
        text += "\nkills (UTC):\n" + kills + "\n"
        if r.dup_examples:
            text += f"duplicate examples (token, rcpt): {r.dup_examples}\n"

        # What fails the run.
        if drained_in is None:
            failures.append(f"the queue did not drain within {settings.drain:.0f}s: {stats}")
        if final and final["held"]:
            failures.append(f"{final['held']} jobs held at the end "
                            "(neither delivered nor bounced):\n"
                            + cluster.queue_cli("list", "--state", "held")[:3000])
        if r.lost:
            queued = set()
            client = cluster.redis.client()
            for key in client.scan_iter(match="{mq:*}:m:*", count=1000):
                queued.add(key.decode().rsplit(":", 1)[-1])
            still = [(rec, x) for rec, x in r.lost if rec.qid in queued]
            gone = [(rec, x) for rec, x in r.lost if rec.qid not in queued]
            failures.append(f"{len(r.lost)} acknowledged recipients neither delivered nor bounced "
                            f"({len(gone)} of them no longer in the queue, "
                            f"{len(still)} still in it)")
            per_message = defaultdict(list)
            for rec, x in gone + still:
                per_message[rec.token].append(x)
            for token in list(per_message)[:8]:
                rec = next(rec for rec, _ in r.lost if rec.token == token)
                text += evidence(cluster, driver, rec, per_message[token]) + "\n"
        if r.wrong_bounce:
            failures.append("deliverable recipients bounced: " + ", ".join(
                f"{rec.token}/{x}" for rec, x in r.wrong_bounce[:10]))
        if r.wrong_delivery or r.refused_rcpt_delivered:
            failures.append("delivered where it must not be: " + ", ".join(
                f"{rec.token}/{x}"
                for rec, x in (r.wrong_delivery + r.refused_rcpt_delivered)[:10]))
        if r.corrupted:
            failures.append(f"{len(r.corrupted)} deliveries with a body other than the one sent: "
                            f"{r.corrupted[:5]}")
        if r.phantoms:
            failures.append(f"{len(r.phantoms)} deliveries of messages nobody sent: "
                            f"{r.phantoms[:3]}")
        if unexplained:
            failures.append(f"{len(unexplained)} deliveries or bounces made again that no kill "
                            f"explains (within {it.KILL_WINDOW:.0f}s of the copy before, at most "
                            f"one per delivery in flight): "
                            + "; ".join(f"{x['keys']} at {utc(x['at'])} by {x['helo']}, before "
                                        f"at {utc(x['before'][0])} by {x['before'][1]}"
                                        for x in unexplained[:5]))
        if r.bad_bounces:
            failures.append(f"{len(r.bad_bounces)} malformed or misaddressed bounces: "
                            f"{r.bad_bounces[:3]}")
        if len(r.acked) == 0 or r.delivered_rcpts == 0 or r.bounced_rcpts == 0:
            failures.append("the load did not exercise delivery and bounces "
                            f"(acked {len(r.acked)}, delivered {r.delivered_rcpts}, "
                            f"bounced {r.bounced_rcpts})")
        failures.extend(driver.errors)
        for kind in ("worker", "ingress", "redis"):
            if driver.kills[kind] < settings.kills:
                failures.append(
                    f"only {driver.kills[kind]} of {settings.kills} {kind} kills happened")
        if cluster.stalls:
            stalls = sorted(cluster.stalls.items(), key=lambda kv: (kv[0][1], kv[0][0]))
            msg = [f"{len(stalls)} times a node stayed not ready for more than "
                   f"{STALL_SECONDS:.0f}s although Redis answered PING (/readyz 503: an ingress "
                   f"refuses every client, a worker delivers nothing):"]
            msg += [f"  {name:<9} from {since}  for {took:.0f}s" for (name, since), took in stalls]
            (name, since), _ = stalls[0]
            p = next(p for p in cluster.processes() if p.name == name)
            msg.append(f"{name}.log around {since} (noise left out):")
            msg += ["  " + ln for ln in log_window(p, since, 5.0, 1.0)]
            failures.append("\n".join(msg))
        for name, code, when, tail in cluster.crashes:
            failures.append(f"{name} died on its own at {when} (exit {code}):\n{tail[-3000:]}")
        for name, (code, problem) in exits.items():
            if problem:
                failures.append(f"{name} did not exit cleanly on SIGTERM: {problem}\n"
                                + next(p for p in cluster.processes()
                                       if p.name == name).read_log()[-3000:])
        for name, report in sanitizer:
            failures.append(f"sanitizer report in {name}.log:\n{report}")

        text += "exit codes on SIGTERM: " + ", ".join(
            f"{n}={c}" for n, (c, _) in exits.items()) + "\n"
        text += "RESULT: " + ("PASS" if not failures else f"FAIL ({len(failures)} problems)") + "\n"
        print(text, flush=True)
        if report_path:
            Path(report_path).parent.mkdir(parents=True, exist_ok=True)
            with open(report_path, "a") as f:
                f.write(f"# {utc()} UTC\n{text}\n")
                for fl in failures:
                    f.write(f"FAILURE: {fl}\n")
        return text, failures
    finally:
        cluster.close()


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seconds", type=float, help="load phase (CHAOS_SECONDS, default 40)")
    ap.add_argument("--rate", type=float, help="messages/s offered (CHAOS_RATE, default 20)")
    ap.add_argument("--kills", type=int, help="kills per kind (CHAOS_KILLS)")
    ap.add_argument("--seed", type=int, help="random seed (CHAOS_SEED)")
    ap.add_argument("--drain", type=float, help="seconds the queue may take to empty")
    ap.add_argument("--clients", type=int, help="client threads (CHAOS_CLIENTS, default 4)")
    ap.add_argument("--dir", help="where the logs and Redis data go (kept)")
    ap.add_argument("--report", help="append the table to this file")
    a = ap.parse_args(argv)
    settings = Settings(a.seconds, a.rate, a.kills, a.seed, a.drain, a.clients)
    tmp = Path(a.dir) if a.dir else Path(tempfile.mkdtemp(prefix="sealpost-chaos-"))
    tmp.mkdir(parents=True, exist_ok=True)
    if not Path(BIN).exists():
        sys.exit(f"sealpost binary not found at {BIN}; set SEALPOST_BIN")
    _, failures = run(tmp, settings, a.report)
    for fl in failures:
        print("FAILURE:", fl)
    print(f"logs and Redis data: {tmp}")
    sys.exit(1 if failures else 0)


if __name__ == "__main__":
    main()
