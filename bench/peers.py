"""What the benchmarks share: ports, the servers under test and their peers
(sealpost with Redis, a private Postfix, Haraka from npm, smtp-sink), each
started on loopback in a temporary folder, and the meters that read a
server's CPU time and memory from /proc.

Postfix and Haraka are set up the way their own documentation describes a
relay that accepts mail for a domain and either throws it away after queueing
(accept) or forwards it to a next hop (relay)."""

import base64
import contextlib
import os
import shutil
import signal
import socket
import statistics
import subprocess
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
CACHE = Path(os.environ.get("SEALPOST_BENCH_CACHE", Path.home() / ".cache" / "sealpost-bench"))
HARAKA_VERSION = "3"


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_port(port, timeout=30):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return
        except OSError:
            time.sleep(0.05)
    raise SystemExit(f"nothing listens on {port}")


def percentile(values, p):
    if not values:
        return float("nan")
    values = sorted(values)
    return values[min(len(values) - 1, int(len(values) * p / 100))]


def emit(text, out=None):
    """Prints a result table and appends it to the results file, if any."""
    print(text)
    if out:
        with open(out, "a") as f:
            f.write(text + "\n")


def summary(values):
    """(median, min, max)"""
    return statistics.median(values), min(values), max(values)


@contextlib.contextmanager
def workdir():
    """A temporary folder (open to Postfix's own user, which runs in it) and
    a dict for what is started there: everything in the dict is stopped and
    the folder removed at the end, whatever happened."""
    tmp = Path(tempfile.mkdtemp(prefix="sealpost-bench-"))
    shutil.chown(tmp, "postfix")
    tmp.chmod(0o755)
    running = {}
    try:
        yield tmp, running
    finally:
        for thing in reversed(list(running.values())):
            thing.stop()
        shutil.rmtree(tmp, ignore_errors=True)


# ---- reading a server's cost from /proc ----

CLOCK = os.sysconf("SC_CLK_TCK")


