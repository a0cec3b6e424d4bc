"""Redis logins and TLS: a real redis-server on loopback with tls-port, a test
CA and server certificate made with openssl, the default user off and an ACL
user; the nodes and the command line log in on every connection, check the
certificate and its name, and never show the password."""

import smtplib
import subprocess
from urllib.parse import quote

import pytest
import redis as redis_py

from conftest import BIN, Sealpost, Sink, base_config, free_port, port_open, readyz, wait_for

USER = "ingress"
# Characters a url must percent-encode, and a string no log may contain.
PASSWORD = "Pw@9:x%Zq-4kSECRETv7"
WRONG = "Wr0ng-pass-UNSEEN-3q"


def openssl(*args, cwd):
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True)


def make_ca(d, name):
    openssl("req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
            "-keyout", f"{name}.key", "-out", f"{name}.pem", "-days", "2",
            "-subj", f"/CN=sealpost test {name}", cwd=d)
    return d / f"{name}.pem"


def make_server_cert(d, ca, name, san):
    """A certificate for the Redis server, signed by ca, naming san."""
    openssl("req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
            "-keyout", f"{name}.key", "-out", f"{name}.csr", "-subj", "/CN=redis", cwd=d)
    (d / f"{name}.ext").write_text(f"subjectAltName={san}\n")
    openssl("x509", "-req", "-in", f"{name}.csr", "-CA", f"{ca}.pem", "-CAkey", f"{ca}.key",
            "-CAcreateserial", "-out", f"{name}.pem", "-days", "2", "-extfile", f"{name}.ext",
            cwd=d)
    return d / f"{name}.pem", d / f"{name}.key"


@pytest.fixture
def pki(tmp_path):
    d = tmp_path / "pki"
    d.mkdir()
    ca = make_ca(d, "ca")
    other_ca = make_ca(d, "otherca")
    by_ip = make_server_cert(d, "ca", "server", "IP:127.0.0.1")
    by_name = make_server_cert(d, "ca", "named", "DNS:redis.test")
    return {"ca": ca, "other_ca": other_ca, "by_ip": by_ip, "by_name": by_name}


class AclRedis:
    """redis-server with the default user off and one ACL user; TLS only
    (port 0, tls-port) unless tls is False. Stopped and started again on
    the same port and data."""

    def __init__(self, tmp, cert=None, tls=True):
        self.dir = tmp / "redis"
        self.dir.mkdir(exist_ok=True)
        self.port = free_port()
        self.tls = tls
        lines = ["bind 127.0.0.1", f"dir {self.dir}", "appendonly yes", 'save ""',
                 f"logfile {self.dir / 'redis.log'}", "user default off",
                 f"user {USER} on >{PASSWORD} ~* &* +@all"]
        if tls:
            lines += ["port 0", f"tls-port {self.port}", f"tls-cert-file {cert[0]}",
                      f"tls-key-file {cert[1]}", "tls-auth-clients no"]
        else:
            lines += [f"port {self.port}"]
        self.conf = self.dir / "redis.conf"
        self.conf.write_text("\n".join(lines) + "\n")
        self.proc = None

    def start(self):
        self.proc = subprocess.Popen(["redis-server", str(self.conf)],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wait_for(lambda: port_open("127.0.0.1", self.port), what="redis-server")
        return self

    def kill(self):
        if self.proc and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)


@pytest.fixture
def sink():
    s = Sink().start()
    yield s
    s.stop()


class Nodes:
    """Sealpost processes and CLI runs, all with one [redis] section."""

    def __init__(self, tmp, redis, sink, redis_lines):
        self.tmp, self.redis, self.sink = tmp, redis, sink
        self.smtp_port = free_port()
        self.metrics_port = free_port()
        self.redis_lines = redis_lines
        self.procs = []

    def config(self, metrics_port=None):
        text = base_config(self.redis.port, self.smtp_port, self.sink.port,
                           f"[metrics]\nlisten = 127.0.0.1:{metrics_port}\n"
                           if metrics_port else "")
        return text.replace(f"url = redis://127.0.0.1:{self.redis.port}\n", self.redis_lines)

    def start(self, command, name, metrics_port=None):
        p = Sealpost(self.tmp, name, self.config(metrics_port), command)
        p.start(metrics_port)
        self.procs.append(p)
        return p

    def ingress(self):
        p = self.start("ingress", "ingress", self.metrics_port)
        wait_for(lambda: "event=queue_ready" in p.read_log(), what="ingress to reach redis")
        wait_for(lambda: port_open("127.0.0.1", self.smtp_port), what="the SMTP listener")
        return p

    def worker(self):
        p = self.start("worker", f"worker{len(self.procs)}")
        wait_for(lambda: "event=worker_started" in p.read_log(), what="the worker to start")
        return p

    def cli(self, *args):
        path = self.tmp / "cli.conf"
        path.write_text(self.config())
        return subprocess.run([BIN, *args, "-c", str(path)], capture_output=True, text=True,
                              timeout=60)

    def logs(self):
        return "".join(p.read_log() for p in self.procs)

    def close(self):
        for p in self.procs:
            p.kill()


