"""Delivery outcomes: per-recipient results, retries with backoff, bounces
(RFC 3464) and expiry, against a scripted aiosmtpd sink."""

import email
import smtplib
import threading
import time
from collections import Counter, defaultdict
from email import policy

from conftest import Kill, repeats, sink_transactions, unexplained_repeats, wait_for
from peers import RawPeer

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
    assert block["Remote-MTA"] == "dns; 127.0.0.1"  # a host, not host:port (RFC 3464 §2.3.5)
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


def _send_many(stack, count, domains):
    errors = []

    def client(first):
        try:
            with smtplib.SMTP("127.0.0.1", stack.smtp_port, timeout=60) as s:
                for n in range(first, count, 4):
                    rcpts = [f"user{n}@{d}" for d in domains]
                    s.sendmail(SENDER, rcpts, message(f"m{n}"))
        except Exception as e:  # noqa: BLE001 - reported below
            errors.append(e)

    threads = [threading.Thread(target=client, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors


def _deliveries(sink):
    return Counter(r for _, rcpts, _ in delivered(sink) for r in rcpts)


DOMAINS = ("example.test", "origin.test")  # both routed to the sink: two jobs per message


def test_three_workers_deliver_every_recipient_once(stack):
    """Three workers on one Redis, 1000 messages with a recipient in each of
    two domains (2000 jobs): every recipient is delivered exactly once."""
    stack.ingress()
    workers = [stack.worker(extra="[worker]\nconcurrency = 8\n") for _ in range(3)]
    _send_many(stack, 1000, DOMAINS)
    wait_for(lambda: len(_deliveries(stack.sink)) >= 2000, timeout=180, what="2000 recipients")
    time.sleep(1)
    counts = _deliveries(stack.sink)
    assert len(counts) == 2000 and set(counts.values()) == {1}, \
        {r: c for r, c in counts.items() if c != 1}
    shares = [w.read_log().count("event=delivered") for w in workers]
    print("\ndeliveries per worker:", shares)
    assert sum(shares) == 2000 and all(shares), shares


def test_worker_killed_among_three_loses_nothing(stack):
    """The same with one worker SIGKILLed mid-run: every recipient is
    delivered at least once; the duplicates are counted and printed, and
    bounded: only the killed worker's deliveries in flight, once each."""
    stack.sink.data_delay = 0.01
    stack.ingress()
    extra = "[worker]\nconcurrency = 8\nlease_seconds = 2\n"
    workers = [stack.worker(extra=extra + f"helo_name = w{i}.test\n") for i in range(3)]
    _send_many(stack, 1000, DOMAINS)
    wait_for(lambda: len(_deliveries(stack.sink)) >= 500, timeout=120, what="a quarter of the mail")
    killed_at = time.time()
    workers[0].kill()
    wait_for(lambda: len(_deliveries(stack.sink)) >= 2000, timeout=180,
             what="all 2000 recipients")
    time.sleep(3)  # past a lease: a late duplicate would show up now
    counts = _deliveries(stack.sink)
    dups = sum(c - 1 for c in counts.values())
    print(f"\nworker killed; recipients: {len(counts)}, duplicates: {dups}")
    assert len(counts) == 2000
    # The kill repeats at most the deliveries w0 had between their dot and
    # their completion: 8 (its concurrency), each of one recipient (see
    # conftest.Kill). Nothing else may be delivered twice.
    found = repeats(sink_transactions(stack.sink, lambda _f, rcpts, _c: rcpts))
    left, _ = unexplained_repeats(found, [Kill(killed_at, "w0.test", 8, "worker kill")])
    assert not left and dups == len(found), (left, found)


def test_8bit_mail_to_a_peer_without_8bitmime_bounces(stack):
    """RFC 6152: 8-bit content (received with BODY=8BITMIME) is not sent to a
    server that does not announce 8BITMIME; without conversion it bounces
    (5.6.3) instead of being passed on as is."""
    async def no_8bitmime(server, session, envelope, hostname, responses):
        session.host_name = hostname  # aiosmtpd leaves this to a handle_EHLO hook
        return [r for r in responses if "8BITMIME" not in r]

    stack.sink.handle_EHLO = no_8bitmime  # looked up per connection by aiosmtpd
    stack.ingress()
    stack.worker()
    with smtplib.SMTP("127.0.0.1", stack.smtp_port, timeout=30) as s:
        s.sendmail(SENDER, ["rcpt@example.test"],
                   "Subject: caf\u00e9\r\n\r\nna\u00efve\r\n".encode(), mail_options=["BODY=8BITMIME"])
        s.sendmail(SENDER, ["seven@example.test"], message("plain"))  # 7-bit still goes
    wait_for(lambda: bounces(stack.sink) and delivered(stack.sink), timeout=20,
             what="the bounce and the 7-bit delivery")
    assert [m[1] for m in delivered(stack.sink)] == [["seven@example.test"]]
    _, _, per_rcpt = parse_bounce(bounces(stack.sink)[0][2])[1:]
    assert per_rcpt["rcpt@example.test"]["Status"] == "5.6.3"


def test_sigterm_hands_in_flight_jobs_back(stack):
    """SIGTERM while a delivery hangs (the server sits on RCPT): the worker
    waits stop_grace, cuts the transaction before its final dot, hands the
    job back due now and exits cleanly; the next worker delivers it at once,
    without waiting for the (long) lease to run out."""
    stack.sink.rcpt_delay = 30
    stack.ingress()
    extra = "[worker]\nstop_grace = 1\nlease_seconds = 120\n"
    first = stack.worker(extra=extra)
    send(stack, ["slow@example.test"], "handback")
    time.sleep(1.5)  # claimed, connected, and now waiting for the RCPT reply
    started = time.monotonic()
    first.check_clean_exit()
    took = time.monotonic() - started
    print(f"\nworker stopped in {took:.1f}s with stop_grace = 1")
    assert "event=stop_grace_over active=1" in first.read_log()
    stack.sink.rcpt_delay = 0
    stack.worker(extra=extra)
    wait_for(lambda: stack.sink.count() == 1, timeout=15, what="delivery by the next worker")
    time.sleep(1)
    assert stack.sink.count() == 1


def test_pipelining_sends_the_envelope_in_one_go(stack):
    """With a server that announces PIPELINING (RFC 2920), MAIL, every RCPT
    and DATA leave in one write; per-recipient replies still count."""
    peer = RawPeer(refuse={"b@pipe.test"})
    peer.start()
    stack.ingress(extra="[ingress]\nrelay_domains = example.test pipe.test\n")
    stack.worker(extra=f"[routes]\npipe.test = 127.0.0.1:{peer.port}\n")
    send(stack, ["a@pipe.test", "b@pipe.test", "c@pipe.test"], "pipelined")
    wait_for(lambda: peer.delivered and bounces(stack.sink), timeout=20,
             what="delivery to the peer and the bounce for b")
    peer.stop()
    batch = [c for c in peer.chunks if c.startswith(b"MAIL FROM")]
    assert len(batch) == 1, peer.chunks
    assert batch[0].count(b"RCPT TO:") == 3 and batch[0].endswith(b"DATA\r\n"), batch
    assert peer.delivered[0][0] == ["a@pipe.test", "c@pipe.test"]
    _, _, per_rcpt = parse_bounce(bounces(stack.sink)[0][2])[1:]
    assert list(per_rcpt) == ["b@pipe.test"] and per_rcpt["b@pipe.test"]["Status"] == "5.1.1"


def test_a_size_keyword_that_is_not_a_number_is_not_a_limit(stack):
    """RFC 1870's SIZE takes digits only. "SIZE 10x" was read as a limit of
    10 (so the message bounced 5.3.4) and "SIZE -1" as one of 2^64 - 1: a
    value that cannot be read now counts as no SIZE offered."""
    peers = [RawPeer(extensions=("PIPELINING", "8BITMIME", kw)) for kw in ("SIZE 10x", "SIZE -1")]
    for peer in peers:
        peer.start()
    stack.ingress(extra="[ingress]\nrelay_domains = example.test ten.test minus.test\n")
    stack.worker(extra=f"[routes]\nten.test = 127.0.0.1:{peers[0].port}\n"
                       f"minus.test = 127.0.0.1:{peers[1].port}\n")
    send(stack, ["a@ten.test", "b@minus.test"], "a body well over ten octets")
    wait_for(lambda: all(peer.delivered for peer in peers), timeout=20,
             what="delivery to both peers")
    for peer in peers:
        peer.stop()
        mail = [c for c in peer.commands if c.upper().startswith("MAIL FROM")]
        assert mail and "SIZE=" not in mail[0].upper(), mail
    assert bounces(stack.sink) == []


def test_pipelining_with_every_recipient_refused(stack):
    """All RCPTs refused in a pipelined batch: the DATA reply is read and the
    session ends; the recipients bounce, nothing is delivered."""
    peer = RawPeer(refuse={"x@pipe.test", "y@pipe.test"})
    peer.start()
    stack.ingress(extra="[ingress]\nrelay_domains = example.test pipe.test\n")
    stack.worker(extra=f"[routes]\npipe.test = 127.0.0.1:{peer.port}\n")
    send(stack, ["x@pipe.test", "y@pipe.test"], "refused")
    wait_for(lambda: bounces(stack.sink), timeout=20, what="the bounce")
    peer.stop()
    assert peer.delivered == []
    _, _, per_rcpt = parse_bounce(bounces(stack.sink)[0][2])[1:]
    assert sorted(per_rcpt) == ["x@pipe.test", "y@pipe.test"]


def test_destination_concurrency_limits_connections(stack):
    """destination_concurrency caps the connections to one next hop; the
    deliveries over the cap wait their turn and all arrive."""
    peer = RawPeer(hold=0.3)
    peer.start()
    stack.ingress(extra="[ingress]\nrelay_domains = example.test pipe.test\n")
    stack.worker(extra=f"[worker]\nconcurrency = 10\ndestination_concurrency = 2\n"
                       f"[routes]\npipe.test = 127.0.0.1:{peer.port}\n")
    for n in range(8):
        send(stack, [f"u{n}@pipe.test"], f"c{n}")
    wait_for(lambda: len(peer.delivered) == 8, timeout=30, what="8 deliveries")
    peer.stop()
    print(f"\nmost connections open at once: {peer.max_open}")
    assert peer.max_open == 2


# ---- connection reuse ----

def _peer_stack(stack, peer, worker_extra=""):
    stack.ingress(extra="[ingress]\nrelay_domains = example.test pipe.test\n")
    return stack.worker(extra=f"[worker]\n{worker_extra}\n"
                              f"[routes]\npipe.test = 127.0.0.1:{peer.port}\n")


def _two_in_a_row(stack, peer, worker_extra, stop=True):
    """Starts the peer and the stack, sends a message, waits for it, sends a
    second one and waits for that: the case connection reuse is for."""
    peer.start()
    worker = _peer_stack(stack, peer, worker_extra)
    send(stack, ["a@pipe.test"], "first")
    wait_for(lambda: len(peer.delivered) == 1, timeout=15, what="the first message")
    send(stack, ["b@pipe.test"], "second")
    wait_for(lambda: len(peer.delivered) == 2, timeout=20, what="the second message")
    if stop:
        peer.stop()
    return worker


def test_connection_is_reused_for_the_next_job(stack):
    """Two messages one after the other to the same next hop travel over one
    connection (connection_cache_time), which says QUIT once idle that long."""
    peer = RawPeer()
    _two_in_a_row(stack, peer, "connection_cache_time = 3", stop=False)
    assert peer.sessions == 1, peer.commands
    assert peer.commands.count("QUIT") == 0  # still idle, kept
    wait_for(lambda: "QUIT" in peer.commands, timeout=10, what="QUIT once idle")
    assert [c.split()[0] for c in peer.commands].count("EHLO") == 1
    peer.stop()


def test_no_reuse_when_switched_off(stack):
    peer = RawPeer()
    peer.start()
    _peer_stack(stack, peer, "connection_cache_time = 0")
    for n in range(2):
        send(stack, [f"u{n}@pipe.test"], f"m{n}")
        wait_for(lambda: len(peer.delivered) == n + 1, timeout=15, what=f"message {n}")
    peer.stop()
    assert peer.sessions == 2 and peer.commands.count("QUIT") == 2


def test_dead_kept_connection_is_replaced_without_an_attempt(stack):
    """The next hop stops answering on the kept connection: the job goes on a
    fresh connection at once, and nothing is deferred or bounced."""
    peer = RawPeer(hang_after=1)
    worker = _two_in_a_row(stack, peer, "connection_cache_time = 30\ncommand_timeout = 2")
    log = worker.read_log()
    assert "event=reconnect" in log and "event=deferred" not in log
    assert peer.sessions == 2 and not bounces(stack.sink)


def test_421_on_a_kept_connection_means_a_fresh_one(stack):
    """A server that takes one message per connection answers the next MAIL
    on the kept connection with 421: the job goes on a new connection at
    once, with no deferral."""
    peer = RawPeer(max_messages=1)
    worker = _two_in_a_row(stack, peer, "connection_cache_time = 30")
    log = worker.read_log()
    assert "event=reconnect" in log and "event=deferred" not in log, log[-2000:]


def test_refusal_on_a_kept_connection_is_not_a_bounce(stack):
    """A server that lost track of the kept connection refuses the next MAIL
    with 503: that says nothing about the mail, which goes on a fresh
    connection and is delivered, not bounced."""
    peer = RawPeer(confused_after=1)
    worker = _two_in_a_row(stack, peer, "connection_cache_time = 30")
    log = worker.read_log()
    assert "event=reconnect" in log and "event=bounced" not in log, log[-2000:]
    assert peer.sessions == 2 and not bounces(stack.sink)


def test_connection_is_not_kept_after_a_refused_message(stack):
    """Only a server that took the message is known to be ready for the next
    one: after a refusal at the end of the data the connection is closed."""
    peer = RawPeer(data_reply=b"451 4.3.0 try again later\r\n")
    peer.start()
    _peer_stack(stack, peer, "connection_cache_time = 30")
    send(stack, ["a@pipe.test"], "first")
    wait_for(lambda: "QUIT" in peer.commands, timeout=15, what="QUIT after the refusal")
    assert peer.sessions == 1 and len(peer.delivered) == 1
    peer.stop()


def test_stop_does_not_wait_for_a_silent_kept_connection(stack):
    """A kept connection whose server went silent does not hold a stopping
    worker: QUIT gets two seconds, and the worker exits cleanly."""
    peer = RawPeer(hang_after=1)
    peer.start()
    worker = _peer_stack(stack, peer, "connection_cache_time = 60\nstop_grace = 1")
    send(stack, ["a@pipe.test"], "first")
    wait_for(lambda: len(peer.delivered) == 1, timeout=15, what="the message")
    started = time.monotonic()
    worker.check_clean_exit()
    assert time.monotonic() - started < 6
    assert "event=shutdown_timeout" not in worker.read_log()
    stack.procs.remove(worker)
    peer.stop()