def _children():
    """pid -> child pids, for every process."""
    kids = {}
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        try:
            with open(f"/proc/{d}/stat") as f:
                ppid = int(f.read().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            continue
        kids.setdefault(ppid, []).append(int(d))
    return kids


def tree(pids):
    """The pids and all their descendants."""
    kids, out, todo = _children(), [], list(pids)
    while todo:
        p = todo.pop()
        out.append(p)
        todo += kids.get(p, [])
    return out


def cpu_seconds(pids):
    """CPU time of the process trees so far: the live processes' own, and
    what their exited children left in cutime/cstime when reaped."""
    total = 0
    for p in tree(pids):
        try:
            with open(f"/proc/{p}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
            total += sum(int(x) for x in fields[11:15])  # utime stime cutime cstime
        except (OSError, IndexError, ValueError):
            pass
    return total / CLOCK


def memory_bytes(pids):
    """Proportional set size (PSS) of the process trees: a page shared by n
    processes counts 1/n to each, so Postfix's or Haraka's many processes
    are not charged their shared libraries n times over."""
    total = 0
    for p in tree(pids):
        try:
            with open(f"/proc/{p}/smaps_rollup") as f:
                for line in f:
                    if line.startswith("Pss:"):
                        total += int(line.split()[1]) * 1024
                        break
        except (OSError, IndexError, ValueError):
            pass
    return total


class Meter(threading.Thread):
    """CPU seconds used by the process trees between start and stop, and
    their peak memory (PSS), sampled every 50 ms."""

    def __init__(self, pids):
        super().__init__(daemon=True)
        self.pids = pids
        self.peak = 0
        self.done = threading.Event()
        self.cpu0 = cpu_seconds(pids)

    def run(self):
        while not self.done.wait(0.05):
            self.peak = max(self.peak, memory_bytes(self.pids))

    def stop(self):
        self.done.set()
        self.join()
        self.cpu = cpu_seconds(self.pids) - self.cpu0
        return self


# ---- the client ----

def smtp_source(port, count, sessions, size, reuse, to="r@example.test", timeout=900):
    """Postfix's smtp-source sending count messages of size bytes over
    sessions parallel sessions, a new connection per message unless reuse.
    Returns (seconds, output)."""
    cmd = ["smtp-source", "-s", str(sessions), "-m", str(count), "-l", str(size),
           "-f", "s@origin.test", "-t", to, "-M", "client.bench.test"]
    if reuse:
        cmd.insert(1, "-d")
    t0 = time.monotonic()
    r = subprocess.run(cmd + [f"127.0.0.1:{port}"], capture_output=True, text=True,
                       timeout=timeout)
    took = time.monotonic() - t0
    out = r.stdout + r.stderr
    if r.returncode != 0 or "rejected" in out or "fatal" in out:
        raise RuntimeError(f"smtp-source against port {port} failed: {out[-1500:]}")
    return took, out


# ---- servers ----

class Server:
    """A server under test: its pids (for the meter) and a stop()."""

    name = "?"
    port = 0

    def __init__(self):
        self.procs = []

    def pids(self):
        return [p.pid for p in self.procs if p.poll() is None]

    def stop(self):
        for p in reversed(self.procs):
            if p.poll() is None:
                p.terminate()
        for p in reversed(self.procs):
            try:
                p.wait(15)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
        self.procs = []


class SmtpSink(Server):
    """Postfix's smtp-sink: answers everything and stores nothing, the bound;
    also the next hop of the relay benchmark, where its running counter
    (-c: "sess=.. quit=.. mesg=N") tells how many messages arrived."""

    name = "smtp-sink"

    def __init__(self, tmp):
        super().__init__()
        self.port = free_port()
        self.counter = tmp / f"smtp-sink-{self.port}.out"
        self.procs.append(subprocess.Popen(
            ["smtp-sink", "-u", "nobody", "-c", f"127.0.0.1:{self.port}", "1024"],
            stdout=open(self.counter, "wb"), stderr=subprocess.DEVNULL, cwd=tmp))
        wait_port(self.port)

    def count(self):
        """Messages received so far."""
        with open(self.counter, "rb") as f:
            f.seek(max(0, f.seek(0, 2) - 64))
            tail = f.read().rsplit(b"mesg=", 1)
        return int(tail[1].split(b"\r")[0]) if len(tail) == 2 else 0


def start_redis(tmp, fsync="always", prefix=()):
    """prefix: a command to run redis-server under (valgrind's, for
    bench/callgrind.py), which also gives it longer to start."""
    port = free_port()
    d = tmp / f"redis-{port}"
    d.mkdir()
    proc = subprocess.Popen(
        [*prefix, "redis-server", "--port", str(port), "--bind", "127.0.0.1", "--dir", str(d),
         "--appendonly", "yes", "--appendfsync", fsync, "--save", "",
         "--maxmemory-policy", "noeviction"],
        stdout=subprocess.DEVNULL)
    wait_port(port, 180 if prefix else 30)
    return proc, port


def seal_keys():
    return "b1:" + base64.b64encode(os.urandom(32)).decode()


class Sealpost(Server):
    """Redis (AOF, appendfsync always) and one sealpost ingress; with
    workers, that many delivery workers routing example.test to next_hop."""

    name = "sealpost"

    def __init__(self, tmp, build, workers=0, next_hop=None, routes=None, extra="", env=None,
                 redis_prefix=()):
        super().__init__()
        redis, redis_port = start_redis(tmp, prefix=redis_prefix)
        self.procs.append(redis)
        self.redis_port = redis_port
        self.port = free_port()
        routes = dict(routes or {})
        if next_hop:
            routes.setdefault("example.test", f"127.0.0.1:{next_hop}")
        conf = tmp / f"sealpost-{self.port}.conf"
        conf.write_text(f"""[redis]
url = redis://127.0.0.1:{redis_port}
[ingress]
listen = 127.0.0.1:{self.port}
hostname = bench.test
relay_domains = example.test probe.test
max_connections = 20000
max_connections_per_ip = 20000
[worker]
concurrency = 100
destination_concurrency = 50
[routes]
""" + "".join(f"{d} = {hp}\n" for d, hp in routes.items()) + f"""
[seal]
keys = {seal_keys()}
[log]
level = warn
{extra}
""")
        self.conf = conf
        env = dict(os.environ, TMPDIR=str(tmp), **(env or {}))
        binary = str(Path(build) / "sealpost")
        self.ingress = subprocess.Popen([binary, "ingress", "-c", str(conf)], env=env,
                                        stderr=open(tmp / f"ingress-{self.port}.log", "wb"))
        self.procs.append(self.ingress)
        wait_port(self.port)
        for i in range(workers):
            self.procs.append(subprocess.Popen(
                [binary, "worker", "-c", str(conf)], env=env,
                stderr=open(tmp / f"worker-{self.port}-{i}.log", "wb")))
        time.sleep(0.5)  # the library loaded, the workers claiming


POSTFIX_MASTER = """\
{port} inet n - n - - smtpd
pickup    unix  n - n 60 1 pickup
cleanup   unix  n - n -  0 cleanup
qmgr      unix  n - n 300 1 qmgr
rewrite   unix  - - n -  - trivial-rewrite
bounce    unix  - - n -  0 bounce
defer     unix  - - n -  0 bounce
trace     unix  - - n -  0 bounce
verify    unix  - - n -  1 verify
flush     unix  n - n 1000? 0 flush
proxymap  unix  - - n -  - proxymap
smtp      unix  - - n -  - smtp
relay     unix  - - n -  - smtp
showq     unix  n - n -  - showq
error     unix  - - n -  - error
retry     unix  - - n -  - error
discard   unix  - - n -  - discard
anvil     unix  - - n -  1 anvil
scache    unix  - - n -  1 scache
postlog   unix-dgram n - n - 1 postlogd
"""


class Postfix(Server):
    """A private Postfix instance (its own config, queue and log under tmp)
    on a high port: queues to disk as always, then discards (accept) or
    relays to next_hop (relay) with up to 50 connections to it from the start,
    as the sealpost worker of the benchmark may open. Needs root, as Postfix
    does."""

    name = "postfix"

    def __init__(self, tmp, next_hop=None, routes=None):
        super().__init__()
        self.port = free_port()
        self.dir = tmp / f"postfix-{self.port}"
        for sub in ("etc", "spool", "data"):
            (self.dir / sub).mkdir(parents=True)
        shutil.chown(self.dir / "data", "postfix")
        transport = ""
        if next_hop:
            transport = "\n".join(f"{d} smtp:[127.0.0.1]:{hp.split(':')[1]}"
                                  for d, hp in (routes or {}).items())
            transport += f"\nexample.test smtp:[127.0.0.1]:{next_hop}\n"
            (self.dir / "etc" / "transport").write_text(transport)
        (self.dir / "etc" / "main.cf").write_text(f"""\
compatibility_level = 3.6
queue_directory = {self.dir}/spool
data_directory = {self.dir}/data
mail_owner = postfix
setgid_group = postdrop
myhostname = postfix.bench.test
mydestination =
inet_interfaces = 127.0.0.1
inet_protocols = ipv4
mynetworks = 127.0.0.0/8
relay_domains = example.test probe.test
smtpd_recipient_restrictions = permit_mynetworks, reject
default_process_limit = 200
smtpd_client_connection_count_limit = 0
smtpd_client_connection_rate_limit = 0
smtputf8_enable = no
biff = no
maillog_file = {self.dir}/maillog
maillog_file_prefixes = {tmp}
""" + (f"""transport_maps = texthash:{self.dir}/etc/transport
default_transport = smtp
relay_transport = smtp
default_destination_concurrency_limit = 50
initial_destination_concurrency = 50
""" if next_hop else """default_transport = discard
relay_transport = discard
"""))
        (self.dir / "etc" / "master.cf").write_text(POSTFIX_MASTER.format(port=self.port))
        conf = ["postfix", "-c", str(self.dir / "etc")]
        r = subprocess.run(conf + ["start"], capture_output=True, text=True)
        if r.returncode != 0:
            log = (self.dir / "maillog").read_text() if (self.dir / "maillog").exists() else ""
            raise RuntimeError(f"postfix did not start: {r.stderr}{log[-1500:]}")
        wait_port(self.port)
        with open(self.dir / "spool" / "pid" / "master.pid") as f:
            self.master = int(f.read().strip())

    def pids(self):
        return [self.master]

    def stop(self):
        subprocess.run(["postfix", "-c", str(self.dir / "etc"), "stop"], capture_output=True)


def haraka_bin():
    """Haraka from npm, installed once under the bench cache."""
    home = CACHE / "haraka"
    binary = home / "node_modules" / ".bin" / "haraka"
    if not binary.exists():
        home.mkdir(parents=True, exist_ok=True)
        subprocess.run(["npm", "install", "--no-audit", "--no-fund", "--prefix", str(home),
                        f"Haraka@{HARAKA_VERSION}"], check=True, capture_output=True,
                       timeout=900)
    return binary


class Haraka(Server):
    """Haraka with `nodes` worker processes (None: one process, no cluster
    master): accepting for example.test and discarding (queue/discard), or
    forwarding to next_hop (smtp_forward)."""

    name = "haraka"

    def __init__(self, tmp, nodes=2, next_hop=None, routes=None):
        super().__init__()
        self.port = free_port()
        home = tmp / f"haraka-{self.port}"
        binary = haraka_bin()
        subprocess.run([str(binary), "-i", str(home)], check=True, capture_output=True)
        cfg = home / "config"
        (cfg / "smtp.ini").write_text(f"listen=127.0.0.1:{self.port}\n" +
                                      (f"nodes={nodes}\n" if nodes else "") +
                                      "[headers]\nmax_lines=1000\n")
        (cfg / "log.ini").write_text("[main]\nlevel=warn\n")
        (cfg / "loglevel").write_text("WARN\n")
        (cfg / "host_list").write_text("example.test\nprobe.test\n")
        if next_hop:
            # Inbound mail for host_list domains, handed on by the queue hook
            # (mail from a relaying client would go to outbound's MX lookup).
            fwd = f"[main]\nhost=127.0.0.1\nport={next_hop}\nenable_tls=false\n"
            fwd += "".join(f"[{d}]\nhost=127.0.0.1\nport={hp.split(':')[1]}\n"
                           for d, hp in (routes or {}).items())
            (cfg / "smtp_forward.ini").write_text(fwd)
            (cfg / "plugins").write_text("rcpt_to.in_host_list\nqueue/smtp_forward\n")
        else:
            (cfg / "plugins").write_text("rcpt_to.in_host_list\nqueue/discard\n")
        env = dict(os.environ, YES_REALLY_DO_DISCARD="1")
        self.procs.append(subprocess.Popen([str(binary), "-c", str(home)], env=env,
                                           stdout=open(home / "haraka.log", "wb"),
                                           stderr=subprocess.STDOUT, start_new_session=True))
        wait_port(self.port)
        time.sleep(1 if nodes else 0.2)  # every worker process listening

    def stop(self):
        for p in self.procs:
            if p.poll() is None:
                os.killpg(p.pid, signal.SIGTERM)
        super().stop()
