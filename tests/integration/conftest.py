"""Real peers for the integration tests: redis-server, aiosmtpd sinks and the
sealpost binary itself, each started on loopback in a temporary folder and
stopped by the test that started it."""

import base64
import os
import shutil
import signal
import socket
import subprocess
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest
import redis as redis_py
from aiosmtpd.controller import Controller

ROOT = Path(__file__).resolve().parents[2]
BIN = os.environ.get("SEALPOST_BIN", str(ROOT / "build" / "sealpost"))


_given_ports = set()


def free_port(host="127.0.0.1"):
    """A port nothing listens on, and not one handed out before in this run:
    the kernel may give the same free port to two calls before either is bound."""
    while True:
        with socket.socket() as s:
            s.bind((host, 0))
            port = s.getsockname()[1]
        if port not in _given_ports:
            _given_ports.add(port)
            return port


def wait_for(predicate, timeout=20.0, interval=0.05, what="condition"):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


def port_open(host, port):
    try:
        with socket.create_connection((host, port), timeout=0.2):
            return True
    except OSError:
        return False


def readyz(port):
    """GET /readyz on a metrics port: (status, body), 503 included."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=10) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode()


class RedisServer:
    """A durable redis-server (AOF, fsync always) that can be stopped and
    started again on the same port and data."""

    def __init__(self, tmp: Path):
        self.dir = tmp / "redis"
        self.dir.mkdir()
        self.port = free_port()
        self.proc = None

    def start(self):
        self.proc = subprocess.Popen(
            ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1",
             "--dir", str(self.dir), "--appendonly", "yes", "--appendfsync", "always",
             "--save", "", "--maxmemory-policy", "noeviction",
             "--logfile", str(self.dir / "redis.log")],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wait_for(lambda: port_open("127.0.0.1", self.port), what="redis-server")
        return self

    def stop(self):
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(10)
        self.proc = None

    def client(self):
        return redis_py.Redis(port=self.port)


class Sink:
    """An aiosmtpd server that records every message; replies can be scripted
    per recipient with rcpt_reply(address) -> reply string or None."""

    def __init__(self, host="127.0.0.1", tls_context=None):
        self.host = host
        self.port = free_port(host)
        self.messages = []  # (mail_from, [rcpts], content bytes)
        self.tls = []  # per message: whether it came over STARTTLS
        # per message: (time.time() when stored, the client's HELO name), so a
        # duplicate can be traced to the process that sent the first copy
        self.arrivals = []
        self.lock = threading.Lock()
        self.rcpt_reply = lambda addr: None
        self.data_delay = 0.0
        self.rcpt_delay = 0.0
        self.controller = Controller(self, hostname=host, port=self.port,
                                     tls_context=tls_context)

    async def handle_RCPT(self, server, session, envelope, address, rcpt_options):
        if self.rcpt_delay:
            import asyncio
            await asyncio.sleep(self.rcpt_delay)
        reply = self.rcpt_reply(address)
        if reply:
            return reply
        envelope.rcpt_tos.append(address)
        return "250 2.1.5 OK"

    async def handle_DATA(self, server, session, envelope):
        if self.data_delay:
            import asyncio
            await asyncio.sleep(self.data_delay)
        with self.lock:
            self.messages.append((envelope.mail_from, list(envelope.rcpt_tos),
                                  envelope.original_content))
            self.tls.append(session.ssl is not None)
            self.arrivals.append((time.time(), session.host_name))
        return "250 2.0.0 OK"

    def count(self):
        with self.lock:
            return len(self.messages)

    def start(self):
        self.controller.start()
        return self

    def stop(self):
        self.controller.stop()


_started = []  # every Sealpost process, so a failing test cannot leave one running


@pytest.fixture(autouse=True)
def _no_leftover_processes():
    first = len(_started)
    yield
    for p in _started[first:]:
        try:
            p.stop(timeout=5)  # SIGTERM first: `up` takes its redis-server down with it
        except AssertionError:
            pass  # it ignored SIGTERM and was killed; the test itself reports that


class Sealpost:
    """One sealpost process (ingress, worker or up) with its own config."""

    def __init__(self, tmp: Path, name: str, config: str, command: str):
        self.path = tmp / f"{name}.conf"
        self.path.write_text(config)
        self.log_path = tmp / f"{name}.log"
        self.command = command
        self.proc = None
        self.log = None

    def start(self, wait_port=None):
        self.log = open(self.log_path, "ab")
        # TMPDIR: the GnuPG homes of the gateway go with the test's files,
        # even when the test kills the process.
        env = dict(os.environ, TMPDIR=str(self.path.parent))
        self.proc = subprocess.Popen([BIN, self.command, "-c", str(self.path)],
                                     stdout=self.log, stderr=subprocess.STDOUT,
                                     cwd=self.path.parent, env=env)
        _started.append(self)
        if wait_port:
            wait_for(lambda: port_open("127.0.0.1", wait_port) or self.proc.poll() is not None,
                     what=f"sealpost {self.command} on port {wait_port}")
            assert self.proc.poll() is None, self.read_log()
        return self

    def read_log(self):
        return self.log_path.read_text(errors="replace")

    def kill(self):
        if self.proc and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)

    def stop(self, timeout=20):
        """SIGTERM and wait; returns the exit code."""
        if not self.proc:
            return None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
                raise AssertionError(f"sealpost {self.command} ignored SIGTERM")
        self.log.close()
        return self.proc.returncode

    def check_clean_exit(self):
        """Stops the process and fails on a non-zero exit or a sanitizer report."""
        code = self.stop()
        log = self.read_log()
        assert "ERROR: AddressSanitizer" not in log, log[-4000:]
        assert "runtime error:" not in log, log[-4000:]
        assert code == 0, f"exit {code}\n{log[-4000:]}"


# ---- duplicate deliveries and the kills that may cause them ----
#
# Delivery is at least once: a worker SIGKILLed after it sent a final dot and
# before its completion reached Redis leaves the job leased; when the lease
# expires another worker delivers it again. Redis killed between a worker's
# renewal right before the dot (delivery/worker.c: on_gate) and the
# completion being on disk (appendfsync always) does the same, to any
# worker's job. Either way the copy before the repeat reached the next hop
# just around the kill: the dot was sent before it, and the completion would
# have followed the next hop's 250 within milliseconds. A repeat with no such
# kill is a bug.
KILL_WINDOW = 1.0  # seconds between the kill and the copy it made a repeat of


class Kill:
    """A kill that can cause repeats: of the worker whose HELO name is helo,
    or of Redis (helo None: any worker's delivery); at most `most` of them,
    the deliveries that can have been between their dot and their completion."""

    def __init__(self, t, helo, most, what):
        self.t, self.helo, self.most, self.what = t, helo, most, what

    def can_cause(self, repeat):
        return abs(self.t - repeat["before"][0]) <= KILL_WINDOW and \
            self.helo in (None, repeat["before"][1])


def repeats(transactions):
    """transactions: (time, HELO name, what it delivered: a list of keys) in
    the order the next hops stored them. Returns those that deliver a key
    again, each with the copy before ("before": time, HELO name)."""
    last, out = {}, []
    for t, helo, keys in sorted(transactions, key=lambda x: x[0]):
        again = [k for k in keys if k in last]
        if again:
            out.append({"at": t, "helo": helo, "keys": again,
                        "before": max((last[k] for k in again), key=lambda x: x[0])})
        for k in keys:
            last[k] = (t, helo)
    return out


def sink_transactions(sink, keys):
    """(time, HELO name, keys(mail_from, rcpts, content)) of each message sink stored."""
    with sink.lock:
        return [(t, helo, keys(*m)) for m, (t, helo) in zip(sink.messages, sink.arrivals)]


def unexplained_repeats(found, kills):
    """Gives each repeat a kill that can have caused it, no kill more than its
    `most`; returns (the repeats left without one, {kill index: repeats})."""
    given = {i: [] for i in range(len(kills))}

    def place(r, tried):
        for i, k in enumerate(kills):
            if i in tried or not k.can_cause(found[r]):
                continue
            tried.add(i)
            if len(given[i]) < k.most:
                given[i].append(r)
                return True
            for other in list(given[i]):
                if place(other, tried):
                    given[i].remove(other)
                    given[i].append(r)
                    return True
        return False

    left = [found[r] for r in range(len(found)) if not place(r, set())]
    return left, given


# The sealing key of the nodes the tests start with base_config ("id:base64").
SEAL_KEY = "test1:" + base64.b64encode(bytes(range(32))).decode()


def unseal(blob, mid, variant=0, key=SEAL_KEY):
    """Opens a body as the queue stores it (crypto/seal.c), independently of
    sealpost: "SPS1", id length, id, 24-octet nonce, XChaCha20-Poly1305."""
    from nacl.bindings import crypto_aead_xchacha20poly1305_ietf_decrypt
    assert blob[:4] == b"SPS1", blob[:16]
    head = 5 + blob[4]
    key_id, secret = key.split(":", 1)
    assert blob[5:head].decode() == key_id
    nonce = blob[head:head + 24]
    ad = blob[:head] + f"{mid}:{variant}".encode()
    return crypto_aead_xchacha20poly1305_ietf_decrypt(blob[head + 24:], ad, nonce,
                                                       base64.b64decode(secret))


def base_config(redis_port, listen_port, sink_port, extra=""):
    return f"""
[redis]
url = redis://127.0.0.1:{redis_port}
timeout_ms = 1000

[ingress]
listen = 127.0.0.1:{listen_port}
hostname = mx.sealpost.test
relay_domains = example.test

[worker]
lease_seconds = 3
min_backoff = 1
max_backoff = 2
connect_timeout = 5
command_timeout = 10

[routes]
example.test = 127.0.0.1:{sink_port}
origin.test = 127.0.0.1:{sink_port}

[seal]
keys = {SEAL_KEY}

[log]
level = info
{extra}
"""


def up_config(tmp, smtp_port, redis_port, sink_port, extra=""):
    """A `sealpost up` configuration: its own redis under tmp/var."""
    return f"""
[ingress]
listen = 127.0.0.1:{smtp_port}
hostname = mx.sealpost.test
[up]
data_dir = {tmp}/var
redis_port = {redis_port}
[routes]
example.test = 127.0.0.1:{sink_port}
{extra}
"""


@pytest.fixture
def redis_server(tmp_path):
    server = RedisServer(tmp_path).start()
    yield server
    server.stop()


@pytest.fixture
def sink():
    s = Sink().start()
    yield s
    s.stop()


class Stack:
    """Redis, a sink, and sealpost processes made from one configuration."""

    def __init__(self, tmp, redis_server, sink):
        self.tmp = tmp
        self.redis = redis_server
        self.sink = sink
        self.smtp_port = free_port()
        self.procs = []
        self.engine = None  # [crypto] openpgp_engine, when a test runs on each (openpgp_engine)

    def config(self, extra=""):
        if self.engine:  # a second [crypto] section adds to the first
            extra += f"\n[crypto]\nopenpgp_engine = {self.engine}\n"
        return base_config(self.redis.port, self.smtp_port, self.sink.port, extra)

    def ingress(self, extra="", name="ingress"):
        p = Sealpost(self.tmp, name, self.config(extra), "ingress").start(self.smtp_port)
        self.procs.append(p)
        wait_for(lambda: "event=queue_ready" in p.read_log(), what="ingress to reach redis")
        return p

    def worker(self, extra="", name=None):
        name = name or f"worker{len(self.procs)}"
        p = Sealpost(self.tmp, name, self.config(extra), "worker").start()
        self.procs.append(p)
        # Until then a SIGTERM would find no handler and kill it outright.
        wait_for(lambda: "event=worker_started" in p.read_log() or p.proc.poll() is not None,
                 what="the worker to start")
        return p

    def close(self):
        for p in self.procs:
            p.kill()


@pytest.fixture
def stack(tmp_path, redis_server, sink):
    st = Stack(tmp_path, redis_server, sink)
    yield st
    st.close()


# ---- the OpenPGP engines ----

ENGINES = ("gpgme", "rnp")


@pytest.fixture(params=ENGINES)
def openpgp_engine(request, stack):
    """Runs a test once per OpenPGP engine: every node the stack starts has
    [crypto] openpgp_engine set to it. With rnp, no encryption may have run
    gpg: no node made the per-thread GnuPG homes' parent anywhere under the
    test's folder (`keys import` reads keys with gpg in a throw-away home of
    another name)."""
    stack.engine = request.param
    yield request.param
    if request.param == "rnp":
        assert not list(stack.tmp.rglob("sealpost-gnupg-*")), "rnp engine made GnuPG homes"
        for p in stack.procs:
            if p.command in ("ingress", "up"):
                assert "event=openpgp_engine engine=rnp" in p.read_log()


@pytest.fixture
def clean_exit(stack):
    """After the test: every sealpost process stops cleanly on SIGTERM, with no
    sanitizer report in its log. A module asks for it with
    pytestmark = pytest.mark.usefixtures("clean_exit")."""
    yield
    for p in stack.procs:
        p.check_clean_exit()


def pytest_configure(config):
    if not Path(BIN).exists():
        raise pytest.UsageError(f"sealpost binary not found at {BIN}; run `make` first")
    if not shutil.which("redis-server"):
        raise pytest.UsageError("redis-server not found; run `make setup`")


def start_dnsmasq(port, records):
    """dnsmasq answering for *.test only (NXDOMAIN for the rest) on loopback."""
    if not shutil.which("dnsmasq"):
        pytest.fail("dnsmasq not installed; run `make setup`")
    proc = subprocess.Popen(
        ["dnsmasq", "--no-daemon", "--conf-file=/dev/null", f"--port={port}",
         "--listen-address=127.0.0.1", "--bind-interfaces", "--no-resolv", "--no-hosts",
         "--local=/test/", "--pid-file=", *records],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    time.sleep(0.3)
    assert proc.poll() is None, "dnsmasq did not start"
    return proc


# ---- Redis Cluster ----

def cluster_port():
    """A free port whose cluster bus port (port + 10000) is free too."""
    while True:
        port = free_port()
        if port + 10000 <= 65535 and not port_open("127.0.0.1", port + 10000):
            return port


class RedisCluster:
    """Cluster-enabled redis-servers (AOF, fsync always) on loopback, joined
    with `redis-cli --cluster create`: `masters` masters, each with
    `replicas` replicas. Any node can be SIGKILLed and started again on its
    port, data and nodes.conf, as after a crash."""

    def __init__(self, tmp, masters=3, replicas=0, node_timeout_ms=2000):
        self.tmp = tmp
        self.replicas = replicas
        self.node_timeout_ms = node_timeout_ms
        self.ports = [cluster_port() for _ in range(masters * (1 + replicas))]
        self.procs = {}  # port -> Popen

    def _launch(self, port):
        d = self.tmp / f"redis-{port}"
        d.mkdir(exist_ok=True)
        self.procs[port] = subprocess.Popen(
            ["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--dir", str(d),
             "--cluster-enabled", "yes", "--cluster-config-file", f"nodes-{port}.conf",
             "--cluster-node-timeout", str(self.node_timeout_ms), "--appendonly", "yes",
             "--appendfsync", "always", "--save", "", "--maxmemory-policy", "noeviction",
             "--logfile", str(d / "redis.log")],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wait_for(lambda: port_open("127.0.0.1", port), what=f"redis {port}")

    def start(self):
        for port in self.ports:
            self._launch(port)
        subprocess.run(["redis-cli", "--cluster", "create",
                        *[f"127.0.0.1:{p}" for p in self.ports],
                        "--cluster-replicas", str(self.replicas), "--cluster-yes"],
                       check=True, capture_output=True, timeout=60)
        for c in self.clients():
            wait_for(lambda c=c: c.cluster("INFO")["cluster_state"] == "ok",
                     what="cluster_state:ok")
        # each node's view names every replica (gossip may lag the create)
        n_replicas = len(self.ports) // (1 + self.replicas) * self.replicas
        for via in self.ports:
            wait_for(lambda v=via: sum("slave" in f for f, _ in self.nodes(v).values())
                     == n_replicas, what=f"node {via} to see {n_replicas} replicas")
        for port in self.replica_ports():
            wait_for(lambda p=port: self.link_up(p), what=f"replica {port} in sync")
        return self

    def alive(self, port):
        return port in self.procs and self.procs[port].poll() is None

    def clients(self):
        return [redis_py.Redis(port=p) for p in self.ports if self.alive(p)]

    def node_id(self, port):
        return redis_py.Redis(port=port).execute_command("CLUSTER", "MYID").decode()

    def owner(self, slot):
        """The port of the master serving slot."""
        via = next(p for p in self.ports if self.alive(p))
        for start, end, master, *_ in redis_py.Redis(port=via).execute_command(
                "CLUSTER", "SLOTS"):
            if start <= slot <= end:
                return int(master[1])
        raise AssertionError(f"slot {slot} has no master")

    def nodes(self, via=None):
        """CLUSTER NODES as seen by via (else any live node): port ->
        (flags, the master's port or None)."""
        via = via or next(p for p in self.ports if self.alive(p))
        text = redis_py.Redis(port=via).execute_command("CLUSTER", "NODES")
        text = text.decode() if isinstance(text, bytes) else text
        rows = [ln.split() for ln in text.splitlines() if ln.strip()]
        port_of = {r[0]: int(r[1].split("@")[0].rsplit(":", 1)[1]) for r in rows}
        return {port_of[r[0]]: (set(r[2].split(",")), port_of.get(r[3])) for r in rows}

    def master_ports(self):
        return sorted(p for p, (flags, _) in self.nodes().items()
                      if "master" in flags and "fail" not in flags)

    def replica_ports(self):
        return sorted(p for p, (flags, _) in self.nodes().items() if "slave" in flags)

    def link_up(self, port):
        """A replica connected to its master and in sync."""
        try:
            info = redis_py.Redis(port=port, socket_timeout=1).info("replication")
        except redis_py.RedisError:
            return False
        return info.get("role") == "slave" and info.get("master_link_status") == "up"

    def kill(self, port):
        self.procs[port].kill()
        self.procs[port].wait(10)

    def restart(self, port):
        self._launch(port)

    def move(self, port):
        """Stops the node on port and starts it again, data and identity
        kept, on a new port, as a pod comes back at a new address. The
        others learn the address from its gossip. Returns the new port."""
        new = cluster_port()
        proc = self.procs.pop(port)
        proc.terminate()
        proc.wait(10)
        old_dir, new_dir = self.tmp / f"redis-{port}", self.tmp / f"redis-{new}"
        shutil.copytree(old_dir, new_dir)
        (new_dir / f"nodes-{port}.conf").rename(new_dir / f"nodes-{new}.conf")
        self.ports[self.ports.index(port)] = new
        self._launch(new)
        return new

    def stop(self):
        for p in self.procs.values():
            if p.poll() is None:
                p.terminate()
        for p in self.procs.values():
            p.wait(10)
