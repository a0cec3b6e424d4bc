"""A 451 that was stored anyway (issue 20): Redis stalled (SIGSTOP) while
sessions reach their final dot, so each enqueue goes out and gets no reply
within [redis] timeout_ms; the ingress answers 451 4.3.0 and, once Redis
answers again (SIGCONT), withdraws each of those messages. The clients send
them again, as a client that got 451 does, and the next hop must get each
message once: the retry, not the stalled copy too. A worker that claims a
stalled copy before its withdrawal comes makes it too late (the withdrawal
says so), and only then is there a second copy."""

import os
import re
import signal
import time

import pytest

from conftest import Sealpost, base_config, free_port, wait_for
from smtpclient import Client, expect

SESSIONS = 20
TIMEOUT_MS = 2000
SUBJECT = re.compile(rb"^Subject: (stalled-\d+)\r$", re.M)


@pytest.fixture(autouse=True)
def clean_exit(stack):
    yield
    os.kill(stack.redis.proc.pid, signal.SIGCONT)  # never leave it stopped
    for p in stack.procs:
        p.check_clean_exit()


def body(n):
    return (f"From: a@origin.test\r\nTo: r{n}@example.test\r\nSubject: stalled-{n}\r\n"
            f"Message-ID: <stalled-{n}@origin.test>\r\n\r\nmessage {n}\r\n").encode()


def open_session(stack, n):
    """A session with its whole message sent but the final dot."""
    c = Client(stack.smtp_port, timeout=10)
    expect(c.reply(), 220)
    expect(c.cmd("EHLO client.test"), 250)
    expect(c.cmd("MAIL FROM:<a@origin.test>"), 250, "2.1.0")
    expect(c.cmd(f"RCPT TO:<r{n}@example.test>"), 250, "2.1.5")
    expect(c.cmd("DATA"), 354)
    c.send(body(n))
    return c


def send_again(stack, n):
    """What a client does after a 451: the same message in a new session,
    as soon as the ingress takes mail again."""
    def attempt():
        try:
            with Client(stack.smtp_port, timeout=10) as c:
                if c.reply().code != 220:
                    return False
                expect(c.cmd("EHLO client.test"), 250)
                expect(c.cmd("MAIL FROM:<a@origin.test>"), 250, "2.1.0")
                expect(c.cmd(f"RCPT TO:<r{n}@example.test>"), 250, "2.1.5")
                expect(c.cmd("DATA"), 354)
                return c.cmd(body(n) + b".").code == 250
        except (AssertionError, OSError):
            return False
    wait_for(attempt, timeout=30, interval=0.2, what=f"message {n} accepted again")


def stall_at_the_dot(stack, ingress, redis_pids=None):
    """SESSIONS sessions send their dot into a stopped Redis (every process
    of redis_pids, else the stack's); each gets 451 4.3.0, and then Redis
    goes on. Returns the ids of the messages the ingress gave up on."""
    pids = redis_pids or [stack.redis.proc.pid]
    sessions = [open_session(stack, n) for n in range(SESSIONS)]
    for pid in pids:
        os.kill(pid, signal.SIGSTOP)
    try:
        for c in sessions:
            c.send(b".\r\n")
        for c in sessions:
            expect(c.reply(timeout=TIMEOUT_MS / 1000 * 5), 451, "4.3.0")
            c.close()
    finally:
        for pid in pids:
            os.kill(pid, signal.SIGCONT)
    log = ingress.read_log()
    failed = re.findall(r"event=enqueue_failed mid=([0-9a-f]{32}) .*withdraw=yes", log)
    assert len(failed) == SESSIONS, log[-3000:]
    return failed


def outcomes(ingress, mids):
    """What became of each withdrawal, from the ingress's log, once all came."""
    found = {}

    def settled():
        for mid, outcome in re.findall(r"mid=([0-9a-f]{32}) outcome=(\w+)", ingress.read_log()):
            if mid in mids:
                found[mid] = outcome
        return len(found) == len(mids)
    wait_for(settled, timeout=60, what="every withdrawal's verdict")
    return found


def delivered_subjects(sink):
    with sink.lock:
        return [SUBJECT.search(m[2]).group(1).decode() for m in sink.messages
                if SUBJECT.search(m[2])]


def settle_deliveries(stack, expected):
    wait_for(lambda: len(delivered_subjects(stack.sink)) >= expected, timeout=60,
             what=f"{expected} deliveries")
    time.sleep(3)  # room for a copy too many to arrive (worker lease 3 s, backoff 1-2 s)
    return delivered_subjects(stack.sink)


def extra():
    return f"[redis]\ntimeout_ms = {TIMEOUT_MS}\n"


