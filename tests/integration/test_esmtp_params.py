"""SMTPUTF8 (RFC 6531) and DSN (RFC 3461) from the ingress to the next hop,
and the ingress's refusals of what is not SMTP at all: every reply code
and enhanced code checked, every outcome seen where a user would see it."""

import email
import time
from email import policy

import pytest

from conftest import Sealpost, wait_for
from peers import RawPeer
from smtpclient import Client, connect, expect

UTF8_SENDER = "jörg@origin.test"


# After each test every sealpost process stops cleanly (conftest.py: clean_exit).
pytestmark = pytest.mark.usefixtures("clean_exit")


def submit(c, sender, rcpts, body, mail_params="", rcpt_params=""):
    expect(c.cmd(f"MAIL FROM:<{sender}>{mail_params}".encode()), 250, "2.1.0")
    for r in rcpts:
        expect(c.cmd(f"RCPT TO:<{r}>{rcpt_params}".encode()), 250, "2.1.5")
    expect(c.cmd("DATA"), 354)
    return expect(c.cmd(body + b"."), 250, "2.0.0")  # body ends in CRLF


def notices(sink):
    return [email.message_from_bytes(m[2], policy=policy.compat32)
            for m in sink.messages if m[0] in ("", "<>")]


def status_blocks(report):
    """The per-message block and the per-recipient blocks of a DSN."""
    status = [p for p in report.get_payload() if p.get_content_type() == "message/delivery-status"]
    assert len(status) == 1, [p.get_content_type() for p in report.get_payload()]
    blocks = status[0].get_payload()
    return blocks[0], blocks[1:]


def through_peer(stack, extensions, sender, rcpts, body, mail_params="", rcpt_params="",
                 until="delivered"):
    """Submits one message for peer.test, routed to a RawPeer announcing
    extensions; waits until the peer has it (or the sink has a notice)."""
    peer = RawPeer(extensions=("PIPELINING", "8BITMIME") + tuple(extensions))
    peer.start()
    stack.ingress(extra="[ingress]\nrelay_domains = example.test peer.test\n")
    stack.worker(extra=f"[routes]\npeer.test = 127.0.0.1:{peer.port}\n")
    with connect(stack) as c:
        submit(c, sender, rcpts, body, mail_params, rcpt_params)
    if until == "delivered":
        wait_for(lambda: peer.delivered, timeout=15, what="delivery to the peer")
    else:
        wait_for(lambda: notices(stack.sink), timeout=15, what="a notice to the sender")
    peer.stop()
    return peer


def sent(peer, verb):
    """The command lines the peer got that start with verb."""
    return [x for x in peer.commands if x.startswith(verb)]


# ---- what EHLO offers ----

def test_ehlo_offers_smtputf8_and_dsn(stack):
    stack.ingress()
    with connect(stack, ehlo=False) as c:
        r = expect(c.cmd("EHLO client.test"), 250)
        assert "SMTPUTF8" in r.lines and "DSN" in r.lines, r.lines
        expect(c.cmd("HELP"), 214, "2.0.0")


# ---- SMTPUTF8 ----

def test_utf8_addresses_accepted_with_smtputf8_and_passed_on(stack):
    """MAIL ... SMTPUTF8 allows UTF-8 mailboxes; the next hop that offers
    SMTPUTF8 gets the parameter and the addresses byte for byte."""
    body = "Subject: Grüße\r\nFrom: jörg@origin.test\r\n\r\nhej\r\n".encode()
    peer = through_peer(stack, ["SMTPUTF8"], UTF8_SENDER, ["ünïcode@peer.test"], body,
                        " SMTPUTF8 BODY=8BITMIME")
    mail = sent(peer, "MAIL")[0]
    assert mail.startswith(f"MAIL FROM:<{UTF8_SENDER}>") and " SMTPUTF8" in mail, mail
    assert peer.delivered[0][0] == ["ünïcode@peer.test"]
    assert peer.delivered[0][1].endswith(body.rstrip(b"\r\n"))


def test_utf8_message_to_a_peer_without_smtputf8_bounces_5_6_7(stack):
    """A UTF-8 recipient cannot be reached through a peer without SMTPUTF8:
    no downgrade, a bounce with 5.6.7 to the sender."""
    peer = through_peer(stack, [], "sender@origin.test", ["ünïcode@peer.test"],
                        b"Subject: x\r\n\r\nx\r\n", " SMTPUTF8", until="notice")
    assert peer.delivered == [] and sent(peer, "RCPT") == []
    _, rcpts = status_blocks(notices(stack.sink)[0])
    assert rcpts[0]["Status"] == "5.6.7" and rcpts[0]["Action"] == "failed"


