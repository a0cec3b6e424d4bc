"""The walking skeleton end to end: SMTP in, Redis, SMTP out."""

import re
import smtplib
import subprocess
import threading
import time
from collections import Counter

from conftest import (BIN, Kill, Sealpost, free_port, port_open, repeats, sink_transactions,
                      unexplained_repeats, unseal, up_config, wait_for)


def make_message(n, extra=b""):
    return (b"From: sender@origin.test\r\n"
            b"To: rcpt@example.test\r\n"
            b"Subject: message " + str(n).encode() + b"\r\n"
            b"X-Seq: " + str(n).encode() + b"\r\n"
            b"\r\n"
            b"Body of message " + str(n).encode() + b".\r\n"
            b".leading dot survives\r\n"
            b"..two leading dots survive\r\n" + extra +
            b"last line\r\n")


RECEIVED = re.compile(rb"\AReceived: [^\r]*\r\n(?:[ \t][^\r]*\r\n)*")


def strip_received(content):
    """Removes the Received: header sealpost adds on top, and returns it too."""
    m = RECEIVED.match(content)
    assert m, f"no Received: header on top: {content[:200]!r}"
    return m.group(0), content[m.end():]


def seq_of(content):
    return int(re.search(rb"X-Seq: (\d+)", content).group(1))


def send(port, n, rcpts=("rcpt@example.test",), source=None):
    with smtplib.SMTP("127.0.0.1", port, source_address=source, timeout=30) as s:
        s.sendmail("sender@origin.test", list(rcpts), make_message(n))


