"""CHUNKING (RFC 3030): messages in BDAT chunks, pipelined and split at
every awkward place, arrive byte for byte; a chunk's octets are content and
never commands, whatever the reply to its BDAT; the line rules of DATA hold
for chunks too, so nothing accepted here can be read differently when it is
relayed with DATA."""

import random

import pytest

from conftest import wait_for
from smtpclient import connect, expect, strip_received


# After each test every sealpost process stops cleanly (conftest.py: clean_exit).
pytestmark = pytest.mark.usefixtures("clean_exit")


def bdat(c, chunk: bytes, last=False):
    c.send(f"BDAT {len(chunk)}{' LAST' if last else ''}\r\n".encode() + chunk)


def mail(c, rcpt="r@example.test"):
    expect(c.cmd("MAIL FROM:<a@origin.test>"), 250, "2.1.0")
    expect(c.cmd(f"RCPT TO:<{rcpt}>"), 250, "2.1.5")


def delivered(stack, n=1):
    wait_for(lambda: stack.sink.count() == n, timeout=15, what=f"{n} deliveries")
    return [strip_received(m[2]) for m in stack.sink.messages]


def test_ehlo_offers_chunking(stack):
    stack.ingress()
    with connect(stack, ehlo=False) as c:
        assert "CHUNKING" in expect(c.cmd("EHLO client.test"), 250).lines


def test_one_chunk_is_literal(stack):
    """A "." line and a leading dot are content in BDAT: no unstuffing."""
    stack.ingress()
    stack.worker()
    body = b"Subject: chunk\r\n\r\n..leading dots stay\r\n.\r\nafter a dot line\r\n"
    with connect(stack) as c:
        mail(c)
        bdat(c, body, last=True)
        expect(c.reply(), 250, "2.0.0")
    assert delivered(stack) == [body]


def test_many_pipelined_chunks_split_anywhere(stack):
    """A 20 KB message in 60 chunks of random sizes (CRLFs split across
    chunks), all pipelined: one 250 per chunk, the message stored once, byte
    for byte, then a second message on the same connection."""
    stack.ingress()
    stack.worker()
    rnd = random.Random(3030)
    lines = [f"line {i} {'x' * rnd.randrange(0, 200)}".encode() for i in range(200)]
    body = b"Subject: many chunks\r\n\r\n" + b"\r\n".join(lines) + b"\r\n"
    cuts = sorted(rnd.sample(range(1, len(body)), 59))
    chunks = [body[a:b] for a, b in zip([0] + cuts, cuts + [len(body)])]
    with connect(stack) as c:
        c.send(b"MAIL FROM:<a@origin.test>\r\nRCPT TO:<r@example.test>\r\n")
        for i, chunk in enumerate(chunks):
            bdat(c, chunk, last=i == len(chunks) - 1)
        expect(c.reply(), 250, "2.1.0")
        expect(c.reply(), 250, "2.1.5")
        for _ in chunks[:-1]:
            expect(c.reply(), 250, "2.0.0")
        assert "queued as" in expect(c.reply(), 250, "2.0.0").text
        mail(c)
        bdat(c, b"Subject: second\r\n\r\nx\r\n")
        expect(c.reply(), 250, "2.0.0")
        bdat(c, b"", last=True)  # BDAT 0 LAST ends it
        expect(c.reply(), 250, "2.0.0")
    got = delivered(stack, 2)
    assert body in got and b"Subject: second\r\n\r\nx\r\n" in got


def test_refused_bdat_chunk_is_read_not_executed(stack):
    """BDAT with no transaction gets 503, and its octets, which look like
    commands, are dropped: neither RSET nor MAIL in them is answered."""
    stack.ingress()
    with connect(stack) as c:
        smuggled = b"RSET\r\nMAIL FROM:<evil@x.test>\r\n"
        bdat(c, smuggled, last=True)
        expect(c.reply(), 503, "5.5.1")
        expect(c.cmd("NOOP"), 250, "2.0.0")  # the next reply is NOOP's, not RSET's or MAIL's
        expect(c.cmd("RCPT TO:<r@example.test>"), 503, "5.5.1")  # no MAIL was run