def test_smtputf8_with_ascii_only_message_goes_to_any_peer(stack):
    """SMTPUTF8 asked for but nothing in the envelope or header needs it:
    the message goes to a peer without SMTPUTF8 unchanged."""
    peer = through_peer(stack, [], "sender@origin.test", ["plain@peer.test"],
                        b"Subject: ascii\r\n\r\nx\r\n", " SMTPUTF8")
    mail = sent(peer, "MAIL")[0]
    assert "SMTPUTF8" not in mail, mail


def test_smtputf8_takes_no_value(stack):
    stack.ingress()
    with connect(stack) as c:
        expect(c.cmd("MAIL FROM:<a@x.test> SMTPUTF8=yes"), 501, "5.5.4")
        expect(c.cmd("MAIL FROM:<a@x.test>"), 250, "2.1.0")


# ---- DSN ----

def test_dsn_parameters_travel_to_a_peer_that_offers_dsn(stack):
    """RET, ENVID, NOTIFY and ORCPT reach a next hop that announces DSN, in
    canonical form; that hop reports success itself, so no notice from us."""
    peer = through_peer(stack, ["DSN"], "sender@origin.test", ["a@peer.test"],
                        b"Subject: dsn\r\n\r\nx\r\n", " RET=HDRS ENVID=QQ+2B314",
                        " NOTIFY=failure,Success ORCPT=rfc822;a+2Bb@peer.test")
    time.sleep(1)  # a notice, were one made, would be in the sink by now
    mail, rcpt = sent(peer, "MAIL")[0], sent(peer, "RCPT")[0]
    assert " RET=HDRS" in mail and " ENVID=QQ+2B314" in mail, mail
    assert rcpt == "RCPT TO:<a@peer.test> NOTIFY=SUCCESS,FAILURE ORCPT=rfc822;a+2Bb@peer.test", rcpt
    assert notices(stack.sink) == []


def test_utf8_orcpt_is_left_out_for_a_peer_without_smtputf8(stack):
    """RFC 6533: a raw UTF-8 ORCPT only travels under SMTPUTF8; to a DSN peer
    without it, NOTIFY still goes and ORCPT is left out."""
    peer = through_peer(stack, ["DSN"], "sender@origin.test", ["a@peer.test"],
                        b"Subject: x\r\n\r\nx\r\n", " SMTPUTF8",
                        " NOTIFY=FAILURE ORCPT=utf-8;j\u00f6rg@peer.test")
    assert sent(peer, "RCPT") == ["RCPT TO:<a@peer.test> NOTIFY=FAILURE"]


def test_dsn_parameters_are_not_sent_to_a_peer_without_dsn(stack):
    peer = through_peer(stack, [], "sender@origin.test", ["a@peer.test"],
                        b"Subject: dsn\r\n\r\nx\r\n", " RET=FULL ENVID=abc",
                        " NOTIFY=FAILURE ORCPT=rfc822;a@peer.test")
    envelope = sent(peer, "MAIL") + sent(peer, "RCPT")
    assert envelope == ["MAIL FROM:<sender@origin.test>", "RCPT TO:<a@peer.test>"], envelope


def test_notify_success_to_a_peer_without_dsn_gets_a_relayed_notice(stack):
    """RFC 3461 §5.2.2: relayed to a hop without DSN, a NOTIFY=SUCCESS
    recipient gets Action: relayed; one without SUCCESS gets nothing."""
    stack.ingress()
    stack.worker()
    with connect(stack) as c:
        submit(c, "sender@origin.test", ["yes@example.test"], b"Subject: s\r\n\r\nx\r\n",
               " ENVID=env-1", " NOTIFY=SUCCESS ORCPT=rfc822;Yes@example.test")
        submit(c, "sender@origin.test", ["no@example.test"], b"Subject: t\r\n\r\nx\r\n",
               "", " NOTIFY=FAILURE")
    wait_for(lambda: len(stack.sink.messages) >= 3, timeout=15, what="two deliveries and a notice")
    time.sleep(1)
    found = notices(stack.sink)
    assert len(found) == 1, [m["Subject"] for m in found]
    assert found[0]["Subject"] == "Successful Mail Relay Report"
    per_message, rcpts = status_blocks(found[0])
    assert per_message["Original-Envelope-Id"] == "env-1"
    assert len(rcpts) == 1
    assert rcpts[0]["Action"] == "relayed" and rcpts[0]["Status"].startswith("2.")
    assert rcpts[0]["Final-Recipient"] == "rfc822; yes@example.test"
    assert rcpts[0]["Original-Recipient"] == "rfc822;Yes@example.test"


