"""SMTP AUTH (RFC 4954) and the submission listeners (RFC 6409, RFC 8314):
users made with `sealpost users` live in Redis; PLAIN, LOGIN and CRAM-MD5
with swaks; logins only under TLS; failed logins rate limited per address
across connections; an authenticated sender may relay anywhere, nobody else
may; submission adds Date and Message-ID when they are missing."""

import base64
import email
import hashlib
import hmac
import re
import socket
import struct
import subprocess

import pytest

from conftest import BIN, SEAL_KEY, Sealpost, free_port, wait_for
from smtpclient import Client, connect, expect
from test_ingress_tls import make_cert, wrap

PASSWORD = "correct horse battery staple"


@pytest.fixture
def auth_stack(stack, tmp_path):
    """An ingress with TLS on all three listeners, a worker, and a user."""
    crt, key = make_cert(tmp_path, "mx.sealpost.test")
    stack.submission_port, stack.smtps_port = free_port(), free_port()
    stack.auth_extra = (f"[ingress]\ntls_cert = {crt}\ntls_key = {key}\n"
                        f"submission_listen = 127.0.0.1:{stack.submission_port}\n"
                        f"smtps_listen = 127.0.0.1:{stack.smtps_port}\n"
                        f"[routes]\nelsewhere.test = 127.0.0.1:{stack.sink.port}\n")
    users(stack, "add", "alice@origin.test", stdin=PASSWORD + "\n")
    return stack


def users(stack, *args, stdin=None, check=True):
    conf = stack.tmp / "users.conf"
    # the sealing key: `users add` tags what it stores (issue 18)
    conf.write_text(f"[redis]\nurl = redis://127.0.0.1:{stack.redis.port}\n"
                    f"[seal]\nkeys = {SEAL_KEY}\n")
    out = subprocess.run([BIN, "users", *args, "-c", str(conf)], input=stdin, text=True,
                         capture_output=True, timeout=30)
    if check:
        assert out.returncode == 0, out.stdout + out.stderr
    return out


def start(stack, ingress_extra=""):
    stack.ingress(extra=stack.auth_extra + "[ingress]\n" + ingress_extra)
    stack.worker(extra=stack.auth_extra)


def swaks(port, *args, to="rcpt@elsewhere.test", sender="alice@origin.test"):
    return subprocess.run(["swaks", "--server", f"127.0.0.1:{port}", "--to", to, "--from", sender,
                           "--header", "Subject: submitted", *args],
                          capture_output=True, text=True, timeout=60)


def tls_client(port, ehlo=True):
    c = connect_port(port)
    expect(c.cmd("STARTTLS"), 220, "2.0.0")
    wrap(c)
    if ehlo:
        expect(c.cmd("EHLO client.test"), 250)
    return c


def connect_port(port):
    c = Client(port)
    expect(c.reply(), 220)
    expect(c.cmd("EHLO client.test"), 250)
    return c


def plain(user, password, authz=""):
    return base64.b64encode(f"{authz}\0{user}\0{password}".encode()).decode()


def login(c):
    expect(c.cmd("AUTH PLAIN " + plain("alice@origin.test", PASSWORD)), 235, "2.7.0")


def restart(stack, ingress_extra=""):
    """Stops the processes (each must exit cleanly) and starts them anew."""
    for p in stack.procs:
        p.check_clean_exit()
    stack.procs.clear()
    start(stack, ingress_extra)


# ---- users ----

def test_users_cli_stores_argon2id_in_redis(stack):
    users(stack, "add", "bob@origin.test", stdin="pw-of-bob\n")
    users(stack, "add", "carol@origin.test", "--cram-md5", stdin="pw-of-carol\n")
    stored = stack.redis.client().hgetall("{sealpost:auth}:users")
    assert stored[b"bob@origin.test"].startswith(b"$argon2id$")
    assert b"pw-of-bob" not in stored[b"bob@origin.test"]
    assert users(stack, "list").stdout == "bob@origin.test\ncarol@origin.test cram-md5\n"
    assert users(stack, "delete", "bob@origin.test").returncode == 0
    gone = users(stack, "delete", "bob@origin.test", check=False)
    assert gone.returncode == 1 and "no user bob@origin.test" in gone.stderr
    assert users(stack, "add", "x@y", check=False, stdin="").returncode == 1  # no password
    assert users(stack, "add", "a b", check=False, stdin="p\n").returncode == 2


