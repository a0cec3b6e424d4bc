#!/usr/bin/python3
"""The compose cluster, run for real: deploy/docker-compose.yml under rootful
podman + podman-compose, driven through deploy/sealpostctl (the README's own
commands: setup, build, up, users add, keys import, metrics, status, scale,
down --volumes), with mail sent through haproxy's published ports and counted
where the demo MX files it.

    /usr/bin/python3 tests/cluster/run.py [--context DIR] [--keep]

What it checks:
  1. `docker-compose config -q` accepts the compose file;
  2. `sealpostctl up --demo` does podman's host set-up (in a containers.conf
     of its own here), makes the seal key and the certificate, brings up
     redis, haproxy, 2 ingress, 3 workers, Prometheus, the users one-shot and
     the demo MX; every sealpost replica answers /readyz and the health
     check passes (`sealpostctl status` says healthy); haproxy finds both
     ingress replicas through compose DNS;
  2b. the networks: haproxy on `front` alone, at its fixed address; the
     ingress replicas on `front` and `back`, Redis and the workers on `back`;
     haproxy cannot connect to Redis, by name or address; a PROXY header
     from another container (a worker) is an unknown command, not a client;
  2c. Redis: TLS only, no anonymous login, and the ingress's user refused
     FLUSHALL, CONFIG, KEYS, a body's GET, a policy's HSET and FUNCTION LOAD
     (redis-cli inside the redis container), the worker's refused the users;
     `queue stats` works as admin;
  3. `sealpostctl users add` and `keys import FILE` with a host file; TLS +
     AUTH through haproxy on 587 (STARTTLS, that user) and 465 (implicit TLS,
     the user of the `users` secret), and no open relay on 25;
  4. batch 1: N messages (default 500) on 25 from several threads, each one
     answered 250, each Message-ID filed by the MX; the PROXY header made the
     ingress see the real client, not haproxy;
  5. the metrics of every node from the host: `sealpostctl metrics`, and
     Prometheus on its loopback port with every replica as a target;
     `sealpostctl scale worker 4`: the new replica becomes ready and delivers;
  6. batch 2: N more while one ingress and one worker are stopped (SIGTERM)
     and another worker is killed (SIGKILL): every message that got 250 is
     delivered (a client retries the others, as an MTA would; a message that
     never got 250 is not counted as lost), the queue ends empty;
  7. `sealpostctl scale worker 3`, then `sealpostctl down --volumes` leaves no
     container, network or volume of the project.

When podman cannot run here (not root, a tool missing, no container can be
created) it prints "SKIP: ..." and exits 0. It always tears down what it
started (down --volumes, then whatever that left, which fails the test):
containers, the network, the volumes; the images stay tagged
(localhost/sealpost-clustertest*) so the next run builds from cache, and the
locally made debian:bookworm-slim base stays in podman's store.

The build context defaults to the repository this file lives in; --context
or SEALPOST_CLUSTER_CONTEXT points it at another copy of the tree.
"""

import argparse
import concurrent.futures
import csv
import email.parser
import email.policy
import email.utils
import json
import os
import re
import secrets
import shutil
import signal
import smtplib
import socket
import ssl
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request

BASE_IMAGE = "docker.io/library/debian:bookworm-slim"
IMAGE_PREFIX = "localhost/sealpost-clustertest"
IMAGES = {  # compose variable -> tag, and the Dockerfile target
    "SEALPOST_IMAGE": (IMAGE_PREFIX + ":latest", "runtime"),
    "SEALPOST_REDIS_IMAGE": (IMAGE_PREFIX + "-redis:latest", "redis"),
    "SEALPOST_HAPROXY_IMAGE": (IMAGE_PREFIX + "-haproxy:latest", "haproxy"),
    "SEALPOST_MX_IMAGE": (IMAGE_PREFIX + "-mx:latest", "mx"),
}
# The compile stage, tagged so that its layers stay cached between runs.
BUILD_STAGE_IMAGE = (IMAGE_PREFIX + "-build:latest", "build")
DEMO_DOMAIN = "example.test"
T0 = time.monotonic()


def log(msg):
    print(f"[{time.monotonic() - T0:6.1f}s] {msg}", flush=True)


def skip(reason):
    print(f"SKIP: cluster test: {reason}", flush=True)
    sys.exit(0)


class Failure(Exception):
    pass


def check(cond, msg):
    if not cond:
        raise Failure(msg)


class Timer:
    """Named phases, printed as they end and summed up at the end."""

    def __init__(self):
        self.phases = []

    def __call__(self, name):
        timer = self

        class Phase:
            def __enter__(self):
                self.start = time.monotonic()
                log(f"-- {name}")

            def __exit__(self, kind, *exc):
                if kind is SystemExit:  # a SKIP: its message is the last word
                    return
                took = time.monotonic() - self.start
                timer.phases.append((name, took))
                log(f"-- {name}: {took:.1f}s")

        return Phase()

    def summary(self):
        for name, took in self.phases:
            print(f"    {took:7.1f}s  {name}")


def run(cmd, env=None, check_rc=True, timeout=900, logfile=None, input=None, merge=False):
    """Runs a command; its output goes to logfile when given, else its
    standard output (with merge, standard error too) is returned."""
    if logfile:
        with open(logfile, "a") as f:
            f.write(f"\n$ {' '.join(cmd)}\n")
            f.flush()
            p = subprocess.run(cmd, env=env, stdout=f, stderr=subprocess.STDOUT, timeout=timeout,
                               input=input, text=True)
        out = ""
    else:
        p = subprocess.run(cmd, env=env, stdout=subprocess.PIPE,
                           stderr=subprocess.STDOUT if merge else subprocess.PIPE, text=True,
                           timeout=timeout, input=input)
        out = p.stdout + (p.stderr or "")
    if check_rc and p.returncode != 0:
        if logfile:
            with open(logfile) as f:
                out = f.read()
        tail = out[-3000:]
        raise Failure(f"command failed ({p.returncode}): {' '.join(cmd)}\n{tail}")
    return p.returncode, "" if logfile else p.stdout


