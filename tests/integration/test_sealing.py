"""Sealing at rest: Redis never holds a body in clear; keys rotate; a missing
or wrong key stops a node at start-up with a clear error."""
import base64
import subprocess

from conftest import BIN, SEAL_KEY, Sealpost, unseal, wait_for
from smtpclient import HOST

MARKER = "PLAINTEXT-MARKER-7f3a9c"


def send(port, seq, rcpts=("rcpt@example.test",)):
    import smtplib
    body = (f"From: sender@origin.test\r\nTo: {', '.join(rcpts)}\r\nSubject: {MARKER} {seq}\r\n"
            f"\r\nbody {MARKER} {seq}\r\n")
    with smtplib.SMTP(HOST, port, timeout=10) as c:
        c.sendmail("sender@origin.test", list(rcpts), body)


def every_value(r):
    """Every key of the Redis, as DUMP gives it, and strings as GET gives them."""
    for key in r.scan_iter():
        yield key, r.dump(key)
        if r.type(key) == b"string":
            yield key, r.get(key)
        elif r.type(key) == b"hash":
            yield key, b"".join(k + v for k, v in r.hgetall(key).items())


def other_key(key_id):
    return f"{key_id}:" + base64.b64encode(bytes(range(100, 132))).decode()


def test_no_body_in_clear_in_redis(stack):
    stack.ingress()
    for i in range(5):
        send(stack.smtp_port, i, ("a@example.test", "b@example.test"))
    r = stack.redis.client()
    bodies = list(r.scan_iter(match="{mq:*}:b:*"))
    assert len(bodies) == 5
    for key, value in every_value(r):
        assert MARKER.encode() not in value, key
    # What is stored is the message, sealed under the configured key.
    for key in bodies:
        mid = key.split(b":b:")[1].split(b":")[0].decode()
        plain = unseal(r.get(key), mid)
        assert f"Subject: {MARKER}".encode() in plain
    # A worker opens them and delivers them intact.
    stack.worker()
    wait_for(lambda: stack.sink.count() == 5, what="the sealed messages to be delivered")
    for _, _, content in stack.sink.messages:
        assert f"body {MARKER}".encode() in content


def test_sealed_body_moved_to_another_message_does_not_open(stack):
    """The message id and variant are authenticated with the body."""
    stack.ingress()
    send(stack.smtp_port, 1)
    send(stack.smtp_port, 2)
    r = stack.redis.client()
    a, b = sorted(r.scan_iter(match="{mq:*}:b:*"))
    mid_a = a.split(b":b:")[1].split(b":")[0].decode()
    # Swap bodies: neither opens under the other's id.
    body_a, body_b = r.get(a), r.get(b)
    try:
        unseal(body_b, mid_a)
        raise AssertionError("a body opened under another message's id")
    except Exception as e:  # nacl.exceptions.CryptoError
        assert "Decryption failed" in str(e) or "CryptoError" in type(e).__name__, e
    r.set(a, body_b)
    r.set(b, body_a)
    worker = stack.worker()
    wait_for(lambda: worker.read_log().count("event=unseal_failed") >= 2,
             what="the worker to refuse both swapped bodies")
    assert stack.sink.count() == 0
    assert "fails authentication" in worker.read_log()


def test_missing_key_is_a_start_up_error(tmp_path, redis_server, stack):
    config = stack.config().replace(f"keys = {SEAL_KEY}", "")
    for command in ("ingress", "worker"):
        p = Sealpost(tmp_path, f"nokey-{command}", config, command).start()
        assert p.proc.wait(10) == 1
        log = p.read_log()
        assert "what=seal" in log and "no sealing key" in log, log


def test_malformed_key_is_a_start_up_error(tmp_path, stack):
    for bad in ("test1:c2hvcnQ=", "no-colon", "bad id:" + SEAL_KEY.split(":")[1]):
        config = stack.config(f"[seal]\nkeys = {bad}\n")
        p = Sealpost(tmp_path, "badkey", config, "ingress").start()
        assert p.proc.wait(10) == 1
        assert "sealing key" in p.read_log()


def test_wrong_key_under_a_known_id_stops_the_node(tmp_path, stack):
    stack.ingress()  # stores the check value of "test1"
    config = stack.config(f"[seal]\nkeys = {other_key('test1')}\n")
    p = Sealpost(tmp_path, "wrongkey", config, "worker").start()
    assert p.proc.wait(10) == 1
    log = p.read_log()
    assert "differs from the key the cluster uses" in log, log
    assert "event=worker_started" not in log


def test_rotation_keeps_old_bodies_readable(stack):
    """Queued under the old key, delivered by nodes that seal with a new one."""
    ingress = stack.ingress()
    send(stack.smtp_port, 1)
    ingress.check_clean_exit()
    stack.procs.remove(ingress)
    rotated = f"[seal]\nkeys = {other_key('test2')}, {SEAL_KEY}\n"
    stack.ingress(rotated, name="ingress2")
    send(stack.smtp_port, 2)
    r = stack.redis.client()
    ids = sorted(r.get(k)[5:5 + r.get(k)[4]] for k in r.scan_iter(match="{mq:*}:b:*"))
    assert ids == [b"test1", b"test2"]
    # A worker that lost the old key cannot send the old body: it waits, unharmed.
    lost = stack.worker(f"[seal]\nkeys = {other_key('test2')}\n", name="lost")
    wait_for(lambda: stack.sink.count() == 1 and "event=unseal_failed" in lost.read_log(),
             what="the new body delivered, the old one deferred")
    assert "which this node does not have" in lost.read_log()
    lost.check_clean_exit()
    stack.procs.remove(lost)
    stack.worker(rotated)
    wait_for(lambda: stack.sink.count() == 2, timeout=20, what="the old body delivered")
    seqs = sorted(c.split(b"Subject: " + MARKER.encode() + b" ")[1][:1]
                  for _, _, c in stack.sink.messages)
    assert seqs == [b"1", b"2"]


def test_seal_key_new_prints_a_usable_key(tmp_path):
    out = subprocess.run([BIN, "seal-key", "new", "k9"], capture_output=True, text=True, check=True)
    key_id, secret = out.stdout.strip().split(":")
    assert key_id == "k9" and len(base64.b64decode(secret)) == 32
    bad = subprocess.run([BIN, "seal-key", "new", "no spaces"], capture_output=True, text=True)
    assert bad.returncode == 2 and "key id" in bad.stderr


def test_check_config_does_not_show_the_key(tmp_path, stack):
    path = tmp_path / "show.conf"
    path.write_text(stack.config())
    out = subprocess.run([BIN, "check-config", "-c", str(path)], capture_output=True, text=True,
                         check=True).stdout
    assert SEAL_KEY.split(":")[1] not in out
    assert "keys = (set, not shown)" in out