# ---- mechanisms, with a real client ----

@pytest.mark.parametrize("mech", ["PLAIN", "LOGIN"])
def test_swaks_submission_with_starttls_and_auth(auth_stack, mech):
    """Port 587's rules: STARTTLS, AUTH, then relay to any domain."""
    start(auth_stack)
    out = swaks(auth_stack.submission_port, "--tls", "--auth", mech, "--auth-user",
                "alice@origin.test", "--auth-password", PASSWORD)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "235 2.7.0" in out.stdout
    wait_for(lambda: auth_stack.sink.count() == 1, timeout=15, what="delivery")
    assert auth_stack.sink.messages[0][1] == ["rcpt@elsewhere.test"]
    assert "event=auth client=127.0.0.1 user=alice@origin.test result=ok" in \
        auth_stack.procs[0].read_log()


def test_swaks_implicit_tls_with_auth(auth_stack):
    start(auth_stack)
    out = swaks(auth_stack.smtps_port, "--tls-on-connect", "--auth", "PLAIN", "--auth-user",
                "alice@origin.test", "--auth-password", PASSWORD)
    assert out.returncode == 0, out.stdout + out.stderr
    wait_for(lambda: auth_stack.sink.count() == 1, timeout=15, what="delivery")
    received = auth_stack.sink.messages[0][2].split(b"\r\nSubject:")[0].decode()
    assert "with ESMTPSA id" in received, received


def test_cram_md5_only_when_enabled_and_stored(auth_stack):
    """CRAM-MD5 is off by default; on, it works for a user saved with
    --cram-md5 and fails (535) for one without that secret."""
    start(auth_stack)
    with tls_client(auth_stack.smtp_port) as c:
        r = expect(c.cmd("EHLO client.test"), 250)
        assert "AUTH PLAIN LOGIN" in r.lines
        expect(c.cmd("AUTH CRAM-MD5"), 504, "5.5.4")
    users(auth_stack, "add", "carol@origin.test", "--cram-md5", stdin="carols secret\n")
    restart(auth_stack, "auth_mechanisms = PLAIN LOGIN CRAM-MD5\n")
    out = swaks(auth_stack.submission_port, "--tls", "--auth", "CRAM-MD5", "--auth-user",
                "carol@origin.test", "--auth-password", "carols secret", sender="carol@origin.test")
    assert out.returncode == 0, out.stdout + out.stderr
    with tls_client(auth_stack.submission_port) as c:  # alice has no CRAM-MD5 secret
        r = expect(c.cmd("AUTH CRAM-MD5"), 334)
        nonce = base64.b64decode(r.text)
        digest = hmac.new(PASSWORD.encode(), nonce, hashlib.md5).hexdigest()
        answer = base64.b64encode(f"alice@origin.test {digest}".encode()).decode()
        expect(c.cmd(answer), 535, "5.7.8")


# ---- refusals ----

def test_auth_needs_tls_and_is_not_offered_in_clear(auth_stack):
    start(auth_stack)
    with connect(auth_stack, ehlo=False) as c:
        r = expect(c.cmd("EHLO client.test"), 250)
        assert not [x for x in r.lines if x.startswith("AUTH")]
        expect(c.cmd("AUTH PLAIN " + plain("alice@origin.test", PASSWORD)), 538, "5.7.11")


def test_submission_requires_tls_then_auth(auth_stack):
    start(auth_stack)
    with connect_port(auth_stack.submission_port) as c:
        expect(c.cmd("MAIL FROM:<alice@origin.test>"), 530, "5.7.0")
    with tls_client(auth_stack.submission_port) as c:
        expect(c.cmd("MAIL FROM:<alice@origin.test>"), 530, "5.7.0")
        login(c)
        expect(c.cmd("AUTH PLAIN " + plain("alice@origin.test", PASSWORD)), 503, "5.5.1")
        expect(c.cmd("MAIL FROM:<alice@origin.test>"), 250, "2.1.0")
        expect(c.cmd("RCPT TO:<anyone@elsewhere.test>"), 250, "2.1.5")


