"""SMTP conformance of the ingress, byte-exact over raw sockets: replies and
their enhanced status codes (RFC 5321, 2034, 3463), PIPELINING (RFC 2920),
SIZE (RFC 1870), 8BITMIME (RFC 6152), strict DATA decoding against SMTP
smuggling, and the limits a user configures."""

import re
import shutil
import socket
import smtplib
import subprocess
import time
import uuid

import pytest

from conftest import wait_for
from smtpclient import HOST, HOSTNAME, Client, connect, expect, open_transaction, strip_received

def message_keys(stack):
    return list(stack.redis.client().scan_iter(match="{mq:*}:m:*"))


def wait_quiet(stack, seconds):
    """Waits, then returns what the sink got meanwhile."""
    time.sleep(seconds)
    return list(stack.sink.messages)


# After each test every sealpost process stops cleanly (conftest.py: clean_exit).
pytestmark = pytest.mark.usefixtures("clean_exit")


# ---- 1. greeting and EHLO ----

def test_greeting_ehlo_and_helo(stack):
    """A client sees 220, EHLO advertises PIPELINING, SIZE <limit>, 8BITMIME,
    ENHANCEDSTATUSCODES, and HELO gets a plain 250."""
    stack.ingress(extra="[ingress]\nmax_message_size = 3072\n")
    with Client(stack.smtp_port) as c:
        greeting = expect(c.reply(), 220)
        assert greeting.text.startswith(HOSTNAME + " "), greeting
        ehlo = expect(c.cmd("EHLO client.test"), 250)
        assert ehlo.lines[0].startswith(HOSTNAME), ehlo
        keywords = [line.upper() for line in ehlo.lines[1:]]
        for kw in ("PIPELINING", "SIZE 3072", "8BITMIME", "ENHANCEDSTATUSCODES"):
            assert kw in keywords, (kw, ehlo)
        helo = expect(c.cmd("HELO client.test"), 250)
        assert len(helo.lines) == 1, helo
        assert helo.text.startswith(HOSTNAME), helo
        # HELO (after EHLO) still allows a transaction.
        expect(c.cmd("MAIL FROM:<a@x.test>"), 250, "2.1.0")


# ---- 2. command sequence and syntax ----

def test_command_sequence_errors(stack):
    """Commands out of order get 503/554 5.5.1 and RSET really clears the transaction."""
    stack.ingress()
    with connect(stack, ehlo=False) as c:
        expect(c.cmd("MAIL FROM:<a@x.test>"), 503, "5.5.1")          # before EHLO
        expect(c.cmd("EHLO client.test"), 250)
        expect(c.cmd("RCPT TO:<r@example.test>"), 503, "5.5.1")      # before MAIL
        expect(c.cmd("DATA"), 503, "5.5.1")                          # before MAIL
        expect(c.cmd("MAIL FROM:<a@x.test>"), 250, "2.1.0")
        expect(c.cmd("DATA"), 554, "5.5.1")                          # MAIL but no RCPT
        expect(c.cmd("MAIL FROM:<b@x.test>"), 503, "5.5.1")          # nested MAIL
        expect(c.cmd("RCPT TO:<r@example.test>"), 250, "2.1.5")
        expect(c.cmd("RSET"), 250, "2.0.0")
        expect(c.cmd("RCPT TO:<r@example.test>"), 503, "5.5.1")      # RSET cleared MAIL
        expect(c.cmd("DATA"), 503, "5.5.1")
        # After RSET a new transaction starts cleanly.
        expect(c.cmd("MAIL FROM:<b@x.test>"), 250, "2.1.0")
        expect(c.cmd("RCPT TO:<r@example.test>"), 250, "2.1.5")
        expect(c.cmd("DATA"), 354)
        expect(c.cmd(b"Subject: after rset\r\n\r\nhi\r\n."), 250, "2.0.0")
    assert len(message_keys(stack)) == 1


