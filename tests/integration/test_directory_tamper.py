"""A writer of Redis against the key directory (issue 18): the key swap of
the issue's "Why", a policy set to never, a key deleted, the directory rolled
back, each done with redis-cli (or, for binary snapshots, DUMP and RESTORE)
as an attacker with only Redis access would. The ingress then answers 451 at
RCPT: never clear text, never the attacker's key. Changes made by `sealpost
keys` keep working, and the next message is encrypted to the right key."""
import email
import email.policy
import smtplib
import subprocess
import time
import urllib.request

import pytest

from conftest import BIN, free_port, wait_for
from pgp import Person, recipient_key_ids
from smtpclient import HOST, strip_received

A = "{sealpost:crypto}:"
ALICE = "alice@example.test"


@pytest.fixture(scope="module")
def people(tmp_path_factory):
    base = tmp_path_factory.mktemp("keys")
    return {"alice": Person(base, "alice", ALICE),
            "mallory": Person(base, "mallory", "mallory@example.test"),
            "alice2": Person(base, "alice2", ALICE)}


def keys(stack, *args, input=None):
    path = stack.tmp / "keys.conf"
    path.write_text(stack.config())
    return subprocess.run([BIN, "keys", *args, "-c", str(path)], input=input,
                          capture_output=True, timeout=60)


def ok(r):
    assert r.returncode == 0, r.stdout + r.stderr
    return r.stdout.decode()


def redis_cli(stack, *args):
    """What an attacker with Redis access types."""
    return subprocess.run(["redis-cli", "-p", str(stack.redis.port), *args],
                          capture_output=True, timeout=30, check=True).stdout


def message(to):
    return (f"From: Sender <sender@origin.test>\r\nTo: {to}\r\nSubject: Figures\r\n"
            "Date: Sat, 28 Nov 2026 10:00:00 +0000\r\nMessage-ID: <t1@origin.test>\r\n\r\n"
            "the quarterly figures\r\n").encode()


def send(stack, to=ALICE):
    """MAIL, RCPT and, when the RCPT was taken, DATA: the RCPT's reply."""
    with smtplib.SMTP(HOST, stack.smtp_port, timeout=30) as c:
        c.ehlo()
        c.mail("sender@origin.test")
        code, msg = c.rcpt(to)
        if code == 250:
            assert c.data(message(to))[0] == 250
        return code, msg


def metric(port, name):
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as r:
        for line in r.read().decode().splitlines():
            if line.startswith(name + " "):
                return float(line.rsplit(" ", 1)[1])
    return None


def start(stack):
    port = free_port()
    ingress = stack.ingress(f"[metrics]\nlisten = 127.0.0.1:{port}\n")
    stack.worker()
    return ingress, port


def refused(stack, ingress, port, why):
    """451 4.7.5 at RCPT, logged and counted as tampering, nothing at the sink."""
    code, msg = send(stack)
    assert (code, msg[:5]) == (451, b"4.7.5"), (code, msg)
    wait_for(lambda: f"event=directory_tampered why={why}" in ingress.read_log(),
             what=f"directory_tampered why={why}")
    assert metric(port, "sealpost_directory_tampered_total") >= 1
    time.sleep(1.0)
    assert stack.sink.count() == 0


def delivered(stack, n=1):
    wait_for(lambda: stack.sink.count() >= n, what="the message at the sink")
    return stack.sink.messages[n - 1][2]


def encrypted_to(content, person):
    """The message is PGP/MIME to person's key alone, and opens with it."""
    outer = email.message_from_bytes(strip_received(content), policy=email.policy.default)
    assert outer.get_content_type() == "multipart/encrypted"
    armor = outer.get_payload()[1].get_payload(decode=True)
    assert recipient_key_ids(person.home, armor) == sorted(person.subkey_ids)
    assert b"the quarterly figures" in person.decrypt(armor)


