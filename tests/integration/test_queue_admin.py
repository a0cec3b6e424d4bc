"""sealpost queue: list, show, trace, hold, release, retry, delete and top on
real queued mail, with a real worker and sink."""
import json
import smtplib
import subprocess
import time

from conftest import BIN, wait_for
from smtpclient import HOST


def queue(stack, *args):
    path = stack.tmp / "admin.conf"
    path.write_text(stack.config())
    return subprocess.run([BIN, "queue", *args, "-c", str(path)], capture_output=True, text=True,
                          timeout=30)


def send(stack, rcpts, subject="hello"):
    with smtplib.SMTP(HOST, stack.smtp_port, timeout=10) as c:
        c.sendmail("sender@origin.test", rcpts,
                   f"From: sender@origin.test\r\nSubject: {subject}\r\n\r\nbody\r\n")


def jobs(stack, *args):
    r = queue(stack, "list", "--json", *args)
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout)


def test_list_show_hold_release_delete(stack):
    stack.ingress()
    send(stack, ["a@example.test", "b@origin.test"])
    send(stack, ["c@example.test"])
    listed = jobs(stack)
    assert len(listed) == 3 and {j["state"] for j in listed} == {"due"}
    assert sorted(j["domain"] for j in listed) == ["example.test", "example.test", "origin.test"]
    text = queue(stack, "list").stdout
    assert "a@example.test" in text and "-- 3 jobs" in text
    assert [j["recipients"] for j in jobs(stack, "--domain", "origin.test")] == [["b@origin.test"]]
    mid = next(j["message"] for j in listed if j["recipients"] == ["a@example.test"])
    other = next(j["message"] for j in listed if j["recipients"] == ["c@example.test"])

    shown = json.loads(queue(stack, "show", mid, "--json").stdout)
    assert shown["sender"] == "sender@origin.test" and len(shown["jobs"]) == 2
    assert "body" not in json.dumps(shown)  # never the body
    top = json.loads(queue(stack, "top", "--json").stdout)
    assert top[0]["domain"] == "example.test" and top[0]["jobs"] == 2

    # delete: the jobs, the envelope and the bodies go, and nothing is sent
    send(stack, ["gone@example.test"])
    gone = next(j["message"] for j in jobs(stack) if j["recipients"] == ["gone@example.test"])
    r = stack.redis.client()
    assert list(r.scan_iter(match=f"*:b:{gone}:*"))
    out = queue(stack, "delete", gone)
    assert out.returncode == 0 and ": deleted" in out.stdout, out
    assert queue(stack, "show", gone).returncode == 1
    assert list(r.scan_iter(match=f"*{gone}*")) == []

    # hold: the worker leaves it alone; the other message goes
    out = queue(stack, "hold", mid)
    assert out.returncode == 0 and out.stdout.count(": held") == 2, out
    assert {j["state"] for j in jobs(stack, "--state", "held")} == {"held"}
    stack.worker()
    wait_for(lambda: stack.sink.count() == 1, what="the message not held")
    time.sleep(1.5)
    assert stack.sink.count() == 1
    assert stack.sink.messages[0][1] == ["c@example.test"]
    wait_for(lambda: queue(stack, "show", other).returncode == 1,
             what="the delivered message gone from the queue")
    # release: delivered
    assert queue(stack, "release", mid).stdout.count(": released") == 2
    wait_for(lambda: stack.sink.count() == 3, what="the released message")
    assert queue(stack, "show", mid).returncode == 1  # delivered: gone from the queue



def test_trace_shows_each_attempt_with_the_remote_reply(stack):
    attempts = {"n": 0}

    def reply(addr):
        attempts["n"] += 1
        return "451 4.2.0 mailbox busy, try later" if attempts["n"] == 1 else None
    stack.sink.rcpt_reply = reply
    stack.ingress()
    stack.worker()
    send(stack, ["t@example.test"])
    wait_for(lambda: stack.sink.count() == 1, timeout=20, what="the retried delivery")
    mid = stack.redis.client().xrange(next(iter(stack.redis.client().scan_iter(
        match="{mq:*}:log"))))[0][1][b"mid"].decode()
    r = queue(stack, "trace", mid, "--json")
    assert r.returncode == 0, r.stderr
    events = [(e["event"], e["recipient"], e["detail"]) for e in json.loads(r.stdout)]
    assert events[0][0] == "accepted"
    assert ("deferred", "t@example.test", "451 4.2.0 mailbox busy, try later") in events
    delivered = [e for e in events if e[0] == "delivered"]
    assert delivered and delivered[0][1] == "t@example.test" and delivered[0][2].startswith("250")
    text = queue(stack, "trace", mid).stdout
    assert "deferred" in text and "mailbox busy" in text and "delivered" in text


def test_hold_of_a_leased_job_happens_at_lease_end(stack):
    stack.sink.rcpt_delay = 2.0
    stack.sink.rcpt_reply = lambda addr: "451 4.3.0 not now"
    stack.ingress()
    stack.worker()
    send(stack, ["slow@example.test"])
    wait_for(lambda: any(j["state"] == "leased" for j in jobs(stack)), what="the job leased")
    mid = jobs(stack)[0]["message"]
    out = queue(stack, "hold", mid)
    assert "held at lease end" in out.stdout, out
    wait_for(lambda: [j["state"] for j in jobs(stack)] == ["held"], timeout=15,
             what="the job held once its attempt ended")
    trace = queue(stack, "trace", mid).stdout
    assert "asked while leased" in trace and "at lease end" in trace
    # retry makes it due now
    assert ": retried" in queue(stack, "retry", mid).stdout


def test_bad_ids_and_usage(stack):
    stack.ingress()
    assert queue(stack, "show", "nope").returncode == 2
    assert queue(stack, "hold", "0" * 32).returncode == 1
    assert queue(stack, "list", "--state", "bogus").returncode == 2
    assert queue(stack, "list").stdout.strip() == "-- 0 jobs"
    assert json.loads(queue(stack, "list", "--json").stdout) == []