def test_command_syntax_errors(stack):
    """Unknown commands, bad addresses and bad MAIL parameters get the specific
    5xx reply and leave the session usable."""
    stack.ingress(extra="[ingress]\nmax_message_size = 5000\n")
    with connect(stack) as c:
        expect(c.cmd("FROBNICATE now"), 500, "5.5.2")
        expect(c.cmd("MAIL FROM:bad"), 501, "5.1.7")
        expect(c.cmd("MAIL FROM:<a@x.test> FOO=1"), 555, "5.5.4")
        expect(c.cmd("MAIL FROM:<a@x.test> SIZE=5001"), 552, "5.3.4")
        expect(c.cmd("MAIL FROM:<a@x.test> SIZE=5000"), 250, "2.1.0")  # at the limit: fine
        expect(c.cmd("RCPT TO:<bad>"), 501, "5.1.3")
        expect(c.cmd("RCPT TO:<r@example.test>"), 250, "2.1.5")
        expect(c.cmd("NOOP"), 250, "2.0.0")


def test_informational_commands_and_quit(stack):
    """NOOP 250, HELP 214, VRFY 252 without disclosing anything, EXPN 502, QUIT
    221 and the server closes."""
    stack.ingress()
    with connect(stack) as c:
        expect(c.cmd("NOOP"), 250, "2.0.0")
        expect(c.cmd("HELP"), 214)
        v1 = expect(c.cmd("VRFY postmaster-secret@example.test"), 252, "2.0.0")
        v2 = expect(c.cmd("VRFY nosuchuser@elsewhere.test"), 252, "2.0.0")
        for v in (v1, v2):
            text = " ".join(v.lines).lower()
            assert "postmaster-secret" not in text and "nosuchuser" not in text, v
        assert v1.lines == v2.lines, "VRFY answers differ, so they disclose something"
        expect(c.cmd("EXPN staff"), 502, "5.5.1")
        expect(c.cmd("QUIT"), 221, "2.0.0")
        assert c.closed_by_server(3.0), "connection still open after 221"


# ---- 3./4. pipelining ----

def test_pipelining_replies_in_order_and_delivers(stack):
    """RFC 2920: a pipelined group gets its replies in order; commands after the
    end of data are answered after the message's 250; the message is delivered."""
    stack.ingress()
    stack.worker()
    with connect(stack) as c:
        c.send(b"MAIL FROM:<a@x.test>\r\nRCPT TO:<r1@example.test>\r\n"
               b"RCPT TO:<r2@example.test>\r\nDATA\r\n")
        expect(c.reply(), 250, "2.1.0")
        expect(c.reply(), 250, "2.1.5")
        expect(c.reply(), 250, "2.1.5")
        expect(c.reply(), 354)
        c.send(b"Subject: pipelined\r\n\r\nhello" + b"\r\n.\r\n" +
               b"MAIL FROM:<b@x.test>\r\nRCPT TO:<r3@example.test>\r\nQUIT\r\n")
        queued = expect(c.reply(), 250, "2.0.0")
        assert re.fullmatch(r"2\.0\.0 Ok: queued as [0-9a-f]{32}", queued.text), queued
        expect(c.reply(), 250, "2.1.0")
        expect(c.reply(), 250, "2.1.5")
        expect(c.reply(), 221, "2.0.0")
        assert c.closed_by_server(3.0)

    def rcpts():
        return sorted(r for _, rs, _ in stack.sink.messages for r in rs)

    wait_for(lambda: rcpts() == ["r1@example.test", "r2@example.test"], timeout=15,
             what="both recipients of the pipelined message")
    time.sleep(0.5)
    assert rcpts() == ["r1@example.test", "r2@example.test"]  # r3 never had DATA
    for mail_from, _, content in stack.sink.messages:
        assert mail_from == "a@x.test"
        assert strip_received(content) == b"Subject: pipelined\r\n\r\nhello\r\n"


