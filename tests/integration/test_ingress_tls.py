"""STARTTLS on the way in (RFC 3207): offered when a certificate is
configured, with real clients (swaks, smtplib, openssl s_client); what the
client sent before the handshake never counts; the certificate is reloaded
on SIGHUP; `sealpost up` makes its own on first start."""

import hashlib
import os
import re
import signal
import smtplib
import ssl
import subprocess

import pytest

from conftest import Sealpost, free_port, up_config, wait_for
from smtpclient import Client, connect, expect


def make_cert(folder, cn):
    key, crt = folder / f"{cn}-key.pem", folder / f"{cn}-cert.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt",
                    "ec_paramgen_curve:P-256", "-nodes", "-days", "2", "-keyout", str(key),
                    "-out", str(crt), "-subj", f"/CN={cn}"], check=True, capture_output=True)
    return crt, key


def tls_config(crt, key):
    return f"[ingress]\ntls_cert = {crt}\ntls_key = {key}\n"


@pytest.fixture
def tls_stack(stack, tmp_path):
    crt, key = make_cert(tmp_path, "mx.sealpost.test")
    stack.tls_files = (crt, key)
    stack.ingress(extra=tls_config(crt, key))
    return stack


def client_context():
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    return ctx


def wrap(c: Client):
    """Starts TLS on a raw client after the server's 220."""
    c.sock = client_context().wrap_socket(c.sock, server_hostname="mx.sealpost.test")
    return c


def peer_cert_digest(port):
    """The SHA-256 of the certificate the server shows after STARTTLS."""
    with Client(port) as c:
        expect(c.reply(), 220)
        expect(c.cmd("EHLO client.test"), 250)
        expect(c.cmd("STARTTLS"), 220, "2.0.0")
        wrap(c)
        return hashlib.sha256(c.sock.getpeercert(binary_form=True)).hexdigest()


def test_starttls_offered_only_with_a_certificate(stack, tmp_path):
    stack.ingress()
    with connect(stack, ehlo=False) as c:
        r = expect(c.cmd("EHLO client.test"), 250)
        assert "STARTTLS" not in r.lines
        expect(c.cmd("STARTTLS"), 502, "5.5.1")


def test_smtplib_starttls_delivers_and_received_says_how(tls_stack):
    stack = tls_stack
    stack.worker()
    with smtplib.SMTP("127.0.0.1", stack.smtp_port, timeout=10) as s:
        s.ehlo("client.test")
        assert s.has_extn("starttls")
        s.starttls(context=client_context())
        s.ehlo("client.test")
        assert not s.has_extn("starttls")
        s.sendmail("a@origin.test", ["r@example.test"], b"Subject: secret\r\n\r\nbody\r\n")
    wait_for(lambda: stack.sink.count() == 1, timeout=15, what="delivery")
    received = stack.sink.messages[0][2].split(b"\r\nSubject:")[0].decode()
    assert re.search(r"\(using TLSv1\.[23] \S+\)", received), received
    assert "with ESMTPS id" in received, received
    assert "event=tls client=127.0.0.1" in stack.procs[0].read_log()