# ---------------------------------------------------------------------------
# Can podman run here?

def preflight(env, cache_dir, ctl):
    if os.geteuid() != 0:
        skip("not root: this recipe needs rootful podman (run as root)")
    tools = ["podman", "podman-compose", "docker-compose", "runc", "iptables", "openssl"]
    missing = [t for t in tools if not shutil.which(t, path=env["PATH"])]
    if missing:
        skip(f"missing {' '.join(missing)} (install the packages of deploy/setup.sh: podman "
             "podman-compose runc netavark aardvark-dns catatonit iptables debootstrap "
             "docker-compose python3-jsonschema)")
    # podman's host set-up, as an operator's first `sealpostctl up` does it;
    # here into the containers.conf of CONTAINERS_CONF (SEALPOST_PODMAN_CONF),
    # not /etc.
    rc, out = run([ctl, "setup"], env=env, check_rc=False, merge=True)
    if rc != 0:
        raise Failure(f"sealpostctl setup failed: {out}")
    rc, out = run(["podman", "info", "--format", "json"], env=env, check_rc=False, timeout=120)
    if rc != 0:
        skip(f"`podman info` fails: {out.strip()[-800:]}")
    store = json.loads(out).get("store", {}).get("graphRoot", "/var/lib/containers")
    free = shutil.disk_usage(store if os.path.exists(store) else "/").free
    if free < 2 << 30:
        skip(f"only {free >> 20} MB free under {store}; the images need about 2 GB")
    if not image_exists(BASE_IMAGE, env):
        build_base_image(env, cache_dir)
    rc, out = run(["podman", "run", "--rm", "--network", "none", BASE_IMAGE, "true"], env=env,
                  check_rc=False, timeout=120)
    if rc != 0:
        skip(f"cannot create a container: {out.strip()[-800:]}")


def image_exists(ref, env):
    return subprocess.run(["podman", "image", "exists", ref], env=env).returncode == 0


def image_id(ref, env):
    p = subprocess.run(["podman", "image", "inspect", "--format", "{{.Id}}", ref], env=env,
                       capture_output=True, text=True)
    return p.stdout.strip() if p.returncode == 0 else None


def build_base_image(env, cache_dir):
    """debian:bookworm-slim from Debian's archive with debootstrap (no image
    registry is reachable); made once, then found in podman's store."""
    if not shutil.which("debootstrap", path=env["PATH"]):
        skip(f"{BASE_IMAGE} is not in podman's store and debootstrap is missing")
    mirror = "http://deb.debian.org/debian"
    try:
        with open("/etc/apt/sources.list.d/debian.sources") as f:
            m = re.search(r"^URIs:\s*(\S+)", f.read(), re.M)
            mirror = m.group(1) if m else mirror
    except OSError:
        pass
    rootfs = tempfile.mkdtemp(prefix="rootfs-", dir=cache_dir)
    logfile = os.path.join(cache_dir, "debootstrap.log")
    try:
        log(f"building {BASE_IMAGE} with debootstrap from {mirror} (about a minute, once)")
        p = subprocess.run(["debootstrap", "--variant=minbase", "bookworm", rootfs, mirror],
                           env=env, stdout=open(logfile, "w"), stderr=subprocess.STDOUT)
        if p.returncode != 0:
            with open(logfile) as f:
                tail = f.read()[-800:]
            skip(f"cannot make the base image (debootstrap failed, see {logfile}): {tail}")
        for d in ("var/cache/apt/archives", "var/lib/apt/lists"):
            for name in os.listdir(os.path.join(rootfs, d)):
                path = os.path.join(rootfs, d, name)
                if os.path.isfile(path):
                    os.unlink(path)
        tar = subprocess.Popen(["tar", "-C", rootfs, "-c", "."], stdout=subprocess.PIPE)
        imp = subprocess.run(["podman", "import", "--change", 'CMD ["bash"]', "-", BASE_IMAGE],
                             stdin=tar.stdout, env=env, capture_output=True, text=True)
        tar.stdout.close()
        tar.wait()
        if imp.returncode != 0 or tar.returncode != 0:
            skip(f"cannot import the base image: {imp.stderr.strip()[-800:]}")
    finally:
        shutil.rmtree(rootfs, ignore_errors=True)


# ---------------------------------------------------------------------------
# The cluster