def test_swaks_pipeline_delivers(stack):
    """swaks --pipeline sends a message that is queued and delivered."""
    stack.ingress()
    stack.worker()
    tag = uuid.uuid4().hex
    out = subprocess.run(["swaks", "--server", f"{HOST}:{stack.smtp_port}", "--pipeline",
                          "--to", "someone@example.test", "--from", "me@origin.test",
                          "--header", f"Subject: pipeline {tag}"],
                         capture_output=True, text=True, timeout=30)
    assert out.returncode == 0, out.stdout + out.stderr
    assert re.search(r"<\S*\s+250 2\.0\.0 Ok: queued as [0-9a-f]{32}", out.stdout), out.stdout
    # swaks really pipelined: MAIL, RCPT and DATA went out before their replies.
    assert re.search(r" -> MAIL FROM:<me@origin.test>\n -> RCPT TO:<someone@example.test>\n"
                     r" -> DATA\n<-\s+250 2\.1\.0 .*\n<-\s+250 2\.1\.5 .*\n<-\s+354 ",
                     out.stdout), out.stdout
    wait_for(lambda: stack.sink.count() >= 1, timeout=15, what="delivery of the swaks message")
    mail_from, rcpts, content = stack.sink.messages[0]
    assert (mail_from, rcpts) == ("me@origin.test", ["someone@example.test"])
    assert f"Subject: pipeline {tag}".encode() in content


