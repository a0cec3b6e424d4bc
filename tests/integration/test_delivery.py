"""Delivery outcomes: per-recipient results, retries with backoff, bounces
(RFC 3464) and expiry, against a scripted aiosmtpd sink."""

import email
import smtplib
import time
from collections import defaultdict
from email import policy

from conftest import wait_for

SENDER = "sender@origin.test"


def message(subject):
    return (f"From: {SENDER}\r\nTo: rcpt@example.test\r\nSubject: {subject}\r\n"
            f"Message-ID: <{subject}@origin.test>\r\n\r\nbody of {subject}\r\n").encode()


def send(stack, rcpts, subject="test", sender=SENDER):
    with smtplib.SMTP("127.0.0.1", stack.smtp_port, timeout=30) as s:
        s.sendmail(sender, rcpts, message(subject))


def bounces(sink):
    return [m for m in sink.messages if m[0] in ("", "<>")]


def delivered(sink):
    return [m for m in sink.messages if m[0] not in ("", "<>")]


def parse_bounce(content):
    msg = email.message_from_bytes(content, policy=policy.compat32)
    assert msg.get_content_type() == "multipart/report"
    assert msg.get_param("report-type") == "delivery-status"
    assert msg["Auto-Submitted"] == "auto-replied"
    parts = msg.get_payload()
    assert [p.get_content_type() for p in parts] == [
        "text/plain", "message/delivery-status", "text/rfc822-headers"]
    blocks = parts[1].get_payload()  # per-message block, then one per recipient
    per_message, per_rcpt = blocks[0], blocks[1:]
    return msg, parts, per_message, {b["Final-Recipient"].split(";")[1].strip(): b
                                     for b in per_rcpt}


def test_mixed_results_in_one_transaction(stack):
    """250, 451 and 550 for three recipients of one message: the first is
    delivered once, the second retried until accepted, the third bounced
    with the remote reply, in exactly one RFC 3464 report."""
    tries = defaultdict(int)

    def script(addr):
        tries[addr] += 1
        if addr == "later@example.test" and tries[addr] < 3:
            return "451 4.3.0 greylisted, try again later"
        if addr == "nobody@example.test":
            return "550 5.1.1 <nobody@example.test>: no such user"
        return None

    stack.sink.rcpt_reply = script
    stack.ingress()
    stack.worker()
    send(stack, ["ok@example.test", "later@example.test", "nobody@example.test"], "mixed")
    wait_for(lambda: len(delivered(stack.sink)) == 2 and bounces(stack.sink), timeout=30,
             what="two deliveries and a bounce")
    time.sleep(1.5)  # room for a wrong extra delivery or bounce to show up
    assert sorted(m[1][0] for m in delivered(stack.sink)) == [
        "later@example.test", "ok@example.test"]
    assert tries["ok@example.test"] == 1
    assert tries["later@example.test"] == 3
    assert len(bounces(stack.sink)) == 1
    _, rcpts, content = bounces(stack.sink)[0]
    assert rcpts == [SENDER]
    msg, parts, per_message, per_rcpt = parse_bounce(content)
    assert msg["To"] == f"<{SENDER}>"
    assert per_message["Reporting-MTA"].startswith("dns; ")
    assert per_message["Arrival-Date"]
    assert list(per_rcpt) == ["nobody@example.test"]
    block = per_rcpt["nobody@example.test"]
    assert block["Action"] == "failed"
    assert block["Status"] == "5.1.1"
    assert block["Diagnostic-Code"] == "smtp; 550 5.1.1 <nobody@example.test>: no such user"
    assert block["Remote-MTA"] == f"dns; 127.0.0.1:{stack.sink.port}"
    assert "Subject: mixed" in parts[2].get_payload()
    assert "body of mixed" not in content.decode()  # headers only without RET=FULL