def test_swaks_tls_delivers(tls_stack):
    stack = tls_stack
    stack.worker()
    out = subprocess.run(["swaks", "--server", f"127.0.0.1:{stack.smtp_port}", "--tls",
                          "--to", "r@example.test", "--from", "me@origin.test",
                          "--header", "Subject: swaks over tls"],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "TLS started" in out.stdout, out.stdout
    wait_for(lambda: stack.sink.count() == 1, timeout=15, what="delivery")
    assert b"Subject: swaks over tls" in stack.sink.messages[0][2]


def test_commands_sent_with_starttls_are_dropped(tls_stack):
    """CVE-2011-0411: a MAIL FROM pipelined after STARTTLS (in clear, so
    anyone on the path could have put it there) is not executed after the
    handshake; the session starts over and needs EHLO."""
    stack = tls_stack
    with connect(stack) as c:
        c.send(b"STARTTLS\r\nMAIL FROM:<injected@evil.test>\r\nRCPT TO:<r@example.test>\r\n")
        expect(c.reply(), 220, "2.0.0")
        assert c.buf == b""
        wrap(c)
        expect(c.cmd("MAIL FROM:<a@origin.test>"), 503, "5.5.1")  # EHLO first: a new session
        r = expect(c.cmd("EHLO client.test"), 250)
        assert "STARTTLS" not in r.lines
        expect(c.cmd("RCPT TO:<r@example.test>"), 503, "5.5.1")  # no MAIL survived
        expect(c.cmd("STARTTLS"), 503, "5.5.1")
        expect(c.cmd("MAIL FROM:<a@origin.test>"), 250, "2.1.0")
    assert "event=starttls_input_dropped" in stack.procs[0].read_log()


def test_cleartext_after_starttls_ends_the_session(tls_stack):
    stack = tls_stack
    with connect(stack) as c:
        expect(c.cmd("STARTTLS"), 220, "2.0.0")
        c.send(b"EHLO not-tls\r\n")
        assert c.closed_by_server(5.0)
    wait_for(lambda: "event=tls_failed" in stack.procs[0].read_log(), what="tls_failed in the log")


def test_weak_tls12_cipher_is_refused(tls_stack):
    """A TLS 1.2 client that offers only a cipher without forward secrecy
    finds no common cipher; an ordinary TLS 1.2 client gets in."""
    port = tls_stack.smtp_port

    def s_client(*args):
        return subprocess.run(["openssl", "s_client", "-connect", f"127.0.0.1:{port}",
                               "-starttls", "smtp", "-tls1_2", *args],
                              input=b"QUIT\r\n", capture_output=True, timeout=20)

    weak = s_client("-cipher", "AES128-SHA")
    assert b"Cipher is (NONE)" in weak.stdout or weak.returncode != 0, weak.stdout
    good = s_client()
    assert re.search(rb"Cipher is ECDHE-", good.stdout), good.stdout[-2000:]


def test_sighup_reloads_the_certificate(tls_stack, tmp_path):
    stack = tls_stack
    crt, key = stack.tls_files
    before = peer_cert_digest(stack.smtp_port)
    new_crt, new_key = make_cert(tmp_path, "renewed")
    ingress = stack.procs[0]
    # A broken file: the reload fails, the old certificate stays in use.
    crt.write_text("not a certificate\n")
    ingress.proc.send_signal(signal.SIGHUP)
    wait_for(lambda: "event=tls_reload_failed" in ingress.read_log(), what="the failed reload")
    assert peer_cert_digest(stack.smtp_port) == before
    os.replace(new_crt, crt)
    os.replace(new_key, key)
    ingress.proc.send_signal(signal.SIGHUP)
    wait_for(lambda: "event=tls_reloaded" in ingress.read_log(), what="the reload")
    assert peer_cert_digest(stack.smtp_port) != before


def test_cert_without_key_stops_the_start(stack, tmp_path):
    crt, _ = make_cert(tmp_path, "lonely")
    bad = Sealpost(tmp_path, "bad", stack.config(f"[ingress]\ntls_cert = {crt}\n"),
                   "ingress").start()
    assert bad.proc.wait(10) != 0
    assert "tls_cert and tls_key go together" in bad.read_log()


def test_up_makes_a_self_signed_certificate_once(tmp_path, sink):
    """`sealpost up` without a certificate makes one under its data dir
    (key readable by the owner only), offers STARTTLS with it, and keeps it
    across restarts."""
    smtp_port, redis_port = free_port(), free_port()
    config = up_config(tmp_path, smtp_port, redis_port, sink.port)
    up = Sealpost(tmp_path, "up", config, "up").start(smtp_port)
    wait_for(lambda: "event=queue_ready" in up.read_log(), what="private redis")
    key = tmp_path / "var" / "tls-key.pem"
    assert oct(key.stat().st_mode & 0o777) == "0o600"
    first = peer_cert_digest(smtp_port)
    text = subprocess.run(["openssl", "x509", "-noout", "-text", "-in",
                           str(tmp_path / "var" / "tls-cert.pem")],
                          capture_output=True, text=True, check=True).stdout
    assert "DNS:mx.sealpost.test" in text and "CN = mx.sealpost.test" in text
    up.check_clean_exit()
    again = Sealpost(tmp_path, "up2", config, "up").start(smtp_port)
    wait_for(lambda: "event=queue_ready" in again.read_log(), what="private redis")
    assert peer_cert_digest(smtp_port) == first
    assert "event=tls_self_signed" not in again.read_log()
    again.check_clean_exit()