def test_451s_during_a_stall_are_withdrawn_before_a_worker_runs(stack):
    """No worker during the stall: every 451'd message is withdrawn (or kept
    out by its tombstone), so after the clients' retries each of the
    SESSIONS messages reaches the next hop exactly once."""
    ingress = stack.ingress(extra=extra())
    mids = stall_at_the_dot(stack, ingress)
    verdicts = outcomes(ingress, mids)
    assert set(verdicts.values()) <= {"withdrawn", "gone"}, verdicts
    r = stack.redis.client()
    assert not list(r.scan_iter(match="{mq:*}:m:*")), "a stalled copy is still queued"
    stack.worker(extra=extra())
    for n in range(SESSIONS):
        send_again(stack, n)
    got = settle_deliveries(stack, SESSIONS)
    stalled_delivered = len(got) - SESSIONS
    print(f"\nSIGSTOP at the dot, no worker racing: {SESSIONS} x 451, outcomes "
          f"{sorted(verdicts.values()).count('withdrawn')} withdrawn, "
          f"{sorted(verdicts.values()).count('gone')} gone (kept out); "
          f"451'd copies still delivered: {stalled_delivered}")
    assert sorted(got) == sorted(f"stalled-{n}" for n in range(SESSIONS)), got
    assert stalled_delivered == 0


def test_a_worker_running_through_the_stall_loses_the_race(stack):
    """A worker runs through the stall and is woken as soon as the stalled
    enqueues run after SIGCONT, long before the ingress has reconnected to
    withdraw them. Those enqueues ran after their deadline, so their jobs
    are held back (LATE_GRACE_MS in sealpost.lua) and the withdrawals win:
    each message reaches the next hop once, by its retry. The count of 451'd
    copies delivered is printed."""
    ingress = stack.ingress(extra=extra())
    worker = stack.worker(extra=extra())
    mids = stall_at_the_dot(stack, ingress)
    verdicts = outcomes(ingress, mids)
    for n in range(SESSIONS):
        send_again(stack, n)
    got = settle_deliveries(stack, SESSIONS)
    delivered = set(re.findall(r"event=delivered mid=([0-9a-f]{32})", worker.read_log()))
    stalled_delivered = len(got) - SESSIONS
    tally = {o: list(verdicts.values()).count(o) for o in sorted(set(verdicts.values()))}
    print(f"\nSIGSTOP at the dot, a worker running: {SESSIONS} x 451, outcomes {tally}; "
          f"451'd copies still delivered: {stalled_delivered}")
    assert set(verdicts.values()) == {"withdrawn"}, verdicts  # every stalled copy was stored late
    assert sorted(got) == sorted(f"stalled-{n}" for n in range(SESSIONS)), got
    assert not delivered & set(mids)
    r = stack.redis.client()
    late = sum(int(r.hget(k, "late") or 0) for k in r.scan_iter(match="{mq:*}:st"))
    assert late == SESSIONS
    assert stalled_delivered == 0


def test_withdrawals_reach_each_messages_master_in_a_cluster(tmp_path, sink):
    """On Redis Cluster every master stalls at the dot: the 451'd messages
    live on all three, and each withdrawal is routed to its own message's
    master, which deletes it: none is left on any."""
    from test_redis_cluster import RedisCluster  # its three masters on loopback

    class Stalled:  # what stall_at_the_dot needs of a stack
        smtp_port = free_port()

    cluster = RedisCluster(tmp_path).start()
    stack = Stalled()
    config = base_config(cluster.ports[0], stack.smtp_port, sink.port, extra()).replace(
        "timeout_ms = 1000\n", "")
    ingress = Sealpost(tmp_path, "ingress", config, "ingress").start(stack.smtp_port)
    try:
        wait_for(lambda: ingress.read_log().count("event=queue_ready") >= 3,
                 what="the library on every master")
        mids = stall_at_the_dot(stack, ingress, [p.pid for p in cluster.procs.values()])
        verdicts = outcomes(ingress, mids)
        assert set(verdicts.values()) <= {"withdrawn", "gone"}, verdicts
        left = [k for c in cluster.clients() for k in c.scan_iter(match="{mq:*}:m:*")]
        assert left == []
        tombstones = [len(list(c.scan_iter(match="{mq:*}:w:*"))) for c in cluster.clients()]
        # one per message, on its own master: 20 random ids fall on more than one
        assert sum(tombstones) == SESSIONS and sum(1 for t in tombstones if t) >= 2, tombstones
        ingress.check_clean_exit()
    finally:
        ingress.kill()
        for p in cluster.procs.values():
            p.send_signal(signal.SIGCONT)
        cluster.stop()