class Cluster:
    def __init__(self, context, project, env, workdir):
        self.context = context
        self.project = project
        self.env = env
        self.workdir = workdir
        self.compose_file = os.path.join(context, "deploy", "docker-compose.yml")
        self.sealpostctl = os.path.join(context, "deploy", "sealpostctl")
        self.log = os.path.join(workdir, "compose.log")

    def ctl(self, *args, check_rc=True, timeout=900, input=None, logfile=True):
        """deploy/sealpostctl ARGS: its output (standard error too), also
        appended to the compose log."""
        started = time.monotonic()
        rc, out = run([self.sealpostctl, *args], env=self.env, check_rc=False, timeout=timeout,
                      input=input, merge=True)
        with open(self.log, "a") as f:
            f.write(f"\n$ sealpostctl {' '.join(args)}   ({time.monotonic() - started:.1f}s)\n{out}")
        if check_rc and rc != 0:
            raise Failure(f"sealpostctl {' '.join(args)} failed ({rc}):\n{out[-3000:]}")
        return out

    def containers(self, all_states=False):
        cmd = ["podman", "ps", "--format", "json",
               "--filter", f"label=io.podman.compose.project={self.project}"]
        if all_states:
            cmd.insert(2, "-a")
        _, out = run(cmd, env=self.env)
        result = {}
        for c in json.loads(out or "[]"):
            name = c["Names"][0]
            result[name] = c
        return result

    def name(self, service, n):
        return f"{self.project}_{service}_{n}"

    def networks(self, container):
        """{network name without the project's prefix: address}"""
        _, out = run(["podman", "inspect", "--format", "{{json .NetworkSettings.Networks}}",
                      container], env=self.env)
        prefix = self.project + "_"
        return {name[len(prefix):] if name.startswith(prefix) else name: net.get("IPAddress")
                for name, net in json.loads(out).items() if net.get("IPAddress")}

    def ip(self, container, network="back"):
        """The address on `back` (where Redis, the nodes and Prometheus
        meet), or on the network named."""
        nets = self.networks(container)
        if network in nets:
            return nets[network]
        raise Failure(f"{container} has no address on {network}: {nets}")

    def exec(self, container, *cmd, check_rc=True):
        return run(["podman", "exec", container, *cmd], env=self.env, check_rc=check_rc,
                   timeout=60)

    def dump_logs(self, dest):
        os.makedirs(dest, exist_ok=True)
        for name in self.containers(all_states=True):
            with open(os.path.join(dest, name + ".log"), "w") as f:
                subprocess.run(["podman", "logs", name], env=self.env, stdout=f,
                               stderr=subprocess.STDOUT)

    def leftovers(self):
        """What of the project is still there: containers, networks, volumes."""
        label = f"label=io.podman.compose.project={self.project}"
        left = []
        for cmd in (["podman", "ps", "-a", "--format", "{{.Names}}", "--filter", label],
                    ["podman", "network", "ls", "--format", "{{.Name}}", "--filter", label],
                    ["podman", "volume", "ls", "--format", "{{.Name}}", "--filter", label]):
            p = subprocess.run(cmd, env=self.env, capture_output=True, text=True)
            left += [(cmd[1], name) for name in p.stdout.split()]
        return left

    def teardown(self):
        """sealpostctl down --volumes; what it left behind is removed too,
        and returned (a failure of the recipe)."""
        try:
            log(self.ctl("down", "--volumes", check_rc=False, timeout=300).strip())
        except Exception as e:  # noqa: BLE001 - teardown goes on
            log(f"sealpostctl down: {e}")
        left = self.leftovers()
        for kind, name in left:
            rm = {"ps": ["podman", "rm", "-f", "-t", "0"], "network": ["podman", "network", "rm", "-f"],
                  "volume": ["podman", "volume", "rm", "-f"]}[kind]
            subprocess.run(rm + [name], env=self.env, capture_output=True)
        return left


def http_get(url, timeout=3):
    try:
        with urllib.request.urlopen(url, timeout=timeout) as r:
            return r.status, r.read().decode("utf-8", "replace")
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode("utf-8", "replace")
    except (OSError, ValueError):
        return None, ""


def wait_for(what, fn, timeout, interval=0.5):
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        last = fn()
        if last:
            return last
        time.sleep(interval)
    raise Failure(f"timed out after {timeout}s waiting for {what} (last: {last!r})")


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def metric_sum(text, name):
    total = 0.0
    for line in text.splitlines():
        if line.startswith(name + "{") or line.startswith(name + " "):
            total += float(line.rsplit(" ", 1)[1])
    return total


# ---------------------------------------------------------------------------
# Mail

class Sender:
    """Sends messages from several threads over persistent connections. A
    message whose DATA got 250 is accepted; any other outcome closes the
    connection and the message is tried again on a new one, up to `tries`
    times, as a sending MTA would."""

    def __init__(self, port, run_id, threads=8, tries=8):
        self.port = port
        self.run_id = run_id
        self.threads = threads
        self.tries = tries
        self.lock = threading.Lock()
        self.accepted = {}  # message-id -> queue reply
        self.failed = {}  # message-id -> last error
        self.attempt_errors = 0

    @staticmethod
    def message(mid, n, batch):
        return (f"From: Cluster Test <sender@client.test>\r\n"
                f"To: <user{n % 17}@{DEMO_DOMAIN}>\r\n"
                f"Subject: cluster test {batch} {n}\r\n"
                f"Message-ID: {mid}\r\n"
                f"Date: {email.utils.formatdate()}\r\n"
                f"\r\n"
                f"Message {n} of {batch}.\r\n" + ("A line of body text.\r\n" * (n % 40)))

    def send_batch(self, batch, count, progress=None):
        todo = [(f"<{batch}.{n}.{self.run_id}@clustertest.invalid>", n) for n in range(count)]
        chunks = [todo[i::self.threads] for i in range(self.threads)]
        with concurrent.futures.ThreadPoolExecutor(self.threads) as pool:
            list(pool.map(lambda c: self._worker(batch, c, progress), chunks))
        return [mid for mid, _ in todo]

    def _connect(self):
        s = smtplib.SMTP("127.0.0.1", self.port, timeout=30)
        s.ehlo("client.test")
        return s

    def _worker(self, batch, items, progress):
        conn = None
        for mid, n in items:
            data = self.message(mid, n, batch)
            last = None
            for attempt in range(self.tries):
                try:
                    if conn is None:
                        conn = self._connect()
                    code, resp = conn.mail("sender@client.test")
                    if code != 250:
                        raise smtplib.SMTPResponseException(code, resp)
                    code, resp = conn.rcpt(f"user{n % 17}@{DEMO_DOMAIN}")
                    if code not in (250, 251):
                        raise smtplib.SMTPResponseException(code, resp)
                    code, resp = conn.data(data)
                    if code != 250:
                        raise smtplib.SMTPResponseException(code, resp)
                    with self.lock:
                        self.accepted[mid] = resp.decode("utf-8", "replace")
                    last = None
                    break
                except (OSError, smtplib.SMTPException) as e:
                    last = f"{type(e).__name__}: {e}"
                    with self.lock:
                        self.attempt_errors += 1
                    if conn is not None:
                        try:
                            conn.close()
                        except OSError:
                            pass
                    conn = None
                    time.sleep(0.2 * (attempt + 1))
            if last is not None:
                with self.lock:
                    self.failed[mid] = last
            if progress:
                progress()
        if conn is not None:
            try:
                conn.quit()
            except (OSError, smtplib.SMTPException):
                pass