def test_message_travels_once_with_body_intact(stack):
    """(a) 200 messages from 4 client threads arrive exactly once each,
    byte-identical apart from the Received: header."""
    stack.ingress()
    stack.worker()
    errors = []

    def client(first):
        try:
            with smtplib.SMTP("127.0.0.1", stack.smtp_port, timeout=30) as s:
                for n in range(first, first + 50):
                    s.sendmail("sender@origin.test", ["rcpt@example.test"], make_message(n))
        except Exception as e:  # noqa: BLE001 - reported below
            errors.append(e)

    threads = [threading.Thread(target=client, args=(i * 50,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors
    wait_for(lambda: stack.sink.count() >= 200, timeout=60, what="200 deliveries")
    time.sleep(0.5)  # anything extra would show up now
    seqs = Counter()
    for mail_from, rcpts, content in stack.sink.messages:
        assert mail_from == "sender@origin.test"
        assert rcpts == ["rcpt@example.test"]
        received, rest = strip_received(content)
        assert b"by mx.sealpost.test (sealpost) with ESMTP id " in received
        assert rest == make_message(seq_of(content))
        seqs[seq_of(content)] += 1
    assert sorted(seqs) == list(range(200))
    assert set(seqs.values()) == {1}, "duplicates: " + str({k: v for k, v in seqs.items() if v > 1})
    for p in stack.procs:
        p.check_clean_exit()
    # Delivered messages leave nothing behind in Redis but counters (the
    # shard's, and its last ten minutes of copies by kind).
    leftover = [k for k in stack.redis.client().scan_iter()
                if not k.endswith((b":st", b":meta", b":log", b":enc",
                                   b"{sealpost:crypto}:sealcheck"))]
    assert leftover == []


def test_worker_killed_mid_run_loses_nothing(stack):
    """(b) A worker SIGKILLed while delivering and replaced: every accepted
    message still arrives. Duplicates are possible (at-least-once): only of
    the killed worker's deliveries in flight at the kill, one each at most."""
    stack.sink.data_delay = 0.02
    stack.ingress()
    first = stack.worker(extra="[worker]\nconcurrency = 4\nhelo_name = first.test\n")
    for n in range(100):
        send(stack.smtp_port, n)
    wait_for(lambda: stack.sink.count() >= 20, timeout=30, what="deliveries to start")
    killed_at = time.time()
    first.kill()
    at_kill = stack.sink.count()
    assert at_kill < 100, "the worker finished before it could be killed; make the sink slower"
    second = stack.worker(extra="[worker]\nconcurrency = 4\nhelo_name = second.test\n")
    wait_for(lambda: len({seq_of(c) for _, _, c in stack.sink.messages}) >= 100, timeout=60,
             what="every message after the kill")
    # The killed worker's leases (lease_seconds = 3) run out; a repeat shows by then.
    time.sleep(max(0.0, killed_at + 3 + 2 - time.time()))
    counts = Counter(seq_of(c) for _, _, c in stack.sink.messages)
    dups = sum(v - 1 for v in counts.values())
    print(f"\nworker killed after {at_kill} deliveries; duplicates: {dups}")
    assert sorted(counts) == list(range(100))
    # The kill repeats at most the deliveries the first worker had between
    # their dot and their completion: its 4 (concurrency), one message each
    # (see conftest.Kill). Nothing else may be delivered twice.
    found = repeats(sink_transactions(stack.sink, lambda _f, _r, content: [seq_of(content)]))
    left, _ = unexplained_repeats(found, [Kill(killed_at, "first.test", 4, "worker kill")])
    assert not left and dups == len(found), (left, found)
    second.check_clean_exit()


def _greeting(port):
    import socket
    with socket.create_connection(("127.0.0.1", port), timeout=5) as c:
        return c.recv(200)


def test_redis_down_gives_451_then_recovers(stack):
    """(c) With Redis stopped, the end of DATA gets 451 (never 250); once Redis
    is back the same ingress accepts again, without a restart."""
    ingress = stack.ingress()
    # A session open when Redis goes: its message gets 451, never 250.
    s = smtplib.SMTP("127.0.0.1", stack.smtp_port, timeout=30)
    s.ehlo()
    stack.redis.stop()
    for n in range(3):
        s.mail("sender@origin.test")
        # The recipient's encryption policy is in Redis too: with nothing
        # cached, the refusal comes at RCPT already; else at the end of DATA.
        code, msg = s.rcpt("rcpt@example.test")
        if code == 250:
            code, msg = s.data(make_message(n))
        assert code == 451, (code, msg)
        assert msg.startswith(b"4.3.0"), msg
        s.rset()
    s.quit()
    # A new connection is turned away at once while the queue is unreachable.
    wait_for(lambda: b"queue unreachable" in _greeting(stack.smtp_port), what="421 at connect")
    stack.redis.start()

    def accepted():
        try:
            send(stack.smtp_port, 99)
            return True
        except smtplib.SMTPConnectError as e:
            assert e.smtp_code == 421, e
            return False
        except smtplib.SMTPDataError as e:
            assert e.smtp_code == 451, e
            return False
        except smtplib.SMTPRecipientsRefused as e:
            assert all(code == 451 for code, _ in e.recipients.values()), e
            return False

    wait_for(accepted, timeout=15, interval=0.2, what="ingress to accept after redis returned")
    assert ingress.proc.poll() is None
    # Only the accepted message is queued: the refused ones left nothing.
    r = stack.redis.client()
    messages = [k for k in r.scan_iter(match="{mq:*}:m:*")]
    assert len(messages) == 1
    mid = messages[0].split(b":m:")[1].decode()
    sealed = r.get(messages[0].replace(b":m:", b":b:") + b":0")
    assert b"X-Seq: 99" not in sealed  # sealed at rest
    assert b"X-Seq: 99" in unseal(sealed, mid)
    ingress.check_clean_exit()


def test_redis_killed_mid_session_gives_451(stack):
    """SIGKILL, not a clean shutdown: the adapter must notice the dead socket."""
    stack.ingress()
    with smtplib.SMTP("127.0.0.1", stack.smtp_port, timeout=30) as s:
        s.ehlo()
        s.mail("sender@origin.test")
        s.rcpt("rcpt@example.test")
        stack.redis.proc.kill()
        stack.redis.proc.wait()
        code, msg = s.data(make_message(1))
        assert code == 451, (code, msg)


def test_no_open_relay(stack):
    """(d) From an untrusted address, mail for a foreign domain is refused with
    554 5.7.1; mail for a relay domain is accepted; trusted clients may relay."""
    ing = stack.ingress(extra="[ingress]\ntrusted_networks = 127.0.0.1/32\n")
    with smtplib.SMTP("127.0.0.1", stack.smtp_port, source_address=("127.0.0.5", 0)) as s:
        s.ehlo()
        s.mail("someone@outside.test")
        code, msg = s.rcpt("victim@foreign.test")
        assert (code, msg[:5]) == (554, b"5.7.1"), (code, msg)
        code, msg = s.rcpt("rcpt@example.test")
        assert code == 250, (code, msg)
    with smtplib.SMTP("127.0.0.1", stack.smtp_port) as s:  # 127.0.0.1: trusted
        s.ehlo()
        s.mail("someone@inside.test")
        code, msg = s.rcpt("anyone@foreign.test")
        assert code == 250, (code, msg)
    ing.check_clean_exit()


def test_up_starts_private_redis_and_delivers(tmp_path, sink):
    """`sealpost up` (what `make run` starts): private redis-server under the
    data dir, ingress and worker; swaks's message reaches the routed sink;
    SIGTERM stops everything, redis included."""
    smtp_port, redis_port = free_port(), free_port()
    config = up_config(tmp_path, smtp_port, redis_port, sink.port)
    up = Sealpost(tmp_path, "up", config, "up").start(smtp_port)
    wait_for(lambda: "event=queue_ready" in up.read_log(), what="private redis")
    out = subprocess.run(["swaks", "--server", f"127.0.0.1:{smtp_port}", "--to",
                          "someone@example.test", "--from", "me@origin.test",
                          "--header", "Subject: hello from swaks"],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stdout + out.stderr
    assert re.search(r"250 2\.0\.0 Ok: queued as [0-9a-f]{32}", out.stdout), out.stdout
    wait_for(lambda: sink.count() == 1, what="delivery")
    assert b"Subject: hello from swaks" in sink.messages[0][2]
    assert (tmp_path / "var" / "appendonlydir").is_dir()
    up.check_clean_exit()
    assert not port_open("127.0.0.1", redis_port), "private redis-server still running"


def test_deferred_then_delivered(stack):
    """4xx from the next hop: the job is retried after the retry delay, and
    only the recipients still pending are tried again."""
    tries = Counter()

    def script(addr):
        tries[addr] += 1
        if addr == "slow@example.test" and tries[addr] < 3:
            return "451 4.3.0 try again later"
        return None

    stack.sink.rcpt_reply = script
    stack.ingress()
    stack.worker()
    send(stack.smtp_port, 7, rcpts=("fast@example.test", "slow@example.test"))
    wait_for(lambda: stack.sink.count() == 2, timeout=30, what="both recipients")
    assert [m[1] for m in stack.sink.messages] == [["fast@example.test"], ["slow@example.test"]]
    assert tries["fast@example.test"] == 1 and tries["slow@example.test"] == 3


def test_check_config_errors_name_file_line_and_key(tmp_path):
    bad = tmp_path / "bad.conf"
    bad.write_text("[ingress]\nlisten = 127.0.0.1:2525\nmax_recipints = 5\n")
    out = subprocess.run([BIN, "check-config", "-c", str(bad)], capture_output=True, text=True)
    assert out.returncode != 0
    assert f"{bad}:3: [ingress] max_recipints: unknown key" in out.stderr, out.stderr
    bad.write_text("[worker]\nconcurrency = lots\n")
    out = subprocess.run([BIN, "check-config", "-c", str(bad)], capture_output=True, text=True)
    assert out.returncode != 0 and f"{bad}:2: [worker] concurrency" in out.stderr, out.stderr
    good = tmp_path / "good.conf"
    good.write_text("[ingress]\nmax_recipients = 5\n[routes]\nExample.TEST = 127.0.0.1:2526\n"
                    "[tls_policy]\nBank.Test = verify\n")
    out = subprocess.run([BIN, "check-config", "-c", str(good)], capture_output=True, text=True,
                         env={"SEALPOST_INGRESS_MAX_MESSAGE_SIZE": "2048", "PATH": "/usr/bin"})
    assert out.returncode == 0, out.stderr
    assert "max_recipients = 5\n" in out.stdout
    assert "max_message_size = 2048\n" in out.stdout
    assert "example.test = 127.0.0.1:2526\n" in out.stdout
    assert "[tls_policy]\nbank.test = verify\n" in out.stdout


def test_up_after_a_crash_replaces_the_leftover_redis(tmp_path, sink):
    """`sealpost up` killed with SIGKILL leaves its redis-server running; the
    next `sealpost up` on the same data dir stops that one and starts clean,
    with the queued mail still there."""
    smtp_port, redis_port, dead_port = free_port(), free_port(), free_port()
    worker = "[worker]\nmin_backoff = 1\nmax_backoff = 1\nlease_seconds = 2\n"
    config = up_config(tmp_path, smtp_port, redis_port, dead_port, worker)
    first = Sealpost(tmp_path, "up", config, "up").start(smtp_port)
    wait_for(lambda: "event=queue_ready" in first.read_log(), what="private redis")
    send(smtp_port, 1, rcpts=("someone@example.test",))  # its route is down: it stays queued
    wait_for(lambda: "event=deferred" in first.read_log(), what="the first attempt")
    first.kill()
    assert port_open("127.0.0.1", redis_port), "expected the orphaned redis-server to survive"
    # The second run routes example.test to the live sink.
    second = Sealpost(tmp_path, "up2", up_config(tmp_path, smtp_port, redis_port, sink.port, worker),
                      "up").start(smtp_port)
    wait_for(lambda: "event=queue_ready" in second.read_log(), what="second run's redis")
    assert "event=stopping_leftover_redis" in second.read_log()
    wait_for(lambda: sink.count() == 1, timeout=30, what="the mail queued before the crash")
    second.check_clean_exit()
    assert not port_open("127.0.0.1", redis_port)