def test_bdat_in_a_helo_session_is_refused(stack):
    stack.ingress()
    with connect(stack, ehlo=False) as c:
        expect(c.cmd("HELO client.test"), 250)
        mail(c)
        bdat(c, b"Subject: x\r\n\r\nx\r\n", last=True)
        expect(c.reply(), 503, "5.5.1")
        expect(c.cmd("NOOP"), 250, "2.0.0")


def test_data_after_bdat_is_refused(stack):
    stack.ingress()
    with connect(stack) as c:
        mail(c)
        bdat(c, b"Subject: x\r\n\r\n")
        expect(c.reply(), 250, "2.0.0")
        expect(c.cmd("DATA"), 503, "5.5.1")
        bdat(c, b"x\r\n", last=True)
        expect(c.reply(), 250, "2.0.0")


@pytest.mark.parametrize("bad", [
    b"a\nb\r\n",         # bare LF
    b"a\r.\rb\r\n",      # bare CR, the <CR>.<CR> smuggling variant
    b"\n.\n",            # <LF>.<LF>
    b"x" * 1001 + b"\r\n",  # line over 1000 octets
    b"a\r\n\x00.\r\nb\r\n",  # a NUL: no BINARYMIME is offered, so chunks are text
])
def test_chunk_breaking_line_rules_is_refused(stack, bad):
    """A chunk with a bare CR or LF, a NUL or an over-long line, gets 550 5.6.0 and
    ends the transaction: a BDAT pipelined after it finds none (503), and
    nothing is queued."""
    stack.ingress()
    stack.worker()
    with connect(stack) as c:
        mail(c)
        bdat(c, b"Subject: bad\r\n\r\n" + bad)
        bdat(c, b"the rest\r\n", last=True)
        expect(c.reply(), 550, "5.6.0")
        expect(c.reply(), 503, "5.5.1")
        expect(c.cmd("NOOP"), 250, "2.0.0")
    assert stack.sink.count() == 0
    assert not list(stack.redis.client().scan_iter(match="{mq:*}:m:*"))


def test_final_cr_without_lf_is_refused(stack):
    stack.ingress()
    with connect(stack) as c:
        mail(c)
        bdat(c, b"Subject: x\r\n\r\nends in CR\r", last=True)
        expect(c.reply(), 550, "5.6.0")


def test_dot_line_inside_a_chunk_is_relayed_as_content(stack):
    """CRLF.CRLF inside a chunk followed by command text: all content. When
    the worker relays it with DATA it is dot-stuffed, so the next hop
    (aiosmtpd) sees the same text, not an end of data and a second mail."""
    stack.ingress()
    stack.worker()
    body = (b"Subject: smuggle\r\n\r\nbefore\r\n.\r\nMAIL FROM:<evil@x.test>\r\n"
            b"RCPT TO:<victim@example.test>\r\nDATA\r\nforged\r\n.\r\n")
    with connect(stack) as c:
        mail(c)
        bdat(c, body, last=True)
        expect(c.reply(), 250, "2.0.0")
    assert delivered(stack) == [body]
    assert stack.sink.messages[0][1] == ["r@example.test"]


def test_bad_bdat_syntax_closes(stack):
    stack.ingress()
    with connect(stack) as c:
        mail(c)
        c.send(b"BDAT 12x LAST\r\n")
        expect(c.reply(), 501, "5.5.4")
        assert c.closed_by_server(3.0)


def test_bdat_over_the_size_limit_closes(stack):
    """A chunk that would take the message past max_message_size is refused
    before a byte of it is read, and the connection ends (reading gigabytes
    only to drop them helps nobody)."""
    stack.ingress(extra="[ingress]\nmax_message_size = 4096\n")
    with connect(stack) as c:
        mail(c)
        bdat(c, (b"x" * 998 + b"\r\n") * 3)
        expect(c.reply(), 250, "2.0.0")
        c.send(b"BDAT 2000 LAST\r\n")
        expect(c.reply(), 552, "5.3.4")
        assert c.closed_by_server(3.0)