class Maildir:
    """What the demo MX filed: Message-ID -> list of X-Peer addresses."""

    def __init__(self, path):
        self.new = os.path.join(path, "new")
        self.seen = set()
        self.by_mid = {}
        self.parser = email.parser.BytesHeaderParser(policy=email.policy.compat32)

    def scan(self):
        try:
            names = os.listdir(self.new)
        except FileNotFoundError:
            return self.by_mid
        for name in names:
            if name in self.seen:
                continue
            with open(os.path.join(self.new, name), "rb") as f:
                headers = self.parser.parse(f)
            self.seen.add(name)
            mid = (headers.get("Message-ID") or "").strip()
            peer = headers.get("X-Peer") or ""
            m = re.search(r"[0-9a-fA-F.:]{7,}", peer)
            self.by_mid.setdefault(mid, []).append(m.group(0) if m else peer)
        return self.by_mid


# ---------------------------------------------------------------------------

HAPROXY_ADDRESS = "172.28.0.2"  # the compose file's defaults
FRONT_PREFIX, BACK_PREFIX = "172.28.0.", "172.28.1."


def tcp_from(cluster, container, host, port, send=""):
    """What a container gets connecting to host:port (bash's /dev/tcp: the
    images have no other client), sending `send`; None when it cannot
    connect."""
    script = ('exec 3<>"/dev/tcp/$0/$1" || exit 7; printf "$2" >&3; '
              'timeout 3 cat <&3; exit 0')
    rc, out = cluster.exec(container, "timeout", "8", "bash", "-c", script, host, str(port),
                           send, check_rc=False)
    return None if rc != 0 else out


def check_networks(cluster, ingresses, workers):
    """haproxy on `front` alone at its fixed address; the nodes on theirs;
    Redis unreachable from haproxy, by name or address; and a PROXY header
    from any other container is not taken as one."""
    haproxy = cluster.name("haproxy", 1)
    nets = cluster.networks(haproxy)
    check(nets == {"front": HAPROXY_ADDRESS}, f"haproxy's networks: {nets}")
    for c in ingresses:
        nets = cluster.networks(c)
        check(set(nets) == {"front", "back"} and nets["front"].startswith(FRONT_PREFIX)
              and nets["back"].startswith(BACK_PREFIX), f"{c}'s networks: {nets}")
    redis = cluster.name("redis", 1)
    for c in workers + [redis]:
        nets = cluster.networks(c)
        check(set(nets) == {"back"} and nets["back"].startswith(BACK_PREFIX),
              f"{c}'s networks: {nets}")
    redis_ip = cluster.ip(redis)
    for target in ("redis", redis_ip):
        got = tcp_from(cluster, haproxy, target, 6379)
        check(got is None, f"haproxy reached Redis at {target}:6379: {got!r}")
    # the same probe reaches what it may: an ingress's SMTP port
    check(tcp_from(cluster, haproxy, "ingress", 2525) is not None,
          "haproxy cannot connect to an ingress (the probe itself is broken?)")
    # A worker is not haproxy: its PROXY header is an unknown command after
    # the greeting, not a client address.
    got = tcp_from(cluster, workers[0], "ingress", 2525,
                   r"PROXY TCP4 198.51.100.7 172.28.1.1 4000 2525\r\nQUIT\r\n") or ""
    check(re.match(r"220[ -]", got) and re.search(r"^5\d\d ", got, re.M),
          f"a PROXY header from {workers[0]} got {got!r}")
    log(f"haproxy {HAPROXY_ADDRESS} on front only, cannot reach Redis {redis_ip}; "
        f"a worker's PROXY header is refused")