def test_notify_never_suppresses_the_bounce(stack):
    """A 550 for a NOTIFY=NEVER recipient bounces nobody; a 550 for one
    without NOTIFY does, in a report with the original (RET=FULL)."""
    stack.sink.rcpt_reply = lambda a: "550 5.1.1 no such user" if a.startswith("gone") else None
    stack.ingress()
    stack.worker()
    body = b"Subject: full\r\n\r\nthe whole body\r\n"
    with connect(stack) as c:
        submit(c, "sender@origin.test", ["gone1@example.test"], body, "", " NOTIFY=NEVER")
        submit(c, "sender@origin.test", ["gone2@example.test"], body, " RET=FULL ENVID=e2")
    wait_for(lambda: notices(stack.sink), timeout=15, what="the bounce")
    time.sleep(1.5)
    found = notices(stack.sink)
    assert len(found) == 1
    per_message, rcpts = status_blocks(found[0])
    assert per_message["Original-Envelope-Id"] == "e2"
    assert [b["Final-Recipient"] for b in rcpts] == ["rfc822; gone2@example.test"]
    assert rcpts[0]["Status"] == "5.1.1"
    original = found[0].get_payload()[2]
    assert original.get_content_type() == "message/rfc822"
    assert b"the whole body" in found[0].as_bytes()


@pytest.mark.parametrize("command, code, enhanced", [
    ("MAIL FROM:<a@x.test> RET=ALL", 501, "5.5.4"),
    ("MAIL FROM:<a@x.test> RET", 501, "5.5.4"),
    ("MAIL FROM:<a@x.test> ENVID=" + "e" * 101, 501, "5.5.4"),
    ("MAIL FROM:<a@x.test> ENVID=a+zz", 501, "5.5.4"),
    ("MAIL FROM:<a@x.test> RET=FULL RET=HDRS", 501, "5.5.4"),
    ("MAIL FROM:<a@x.test> BODY=BINARYMIME", 501, "5.5.4"),
    ("MAIL FROM:<a@x.test> FROB=1", 555, "5.5.4"),
])
def test_bad_mail_parameters(stack, command, code, enhanced):
    stack.ingress()
    with connect(stack) as c:
        expect(c.cmd(command), code, enhanced)
        expect(c.cmd("MAIL FROM:<a@x.test> RET=HDRS ENVID=ok"), 250, "2.1.0")


@pytest.mark.parametrize("params, code", [
    (" NOTIFY=NEVER,SUCCESS", 501),
    (" NOTIFY=SOMETIMES", 501),
    (" NOTIFY", 501),
    (" NOTIFY=FAILURE NOTIFY=DELAY", 501),
    (" ORCPT=a@example.test", 501),
    (" ORCPT=rfc822;a+zzb", 501),
    (" ORCPT=rfc822;", 501),
    (" FROB", 555),
])
def test_bad_rcpt_parameters(stack, params, code):
    stack.ingress()
    with connect(stack) as c:
        expect(c.cmd("MAIL FROM:<a@x.test>"), 250, "2.1.0")
        expect(c.cmd(f"RCPT TO:<r@example.test>{params}"), code, "5.5.4")
        expect(c.cmd("RCPT TO:<r@example.test> NOTIFY=DELAY ORCPT=rfc822;r@example.test"), 250,
               "2.1.5")


def test_parameters_need_ehlo(stack):
    stack.ingress()
    with connect(stack, ehlo=False) as c:
        expect(c.cmd("HELO client.test"), 250)
        expect(c.cmd("MAIL FROM:<a@x.test> RET=FULL"), 555, "5.5.4")
        expect(c.cmd("MAIL FROM:<a@x.test>"), 250, "2.1.0")
        expect(c.cmd("RCPT TO:<r@example.test> NOTIFY=NEVER"), 555, "5.5.4")


# ---- what is not SMTP ----

@pytest.mark.parametrize("first", [
    b"GET / HTTP/1.1\r\nHost: mx\r\n\r\n",
    b"POST /submit HTTP/1.1\r\nContent-Length: 40\r\n\r\nMAIL FROM:<a@x.test>\r\n",
    b"CONNECT mx:25 HTTP/1.1\r\n\r\n",
])
def test_http_is_refused_and_closed(stack, first):
    """A browser or proxy request gets one 421 4.7.0 and the connection ends:
    nothing after the first line (a smuggled SMTP command) is answered."""
    stack.ingress()
    with connect(stack) as c:
        c.send(first)
        expect(c.reply(), 421, "4.7.0")
        assert c.closed_by_server(3.0)


def test_tls_handshake_on_a_plain_port_is_refused(stack):
    stack.ingress()
    with connect(stack, ehlo=False) as c:
        c.send(bytes([0x16, 0x03, 0x01, 0x00, 0xa5, 0x01, 0x00]))
        expect(c.reply(), 421, "4.7.0")
        assert c.closed_by_server(3.0)


