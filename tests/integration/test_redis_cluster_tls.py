"""Redis Cluster over TLS with an ACL login (issue 18): three masters that
speak TLS only (port 0, tls-port, tls-cluster), the default user off and one
ACL user. The cluster router logs in to every master it learns from the slot
map, checks each certificate against the CA, and mail flows through shards on
all three; the command line reads every master's shards the same way; a
master killed and started again is logged in to again; no log shows the
password."""
import json
import smtplib
import subprocess
from urllib.parse import quote

import pytest
import redis as redis_py

from conftest import BIN, Sealpost, Sink, base_config, cluster_port, free_port, port_open, wait_for
from test_redis_tls_auth import make_ca, make_server_cert

USER = "mailnode"
PASSWORD = "Cl@ster:pw%TLS-SECRET-81"


class TlsCluster:
    def __init__(self, tmp, cert, ca, masters=3):
        self.tmp, self.cert, self.ca = tmp, cert, ca
        self.ports = [cluster_port() for _ in range(masters)]
        self.procs = {}

    def _launch(self, port):
        d = self.tmp / f"redis-{port}"
        d.mkdir(exist_ok=True)
        conf = d / "redis.conf"
        conf.write_text("\n".join([
            "bind 127.0.0.1", f"dir {d}", "port 0", f"tls-port {port}", "tls-cluster yes",
            f"tls-cert-file {self.cert[0]}", f"tls-key-file {self.cert[1]}",
            f"tls-ca-cert-file {self.ca}", "tls-auth-clients no", "cluster-enabled yes",
            f"cluster-config-file nodes-{port}.conf", "cluster-node-timeout 2000",
            "appendonly yes", "appendfsync always", 'save ""', f"logfile {d / 'redis.log'}",
            "user default off", f"user {USER} on >{PASSWORD} ~* &* +@all"]) + "\n")
        self.procs[port] = subprocess.Popen(["redis-server", str(conf)],
                                            stdout=subprocess.DEVNULL,
                                            stderr=subprocess.DEVNULL)
        wait_for(lambda: port_open("127.0.0.1", port), what=f"redis {port}")

    def client(self, port):
        return redis_py.Redis(port=port, username=USER, password=PASSWORD, ssl=True,
                              ssl_ca_certs=str(self.ca))

    def start(self):
        for port in self.ports:
            self._launch(port)
        subprocess.run(["redis-cli", "--tls", "--cacert", str(self.ca), "--user", USER,
                        "--pass", PASSWORD, "--no-auth-warning", "--cluster", "create",
                        *[f"127.0.0.1:{p}" for p in self.ports], "--cluster-replicas", "0",
                        "--cluster-yes"], check=True, capture_output=True, timeout=60)
        for port in self.ports:
            wait_for(lambda p=port: self.client(p).cluster("INFO")["cluster_state"] == "ok",
                     what="cluster_state:ok")
        return self

    def kill(self, port):
        self.procs[port].kill()
        self.procs[port].wait(10)

    def stop(self):
        for p in self.procs.values():
            if p.poll() is None:
                p.kill()
                p.wait(10)


@pytest.fixture
def tls_cluster(tmp_path):
    d = tmp_path / "pki"
    d.mkdir()
    ca = make_ca(d, "ca")
    cert = make_server_cert(d, "ca", "server", "IP:127.0.0.1")
    c = TlsCluster(tmp_path, cert, ca).start()
    yield c
    c.stop()


def config(cluster, smtp_port, sink_port, metrics_port=None):
    url = f"rediss://{USER}:{quote(PASSWORD, safe='')}@127.0.0.1:{cluster.ports[0]}"
    text = base_config(cluster.ports[0], smtp_port, sink_port,
                       f"[metrics]\nlisten = 127.0.0.1:{metrics_port}\n" if metrics_port else "")
    return text.replace(f"url = redis://127.0.0.1:{cluster.ports[0]}\n",
                        f"url = {url}\ntls_ca_file = {cluster.ca}\n").replace(
        "timeout_ms = 1000", "timeout_ms = 3000")


def send(port, token):
    msg = (f"From: s@origin.test\r\nTo: r@example.test\r\nSubject: {token}\r\n"
           f"Message-ID: <{token}@origin.test>\r\n\r\nbody of {token}\r\n")
    with smtplib.SMTP("127.0.0.1", port, timeout=30) as c:
        c.sendmail("s@origin.test", ["r@example.test"], msg)


def subjects(sink):
    with sink.lock:
        return sorted(m[2].split(b"Subject: ", 1)[1].split(b"\r\n", 1)[0].decode()
                      for m in sink.messages)


def test_mail_flows_through_every_master_over_tls_with_a_login(tmp_path, tls_cluster):
    sink = Sink().start()
    smtp_port, metrics_port = free_port(), free_port()
    ingress = Sealpost(tmp_path, "ingress", config(tls_cluster, smtp_port, sink.port,
                                                   metrics_port), "ingress").start(smtp_port)
    worker = Sealpost(tmp_path, "worker", config(tls_cluster, smtp_port, sink.port), "worker")
    worker.start()
    procs = (ingress, worker)
    try:
        for p in procs:
            wait_for(lambda p=p: p.read_log().count("event=queue_ready") >= 3,
                     what="the library on every master, over TLS")
        sink.rcpt_reply = lambda addr: "451 4.3.0 not now"
        tokens = [f"t{i}" for i in range(40)]
        for t in tokens:
            send(smtp_port, t)
        # the shards' keys are on all three masters
        sizes = [tls_cluster.client(p).dbsize() for p in tls_cluster.ports]
        assert all(n > 0 for n in sizes), sizes
        # the command line follows the slot map over TLS too
        path = tmp_path / "cli.conf"
        path.write_text(config(tls_cluster, smtp_port, sink.port))
        out = subprocess.run([BIN, "queue", "stats", "--json", "-c", str(path)],
                             capture_output=True, text=True, timeout=30)
        assert out.returncode == 0, out.stderr
        assert json.loads(out.stdout)["messages"] == 40
        sink.rcpt_reply = lambda addr: None
        wait_for(lambda: len(subjects(sink)) >= 40, timeout=60, what="delivery")
        assert subjects(sink) == sorted(tokens)

        # a master killed and started again: the router logs in to it anew
        victim = tls_cluster.ports[1]
        tls_cluster.kill(victim)
        tls_cluster._launch(victim)
        wait_for(lambda: tls_cluster.client(victim).cluster("INFO")["cluster_state"] == "ok",
                 what="the cluster whole again")
        more = [f"u{i}" for i in range(30)]
        for t in more:
            for _ in range(50):  # a client keeps a 4xx'd message and tries again
                try:
                    send(smtp_port, t)
                    break
                except smtplib.SMTPResponseException as e:
                    assert 400 <= e.smtp_code < 500, e
        wait_for(lambda: len(subjects(sink)) >= 70, timeout=60, what="delivery after restart")
        assert subjects(sink) == sorted(tokens + more)
        for p in procs:
            p.check_clean_exit()
        logs = "".join(p.read_log() for p in procs) + out.stdout + out.stderr
        assert PASSWORD not in logs and quote(PASSWORD, safe="") not in logs
    finally:
        for p in procs:
            p.kill()
        sink.stop()