def test_key_swap_onto_alice_is_451_not_the_attackers_key(stack, people):
    """The issue's "Done means": two keys imported the proper way, then the
    attacker's entry renamed onto alice's. Her next message is neither
    encrypted to the attacker's key nor sent in clear; the command line will
    not seal that state; after the operator repairs it, mail encrypts again."""
    alice, mallory = people["alice"], people["mallory"]
    ok(keys(stack, "import", "-", input=alice.public() + mallory.public()))
    ingress, port = start(stack)
    redis_cli(stack, "RENAME", A + "a:mallory@example.test", A + f"a:{ALICE}")
    refused(stack, ingress, port, "entry_tag_bad")
    assert "event=directory_entry_rejected" in ingress.read_log()
    # a write now would seal the attacker's entry: refused
    r = keys(stack, "policy", "set", "example.test", "required")
    assert r.returncode == 1 and b"does not match its authentication" in r.stderr, r.stderr
    r = keys(stack, "verify")
    assert r.returncode == 1 and f"a:{ALICE}:openpgp".encode() in r.stderr, r.stderr
    # the operator's repair: drop the bad entry, seal, import alice's key again
    redis_cli(stack, "DEL", A + f"a:{ALICE}")
    ok(keys(stack, "authenticate"))
    ok(keys(stack, "import", "-", input=alice.public() + mallory.public()))
    ok(keys(stack, "verify"))
    wait_for(lambda: "event=directory_verified" in ingress.read_log(), what="the new index")
    assert send(stack)[0] == 250
    encrypted_to(delivered(stack), alice)


def test_key_swap_with_the_version_moved_is_451(stack, people):
    """The attacker also raises the version, as a write would, so that nodes
    drop what they cached: no seal follows, and within the grace of a write
    between its change and its seal every node refuses."""
    alice, mallory = people["alice"], people["mallory"]
    ok(keys(stack, "import", "-", input=alice.public() + mallory.public()))
    ingress, port = start(stack)
    redis_cli(stack, "RENAME", A + "a:mallory@example.test", A + f"a:{ALICE}")
    redis_cli(stack, "INCR", A + "version")
    refused(stack, ingress, port, "unsealed_change")


def test_policy_never_set_by_hset_is_451_not_clear_text(stack, people):
    ok(keys(stack, "import", "-", input=people["alice"].public()))
    ingress, port = start(stack)
    redis_cli(stack, "HSET", A + "policy", ALICE, "never")
    refused(stack, ingress, port, "entry_not_listed")


def test_key_deleted_by_del_is_451_not_clear_text(stack, people):
    ok(keys(stack, "import", "-", input=people["alice"].public()))
    ingress, port = start(stack)
    redis_cli(stack, "DEL", A + f"a:{ALICE}")
    refused(stack, ingress, port, "entry_missing")


def test_rollback_to_an_old_snapshot_is_451(stack, people):
    """The whole directory as it was before alice had a key, restored after
    she got one: its tags hold, but a node that saw a later version refuses it."""
    alice = people["alice"]
    ok(keys(stack, "policy", "set", "example.test", "opportunistic"))
    r = stack.redis.client()
    before = {k: r.dump(k) for k in r.scan_iter(match=A + "*")}
    ok(keys(stack, "import", "-", input=alice.public()))
    ingress, port = start(stack)
    assert send(stack)[0] == 250
    encrypted_to(delivered(stack), alice)
    stack.sink.messages.clear()
    for k in list(r.scan_iter(match=A + "*")):
        if k not in before:
            r.delete(k)
    for k, blob in before.items():
        r.restore(k, 0, blob, replace=True)
    # found at the next poll of the version (till then the node uses what it
    # had checked: alice's key)
    wait_for(lambda: "event=directory_tampered why=rollback" in ingress.read_log(),
             what="the rollback found")
    refused(stack, ingress, port, "rollback")


