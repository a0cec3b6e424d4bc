"""[queue] min_replicas: the ingress answers 250 only once a replica has the
message too (Redis WAIT), and 451 when the replica does not acknowledge."""

import os
import signal
import smtplib
import subprocess
import time

import pytest
import redis as redis_py

from conftest import RedisServer, Sealpost, Sink, base_config, free_port, port_open, wait_for

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


@pytest.fixture
def replicated(tmp_path):
    master = RedisServer(tmp_path).start()
    d = tmp_path / "replica"
    d.mkdir()
    port = free_port()
    replica = subprocess.Popen(
        ["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--dir", str(d),
         "--replicaof", "127.0.0.1", str(master.port), "--appendonly", "yes",
         "--save", "", "--logfile", str(d / "redis.log")],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wait_for(lambda: port_open("127.0.0.1", port), what="the replica")
    r = redis_py.Redis(port=port)
    wait_for(lambda: r.info("replication").get("master_link_status") == "up",
             what="the replica to sync")
    yield master, replica, r
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
