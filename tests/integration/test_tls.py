"""STARTTLS on the way out (RFC 3207): opportunistic by default, verify on
request, none when switched off; against an aiosmtpd sink with a test
certificate made here by openssl."""

import smtplib
import ssl
import subprocess
import time

import pytest

from conftest import Sealpost, Sink, base_config, free_port, wait_for


@pytest.fixture
def cert(tmp_path):
    key, crt = tmp_path / "key.pem", tmp_path / "cert.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
                    "-keyout", str(key), "-out", str(crt), "-subj", "/CN=127.0.0.1",
                    "-addext", "subjectAltName=IP:127.0.0.1"],
                   check=True, capture_output=True)
    return key, crt


@pytest.fixture
def tls_sink(cert):
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.load_cert_chain(str(cert[1]), str(cert[0]))
    sink = Sink(tls_context=ctx).start()
    yield sink
    sink.stop()


def start(tmp_path, redis_server, sink, extra):
    listen = free_port()
    config = base_config(redis_server.port, listen, sink.port, extra)
    ingress = Sealpost(tmp_path, "ingress", config, "ingress").start(listen)
    worker = Sealpost(tmp_path, "worker", config, "worker").start()
    wait_for(lambda: "event=queue_ready" in ingress.read_log(), what="redis")
    with smtplib.SMTP("127.0.0.1", listen, timeout=30) as s:
        s.sendmail("sender@origin.test", ["rcpt@example.test"],
                   b"Subject: over tls?\r\n\r\nbody\r\n")
    return ingress, worker


def test_opportunistic_tls_is_used_when_offered(tmp_path, redis_server, tls_sink):
    """The default policy takes STARTTLS when the server offers it, with any
    certificate, and says so in the log."""
    ingress, worker = start(tmp_path, redis_server, tls_sink, "")
    wait_for(lambda: tls_sink.count() == 1, timeout=20, what="delivery")
    assert tls_sink.tls == [True]
    assert "event=tls " in worker.read_log() and "TLSv1." in worker.read_log()
    ingress.check_clean_exit()
    worker.check_clean_exit()


def test_verify_policy_defers_on_a_self_signed_certificate(tmp_path, redis_server, tls_sink):
    """tls_policy = verify against an untrusted (self-signed) certificate: the
    mail is not sent, it waits, and the log says why."""
    ingress, worker = start(tmp_path, redis_server, tls_sink, "[worker]\ntls_policy = verify\n")
    wait_for(lambda: "certificate verify failed" in worker.read_log(), timeout=20,
             what="the verification failure")
    time.sleep(0.5)
    assert tls_sink.count() == 0
    assert "event=deferred" in worker.read_log()
    ingress.check_clean_exit()
    worker.check_clean_exit()


def test_verify_policy_delivers_with_a_trusted_certificate(tmp_path, redis_server, tls_sink, cert):
    """With the sink's certificate as a trust anchor (tls_ca_file) and its
    address in the certificate, verify succeeds and the mail goes over TLS."""
    extra = f"[worker]\ntls_policy = verify\ntls_ca_file = {cert[1]}\n"
    ingress, worker = start(tmp_path, redis_server, tls_sink, extra)
    wait_for(lambda: tls_sink.count() == 1, timeout=20, what="delivery")
    assert tls_sink.tls == [True]
    assert "verified=yes" in worker.read_log()
    ingress.check_clean_exit()
    worker.check_clean_exit()


def test_policy_none_stays_in_clear(tmp_path, redis_server, tls_sink):
    """tls_policy = none never sends STARTTLS."""
    ingress, worker = start(tmp_path, redis_server, tls_sink, "[worker]\ntls_policy = none\n")
    wait_for(lambda: tls_sink.count() == 1, timeout=20, what="delivery")
    assert tls_sink.tls == [False]
    ingress.check_clean_exit()
    worker.check_clean_exit()


def test_policy_per_destination_overrides_the_default(tmp_path, redis_server, tls_sink):
    """[tls_policy] example.test = verify wins over [worker] tls_policy = none:
    the self-signed sink is refused for that domain."""
    extra = "[worker]\ntls_policy = none\n[tls_policy]\nexample.test = verify\n"
    ingress, worker = start(tmp_path, redis_server, tls_sink, extra)
    wait_for(lambda: "certificate verify failed" in worker.read_log(), timeout=20,
             what="the verification failure")
    assert tls_sink.count() == 0
    ingress.check_clean_exit()
    worker.check_clean_exit()