def test_relay_port_is_no_open_relay_but_logins_may_relay(auth_stack):
    start(auth_stack)
    with tls_client(auth_stack.smtp_port) as c:
        expect(c.cmd("MAIL FROM:<x@origin.test>"), 250, "2.1.0")
        expect(c.cmd("RCPT TO:<anyone@elsewhere.test>"), 250, "2.1.5")  # loopback is trusted
    restart(auth_stack, "trusted_networks =\n")
    with tls_client(auth_stack.smtp_port) as c:
        expect(c.cmd("MAIL FROM:<x@origin.test>"), 250, "2.1.0")
        expect(c.cmd("RCPT TO:<anyone@elsewhere.test>"), 554, "5.7.1")
        expect(c.cmd("AUTH PLAIN " + plain("alice@origin.test", PASSWORD)), 503, "5.5.1")
        expect(c.cmd("RSET"), 250, "2.0.0")
        login(c)
        expect(c.cmd("MAIL FROM:<x@origin.test>"), 250, "2.1.0")
        expect(c.cmd("RCPT TO:<anyone@elsewhere.test>"), 250, "2.1.5")


@pytest.mark.parametrize("exchange, code, enhanced", [
    (["AUTH PLAIN " + plain("alice@origin.test", "wrong")], 535, "5.7.8"),
    (["AUTH PLAIN " + plain("nobody@origin.test", PASSWORD)], 535, "5.7.8"),
    (["AUTH PLAIN " + plain("alice@origin.test", PASSWORD, authz="boss@origin.test")], 535,
     "5.7.8"),
    (["AUTH PLAIN", "*"], 501, "5.7.0"),
    (["AUTH PLAIN", "not base64!"], 501, "5.5.2"),
    (["AUTH PLAIN " + base64.b64encode(b"no nuls here").decode()], 501, "5.5.2"),
    (["AUTH LOGIN", base64.b64encode(b"alice@origin.test").decode(), "*"], 501, "5.7.0"),
    (["AUTH GSSAPI"], 504, "5.5.4"),
    (["AUTH"], 504, "5.5.4"),
])
def test_failed_exchanges(auth_stack, exchange, code, enhanced):
    start(auth_stack)
    with tls_client(auth_stack.submission_port) as c:
        for line in exchange[:-1]:
            expect(c.cmd(line), 334)
        expect(c.cmd(exchange[-1]), code, enhanced)
        expect(c.cmd("MAIL FROM:<alice@origin.test>"), 530, "5.7.0")  # still not logged in
        expect(c.cmd("AUTH LOGIN"), 334)
        expect(c.cmd(base64.b64encode(b"alice@origin.test").decode()), 334)
        expect(c.cmd(base64.b64encode(PASSWORD.encode()).decode()), 235, "2.7.0")


def test_failed_logins_are_rate_limited_per_address(auth_stack):
    """After auth_fail_limit failures from an address, even the right
    password gets 454 4.7.0, on a new connection too, until the window ends."""
    start(auth_stack, "auth_fail_limit = 2\nauth_fail_window = 60\n")
    with tls_client(auth_stack.submission_port) as c:
        expect(c.cmd("AUTH PLAIN " + plain("alice@origin.test", "bad1")), 535, "5.7.8")
        expect(c.cmd("AUTH PLAIN " + plain("alice@origin.test", "bad2")), 535, "5.7.8")
        expect(c.cmd("AUTH PLAIN " + plain("alice@origin.test", PASSWORD)), 454, "4.7.0")
    with tls_client(auth_stack.submission_port) as c:
        expect(c.cmd("AUTH PLAIN " + plain("alice@origin.test", PASSWORD)), 454, "4.7.0")
    ttl = auth_stack.redis.client().ttl("{sealpost:auth}:fail:127.0.0.1")
    assert 0 < ttl <= 60


