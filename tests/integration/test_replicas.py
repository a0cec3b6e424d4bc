"""[queue] min_replicas: the ingress answers 250 only once a replica has the
message too (Redis WAIT), and 451 when the replica does not acknowledge."""

import os
import signal
import smtplib
import subprocess
import time

import pytest
import redis as redis_py

from conftest import (RedisServer, Sealpost, Sink, base_config, free_port, port_open, readyz,
                      wait_for)

MSG = b"From: s@origin.test\r\nTo: r@example.test\r\nSubject: {}\r\n\r\nbody\r\n"


def send(port, token):
    """The reply code and text to the message."""
    try:
        with smtplib.SMTP("127.0.0.1", port, timeout=30) as c:
            c.ehlo()
            c.mail("s@origin.test")
            c.rcpt("r@example.test")
            code, text = c.data(MSG.replace(b"{}", token.encode()))
            return code, text.decode()
    except smtplib.SMTPResponseException as e:
        return e.smtp_code, e.smtp_error.decode()


def start_replica(d, port, master_port):
    """A replica of master_port, in sync when this returns."""
    d.mkdir(exist_ok=True)
    replica = subprocess.Popen(
        ["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--dir", str(d),
         "--replicaof", "127.0.0.1", str(master_port), "--appendonly", "yes",
         "--save", "", "--logfile", str(d / "redis.log")],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wait_for(lambda: port_open("127.0.0.1", port), what="the replica")
    r = redis_py.Redis(port=port)
    wait_for(lambda: r.info("replication").get("master_link_status") == "up",
             what="the replica to sync")
    return replica, r


@pytest.fixture
def replicated(tmp_path):
    master = RedisServer(tmp_path).start()
    replica, r = start_replica(tmp_path / "replica", free_port(), master.port)
    yield master, replica, r
    if replica.poll() is None:
        os.kill(replica.pid, signal.SIGCONT)
        replica.terminate()
    replica.wait(10)
    master.stop()


def test_enqueue_waits_for_a_replica(tmp_path, replicated):
    master, replica, replica_client = replicated
    sink = Sink().start()
    smtp_port = free_port()
    config = base_config(master.port, smtp_port, sink.port,
                         "\n[queue]\nmin_replicas = 1\nreplica_timeout_ms = 300\n")
    config = config.replace("timeout_ms = 1000", "timeout_ms = 2000", 1)
    ingress = Sealpost(tmp_path, "ingress", config, "ingress").start(smtp_port)
    try:
        wait_for(lambda: "event=queue_ready" in ingress.read_log(), what="ingress ready")

        # A healthy replica: 250, and the replica holds the envelope (a smoke
        # check: on loopback replication is this fast without WAIT too; the
        # frozen replica below is what tells WAIT from none).
        code, text = send(smtp_port, "first")
        assert code == 250, text
        mid = text.rsplit(" ", 1)[1]
        assert replica_client.keys(f"{{mq:*}}:m:{mid}"), "250 before the replica had it"

        # A frozen replica acknowledges nothing: 451, the client keeps the message.
        os.kill(replica.pid, signal.SIGSTOP)
        started = time.monotonic()
        code, text = send(smtp_port, "frozen")
        assert code == 451 and text.startswith("4.3.0"), (code, text)
        assert time.monotonic() - started < 5
        assert "event=redis_replicas_behind" in ingress.read_log()
        # Other sessions are answered meanwhile, with the same 451.
        assert send(smtp_port, "frozen-2")[0] == 451

        # Thawed, the replica catches up and 250 comes back.
        os.kill(replica.pid, signal.SIGCONT)
        wait_for(lambda: send(smtp_port, "thawed")[0] == 250, timeout=20,
                 what="250 once the replica is back")
        ingress.check_clean_exit()
    finally:
        ingress.kill()
        sink.stop()


def test_min_replicas_needs_room_under_the_redis_timeout(tmp_path):
    """A WAIT as long as the request timeout would time out every command
    queued behind it: the configuration is refused at start."""
    config = base_config(free_port(), free_port(), free_port(),
                         "\n[queue]\nmin_replicas = 1\nreplica_timeout_ms = 800\n")
    path = tmp_path / "bad.conf"
    path.write_text(config)
    from conftest import BIN
    out = subprocess.run([BIN, "check-config", "-c", str(path)], capture_output=True, text=True)
    assert out.returncode != 0
    assert "replica_timeout_ms (800) must be at most half of [redis] timeout_ms (1000)" in (
        out.stdout + out.stderr)


def test_readyz_says_when_the_replicas_are_short(tmp_path, replicated):
    """With min_replicas, a master with fewer replicas than that makes the
    node not ready, and says which master and how many, so that a load
    balancer sends the mail elsewhere; the replica back, it is ready again."""
    master, replica, replica_client = replicated
    sink = Sink().start()
    smtp_port, metrics_port = free_port(), free_port()
    config = base_config(master.port, smtp_port, sink.port,
                         "\n[queue]\nmin_replicas = 1\nreplica_timeout_ms = 300\n")
    config = config.replace("timeout_ms = 1000", "timeout_ms = 2000", 1)
    config += f"\n[metrics]\nlisten = 127.0.0.1:{metrics_port}\n"
    ingress = Sealpost(tmp_path, "ingress", config, "ingress").start(smtp_port)
    again = None
    try:
        wait_for(lambda: readyz(metrics_port)[0] == 200, what="ready with its replica")
        port = replica_client.connection_pool.connection_kwargs["port"]
        replica.kill()
        replica.wait(10)
        wait_for(lambda: readyz(metrics_port)[0] == 503, what="/readyz to see the replica gone")
        status, body = readyz(metrics_port)
        assert f"redis 127.0.0.1:{master.port} has 0 of 1 replicas" in body, (status, body)
        assert "event=redis_replicas_short" in ingress.read_log()
        assert send(smtp_port, "no-replica")[0] == 451  # and no 250 meanwhile

        again, _ = start_replica(tmp_path / "replica", port, master.port)
        wait_for(lambda: readyz(metrics_port)[0] == 200, what="ready once the replica is back")
        assert "event=redis_replicas_ok" in ingress.read_log()
        assert send(smtp_port, "replica-back")[0] == 250
        ingress.check_clean_exit()
    finally:
        ingress.kill()
        sink.stop()
        if again:
            again.terminate()
            again.wait(10)
