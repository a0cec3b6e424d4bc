"""Rolling the key directory back (issue 18): a version SET by hand below the
one a node took, and the whole directory wiped while the node was down. A
node answers 451 4.7.5 to the directory's recipients rather than take the
older state; with [crypto] directory_state_file its mark outlives a restart.
The operator takes a restored directory back with `keys authenticate
VERSION`, VERSION being the highest= the node logged."""
import re
import smtplib

import pytest
import redis as redis_py

from conftest import Sealpost, wait_for
from pgp import Person
from smtpclient import HOST
from test_directory_tamper import keys, ok

A = "{sealpost:crypto}:"
ALICE = "alice@example.test"


@pytest.fixture(scope="module")
def alice(tmp_path_factory):
    return Person(tmp_path_factory.mktemp("keys"), "alice", ALICE)


def rcpt(stack, to=ALICE):
    with smtplib.SMTP(HOST, stack.smtp_port, timeout=30) as c:
        c.ehlo()
        c.mail("sender@origin.test")
        code, msg = c.rcpt(to)
        return code, msg[:5]


def tampered(node, why):
    """The node logged the directory as tampered with for why; its highest=."""
    pattern = re.compile(rf"event=directory_tampered why={why} version=\S+ highest=(\d+)")
    wait_for(lambda: pattern.search(node.read_log()), what=f"directory_tampered why={why}")
    return int(pattern.findall(node.read_log())[-1])


def test_a_version_set_below_the_one_taken_is_451_until_authenticated_above(stack, alice):
    ok(keys(stack, "import", "-", input=alice.public()))
    ok(keys(stack, "policy", "set", ALICE, "required"))
    node = stack.ingress()
    assert rcpt(stack) == (250, b"2.1.5")
    redis_py.Redis(port=stack.redis.port).set(A + "version", "-1")
    highest = tampered(node, "version_bad")
    assert rcpt(stack) == (451, b"4.7.5")
    # sealing the directory as it is, at 1, is below what the node took (2)
    assert highest == 2
    ok(keys(stack, "authenticate"))
    tampered(node, "rollback")
    assert rcpt(stack) == (451, b"4.7.5")
    # above the node's mark, it takes the directory back
    out = ok(keys(stack, "authenticate", str(highest)))
    assert f"version {highest + 1}" in out, out
    wait_for(lambda: "event=directory_verified" in node.read_log(), what="directory_verified")
    assert rcpt(stack) == (250, b"2.1.5")
    r = keys(stack, "authenticate", "3x")
    assert r.returncode == 2 and b"not a version" in r.stderr, r.stderr


def test_the_state_file_keeps_the_mark_across_a_restart_and_a_wipe(stack, alice):
    state = stack.tmp / "directory.state"
    extra = f"[crypto]\ndirectory_state_file = {state}\n"
    ok(keys(stack, "import", "-", input=alice.public()))
    ok(keys(stack, "policy", "set", ALICE, "required"))
    node = stack.ingress(extra)
    assert rcpt(stack) == (250, b"2.1.5")
    version = int(redis_py.Redis(port=stack.redis.port).get(A + "version"))
    assert state.read_text() == f"{version}\n"
    assert node.stop() == 0
    # an attacker wipes the directory (and with it alice's key and her
    # required policy) while the node is down
    r = redis_py.Redis(port=stack.redis.port)
    for k in r.scan_iter(match=A + "*"):
        r.delete(k)
    node = stack.ingress(extra, name="ingress-again")
    wait_for(lambda: f"event=directory_state version={version}" in node.read_log(),
             what="the node to read its mark")
    assert tampered(node, "rollback") == version
    assert rcpt(stack) == (451, b"4.7.5")
    # the operator who restored (here: emptied) the directory on purpose
    ok(keys(stack, "authenticate", str(version)))
    wait_for(lambda: "event=directory_verified" in node.read_log(), what="directory_verified")
    assert rcpt(stack) == (250, b"2.1.5")
    assert state.read_text() == f"{version + 1}\n"


def test_a_state_file_that_is_not_a_version_stops_the_ingress(stack):
    state = stack.tmp / "directory.state"
    state.write_text("12abc\n")
    p = Sealpost(stack.tmp, "ingress", stack.config(
        f"[crypto]\ndirectory_state_file = {state}\n"), "ingress").start()
    assert p.proc.wait(30) != 0
    assert f"directory_state_file {state}: not a version" in p.read_log()


def test_a_state_file_that_cannot_be_made_stops_the_ingress(stack):
    state = stack.tmp / "no-such-folder" / "directory.state"
    p = Sealpost(stack.tmp, "ingress", stack.config(
        f"[crypto]\ndirectory_state_file = {state}\n"), "ingress").start()
    assert p.proc.wait(30) != 0
    assert f"directory_state_file {state}: No such file or directory" in p.read_log()