def test_legit_changes_keep_working(stack, people):
    """Every write of `sealpost keys` is sealed: a policy, a second key for
    the same address (the newer wins), its deletion (the older takes over)."""
    alice, alice2 = people["alice"], people["alice2"]
    ingress, _ = start(stack)
    assert send(stack)[0] == 250  # a fresh Redis: no directory, clear text
    assert b"the quarterly figures" in delivered(stack, 1)
    ok(keys(stack, "import", "-", input=alice.public()))
    time.sleep(0.6)
    assert send(stack)[0] == 250
    encrypted_to(delivered(stack, 2), alice)
    ok(keys(stack, "import", "-", input=alice2.public()))
    time.sleep(0.6)
    assert send(stack)[0] == 250
    encrypted_to(delivered(stack, 3), alice2)
    ok(keys(stack, "delete", alice2.fpr))
    ok(keys(stack, "policy", "set", ALICE, "required"))
    time.sleep(0.6)
    assert send(stack)[0] == 250
    encrypted_to(delivered(stack, 4), alice)
    ok(keys(stack, "verify"))
    assert "event=directory_tampered" not in ingress.read_log()


def test_the_first_write_read_before_its_seal_is_taken_once_sealed(stack, people):
    """A node that reads a fresh directory's first write between its change
    and its seal (the cluster's first `keys import`, polled in between) sees
    entries and no seal at all: it waits for the seal, as for any write, and
    takes the index once the seal lands, rather than stay at 451 (the seal
    does not move the version, so nothing would make it look again)."""
    alice = people["alice"]
    ok(keys(stack, "import", "-", input=alice.public()))
    r = stack.redis.client()
    seal = {k: r.dump(k) for k in (A + "macs", A + "dirmac")}
    r.delete(*seal)  # the directory as it is between the change and the seal
    ingress, port = start(stack)
    wait_for(lambda: "event=queue_ready" in ingress.read_log(), what="the ingress ready")
    time.sleep(1.0)  # several polls (250 ms) of the unsealed directory
    code, msg = send(stack)
    assert (code, msg[:5]) == (451, b"4.7.5"), (code, msg)  # changing: not yet
    for k, blob in seal.items():
        r.restore(k, 0, blob, replace=True)  # the seal lands
    wait_for(lambda: send(stack)[0] == 250, timeout=5, what="the index taken once sealed")
    encrypted_to(delivered(stack), alice)
    assert "event=directory_tampered" not in ingress.read_log()


def test_a_directory_from_before_needs_authenticate(stack, people):
    """A directory written before the index (here: its index removed) is
    unauthenticated: 451 until the operator runs `sealpost keys authenticate`."""
    alice = people["alice"]
    ok(keys(stack, "import", "-", input=alice.public()))
    redis_cli(stack, "DEL", A + "macs", A + "dirmac")
    ingress, port = start(stack)
    refused(stack, ingress, port, "unauthenticated")
    r = keys(stack, "import", "-", input=alice.public())
    assert r.returncode == 1 and b"keys authenticate" in r.stderr, r.stderr
    out = ok(keys(stack, "authenticate"))
    assert out.startswith("key directory authenticated: 2 entries"), out
    wait_for(lambda: "event=directory_verified" in ingress.read_log(), what="the new index")
    assert send(stack)[0] == 250
    encrypted_to(delivered(stack), alice)


# ---- SMTP users: a login the attacker adds in Redis cannot log in ----

from test_auth import PASSWORD, auth_stack, plain, tls_client, users  # noqa: E402,F401
from test_auth import start as start_auth  # noqa: E402


def attempt(stack, user, password):
    c = tls_client(stack.submission_port)
    reply = c.cmd("AUTH PLAIN " + plain(user, password), timeout=30)
    c.close()
    return reply.code, reply.enhanced or ""