def test_error_limit_is_configurable(stack):
    stack.ingress(extra="[ingress]\nmax_errors = 3\n")
    with connect(stack) as c:
        expect(c.cmd("FROB"), 500, "5.5.2")
        expect(c.cmd("MAIL FROM:<bad"), 501, "5.1.7")
        c.send(b"RCPT TO:<r@example.test>\r\n")
        expect(c.reply(), 503, "5.5.1")
        expect(c.reply(), 421, "4.7.0")
        assert c.closed_by_server(3.0)


def test_connections_per_address_are_limited(stack):
    """Over max_connections_per_ip from one untrusted address: 421 4.7.0
    at once; a connection slot freed is usable again."""
    stack.ingress(extra="[ingress]\nmax_connections_per_ip = 2\ntrusted_networks =\n")
    first, second = connect(stack), connect(stack)
    with Client(stack.smtp_port) as third:
        expect(third.reply(), 421, "4.7.0")
        assert third.closed_by_server(3.0)
    first.cmd("QUIT")
    first.close()
    time.sleep(0.3)
    with connect(stack) as again:
        expect(again.cmd("NOOP"), 250, "2.0.0")
    second.close()


def test_trusted_networks_are_not_limited_per_address(stack):
    stack.ingress(extra="[ingress]\nmax_connections_per_ip = 1\n")
    with connect(stack) as a, connect(stack) as b:
        expect(a.cmd("NOOP"), 250, "2.0.0")
        expect(b.cmd("NOOP"), 250, "2.0.0")


def test_postmaster_goes_to_the_configured_address(stack):
    stack.ingress(extra="[ingress]\npostmaster = hostmaster@example.test\n")
    stack.worker()
    with connect(stack) as c:
        submit(c, "a@x.test", ["Postmaster"], b"Subject: pm\r\n\r\nx\r\n")
    wait_for(lambda: stack.sink.count() == 1, timeout=15, what="delivery")
    assert stack.sink.messages[0][1] == ["hostmaster@example.test"]


def test_postmaster_refused_when_there_is_none(stack):
    stack.ingress(extra="[ingress]\nrelay_domains =\n")
    with connect(stack) as c:
        expect(c.cmd("MAIL FROM:<a@x.test>"), 250, "2.1.0")
        expect(c.cmd("RCPT TO:<Postmaster>"), 550, "5.1.1")


def test_bad_postmaster_setting_stops_the_start(tmp_path, stack):
    bad = Sealpost(tmp_path, "bad", stack.config("[ingress]\npostmaster = not an address\n"),
                   "ingress").start()
    assert bad.proc.wait(10) != 0
    assert "[ingress] postmaster: 'not an address' is not an address" in bad.read_log()


# ---- delay warnings (off by default) ----

def slow_sink(stack):
    stack.sink.rcpt_reply = lambda a: "451 4.3.2 try later" if a.startswith("slow") else None


def test_delay_warning_once_after_the_configured_time(stack):
    """With delay_warning_time = 1, a recipient still deferred after a second
    gets one Action: delayed notice with Will-Retry-Until; later retries do
    not warn again; NOTIFY without DELAY gets none."""
    slow_sink(stack)
    stack.ingress()
    stack.worker(extra="[worker]\ndelay_warning_time = 1\nmax_queue_lifetime = 60\n")
    with connect(stack) as c:
        submit(c, "sender@origin.test", ["slow1@example.test"], b"Subject: slow\r\n\r\nx\r\n")
        submit(c, "sender@origin.test", ["slow2@example.test"], b"Subject: quiet\r\n\r\nx\r\n",
               "", " NOTIFY=FAILURE")
    wait_for(lambda: notices(stack.sink), timeout=20, what="the delay notice")
    worker = stack.procs[1]
    attempts = worker.read_log().count("event=deferred")
    wait_for(lambda: worker.read_log().count("event=deferred") >= attempts + 4, timeout=30,
             what="more retries")
    found = notices(stack.sink)
    assert len(found) == 1, [m["Subject"] for m in found]
    assert found[0]["Subject"] == "Delayed Mail (still being retried)"
    _, rcpts = status_blocks(found[0])
    assert [b["Final-Recipient"] for b in rcpts] == ["rfc822; slow1@example.test"]
    assert rcpts[0]["Action"] == "delayed" and rcpts[0]["Status"] == "4.3.2"
    assert rcpts[0]["Will-Retry-Until"]
    assert "try later" in rcpts[0]["Diagnostic-Code"]


def test_no_delay_warning_by_default(stack):
    slow_sink(stack)
    stack.ingress()
    stack.worker()
    with connect(stack) as c:
        submit(c, "sender@origin.test", ["slow@example.test"], b"Subject: slow\r\n\r\nx\r\n",
               "", " NOTIFY=DELAY,FAILURE")
    worker = stack.procs[1]
    wait_for(lambda: worker.read_log().count("event=deferred") >= 3, timeout=30,
             what="three attempts")
    assert notices(stack.sink) == []