def test_backoff_grows_and_never_retries_early(stack):
    """Attempt times follow the backoff: each gap at least min_backoff, and
    the allowed maximum doubles per attempt up to max_backoff."""
    times = []

    def script(addr):
        times.append(time.monotonic())
        return "451 4.4.1 not now" if len(times) < 5 else None

    stack.sink.rcpt_reply = script
    stack.ingress()
    stack.worker(extra="[worker]\nmin_backoff = 1\nmax_backoff = 4\n")
    send(stack, ["patient@example.test"], "backoff")
    wait_for(lambda: len(delivered(stack.sink)) == 1, timeout=40, what="the fifth attempt")
    gaps = [b - a for a, b in zip(times, times[1:])]
    print("\nattempt gaps (s):", ", ".join(f"{g:.2f}" for g in gaps))
    upper = [1, 2, 4, 4]
    for gap, hi in zip(gaps, upper):
        assert gap >= 0.95, gaps  # never before the due time
        assert gap <= hi + 2.0, gaps  # generous slack for a busy machine


def test_expired_message_bounces(stack):
    """A destination that always says 451: once the message is older than
    max_queue_lifetime it bounces as expired (4.4.7) and is not tried again."""
    tries = []
    def script(addr):
        if addr != "busy@example.test":
            return None  # the bounce itself gets through
        tries.append(addr)
        return "451 4.2.0 mailbox busy"

    stack.sink.rcpt_reply = script
    stack.ingress()
    stack.worker(extra="[worker]\nmin_backoff = 1\nmax_backoff = 1\nmax_queue_lifetime = 3\n")
    send(stack, ["busy@example.test"], "expiring")
    wait_for(lambda: bounces(stack.sink), timeout=30, what="the expiry bounce")
    assert len(tries) >= 2
    _, _, per_rcpt = parse_bounce(bounces(stack.sink)[0][2])[1:]
    block = per_rcpt["busy@example.test"]
    assert block["Action"] == "failed"
    assert block["Status"] == "4.4.7"
    assert "451 4.2.0 mailbox busy" in block["Diagnostic-Code"]
    settled = len(tries)
    time.sleep(2.5)
    assert len(tries) == settled, "tried again after the bounce"
    keys = list(stack.redis.client().scan_iter(match="{mq:*}:j:*"))
    assert keys == [], keys


def test_null_sender_is_never_bounced(stack):
    """A message from the null sender that fails permanently is dropped
    with a log line: never a bounce of a bounce."""
    stack.sink.rcpt_reply = lambda addr: "550 5.1.1 no such user"
    stack.ingress()
    worker = stack.worker()
    send(stack, ["gone@example.test"], "dsn", sender="")
    wait_for(lambda: "event=bounced" in worker.read_log(), timeout=20, what="the failure")
    time.sleep(1.5)
    assert stack.sink.messages == []
    assert list(stack.redis.client().scan_iter(match="{mq:*}:m:*")) == []


def test_lost_lease_aborts_before_the_final_dot(stack):
    """If the worker's lease is taken from it mid-delivery (here: its fencing
    token bumped, as when another worker reclaimed the job), the renewal
    right before the final dot fails and the worker closes the connection
    instead of sending the dot: the sink gets nothing from that attempt. The
    job is delivered once, later, by a valid lease."""
    r = stack.redis.client()
    bumped = []

    def steal_lease(addr):
        if not bumped:
            for key in r.scan_iter(match="{mq:*}:lease"):
                for jid in r.zrange(key, 0, -1):
                    r.hincrby(key.replace(b":lease", b":meta"), jid + b":tok", 1)
                    bumped.append(jid)
        return None

    stack.sink.rcpt_reply = steal_lease
    stack.ingress()
    worker = stack.worker()
    send(stack, ["rcpt@example.test"], "fenced")
    wait_for(lambda: "event=aborted_before_dot" in worker.read_log(), timeout=20,
             what="the aborted attempt")
    assert bumped and stack.sink.messages == []
    wait_for(lambda: stack.sink.count() == 1, timeout=30, what="delivery after the lease expired")
    time.sleep(1)
    assert stack.sink.count() == 1
    assert b"Subject: fenced" in stack.sink.messages[0][2]