def test_attempts_count_from_their_start(auth_stack):
    """A client that sends a wrong password and hangs up at once has still
    used an attempt; a good login is taken back from the count."""
    start(auth_stack, "auth_fail_limit = 3\nauth_fail_window = 60\n")
    r = auth_stack.redis.client()
    key = "{sealpost:auth}:fail:127.0.0.1"
    with tls_client(auth_stack.submission_port) as c:
        login(c)
    assert int(r.get(key) or 0) == 0
    for _ in range(3):
        c = tls_client(auth_stack.submission_port)
        c.send(b"AUTH PLAIN " + plain("alice@origin.test", "guess").encode() + b"\r\n")
        c.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        c.close()  # a reset, before the verdict
    wait_for(lambda: int(r.get(key) or 0) == 3, what="three attempts counted")
    with tls_client(auth_stack.submission_port) as c:
        expect(c.cmd("AUTH PLAIN " + plain("alice@origin.test", PASSWORD)), 454, "4.7.0")


def test_cram_secret_length_is_bounded(stack):
    out = users(stack, "add", "long@origin.test", "--cram-md5", stdin="p" * 300 + "\n",
                check=False)
    assert out.returncode == 1 and "at most 255 characters" in out.stderr
    assert users(stack, "list").stdout == ""


def test_sender_bound_to_login(auth_stack):
    start(auth_stack, "sender_login_match = yes\n")
    with tls_client(auth_stack.submission_port) as c:
        login(c)
        expect(c.cmd("MAIL FROM:<mallory@origin.test>"), 553, "5.7.1")
        expect(c.cmd("MAIL FROM:<Alice@origin.test>"), 250, "2.1.0")


def test_submission_adds_date_and_message_id_when_missing(auth_stack):
    start(auth_stack)
    with tls_client(auth_stack.submission_port) as c:
        login(c)
        for body in (b"Subject: bare\r\n\r\nno date, no id\r\n",
                     b"Subject: full\r\ndate: Mon, 1 Jan 2024 00:00:00 +0000\r\n"
                     b"Message-Id: <mine@origin.test>\r\n\r\nbody\r\n"):
            expect(c.cmd("MAIL FROM:<alice@origin.test>"), 250, "2.1.0")
            expect(c.cmd("RCPT TO:<r@elsewhere.test>"), 250, "2.1.5")
            expect(c.cmd("DATA"), 354)
            expect(c.cmd(body + b"."), 250, "2.0.0")
    wait_for(lambda: auth_stack.sink.count() == 2, timeout=15, what="two deliveries")
    msgs = {m["Subject"]: m for m in
            (email.message_from_bytes(x[2]) for x in auth_stack.sink.messages)}
    assert re.fullmatch(r"<[0-9a-f]{32}@mx\.sealpost\.test>", msgs["bare"]["Message-ID"])
    assert msgs["bare"]["Date"]
    assert msgs["bare"].get_payload() == "no date, no id\r\n"
    assert msgs["full"].get_all("Message-ID") == ["<mine@origin.test>"]
    assert msgs["full"].get_all("Date") == ["Mon, 1 Jan 2024 00:00:00 +0000"]


def test_implicit_tls_port_says_nothing_in_clear(auth_stack):
    start(auth_stack)
    c = Client(auth_stack.smtps_port)
    try:
        c.send(b"EHLO client.test\r\n")
        assert c.closed_by_server(5.0)
    finally:
        c.close()


@pytest.mark.parametrize("extra, message", [
    ("[ingress]\nsubmission_listen = 127.0.0.1:{port}\n", "submission_listen needs tls_cert"),
    ("[ingress]\nauth_mechanisms = PLAIN NTLM\n", "'NTLM' is not one of"),
])
def test_bad_auth_settings_stop_the_start(stack, tmp_path, extra, message):
    bad = Sealpost(tmp_path, "bad", stack.config(extra.format(port=free_port())), "ingress").start()
    assert bad.proc.wait(10) != 0
    assert message in bad.read_log()