def send(nodes, subject):
    with smtplib.SMTP("127.0.0.1", nodes.smtp_port, timeout=30) as s:
        s.sendmail("sender@origin.test", ["rcpt@example.test"],
                   f"From: sender@origin.test\r\nTo: rcpt@example.test\r\nSubject: {subject}"
                   f"\r\n\r\nbody of {subject}\r\n".encode())


def assert_mail_flows(nodes, subject):
    before = nodes.sink.count()
    send(nodes, subject)
    wait_for(lambda: nodes.sink.count() > before, what=f"delivery of {subject}")
    assert subject.encode() in nodes.sink.messages[-1][2]


def assert_no_secret(*texts):
    for text in texts:
        for secret in (PASSWORD, quote(PASSWORD, safe=""), WRONG):
            assert secret not in text


def url(scheme, password=PASSWORD, user=USER, port=None):
    userinfo = f"{quote(user, safe='')}:{quote(password, safe='')}@" if user is not None else ""
    return f"{scheme}://{userinfo}127.0.0.1:{port}"


@pytest.fixture
def tls_redis(tmp_path, pki):
    r = AclRedis(tmp_path, pki["by_ip"]).start()
    yield r
    r.kill()


@pytest.fixture
def make_nodes(tmp_path, sink):
    made = []

    def make(redis, redis_lines):
        n = Nodes(tmp_path, redis, sink, redis_lines)
        made.append(n)
        return n

    yield make
    try:  # every node still running stops cleanly, with no sanitizer report
        for n in made:
            for p in n.procs:
                if p.proc.poll() is None:
                    p.check_clean_exit()
    finally:
        for n in made:
            n.close()


def test_mail_flows_over_tls_with_an_acl_login_in_the_url(tls_redis, pki, make_nodes):
    nodes = make_nodes(tls_redis, f"url = {url('rediss', port=tls_redis.port)}\n"
                                  f"tls_ca_file = {pki['ca']}\n")
    ingress = nodes.ingress()
    nodes.worker()
    assert "tls=yes" in ingress.read_log()
    assert_mail_flows(nodes, "over-tls")
    status, body = readyz(nodes.metrics_port)
    assert status == 200, body

    stats = nodes.cli("queue", "stats")
    assert stats.returncode == 0, stats.stderr
    check = nodes.cli("check-config")
    assert check.returncode == 0, check.stderr
    assert f"url = rediss://{USER}:(set)@127.0.0.1:{tls_redis.port}" in check.stdout
    assert_no_secret(nodes.logs(), stats.stdout, stats.stderr, check.stdout, check.stderr)


def test_password_file_and_username_keys(tls_redis, pki, make_nodes, tmp_path):
    pwfile = tmp_path / "redis-password"
    pwfile.write_text(PASSWORD + "\n")  # the trailing newline is not part of it
    nodes = make_nodes(tls_redis, f"url = rediss://127.0.0.1:{tls_redis.port}\n"
                                  f"username = {USER}\npassword_file = {pwfile}\n"
                                  f"tls_ca_file = {pki['ca']}\n")
    nodes.ingress()
    nodes.worker()
    assert_mail_flows(nodes, "password-file")
    users = nodes.cli("users", "list")
    assert users.returncode == 0, users.stderr
    check = nodes.cli("check-config")
    assert f"password_file = {pwfile}" in check.stdout
    assert_no_secret(nodes.logs(), check.stdout, users.stdout, users.stderr)


def test_an_unreadable_password_file_stops_the_start(tls_redis, pki, make_nodes, tmp_path):
    missing = tmp_path / "no-such-file"
    nodes = make_nodes(tls_redis, f"url = rediss://127.0.0.1:{tls_redis.port}\n"
                                  f"username = {USER}\npassword_file = {missing}\n"
                                  f"tls_ca_file = {pki['ca']}\n")
    p = Sealpost(nodes.tmp, "ingress", nodes.config(), "ingress").start()
    assert p.proc.wait(30) != 0
    assert f"password_file '{missing}'" in p.read_log()


def test_a_wrong_password_is_said_once_and_the_node_is_not_ready(tls_redis, pki, make_nodes):
    nodes = make_nodes(tls_redis, f"url = {url('rediss', WRONG, port=tls_redis.port)}\n"
                                  f"tls_ca_file = {pki['ca']}\n")
    ingress = nodes.start("ingress", "ingress", nodes.metrics_port)
    wait_for(lambda: "WRONGPASS" in ingress.read_log(), what="the refused login in the log")
    status, body = readyz(nodes.metrics_port)
    assert status == 503 and "WRONGPASS" in body, body
    # several reconnections later, still one line for the streak, and alive
    wait_for(lambda: tls_redis_log_count(tls_redis) >= 3, what="three refused logins")
    log = ingress.read_log()
    lines = [line for line in log.splitlines() if "event=redis_connect_failed" in line]
    assert len(lines) == 1, log
    assert f"redis=127.0.0.1:{tls_redis.port}" in lines[0] and f"user={USER}" in lines[0]
    assert ingress.proc.poll() is None

    stats = nodes.cli("queue", "stats")
    assert stats.returncode != 0
    assert "WRONGPASS" in stats.stderr and len(stats.stderr.strip().splitlines()) == 1
    assert_no_secret(nodes.logs(), stats.stdout, stats.stderr)


