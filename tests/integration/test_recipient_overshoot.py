"""Recipients past [ingress] max_recipients (RFC 5321 §4.5.3.1.10): each gets
452 4.5.3 and the client sends the rest in a later transaction; the ones
accepted stay in the transaction. Up to max_recipients of them do not count
as errors (Postfix's smtpd_recipient_overshoot_limit), so a client that
pipelined too many is not cut off with its accepted recipients lost."""

import re

import pytest

from conftest import wait_for
from smtpclient import Client, connect, expect


# After each test every sealpost process stops cleanly (conftest.py: clean_exit).
pytestmark = pytest.mark.usefixtures("clean_exit")


def replies(c, n, timeout=60):
    return [c.reply(timeout=timeout) for _ in range(n)]


def test_1100_pipelined_recipients_deliver_the_first_1000(stack):
    """1,100 RCPTs and DATA in one write: 1,000 x 250, 100 x 452 4.5.3, 354,
    and the message (250) reaches the next hop with the 1,000 recipients."""
    stack.ingress()
    stack.worker()
    rcpts = [f"r{n:04d}@example.test" for n in range(1100)]
    with connect(stack) as c:
        c.send(b"MAIL FROM:<a@origin.test>\r\n" +
               b"".join(f"RCPT TO:<{r}>\r\n".encode() for r in rcpts) + b"DATA\r\n")
        expect(c.reply(), 250, "2.1.0")
        got = replies(c, len(rcpts))
        assert [r.code for r in got[:1000]] == [250] * 1000, got[:1000]
        for r in got[1000:]:
            expect(r, 452, "4.5.3")
        expect(c.reply(), 354)
        done = expect(c.cmd(b"Subject: many\r\n\r\nto a thousand\r\n."), 250, "2.0.0")
        assert re.search(r"queued as [0-9a-f]{32}", done.text), done
        expect(c.cmd("QUIT"), 221)
    wait_for(lambda: stack.sink.count() >= 1, timeout=60, what="delivery")
    (_, delivered, _), = stack.sink.messages
    assert sorted(delivered) == rcpts[:1000]


def test_the_overshoot_counts_as_errors_past_its_bound(stack):
    """With max_recipients = 3 and max_errors = 4: 3 accepted, 3 refused
    without counting, then 4 that count, and the next command finds the
    connection closing with 421."""
    stack.ingress(extra="[ingress]\nmax_recipients = 3\nmax_errors = 4\n")
    with connect(stack) as c:
        expect(c.cmd("MAIL FROM:<a@origin.test>"), 250, "2.1.0")
        for n in range(3):
            expect(c.cmd(f"RCPT TO:<ok{n}@example.test>"), 250, "2.1.5")
        for n in range(3 + 3):  # the uncounted overshoot, then errors 1 to 3
            expect(c.cmd(f"RCPT TO:<over{n}@example.test>"), 452, "4.5.3")
        expect(c.cmd("NOOP"), 250)  # 3 errors: still talking
        expect(c.cmd("RCPT TO:<over6@example.test>"), 452, "4.5.3")
        expect(c.cmd("NOOP"), 421, "4.7.0")
        assert c.closed_by_server()


def test_the_overshoot_starts_over_with_each_transaction(stack):
    """The bound is per transaction: after RSET the next overshoot is free
    again, and the recipients accepted before the 452s still make a message."""
    stack.ingress(extra="[ingress]\nmax_recipients = 2\nmax_errors = 3\n")
    with connect(stack) as c:
        for _ in range(3):
            expect(c.cmd("MAIL FROM:<a@origin.test>"), 250, "2.1.0")
            for n in range(2):
                expect(c.cmd(f"RCPT TO:<ok{n}@example.test>"), 250, "2.1.5")
            for n in range(2):
                expect(c.cmd(f"RCPT TO:<over{n}@example.test>"), 452, "4.5.3")
            expect(c.cmd("DATA"), 354)
            expect(c.cmd(b"Subject: two\r\n\r\ntwo\r\n."), 250, "2.0.0")
        expect(c.cmd("QUIT"), 221)
    keys = list(stack.redis.client().scan_iter(match="{mq:*}:m:*"))
    assert len(keys) == 3


def test_without_a_transaction_rcpt_still_counts(stack):
    """The overshoot is only for recipients past the limit: a RCPT without
    MAIL is a client error (503) and counts."""
    stack.ingress(extra="[ingress]\nmax_errors = 2\n")
    with Client(stack.smtp_port) as c:
        expect(c.reply(), 220)
        expect(c.cmd("EHLO client.test"), 250)
        expect(c.cmd("RCPT TO:<a@example.test>"), 503, "5.5.1")
        expect(c.cmd("RCPT TO:<a@example.test>"), 503, "5.5.1")
        expect(c.cmd("NOOP"), 421, "4.7.0")
