"""A Redis writer who strikes while `sealpost keys` writes (issue 18): the
command checks the directory, makes its change, reads the directory back and
seals it. An attacker watching Redis (MONITOR) who changes an entry between
the change and the seal must not get that entry sealed: the command refuses
to seal what its own change does not explain, says which entry, and every
node keeps answering 451 for the directory until the operator repairs it.
Without the attacker, a write seals as before."""
import smtplib
import threading

import pytest
import redis as redis_py

from pgp import Person
from smtpclient import HOST
from test_directory_tamper import keys, ok

A = "{sealpost:crypto}:"
ALICE = "alice@example.test"
# Many addresses on one key make the read-back a few dozen round trips long,
# so the attacker's one write lands inside it.
MANY = [f"list{i}@example.test" for i in range(48)]


@pytest.fixture(scope="module")
def people(tmp_path_factory):
    base = tmp_path_factory.mktemp("keys")
    return {"alice": Person(base, "alice", ALICE),
            "lists": Person(base, "lists", MANY[0], extra_uids=MANY[1:]),
            "bob": Person(base, "bob", "bob@example.test")}


class Attacker(threading.Thread):
    """Watches Redis with MONITOR; on the first key_put it sees, sets the
    policy of example.test to never, once."""

    def __init__(self, port, trigger=b'"key_put"'):
        super().__init__(daemon=True)
        self.port, self.trigger = port, trigger
        self.watching = threading.Event()
        self.struck = threading.Event()
        self.monitor = redis_py.Redis(port=port).connection_pool.get_connection("MONITOR")

    def run(self):
        writer = redis_py.Redis(port=self.port)
        self.monitor.send_command("MONITOR")
        self.monitor.read_response()
        self.watching.set()
        while True:
            try:
                line = self.monitor.read_response()
            except Exception:  # closed at the end of the test
                return
            if isinstance(line, bytes) and self.trigger in line.lower():
                writer.hset(A + "policy", "example.test", "never")
                self.struck.set()
                return

    def stop(self):
        self.monitor.disconnect()
        self.join(timeout=5)


def write_while_attacked(stack, people, tries=5):
    """Imports bob's key with the attacker striking; the command's result.
    An attack that came only after the seal (the command was faster than the
    MONITOR feed) is undone and tried again."""
    for _ in range(tries):
        attacker = Attacker(stack.redis.port)
        attacker.start()
        assert attacker.watching.wait(10)
        r = keys(stack, "import", "-", input=people["bob"].public())
        assert attacker.struck.wait(10), "the attacker saw no key_put"
        attacker.stop()
        if r.returncode != 0:
            return r
        # too late: the seal came first; this state is the attacker's plain
        # change, which verify must catch, and which the operator undoes
        v = keys(stack, "verify")
        assert v.returncode == 1 and b"p:example.test" in v.stderr, v.stdout + v.stderr
        redis_py.Redis(port=stack.redis.port).hset(A + "policy", "example.test", "required")
        ok(keys(stack, "verify"))
        ok(keys(stack, "delete", "bob@example.test"))
    pytest.fail(f"the attacker never struck inside the write in {tries} tries")


def test_an_entry_changed_during_a_write_is_not_sealed(stack, people):
    ok(keys(stack, "import", "-", input=people["alice"].public() + people["lists"].public()))
    ok(keys(stack, "policy", "set", "example.test", "required"))
    ok(keys(stack, "verify"))
    r = write_while_attacked(stack, people)
    err = r.stderr.decode()
    assert r.returncode == 1, err
    assert "p:example.test: changed in Redis during this write" in err, err
    assert "the change is stored but not sealed" in err, err
    # nothing sealed the attacker's policy: verify names it, and a node that
    # starts now will not take the directory
    v = keys(stack, "verify")
    assert v.returncode == 1 and b"p:example.test" in v.stderr, v.stdout + v.stderr
    stack.ingress()
    with smtplib.SMTP(HOST, stack.smtp_port, timeout=30) as c:
        c.ehlo()
        c.mail("sender@origin.test")
        code, msg = c.rcpt(ALICE)
    assert (code, msg[:5]) == (451, b"4.7.5"), (code, msg)
    # the operator's repair: put the policy back, seal, and it verifies
    redis_py.Redis(port=stack.redis.port).hset(A + "policy", "example.test", "required")
    ok(keys(stack, "authenticate"))
    ok(keys(stack, "verify"))


def test_writes_that_relink_addresses_seal_without_an_attacker(stack, people, tmp_path):
    """What a write's change may leave, all explained: a key replaced for one
    address, a key deleted whose address falls back to the older one, a
    policy set and deleted, a key of 48 addresses deleted."""
    alice2 = Person(tmp_path, "alice2", ALICE)
    ok(keys(stack, "import", "-", input=people["alice"].public()))
    ok(keys(stack, "import", "-", input=alice2.public()))
    ok(keys(stack, "verify"))
    # the newer key for alice goes: her address falls back to the older one
    ok(keys(stack, "delete", alice2.fpr))
    ok(keys(stack, "verify"))
    show = ok(keys(stack, "show", ALICE))
    assert people["alice"].fpr in show
    ok(keys(stack, "policy", "set", ALICE, "opportunistic"))
    ok(keys(stack, "policy", "delete", ALICE))
    ok(keys(stack, "import", "-", input=people["lists"].public()))
    ok(keys(stack, "delete", MANY[5]))
    v = ok(keys(stack, "verify"))
    assert "key directory verified" in v