def test_a_user_added_by_hset_cannot_log_in(auth_stack):
    """An argon2id hash of the attacker's own password, put in Redis by hand
    under a new login and over alice's: 535 as for a wrong password, and
    logged as tampering. A user added by `sealpost users add` logs in."""
    import nacl.pwhash
    own = nacl.pwhash.argon2id.str(b"attacker's password").decode()
    r = auth_stack.redis.client()
    r.hset("{sealpost:auth}:users", "mallory@origin.test", own)
    start_auth(auth_stack)
    ingress = auth_stack.procs[0]
    code, text = attempt(auth_stack, "mallory@origin.test", "attacker's password")
    assert (code, text) == (535, "5.7.8"), (code, text)
    wait_for(lambda: "event=user_tampered" in ingress.read_log() and
             "why=no_tag" in ingress.read_log(), what="user_tampered logged")
    # alice's own hash replaced by the attacker's: her tag no longer holds
    good = r.hget("{sealpost:auth}:users", "alice@origin.test")
    r.hset("{sealpost:auth}:users", "alice@origin.test", own)
    code, text = attempt(auth_stack, "alice@origin.test", "attacker's password")
    assert (code, text) == (535, "5.7.8"), (code, text)
    wait_for(lambda: "why=tag_bad" in ingress.read_log(), what="tag_bad logged")
    # put back, alice logs in; a user added the proper way too
    r.hset("{sealpost:auth}:users", "alice@origin.test", good)
    assert attempt(auth_stack, "alice@origin.test", PASSWORD)[0] == 235
    users(auth_stack, "add", "bob@origin.test", stdin="pw-of-bob\n")
    assert attempt(auth_stack, "bob@origin.test", "pw-of-bob")[0] == 235
    # users from before the tags: none logs in until `users authenticate`
    # (which takes every user stored as the operator's: the stray one goes first)
    r.hdel("{sealpost:auth}:users", "mallory@origin.test")
    r.delete("{sealpost:auth}:macs")
    assert attempt(auth_stack, "bob@origin.test", "pw-of-bob")[0] == 535
    out = users(auth_stack, "authenticate")
    assert "users authenticated: 2" in out.stdout, out.stdout
    assert attempt(auth_stack, "bob@origin.test", "pw-of-bob")[0] == 235


# ---- DKIM keys: an entry changed in Redis does not sign ----

from test_dkim import Zone, dkim_cli, keygen, next_message, unsigned, verify  # noqa: E402
from test_dkim import message as dkim_message  # noqa: E402
from test_dkim import send as dkim_send  # noqa: E402


def test_a_dkim_entry_changed_in_redis_does_not_sign(stack):
    """The record under a selector changed by HSET (the sealed key untouched,
    so it would still unseal): the worker leaves the key out and the mail goes
    unsigned (key_unusable), logged as tampered; `sealpost dkim authenticate`
    takes the entry as it is again and mail is signed."""
    zone = Zone()
    keygen(stack, zone, "origin.test", "s1")
    stack.ingress()
    worker = stack.worker()
    data = dkim_message()
    dkim_send(stack, data)
    verify(next_message(stack, 1), zone, [("origin.test", "s1", "ed25519-sha256")])
    r = stack.redis.client()
    r.hset("{sealpost:dkim}:d:origin.test", "s1:record", "v=DKIM1; k=ed25519; p=AAAA")
    r.incr("{sealpost:dkim}:version")
    wait_for(lambda: "tampered: its tag does not hold" in worker.read_log(),
             what="the entry found tampered")
    dkim_send(stack, dkim_message())
    assert unsigned(next_message(stack, 2))
    r.hdel("{sealpost:dkim}:d:origin.test", "s1:tag")
    r.incr("{sealpost:dkim}:version")
    wait_for(lambda: "tampered: no tag" in worker.read_log(), what="the untagged entry")
    out = dkim_cli(stack, "authenticate")
    assert out.returncode == 0 and b"DKIM keys authenticated: 1" in out.stdout, out
    r.hset("{sealpost:dkim}:d:origin.test", "s1:record",
           zone.records["s1._domainkey.origin.test."])
    out = dkim_cli(stack, "authenticate")
    assert out.returncode == 0, out
    time.sleep(1.5)
    dkim_send(stack, dkim_message())
    verify(next_message(stack, 3), zone, [("origin.test", "s1", "ed25519-sha256")])