def check_redis_logins(cluster, secrets_dir):
    """Inside the redis container (the one with redis-cli): no plain text,
    no login without a name, and the ingress's user refused what it must
    not do; the admin verbs work, as the user admin."""
    redis = cluster.name("redis", 1)
    _, out = run(["podman", "exec", redis, "timeout", "5", "redis-cli", "-h", "127.0.0.1",
                  "-p", "6379", "PING"], env=cluster.env, check_rc=False, merge=True)
    check("PONG" not in out, f"Redis answered PING in plain text: {out!r}")

    def as_user(user, *command):
        password = ""
        if user:
            with open(os.path.join(secrets_dir, f"redis-{user}.password")) as f:
                password = f.read()
        login = ["--user", user] if user else []
        _, out = run(["podman", "exec", "-e", f"REDISCLI_AUTH={password}", redis, "timeout",
                      "5", "redis-cli", "--tls", "--cacert", "/run/secrets/redis_ca", "-h",
                      "127.0.0.1", "-p", "6379", *login, "--no-auth-warning", *command],
                     env=cluster.env, check_rc=False, merge=True)
        return out

    out = as_user(None, "PING")
    check("NOAUTH" in out or "WRONGPASS" in out, f"a login without a name: {out!r}")
    for command in (["FLUSHALL"], ["CONFIG", "GET", "*"], ["KEYS", "*"],
                    ["GET", "{mq:0}:b:00000000000000000000000000000000:0"],
                    ["HSET", "{sealpost:crypto}:policy", "example.test", "never"],
                    ["FUNCTION", "LOAD", "REPLACE", "#!lua name=x\n"]):
        out = as_user("ingress", *command)
        check("NOPERM" in out, f"the ingress user ran {command}: {out!r}")
    out = as_user("worker", "HGETALL", "{sealpost:auth}:users")
    check("NOPERM" in out, f"the worker user read the users: {out!r}")
    out = cluster.ctl("queue", "stats")
    check("NOPERM" not in out, f"queue stats as admin: {out!r}")
    log("Redis: no plain text, no anonymous login; the ingress user may not FLUSHALL, "
        "read a body, write a policy or load the library; the worker user may not read users")


def make_secrets(directory):
    """Only the `users` secret: `sealpostctl up` makes the seal key and the
    certificate, as it does for an operator."""
    os.makedirs(directory, mode=0o700, exist_ok=True)
    path = os.path.join(directory, "users")
    with open(path, "w") as f:
        f.write("# name:password\nalice@example.test:cluster test pw\n")
    os.chmod(path, 0o644)


def make_public_key(workdir, address):
    """An OpenPGP public key for address, made with the host's gpg: the host
    file `sealpostctl keys import` reads."""
    home = os.path.join(workdir, "gnupg")
    os.makedirs(home, mode=0o700)
    env = dict(os.environ, GNUPGHOME=home)
    gpg = ["gpg", "--batch", "--quiet", "--passphrase", ""]
    subprocess.run(gpg + ["--quick-gen-key", f"Cluster <{address}>", "ed25519", "cert", "1y"],
                   env=env, check=True, capture_output=True)
    out = subprocess.run(["gpg", "--list-keys", "--with-colons", address], env=env, check=True,
                         capture_output=True, text=True).stdout
    fpr = next(line.split(":")[9] for line in out.splitlines() if line.startswith("fpr:"))
    subprocess.run(gpg + ["--quick-add-key", fpr, "cv25519", "encr", "1y"], env=env, check=True,
                   capture_output=True)
    path = os.path.join(workdir, "key.asc")
    with open(path, "wb") as f:
        f.write(subprocess.run(["gpg", "--armor", "--export", address], env=env, check=True,
                               capture_output=True).stdout)
    subprocess.run(["gpgconf", "--kill", "all"], env=env, capture_output=True)
    return path, fpr


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    here = os.path.dirname(os.path.abspath(__file__))
    ap.add_argument("--context", default=os.environ.get("SEALPOST_CLUSTER_CONTEXT")
                    or os.path.dirname(os.path.dirname(here)),
                    help="build context: a sealpost tree with deploy/ (default: this repository)")
    ap.add_argument("--messages", type=int, default=500, help="messages per batch (500)")
    ap.add_argument("--threads", type=int, default=8, help="sending threads (8)")
    ap.add_argument("--keep", action="store_true", help="leave the cluster running (debugging)")
    ap.add_argument("--cache", default=os.environ.get("SEALPOST_CLUSTER_CACHE",
                                                       "/var/tmp/sealpost-cluster"),
                    help="where CONTAINERS_CONF and the debootstrap log live")
    args = ap.parse_args()
    # Killed (make, CI): still tear down, through the finally below.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    context = os.path.abspath(args.context)
    if not os.path.exists(os.path.join(context, "deploy", "docker-compose.yml")):
        print(f"FAIL: {context} has no deploy/docker-compose.yml", file=sys.stderr)
        return 1

    conf = os.path.join(args.cache, "containers.conf")
    env = {k: v for k, v in os.environ.items() if not k.startswith("SEALPOST_")}
    env["PATH"] = env.get("PATH", "") + ":/usr/sbin:/sbin:/usr/bin:/bin"
    env["CONTAINERS_CONF"] = conf
    env["BUILDAH_FORMAT"] = "docker"  # keeps HEALTHCHECK and STOPSIGNAL in the images
    run_id = secrets.token_hex(4)
    project = f"spct{run_id}"
    env["SEALPOST_ENGINE"] = "podman"
    env["SEALPOST_PODMAN_CONF"] = conf  # sealpostctl setup writes it: the file CONTAINERS_CONF reads
    env["COMPOSE_PROJECT_NAME"] = project
    os.makedirs(args.cache, exist_ok=True)
    ctl = os.path.join(context, "deploy", "sealpostctl")
    timer = Timer()
    with timer("preflight (sealpostctl setup, podman, base image)"):
        try:
            preflight(env, args.cache, ctl)
        except Failure as e:
            print(f"\nFAIL: {e}", flush=True)
            return 1
    workdir = tempfile.mkdtemp(prefix=f"sealpost-cluster-{run_id}-")
    maildir = os.path.join(workdir, "maildir")
    os.makedirs(maildir)
    os.chmod(maildir, 0o777)  # the MX runs as an unprivileged user
    ports = {name: free_port() for name in ("smtp", "submission", "smtps", "stats", "prometheus")}
    env.update({var: tag for var, (tag, _) in IMAGES.items()})
    env.update({
        "SEALPOST_SECRETS_DIR": os.path.join(workdir, "secrets"),
        "SEALPOST_DEMO_MAILDIR": maildir,
        "SEALPOST_SMTP_PORT": str(ports["smtp"]),
        "SEALPOST_SUBMISSION_PORT": str(ports["submission"]),
        "SEALPOST_SMTPS_PORT": str(ports["smtps"]),
        "SEALPOST_HAPROXY_STATS_PORT": str(ports["stats"]),
        "SEALPOST_PROMETHEUS_PORT": str(ports["prometheus"]),
        "SEALPOST_INGRESSES": "2",
        "SEALPOST_WORKERS": "3",
        # Short enough for this test: a killed worker's lease runs out in
        # seconds, a deferred job is retried soon.
        "SEALPOST_WORKER_LEASE_SECONDS": "15",
        "SEALPOST_WORKER_STOP_GRACE": "5",
        "SEALPOST_WORKER_MIN_BACKOFF": "2",
        "SEALPOST_WORKER_MAX_BACKOFF": "10",
    })
    cluster = Cluster(context, project, env, workdir)
    log(f"context {context}, project {project}, work dir {workdir}")
    ok = False
    try:
        body(cluster, args, timer, ports, maildir, run_id)
        ok = True
    except Failure as e:
        print(f"\nFAIL: {e}", flush=True)
    except Exception as e:  # noqa: BLE001 - report, then tear down
        import traceback

        traceback.print_exc()
        print(f"\nFAIL: {type(e).__name__}: {e}", flush=True)
    finally:
        if not ok or args.keep:
            cluster.dump_logs(os.path.join(workdir, "logs"))
            log(f"container logs in {workdir}/logs, compose output in {cluster.log}")
        if args.keep:
            log(f"--keep: the cluster runs on; stop it with: CONTAINERS_CONF={conf} "
                f"COMPOSE_PROJECT_NAME={project} {cluster.sealpostctl} down --volumes")
        else:
            with timer("sealpostctl down --volumes"):
                left = cluster.teardown()
            if left:
                print(f"\nFAIL: sealpostctl down --volumes left {left} behind", flush=True)
                ok = False
            if ok:
                shutil.rmtree(workdir, ignore_errors=True)
    print(f"\n{'PASS' if ok else 'FAIL'}: cluster test in {time.monotonic() - T0:.1f}s")
    timer.summary()
    return 0 if ok else 1


