"""Authenticated envelopes (issue 18): a Redis writer who rewrites a job
gets nothing delivered; the job is held, logged and counted."""
import urllib.request

from conftest import free_port, wait_for
from test_queue_admin import jobs, queue, send


def metrics_config():
    port = free_port()
    return port, f"[metrics]\nlisten = 127.0.0.1:{port}\n"


def metric(port, name):
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
    for line in text.splitlines():
        if line.startswith(name + " "):
            return float(line.split()[1])
    return None


def held_job(stack, rcpt):
    stack.ingress()
    send(stack, [rcpt])
    [job] = jobs(stack)
    [key] = list(stack.redis.client().scan_iter(match=f"*:j:{job['message']}.*"))
    job["id"] = key.decode().split(":j:")[1]
    assert queue(stack, "hold", job["id"]).returncode == 0
    return job


def test_rcpt_rewritten_with_hset_then_retry_delivers_nothing(stack):
    job = held_job(stack, "victim@example.test")
    r = stack.redis.client()
    [key] = list(r.scan_iter(match=f"*:j:{job['id']}"))
    r.hset(key, "rcpts", "attacker@example.test")
    port, extra = metrics_config()
    w = stack.worker(extra)
    assert queue(stack, "retry", job["id"]).returncode == 0
    wait_for(lambda: "event=job_tampered" in w.read_log(), what="the tamper to be noticed")
    assert f"jid={job['id']} why=rcpt_not_in_envelope" in w.read_log()
    wait_for(lambda: [j["state"] for j in jobs(stack)] == ["held"], what="the job held")
    assert stack.sink.count() == 0
    assert metric(port, "sealpost_queue_tampered_total") == 1
    # released as it is, it is held again at its next attempt
    assert queue(stack, "release", job["id"]).returncode == 0
    wait_for(lambda: w.read_log().count("event=job_tampered") == 2, what="held again")
    assert stack.sink.count() == 0


def test_retry_of_an_untouched_job_delivers(stack):
    job = held_job(stack, "friend@example.test")
    stack.worker()
    assert queue(stack, "retry", job["id"]).returncode == 0
    wait_for(lambda: stack.sink.count() == 1, what="delivery")
    assert stack.sink.messages[0][1] == ["friend@example.test"]


def test_sender_rewritten_is_held(stack):
    job = held_job(stack, "friend@example.test")
    r = stack.redis.client()
    [key] = list(r.scan_iter(match=f"*:m:{job['message']}"))
    r.hset(key, "sender", "ceo@origin.test")
    w = stack.worker()
    queue(stack, "retry", job["id"])
    wait_for(lambda: "why=bad_mac" in w.read_log(), what="the tamper to be noticed")
    assert stack.sink.count() == 0


def test_envelope_replayed_under_a_new_id_is_held(stack):
    job = held_job(stack, "friend@example.test")
    r = stack.redis.client()
    mid = job["message"]
    new = "f" * 32 if mid != "f" * 32 else "e" * 32
    for key in list(r.scan_iter(match=f"*{mid}*")):
        copy = key.decode().replace(mid, new)
        r.restore(copy, 0, r.dump(key))
    [jkey] = list(r.scan_iter(match=f"*:j:{new}.*"))
    jid = jkey.decode().split(":j:")[1]
    r.hset(jkey, "mid", new)
    tag = jkey.decode().split(":j:")[0]
    r.zadd(tag + ":due", {jid: 0})
    r.zrem(tag + ":held", jid)
    w = stack.worker()
    wait_for(lambda: "why=bad_mac" in w.read_log(), what="the replay to be noticed")
    assert stack.sink.count() == 0


def test_a_recipient_added_to_a_job_is_held(stack):
    job = held_job(stack, "friend@example.test")
    r = stack.redis.client()
    [key] = list(r.scan_iter(match=f"*:j:{job['id']}"))
    r.hset(key, "rcpts", "friend@example.test\nattacker@example.test")
    w = stack.worker()
    queue(stack, "retry", job["id"])
    wait_for(lambda: "why=rcpt_not_in_envelope" in w.read_log(), what="the tamper to be noticed")
    wait_for(lambda: [j["state"] for j in jobs(stack)] == ["held"], what="the job held")
    assert stack.sink.count() == 0


def test_another_messages_body_is_not_sent(stack):
    a = held_job(stack, "friend@example.test")
    send(stack, ["other@example.test"])
    r = stack.redis.client()
    other = [j for j in jobs(stack) if j["message"] != a["message"]][0]["message"]
    [mine] = list(r.scan_iter(match=f"*:b:{a['message']}:0"))
    [theirs] = list(r.scan_iter(match=f"*:b:{other}:0"))
    r.set(mine, r.get(theirs))
    w = stack.worker()
    queue(stack, "retry", a["id"])
    wait_for(lambda: stack.sink.count() == 1, what="the untouched message's delivery")
    assert stack.sink.messages[0][1] == ["other@example.test"]
    wait_for(lambda: "event=job_tampered" in w.read_log() or "unseal_failed" in w.read_log(),
             what="the moved body to be refused")
    assert stack.sink.count() == 1


def test_an_envelope_without_a_mac_is_held_unless_the_operator_drains(stack):
    job = held_job(stack, "friend@example.test")
    r = stack.redis.client()
    [key] = list(r.scan_iter(match=f"*:m:{job['message']}"))
    r.hdel(key, "mac")
    w = stack.worker()
    queue(stack, "retry", job["id"])
    wait_for(lambda: "why=no_mac" in w.read_log(), what="the missing MAC to be noticed")
    assert stack.sink.count() == 0
    w.stop()
    w2 = stack.worker("[worker]\naccept_unauthenticated = yes\n")
    queue(stack, "release", job["id"])
    wait_for(lambda: stack.sink.count() == 1, what="the drained delivery")
    assert f"event=job_unauthenticated jid={job['id']}" in w2.read_log()