def test_no_password_where_redis_wants_one(tls_redis, pki, make_nodes):
    nodes = make_nodes(tls_redis, f"url = rediss://127.0.0.1:{tls_redis.port}\n"
                                  f"tls_ca_file = {pki['ca']}\n")
    ingress = nodes.start("ingress", "ingress", nodes.metrics_port)
    wait_for(lambda: "NOAUTH" in ingress.read_log(), what="Redis asking for a login")
    status, body = readyz(nodes.metrics_port)
    assert status == 503 and "NOAUTH" in body, body
    stats = nodes.cli("queue", "stats")
    assert stats.returncode != 0 and "NOAUTH" in stats.stderr, stats.stderr


def tls_redis_log_count(redis):
    """How many logins Redis refused (ACL LOG groups them, with a count)."""
    r = redis_py.Redis(port=redis.port, ssl=True, ssl_cert_reqs="none", username=USER,
                       password=PASSWORD)
    try:
        return sum(int(e["count"]) for e in r.acl_log() if e["reason"] == "auth")
    finally:
        r.close()


def test_a_wrong_ca_is_refused(tls_redis, pki, make_nodes):
    nodes = make_nodes(tls_redis, f"url = {url('rediss', port=tls_redis.port)}\n"
                                  f"tls_ca_file = {pki['other_ca']}\n")
    ingress = nodes.start("ingress", "ingress", nodes.metrics_port)
    wait_for(lambda: "certificate verify failed" in ingress.read_log(), what="the TLS failure")
    status, body = readyz(nodes.metrics_port)
    assert status == 503 and "TLS" in body, body
    stats = nodes.cli("queue", "stats")
    assert stats.returncode != 0 and "certificate verify failed" in stats.stderr, stats.stderr
    assert_no_secret(nodes.logs(), stats.stderr)


def test_the_host_name_is_checked_and_can_be_overridden(tmp_path, pki, make_nodes):
    redis = AclRedis(tmp_path, pki["by_name"]).start()
    try:
        lines = f"url = {url('rediss', port=redis.port)}\ntls_ca_file = {pki['ca']}\n"
        wrong = make_nodes(redis, lines)
        ingress = wrong.start("ingress", "ingress", wrong.metrics_port)
        wait_for(lambda: "certificate verify failed" in ingress.read_log(),
                 what="the name mismatch")
        status, body = readyz(wrong.metrics_port)
        assert status == 503, body
        stats = wrong.cli("queue", "stats")
        assert stats.returncode != 0 and "certificate verify failed" in stats.stderr
        ingress.kill()

        right = make_nodes(redis, lines + "tls_server_name = redis.test\n")
        right.smtp_port = free_port()
        p = Sealpost(tmp_path, "ingress2", right.config(), "ingress").start(right.smtp_port)
        right.procs.append(p)
        wait_for(lambda: "event=queue_ready" in p.read_log(), what="the named server")
        wait_for(lambda: port_open("127.0.0.1", right.smtp_port), what="the SMTP listener")
        right.worker()
        assert_mail_flows(right, "by-name")
        assert right.cli("queue", "stats").returncode == 0
    finally:
        redis.kill()


def test_plain_redis_with_an_acl_login(tmp_path, make_nodes):
    redis = AclRedis(tmp_path, tls=False).start()
    try:
        nodes = make_nodes(redis, f"url = {url('redis', port=redis.port)}\n")
        ingress = nodes.ingress()
        nodes.worker()
        assert "tls=no" in ingress.read_log()
        assert_mail_flows(nodes, "plain-login")
        assert nodes.cli("queue", "stats").returncode == 0
        assert_no_secret(nodes.logs())
    finally:
        redis.kill()


def test_after_a_redis_restart_the_nodes_log_in_again(tls_redis, pki, make_nodes):
    nodes = make_nodes(tls_redis, f"url = {url('rediss', port=tls_redis.port)}\n"
                                  f"tls_ca_file = {pki['ca']}\n")
    ingress = nodes.ingress()
    worker = nodes.worker()
    assert_mail_flows(nodes, "before-restart")
    connected = ingress.read_log().count("event=redis_connected")
    tls_redis.kill()
    wait_for(lambda: "event=redis_disconnect" in ingress.read_log(), what="the drop")
    tls_redis.start()
    wait_for(lambda: ingress.read_log().count("event=redis_connected") > connected,
             what="the ingress to log in again")
    wait_for(lambda: readyz(nodes.metrics_port)[0] == 200, what="the ingress ready again")
    assert_mail_flows(nodes, "after-restart")
    assert "WRONGPASS" not in ingress.read_log() + worker.read_log()
    assert "NOAUTH" not in ingress.read_log() + worker.read_log()
    assert_no_secret(nodes.logs())