def body(cluster, args, timer, ports, maildir, run_id):
    env = cluster.env
    with timer("docker-compose config -q"):
        run(["docker-compose", "-p", cluster.project, "-f", cluster.compose_file, "--profile",
             "demo", "config", "-q"], env=env)

    with timer("build images"):
        previous = {tag: image_id(tag, env) for tag, _ in
                    list(IMAGES.values()) + [BUILD_STAGE_IMAGE]}
        # The compile stage gets a tag of its own so its layers stay cached;
        # everything else is built by compose.
        run(["podman", "build", "-f", os.path.join(cluster.context, "deploy", "Dockerfile"),
             "--target", BUILD_STAGE_IMAGE[1], "-t", BUILD_STAGE_IMAGE[0], cluster.context],
            env=env, logfile=cluster.log)
        cluster.ctl("build", timeout=1800)
        for tag, old in previous.items():  # the image a tag held before, now unused
            if old and old != image_id(tag, env):
                subprocess.run(["podman", "rmi", old], env=env, capture_output=True)

    secrets_dir = env["SEALPOST_SECRETS_DIR"]
    make_secrets(secrets_dir)
    with timer("sealpostctl up --demo"):
        out = cluster.ctl("up", "--demo")
        log(out.strip())
        check("up: 2 ingress and 3 worker ready" in out, f"sealpostctl up said: {out!r}")
        with open(os.path.join(secrets_dir, "seal.key")) as f:
            key = f.read()
        check(re.fullmatch(r"[^:\s]+:[A-Za-z0-9+/=]{44}\n", key), f"seal.key holds {key!r}")
        check(not [n for n in os.listdir(secrets_dir) if ".tmp" in n],
              f"temporary files left in {secrets_dir}: {os.listdir(secrets_dir)}")

    ingresses = [cluster.name("ingress", n) for n in (1, 2)]
    workers = [cluster.name("worker", n) for n in (1, 2, 3)]
    with timer("cluster ready"):
        ips = {}
        for c in ingresses + workers:
            ips[c] = cluster.ip(c)
        for c in ingresses + workers:
            wait_for(f"{c} /readyz", lambda c=c: http_get(f"http://{ips[c]}:9100/readyz")[0] == 200,
                     90)
        # The health checks: no systemd timers here, so sealpostctl status
        # runs them once and shows the result.
        status = cluster.ctl("status")
        for c in ingresses + workers + [cluster.name("redis", 1)]:
            check(re.search(rf"^{c}\s+Up .*\(healthy\)", status, re.M),
                  f"{c} is not healthy in sealpostctl status:\n{status}")
        stats_url = f"http://127.0.0.1:{ports['stats']}/;csv"

        def servers_up(backend="ingress_smtp"):
            """Servers of a backend haproxy has UP (its stats in CSV)."""
            status, text = http_get(stats_url)
            if status != 200:
                return 0
            rows = list(csv.reader(text.lstrip("# ").splitlines()))
            col = {name: i for i, name in enumerate(rows[0])}
            return sum(1 for r in rows[1:] if len(r) > col["status"] and r[0] == backend
                       and r[1] not in ("FRONTEND", "BACKEND") and r[col["status"]] == "UP")

        wait_for("haproxy to see 2 ingress replicas up", lambda: servers_up() == 2, 60)

    with timer("the networks: haproxy's fixed address, Redis out of its reach"):
        check_networks(cluster, ingresses, workers)
        users = cluster.containers(all_states=True).get(cluster.name("users", 1))
        check(users is not None, "the users one-shot container is missing")
        _, code = run(["podman", "wait", cluster.name("users", 1)], env=env, timeout=120)
        check(code.strip() == "0", f"the users one-shot exited with {code.strip()}")
        _, out = run(["podman", "logs", cluster.name("users", 1)], env=env, merge=True)
        check("users: 1 stored" in out, f"users one-shot said: {out!r}")

    with timer("sealpostctl users add, keys import FILE"):
        t = time.monotonic()
        out = cluster.ctl("users", "add", "bob@example.test", input="bob's pw\n")
        took = time.monotonic() - t
        check("user bob@example.test saved" in out, f"users add said {out!r}")
        log(f"sealpostctl users add: {took:.2f}s")
        keyfile, fpr = make_public_key(cluster.workdir, f"key@{DEMO_DOMAIN}")
        out = cluster.ctl("keys", "import", keyfile)
        check(f"imported {fpr}" in out, f"keys import {keyfile} said {out!r}")
        check(fpr in cluster.ctl("keys", "list"), "the imported key is not in keys list")
        out = cluster.ctl("keys", "import", keyfile + ".missing", check_rc=False)
        check("no such readable file on this host" in out, f"a missing host file: {out!r}")

    with timer("Redis: TLS only, a login per role"):
        check_redis_logins(cluster, secrets_dir)

    sender = Sender(ports["smtp"], run_id, threads=args.threads)
    box = Maildir(maildir)
    with timer("TLS + AUTH on 587 and 465, relay refused on 25"):
        tls_ids = []
        ctx = ssl.create_default_context()
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
        for port_name, implicit in (("submission", False), ("smtps", True)):
            mid = f"<{port_name}.{run_id}@clustertest.invalid>"
            if implicit:
                s = smtplib.SMTP_SSL("127.0.0.1", ports[port_name], context=ctx, timeout=30)
            else:
                s = smtplib.SMTP("127.0.0.1", ports[port_name], timeout=30)
                s.ehlo("client.test")
                s.starttls(context=ctx)
            s.ehlo("client.test")
            # 587: the user of `sealpostctl users add`; 465: the secret's.
            user, pw = ("bob@example.test", "bob's pw") if not implicit else \
                ("alice@example.test", "cluster test pw")
            s.login(user, pw)
            s.sendmail(user, [f"tls@{DEMO_DOMAIN}"], Sender.message(mid, 0, port_name))
            s.quit()
            tls_ids.append(mid)
        s = smtplib.SMTP("127.0.0.1", ports["smtp"], timeout=30)
        s.ehlo("client.test")
        s.mail("sender@client.test")
        code, resp = s.rcpt("someone@elsewhere.invalid")
        s.quit()
        check(500 <= code < 600, f"relay to elsewhere.invalid through port 25 got {code} {resp}")

    n = args.messages
    with timer(f"batch 1: {n} messages"):
        batch1 = sender.send_batch("b1", n)
        check(not sender.failed, f"{len(sender.failed)} of batch 1 got no 250, e.g. "
              f"{next(iter(sender.failed.items()), None)}")
        log(f"batch 1: {len(sender.accepted)} accepted with 250 "
            f"({sender.attempt_errors} failed attempts)")
    with timer("batch 1 delivered"):
        want = set(batch1) | set(tls_ids)
        wait_for("batch 1 at the MX", lambda: want <= set(box.scan()) or None, 120)
        log(f"batch 1: all {len(batch1)} (+{len(tls_ids)} over TLS) filed by the MX")

    # The PROXY v2 header: the ingress logs the client haproxy saw, which is
    # not haproxy's own address.
    haproxy_ip = cluster.ip(cluster.name("haproxy", 1), "front")
    _, out = run(["podman", "logs", ingresses[0]], env=env, merge=True)
    clients = set(re.findall(r"event=accepted mid=\S+ client=(\S+)", out))
    check(clients and haproxy_ip not in clients,
          f"ingress saw clients {clients}, haproxy is {haproxy_ip}: PROXY header not used?")
    log(f"ingress saw client(s) {sorted(clients)} through haproxy {haproxy_ip}")

    with timer("metrics of every node from the host"):
        out = cluster.ctl("metrics")
        log("sealpostctl metrics:\n" + out.rstrip())
        for c in ingresses + workers:
            check(re.search(rf"^{c}\s+yes\s+\d+", out, re.M), f"no metrics of {c}:\n{out}")
        accepted = sum(int(m) for m in re.findall(r"^\S+_ingress_\d+\s+yes\s+(\d+)", out, re.M))
        check(accepted >= n, f"the ingress nodes count {accepted} accepted messages, sent {n}")
        prom = f"http://127.0.0.1:{ports['prometheus']}/api/v1/targets?state=active"

        def all_targets_up():
            status, text = http_get(prom)
            if status != 200:
                return None
            targets = json.loads(text)["data"]["activeTargets"]
            up = sorted(t["labels"]["instance"] for t in targets if t["health"] == "up")
            want_up = sorted(f"{ips[c]}:9100" for c in ingresses + workers)
            return up if up == want_up else None

        up = wait_for("Prometheus to scrape every ingress and worker", all_targets_up, 60)
        log(f"Prometheus (127.0.0.1:{ports['prometheus']}) scrapes {len(up)} nodes: {up}")

    with timer("sealpostctl scale worker 4"):
        out = cluster.ctl("scale", "worker", "4")
        log(out.strip())
        check("worker: 3 -> 4 replicas" in out and "already in use" not in out,
              f"scale said {out!r}")
        new_worker = cluster.name("worker", 4)
        ips[new_worker] = cluster.ip(new_worker)
        wait_for(f"{new_worker} /readyz",
                 lambda: http_get(f"http://{ips[new_worker]}:9100/readyz")[0] == 200, 60)

    with timer(f"batch 2: {n} messages, stopping ingress 2 and worker 2, killing worker 3"):
        # A quarter in, the disruption starts; half-way, sending waits until
        # it is over, so messages go in while the nodes stop and after.
        sent = [0]
        sent_lock = threading.Lock()
        trigger = threading.Event()
        disrupted = threading.Event()

        def progress():
            with sent_lock:
                sent[0] += 1
                count = sent[0]
            if count == n // 4:
                trigger.set()
            elif count >= n // 2:
                disrupted.wait(120)

        stops = {}

        def disrupt():
            trigger.wait(120)
            t = time.monotonic()
            procs = [
                ("stop " + ingresses[1], subprocess.Popen(
                    ["podman", "stop", "-t", "30", ingresses[1]], env=env,
                    stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)),
                ("stop " + workers[1], subprocess.Popen(
                    ["podman", "stop", "-t", "30", workers[1]], env=env,
                    stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)),
                ("kill -9 " + workers[2], subprocess.Popen(
                    ["podman", "kill", "--signal", "KILL", workers[2]], env=env,
                    stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)),
            ]
            for what, p in procs:
                stops[what] = (p.wait(), round(time.monotonic() - t, 1), sent[0])
            disrupted.set()

        accepted_before = set(sender.accepted)
        disruptor = threading.Thread(target=disrupt)
        disruptor.start()
        batch2 = sender.send_batch("b2", n, progress)
        trigger.set()
        disrupted.set()
        disruptor.join()
        for what, (rc, took, count) in stops.items():
            log(f"{what}: exit {rc} after {took}s ({count} of {n} sent by then)")
            check(rc == 0, f"{what} failed")
        accepted2 = [m for m in batch2 if m in sender.accepted and m not in accepted_before]
        failed2 = [m for m in batch2 if m in sender.failed]
        log(f"batch 2: {len(accepted2)} accepted with 250, {len(failed2)} never accepted "
            f"({sender.attempt_errors} failed attempts in all)")
        check(len(accepted2) >= n * 9 // 10,
              f"only {len(accepted2)} of {n} accepted while one of two ingress nodes stopped")
        # The stopped ingress really is out: haproxy follows DNS and health.
        wait_for("haproxy to drop the stopped ingress", lambda: servers_up() == 1, 30)

    with timer("batch 2 delivered"):
        want = set(accepted2)

        def all_there():
            got = box.scan()
            return want <= set(got) or None

        try:
            wait_for("every accepted message of batch 2 at the MX", all_there, 180)
        except Failure:
            missing = sorted(want - set(box.scan()))
            raise Failure(f"{len(missing)} messages got 250 and were not delivered (lost?), "
                          f"e.g. {missing[:5]}") from None
        got = box.scan()
        peers = {}
        for mid in want:
            for ip in got[mid]:
                peers[ip] = peers.get(ip, 0) + 1
        by_worker = {c: peers.get(ips[c], 0) for c in workers + [new_worker]}
        log(f"batch 2 deliveries by worker: {by_worker}")
        check(by_worker[new_worker] > 0, f"the new worker {new_worker} delivered nothing")
        delivered_extra = [m for m in batch2 if m in got and m not in sender.accepted]
        dups = {m: v for m, v in got.items() if len(v) > 1}
        names = {ip: c for c, ip in ips.items()}
        log(f"delivered without a 250 seen by the client: {len(delivered_extra)}; "
            f"delivered twice or more: {len(dups)} (at least once is the promise: a worker "
            f"killed between the MX's 250 and its report sends again)")
        for mid, peers_of in dups.items():
            log(f"  {mid} by {[names.get(ip, ip) for ip in peers_of]}")
        _, metrics = http_get(f"http://{ips[new_worker]}:9100/metrics")
        attempts = metric_sum(metrics, "sealpost_delivery_attempts_total")
        check(attempts > 0, f"{new_worker} reports no delivery attempts")

    with timer("queue empty"):
        def empty():
            rc, out = cluster.exec(workers[0], "sealpost", "queue", "stats", "--json",
                                   check_rc=False)
            if rc != 0:
                return None
            st = json.loads(out)
            return st if st["due"] == st["leased"] == st["held"] == st["messages"] == 0 \
                else None

        st = wait_for("an empty queue", empty, 60, interval=1)
        log(f"queue stats: {st}")

    with timer("sealpostctl scale worker 3"):
        out = cluster.ctl("scale", "worker", "3")
        log(out.strip())
        check(re.search(r"worker: \d -> 3 replicas", out), f"scale said {out!r}")
        check(cluster.name("worker", 4) not in cluster.containers(all_states=True),
              "worker 4 is still there")

    total_accepted = len(sender.accepted) + len(tls_ids)
    total_filed = len(set(box.scan()))
    log(f"summary: {total_accepted} accepted with 250, {total_filed} distinct Message-IDs at "
        f"the MX, 0 lost, {len(sender.failed)} never accepted (not counted as lost)")


if __name__ == "__main__":
    sys.exit(main())