@pytest.mark.skipif(not shutil.which("smtp-source"), reason="Postfix's smtp-source is missing")
def test_smtp_source_2000_messages_20_sessions_each_queued_once(stack):
    """Postfix's smtp-source: 2000 messages over 20 parallel sessions, each
    to its own recipient (-N); every one is accepted once, queued once and
    delivered once."""
    stack.ingress()
    stack.worker(extra="[worker]\nconcurrency = 50\n")
    out = subprocess.run(["smtp-source", "-s", "20", "-m", "2000", "-l", "1024", "-N",
                          "-f", "load@origin.test", "-t", "rcpt@example.test",
                          "-M", "client.test", f"{HOST}:{stack.smtp_port}"],
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stdout + out.stderr
    wait_for(lambda: stack.sink.count() >= 2000, timeout=240, interval=0.5,
             what="2000 deliveries")
    time.sleep(1)  # a duplicate, were there one, would arrive meanwhile
    rcpts = [r for _, rs, _ in stack.sink.messages for r in rs]
    assert len(rcpts) == 2000 and len(set(rcpts)) == 2000
    assert stack.procs[0].read_log().count("event=accepted ") == 2000
    enqueued = sum(int(stack.redis.client().hget(k, "enqueued") or 0)
                   for k in stack.redis.client().scan_iter(match="{mq:*}:st"))
    assert enqueued == 2000


# ---- 5./6. strict DATA decoding ----

SMUGGLED = b"MAIL FROM:<evil@x.test>\r\nRCPT TO:<victim@example.test>\r\nDATA\r\nsmuggled\r\n"
FAKE_END_MARKERS = [b"\n.\n", b"\n.\r\n", b"\r.\r\n", b"\r\n.\n", b"\r\n.\r"]


def test_smtp_smuggling_is_refused(stack):
    """A fake end of data (bare CR/LF variants) followed by a smuggled transaction
    gets exactly one 550 5.6.0 and nothing is queued or delivered."""
    stack.ingress()
    stack.worker()
    for marker in FAKE_END_MARKERS:
        with connect(stack) as c:
            open_transaction(c)
            c.send(b"Subject: smuggle\r\n\r\nlegit text" + marker + SMUGGLED + b"\r\n.\r\n")
            r = c.reply()
            assert r.code == 550 and r.enhanced == "5.6.0", (marker, r)
            assert c.pending(0.3) == b"", f"more than one reply for {marker!r}"
            expect(c.cmd("NOOP"), 250, "2.0.0")
    got = wait_quiet(stack, 2.0)
    assert got == [], f"delivered: {got!r}"
    assert message_keys(stack) == []
    # The worker was working all along: a clean message goes through.
    with smtplib.SMTP(HOST, stack.smtp_port, timeout=10) as s:
        s.sendmail("a@x.test", ["rcpt@example.test"], b"Subject: clean\r\n\r\nclean\r\n")
    wait_for(lambda: stack.sink.count() == 1, timeout=15, what="the clean message")
    assert all(b"smuggled" not in m[2] and "victim@example.test" not in m[1]
               for m in stack.sink.messages)


def test_nul_in_data_is_refused(stack):
    """A NUL in DATA content gets 550 5.6.0 once the data has been read to its
    real end (RFC 6152 keeps NUL out of 8BITMIME and we offer no BINARYMIME):
    "\r\n\0.\r\n" is no end of data here, and is never relayed to a next hop
    that would drop the NUL and see one. The session stays usable."""
    stack.ingress()
    stack.worker()
    with connect(stack, ehlo=False) as c:
        ehlo = expect(c.cmd("EHLO client.test"), 250)
        assert not any(line.upper().startswith("BINARYMIME") for line in ehlo.lines), ehlo
        open_transaction(c)
        c.send(b"Subject: nul\r\n\r\nfirst\r\n\x00.\r\n" + SMUGGLED + b"\r\n.\r\n")
        expect(c.reply(), 550, "5.6.0")
        assert c.pending(0.3) == b"", "more than one reply"
        expect(c.cmd("NOOP"), 250, "2.0.0")
        open_transaction(c)
        expect(c.cmd(b"Subject: a\x00b\r\n\r\nNUL in a header field\r\n."), 550, "5.6.0")
        assert message_keys(stack) == []
        # the next transaction on the same connection goes through
        open_transaction(c)
        expect(c.cmd(b"Subject: clean\r\n\r\nclean\r\n."), 250, "2.0.0")
    wait_for(lambda: stack.sink.count() == 1, timeout=15, what="the clean message")
    got = wait_quiet(stack, 1.0)
    assert len(got) == 1, got
    assert b"\x00" not in got[0][2] and b"clean" in got[0][2], got
    assert got[0][1] == ["rcpt@example.test"], got


def test_bare_lf_in_body_and_command(stack):
    """A bare LF inside message data is refused with 550 5.6.0, a command ending
    in a bare LF with 500 5.5.2; the session stays usable."""
    stack.ingress()
    with connect(stack) as c:
        open_transaction(c)
        expect(c.cmd(b"Subject: lf\r\n\r\nline one\nline two\r\n."), 550, "5.6.0")
        assert c.pending(0.2) == b""
        expect(c.cmd("NOOP"), 250, "2.0.0")
        assert message_keys(stack) == []
        c.send(b"NOOP\n")
        expect(c.reply(), 500, "5.5.2")
        expect(c.cmd("NOOP"), 250, "2.0.0")
        open_transaction(c)
        expect(c.cmd(b"Subject: ok\r\n\r\nfine\r\n."), 250, "2.0.0")
    assert len(message_keys(stack)) == 1


# ---- 7./8. limits ----

def test_line_length_limits(stack):
    """Body lines over 1000 octets (CRLF included) get 550 5.6.0, 1000 is fine;
    an over-long command line gets one 500 5.5.2 and the session continues."""
    stack.ingress()
    with connect(stack) as c:
        open_transaction(c)
        expect(c.cmd(b"Subject: long\r\n\r\n" + b"a" * 999 + b"\r\n."), 550, "5.6.0")
        expect(c.cmd("NOOP"), 250, "2.0.0")
        assert message_keys(stack) == []
        open_transaction(c)
        expect(c.cmd(b"Subject: long\r\n\r\n" + b"a" * 998 + b"\r\n."), 250, "2.0.0")
        # A valid command made too long: NOOP would get 250 if the limit were ignored.
        line = b"NOOP " + b"x" * 1995
        assert len(line) == 2000
        expect(c.cmd(line), 500, "5.5.2")
        assert c.pending(0.3) == b"", "more than one reply for one long line"
        expect(c.cmd("NOOP"), 250, "2.0.0")
    assert len(message_keys(stack)) == 1


def test_message_size_limit(stack):
    """With max_message_size = 4096, 10000 octets of data get 552 5.3.4 at the
    end of data and nothing is stored; 3000 octets are accepted."""
    stack.ingress(extra="[ingress]\nmax_message_size = 4096\n")
    with connect(stack) as c:
        ehlo = c.cmd("EHLO client.test")
        assert "SIZE 4096" in ehlo.lines, ehlo
        open_transaction(c)
        body = (b"x" * 98 + b"\r\n") * 100
        assert len(body) == 10000
        c.send(body)
        assert c.pending(0.3) == b"", "replied before the end of data"
        expect(c.cmd(b"."), 552, "5.3.4")
        expect(c.cmd("NOOP"), 250, "2.0.0")
        assert message_keys(stack) == []
        open_transaction(c)
        body = (b"y" * 98 + b"\r\n") * 30
        assert len(body) == 3000
        expect(c.cmd(body + b"."), 250, "2.0.0")
    assert len(message_keys(stack)) == 1


# ---- 9./10./11./12. transactions end to end ----

def test_dot_stuffing_round_trip(stack):
    """Lines ".", ".." and ".x" sent dot-stuffed arrive unstuffed, byte for byte."""
    stack.ingress()
    stack.worker()
    body = b"Subject: dots\r\n\r\n.\r\n..\r\n.x\r\nend\r\n"
    stuffed = b"Subject: dots\r\n\r\n..\r\n...\r\n..x\r\nend\r\n"
    with connect(stack) as c:
        open_transaction(c)
        expect(c.cmd(stuffed + b"."), 250, "2.0.0")
    wait_for(lambda: stack.sink.count() == 1, timeout=15, what="delivery")
    assert strip_received(stack.sink.messages[0][2]) == body


def test_duplicate_rcpt_accepted_once(stack):
    """The same recipient given twice (domain case differing too) is accepted
    both times and delivered once."""
    stack.ingress()
    stack.worker()
    with connect(stack) as c:
        expect(c.cmd("MAIL FROM:<a@x.test>"), 250, "2.1.0")
        expect(c.cmd("RCPT TO:<dup@example.test>"), 250, "2.1.5")
        expect(c.cmd("RCPT TO:<dup@example.test>"), 250, "2.1.5")
        expect(c.cmd("RCPT TO:<dup@EXAMPLE.Test>"), 250, "2.1.5")
        expect(c.cmd("DATA"), 354)
        expect(c.cmd(b"Subject: dup\r\n\r\nonce\r\n."), 250, "2.0.0")
    wait_for(lambda: stack.sink.count() >= 1, timeout=15, what="delivery")
    time.sleep(0.7)
    assert [m[1] for m in stack.sink.messages] == [["dup@example.test"]]


def test_max_recipients(stack):
    """With max_recipients = 3 the 4th RCPT gets 452 4.5.3; the 3 accepted
    recipients still make a message."""
    stack.ingress(extra="[ingress]\nmax_recipients = 3\n")
    with connect(stack) as c:
        expect(c.cmd("MAIL FROM:<a@x.test>"), 250, "2.1.0")
        for n in range(3):
            expect(c.cmd(f"RCPT TO:<r{n}@example.test>"), 250, "2.1.5")
        expect(c.cmd("RCPT TO:<r3@example.test>"), 452, "4.5.3")
        expect(c.cmd("DATA"), 354)
        expect(c.cmd(b"Subject: three\r\n\r\nthree\r\n."), 250, "2.0.0")
    assert len(message_keys(stack)) == 1


def test_null_sender(stack):
    """MAIL FROM:<> (a bounce) is accepted and delivered with an empty sender."""
    stack.ingress()
    stack.worker()
    with connect(stack) as c:
        expect(c.cmd("MAIL FROM:<>"), 250, "2.1.0")
        expect(c.cmd("RCPT TO:<rcpt@example.test>"), 250, "2.1.5")
        expect(c.cmd("DATA"), 354)
        expect(c.cmd(b"Subject: bounce\r\n\r\nbounce\r\n."), 250, "2.0.0")
    wait_for(lambda: stack.sink.count() == 1, timeout=15, what="delivery")
    mail_from, rcpts, content = stack.sink.messages[0]
    # aiosmtpd records the null reverse-path as "<>" (a real address cannot be that).
    assert (mail_from, rcpts) == ("<>", ["rcpt@example.test"])
    assert strip_received(content) == b"Subject: bounce\r\n\r\nbounce\r\n"


# ---- 13./14. error limit and timeout ----

def test_too_many_errors(stack):
    """After 20 bad commands the server answers 421 4.7.0 and closes."""
    stack.ingress()
    with connect(stack) as c:
        for _ in range(19):
            expect(c.cmd("FROBNICATE"), 500, "5.5.2")
        expect(c.cmd("NOOP"), 250, "2.0.0")  # 19 errors: still talking
        expect(c.cmd("FROBNICATE"), 500, "5.5.2")
        try:
            r = c.reply(timeout=1.0)  # sent unasked ...
        except AssertionError:
            r = c.cmd("NOOP")  # ... or in answer to the next command
        expect(r, 421, "4.7.0")
        assert c.closed_by_server(3.0), "connection still open after 421"


def test_command_timeout(stack):
    """With command_timeout = 1 an idle client gets 421 4.4.2 and is disconnected."""
    stack.ingress(extra="[ingress]\ncommand_timeout = 1\n")
    with connect(stack) as c:
        start = time.monotonic()
        r = c.reply(timeout=4.0)
        elapsed = time.monotonic() - start
        expect(r, 421, "4.4.2")
        assert 0.5 <= elapsed <= 3.0, elapsed
        assert c.closed_by_server(2.0)


# ---- 15./16. 8-bit content and addresses ----

EIGHT_BIT_BODY = (b"Subject: 8bit\r\nContent-Type: text/plain; charset=utf-8\r\n"
                  b"Content-Transfer-Encoding: 8bit\r\n\r\n"
                  + "Grüße aus Köln — 日本語 ✓\r\n".encode("utf-8")
                  + bytes(range(0x80, 0x100)) + b"\r\n")


def test_8bit_body_survives_and_is_relayed_as_8bitmime(stack):
    """With BODY=8BITMIME, octets 0x80-0xff and UTF-8 text arrive byte for
    byte, and the next hop is told BODY=8BITMIME too (RFC 6152)."""
    options = []
    original = stack.sink.handle_DATA

    async def record_options(server, session, envelope):
        options.append([o.upper() for o in envelope.mail_options])
        return await original(server, session, envelope)

    stack.sink.handle_DATA = record_options  # looked up per connection by aiosmtpd
    stack.ingress()
    stack.worker()
    with connect(stack) as c:
        open_transaction(c, mail_params=" BODY=8BITMIME")
        expect(c.cmd(EIGHT_BIT_BODY + b"."), 250, "2.0.0")
    wait_for(lambda: stack.sink.count() == 1, timeout=15, what="delivery")
    assert strip_received(stack.sink.messages[0][2]) == EIGHT_BIT_BODY
    assert "BODY=8BITMIME" in options[0], options


def test_non_ascii_address_needs_smtputf8(stack):
    """Without SMTPUTF8, a UTF-8 mailbox gets 553 5.6.7 in RCPT TO and MAIL FROM."""
    stack.ingress()
    with connect(stack) as c:
        expect(c.cmd("MAIL FROM:<a@x.test>"), 250, "2.1.0")
        expect(c.cmd("RCPT TO:<jörg@example.test>".encode("utf-8")), 553, "5.6.7")
        expect(c.cmd("RCPT TO:<joerg@example.test>"), 250, "2.1.5")  # still in the transaction
        expect(c.cmd("RSET"), 250, "2.0.0")
        expect(c.cmd("MAIL FROM:<jörg@x.test>".encode("utf-8")), 553, "5.6.7")


# ---- found while probing: conformance gaps beyond the list above ----

def test_rcpt_bare_postmaster_accepted(stack):
    """RCPT TO:<Postmaster> without a domain is accepted (RFC 5321 §4.1.1.3,
    §4.5.1) and reaches the postmaster of the first relay domain."""
    stack.ingress()
    stack.worker()
    with connect(stack) as c:
        expect(c.cmd("MAIL FROM:<a@x.test>"), 250, "2.1.0")
        expect(c.cmd("RCPT TO:<postMaster>"), 250, "2.1.5")
        expect(c.cmd("DATA"), 354)
        expect(c.cmd(b"Subject: to the postmaster\r\n\r\nhello\r\n."), 250, "2.0.0")
    wait_for(lambda: stack.sink.count() == 1, timeout=15, what="delivery")
    assert stack.sink.messages[0][1] == ["postmaster@example.test"]


def test_mail_size_not_a_number_is_syntax_error(stack):
    """A non-numeric SIZE= value gets 501 5.5.4 and starts no transaction."""
    stack.ingress()
    with connect(stack) as c:
        expect(c.cmd("MAIL FROM:<a@x.test> SIZE=abc"), 501, "5.5.4")
        expect(c.cmd("MAIL FROM:<a@x.test>"), 250, "2.1.0")  # no transaction was open


# ---- found in review: resource and shutdown behaviour ----

def rss_kib(pid):
    with open(f"/proc/{pid}/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("VmRSS:"))


def test_client_that_never_reads_cannot_grow_memory(stack):
    """A client that pipelines commands and never reads the replies: the
    server stops reading from it instead of queueing replies without bound.
    (EHLO again and again is junk past junk_command_limit, which would close
    the session long before the bound is reached: lifted here.)"""
    ingress = stack.ingress(extra="[ingress]\njunk_command_limit = 100000\n")
    before = rss_kib(ingress.proc.pid)
    sock = socket.create_connection(("127.0.0.1", stack.smtp_port))
    sock.setblocking(False)
    chunk = b"EHLO client.test\r\n" * 4096  # each line provokes ~120 bytes of reply
    sent, deadline = 0, time.monotonic() + 6
    while time.monotonic() < deadline and sent < 200 * 1024 * 1024:
        try:
            sent += sock.send(chunk)
        except BlockingIOError:
            time.sleep(0.01)
    grown = rss_kib(ingress.proc.pid) - before
    sock.close()
    print(f"\nsent {sent >> 20} MiB unread-reply input; ingress RSS grew {grown >> 10} MiB")
    assert sent < 200 * 1024 * 1024, "the server kept reading everything"
    # Unbounded, this grows by several times what was sent (48 MiB in 4 s here).
    assert grown < 24 * 1024, f"RSS grew by {grown} KiB"


def test_half_close_still_gets_every_reply(stack):
    """A client that pipelines a whole transaction and QUIT, then shuts down
    its sending side, still gets the 250 for its message and the 221."""
    stack.ingress()
    with connect(stack) as c:
        c.cmd("EHLO client.test")
        c.send(b"MAIL FROM:<a@x.test>\r\nRCPT TO:<r@example.test>\r\nDATA\r\n"
               b"Subject: half\r\n\r\nbody\r\n.\r\nQUIT\r\n")
        c.sock.shutdown(socket.SHUT_WR)
        codes = [c.reply().code for _ in range(5)]
        assert codes == [250, 250, 354, 250, 221], codes
        assert c.closed_by_server()


@pytest.mark.parametrize("rcpts", [["one@example.test"], ["a@example.test", "b@example.test"]])
def test_received_header_is_well_formed(stack, rcpts):
    """Received: (RFC 5321 §4.4, RFC 5322 §3.6.7) parses: the date-time after
    a ';' whether or not a 'for' clause names the one recipient."""
    import email.utils
    stack.ingress()
    stack.worker()
    with connect(stack) as c:
        open_transaction(c, rcpts=rcpts)
        expect(c.cmd(b"Subject: r\r\n\r\nx\r\n."), 250, "2.0.0")
    wait_for(lambda: stack.sink.count() == 1, timeout=15, what="delivery")
    content = stack.sink.messages[0][2]
    received = RECEIVED_FIELD.match(content).group(0).decode()
    tokens, sep, date = re.sub(r"\r\n[ \t]", " ", received).rstrip("\r\n").rpartition(";")
    assert sep and email.utils.parsedate_to_datetime(date.strip()), received
    assert re.match(r"Received: from client\.test \(\[127\.0\.0\.1\]\) by mx\.sealpost\.test "
                    r"\(sealpost\) with ESMTP id [0-9a-f]{32}", tokens), received
    assert (f"for <{rcpts[0]}>" in tokens) == (len(rcpts) == 1), received


RECEIVED_FIELD = re.compile(rb"Received: [^\r]*\r\n(?:[ \t][^\r]*\r\n)*")
