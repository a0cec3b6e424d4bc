"""The gateway's OpenPGP engines under what an operator and a host do to
them: a recipient's key replaced while the pool threads are warm (GPGME and
librnp alike), the GnuPG homes removed by a cleaner of temporary files, a gpg
that hangs (GPGME only: librnp has no home and runs no process). Each copy is
checked with gpg and with sq, with nothing but the recipient's secret key."""
import concurrent.futures
import os
import shutil
import smtplib
import subprocess
import time
import urllib.request

import pytest

from conftest import free_port, readyz, wait_for
from pgp import Person, gpg, recipient_key_ids
from test_gateway import check_pgp_mime, import_keys, keys, message, submit

THREADS = 2  # the ingress's thread pool: small, so that every thread is warm


def secret_key(person, path):
    path.write_bytes(gpg(person.home, "--armor", "--export-secret-keys", person.fpr).stdout)
    return path


def sq_decrypts(key_file, armor):
    r = subprocess.run(["sq", "decrypt", "--recipient-key", str(key_file)], input=armor,
                       capture_output=True, timeout=60)
    return r.returncode == 0 and b"Content-Type" in r.stdout


def homes(base):
    """The per-thread GnuPG homes under the ingress's parent directory."""
    return sorted(p for parent in base.glob("sealpost-gnupg-*") if parent.is_dir()
                  for p in parent.glob("t*"))


def send_many(stack, rcpts, n, subject="Quarterly figures"):
    """n messages at once, so that every thread of the pool takes some."""
    with concurrent.futures.ThreadPoolExecutor(n) as pool:
        jobs = [pool.submit(submit, stack.smtp_port, rcpts, message(", ".join(rcpts),
                                                                    subject=subject))
                for _ in range(n)]
        return [j.result() for j in jobs]


def seen_version(stack, ingress):
    """Waits until the ingress has dropped what it cached before the
    directory's current version."""
    version = int(stack.redis.client().get("{sealpost:crypto}:version"))
    wait_for(lambda: f"event=keys_changed version={version}" in ingress.read_log(),
             what=f"the ingress to see version {version} of the directory")


def metric(port, name):
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as r:
        for line in r.read().decode().splitlines():
            if line.startswith(name + " ") or line.startswith(name + "{"):
                return float(line.rsplit(" ", 1)[1])
    return None


def send_one(stack, rcpt, subject):
    """One message; (code, reply) of its end of data, 451 included."""
    with smtplib.SMTP("127.0.0.1", stack.smtp_port, timeout=60) as c:
        c.ehlo()
        c.mail("sender@origin.test", ["BODY=8BITMIME"])
        code, msg = c.rcpt(rcpt)
        assert code == 250, (code, msg)
        try:
            code, msg = c.data(message(rcpt, subject=subject))
        except smtplib.SMTPDataError as e:
            code, msg = e.smtp_code, e.smtp_error
        return code, msg.decode()


def delivered(stack, n):
    """The n-th copy the next hop got (the Subject is hidden: send one at a
    time and count)."""
    wait_for(lambda: stack.sink.count() >= n, what=f"copy {n}")
    assert stack.sink.count() == n
    return stack.sink.messages[n - 1][2]


def opens_for(person, key_file, content):
    armor = check_pgp_mime(content)
    return b"Subject:" in person.decrypt(armor) and sq_decrypts(key_file, armor)


def start(stack, monkeypatch, base, extra="", threads=THREADS):
    monkeypatch.setenv("UV_THREADPOOL_SIZE", str(threads))
    monkeypatch.setenv("SEALPOST_LOG_LEVEL", "debug")  # event=keys_changed
    ingress = stack.ingress(f"[crypto]\nhome_dir = {base}\n{extra}")
    stack.worker()
    return ingress


def test_a_replaced_key_is_never_used_again(stack, tmp_path, monkeypatch, openpgp_engine):
    """GPGME: every thread of the pool has a home with both keys before the
    replacement (the homes show it). librnp keeps its keys in memory, where
    nothing shows which thread has which: one thread, then, which the
    first copies warmed."""
    gpgme = openpgp_engine == "gpgme"
    threads = THREADS if gpgme else 1
    people = tmp_path / "people"
    bob_a = Person(people, "bob-a", "bob@example.test")
    bob_b = Person(people, "bob-b", "bob@example.test")
    carol = Person(people, "carol", "carol@example.test", faked_time=str(int(time.time()) - 3600))
    # A second encryption subkey, an hour newer: gpg encrypts to the newest.
    gpg(carol.home, "--quick-add-key", carol.fpr, "cv25519", "encr", "never")
    kept, dropped = carol.subkey_ids  # in the order made
    import_keys(stack, bob_a, carol)
    base = tmp_path / "homes"
    base.mkdir()
    ingress = start(stack, monkeypatch, base, threads=threads)
    rcpts = ["bob@example.test", "carol@example.test"]

    # Warm every thread: each has imported both keys.
    sent = 0
    while (len(homes(base)) < threads or not sent) and sent < 20 * threads:
        assert all(code == 250 for code, _ in send_many(stack, rcpts, 2 * threads))
        sent += 2 * threads
    assert len(homes(base)) == (threads if gpgme else 0)
    wait_for(lambda: stack.sink.count() == sent, what="the first copies")
    for _, _, content in stack.sink.messages:
        assert recipient_key_ids(tmp_path, check_pgp_mime(content)) == sorted(
            bob_a.subkey_ids + [dropped])

    # The operator replaces Bob's key, and strips Carol's newer subkey (say,
    # it was compromised): the same fingerprint, other data.
    assert keys(stack, "delete", bob_a.fpr).returncode == 0
    import_keys(stack, bob_b)
    stripped = gpg(carol.home, "--armor", "--export", kept + "!").stdout
    r = keys(stack, "import", "-", input=stripped)
    assert r.returncode == 0, r.stdout + r.stderr
    seen_version(stack, ingress)

    n = 4 * threads
    assert all(code == 250 for code, _ in send_many(stack, rcpts, n))
    wait_for(lambda: stack.sink.count() == sent + n, what="the later copies")
    assert len(homes(base)) == (threads if gpgme else 0)  # the same, warm threads
    key_b, key_a = secret_key(bob_b, tmp_path / "b.key"), secret_key(bob_a, tmp_path / "a.key")
    for _, _, content in stack.sink.messages[sent:]:
        armor = check_pgp_mime(content)
        assert recipient_key_ids(tmp_path, armor) == sorted(bob_b.subkey_ids + [kept])
        assert bob_b.decrypt(armor) and sq_decrypts(key_b, armor)
        assert bob_a.cannot_decrypt(armor) and not sq_decrypts(key_a, armor)


def test_each_engine_encrypts_to_the_subkey_gpg_picks(stack, tmp_path, monkeypatch,
                                                     openpgp_engine):
    """A key whose primary can encrypt too, with an encryption subkey that
    expires while a warm thread holds the key: before, gpg encrypts to the
    subkey (not the primary, which librnp would take first); after, to the
    primary. Each copy is compared with what gpg itself does at that moment."""
    dan = tmp_path / "dan"
    dan.mkdir(mode=0o700)
    gpg(dan, "--quick-gen-key", "Dan <dan@example.test>", "rsa2048", "sign,encr", "never")
    fpr = next(line.split(":")[9] for line in gpg(dan, "--with-colons", "-k").stdout.decode()
               .splitlines() if line.startswith("fpr:"))
    lifetime = 20
    gpg(dan, "--quick-add-key", fpr, "cv25519", "encr", f"seconds={lifetime}")
    made = time.time()
    r = keys(stack, "import", "-", input=gpg(dan, "--armor", "--export", fpr).stdout)
    assert r.returncode == 0, r.stdout + r.stderr
    start(stack, monkeypatch, tmp_path, threads=1)

    def gpg_picks():
        armor = gpg(dan, "--encrypt", "--armor", "--trust-model", "always", "-r", fpr,
                    input=b"x").stdout
        return recipient_key_ids(tmp_path, armor)

    for n in (1, 2):
        assert send_one(stack, "dan@example.test", "Subkeys")[0] == 250
        armor = check_pgp_mime(delivered(stack, n))
        assert b"Subject: Subkeys" in gpg(dan, "--decrypt", input=armor).stdout
        if n == 1:
            assert time.time() < made + lifetime, "too slow to send before the subkey expired"
            want = gpg_picks()
            assert want != [fpr[-16:]], "gpg picks the subkey while it is valid"
            assert recipient_key_ids(tmp_path, armor) == want
            time.sleep(max(0.0, made + lifetime + 1 - time.time()))
        else:
            assert recipient_key_ids(tmp_path, armor) == gpg_picks() == [fpr[-16:]]


# GPGME only, from here on: GnuPG homes and gpg processes are GPGME's; the
# librnp engine has neither (conftest.py: openpgp_engine checks that it made
# no home and ran no gpg).
def test_vanished_homes_are_made_again_or_the_node_is_not_ready(stack, tmp_path, monkeypatch):
    bob = Person(tmp_path / "people", "bob", "bob@example.test")
    import_keys(stack, bob)
    key_file = secret_key(bob, tmp_path / "bob.key")
    base = tmp_path / "homes"
    base.mkdir()
    port = free_port()
    # One thread: the message after the cleaner finds the home it made.
    start(stack, monkeypatch, base, f"[metrics]\nlisten = 127.0.0.1:{port}\n", threads=1)
    assert send_one(stack, "bob@example.test", "before")[0] == 250
    assert opens_for(bob, key_file, delivered(stack, 1))
    (parent,) = base.glob("sealpost-gnupg-*")
    assert readyz(port)[0] == 200

    # A cleaner of temporary files takes the homes: the next message is
    # encrypted all the same, in homes made again.
    shutil.rmtree(parent)
    code, reply = send_one(stack, "bob@example.test", "after the cleaner")
    assert code == 250, reply
    assert opens_for(bob, key_file, delivered(stack, 2))
    assert parent.is_dir() and homes(base)
    wait_for(lambda: metric(port, "sealpost_ingress_gnupg_homes_remade_total") >= 1,
             what="the home made again to be counted")

    # Something else in the directory's place: no home can be made. The node
    # says so, and mail to a keyed recipient gets 451, never clear text.
    for _ in range(100):  # the ingress makes the directory again as soon as it sees it gone
        shutil.rmtree(parent, ignore_errors=True)
        try:
            parent.write_text("not a directory")
            break
        except IsADirectoryError:
            continue
    else:
        pytest.fail("the ingress made the directory again before a file could take its place")
    wait_for(lambda: readyz(port)[0] == 503, what="/readyz to say not ready")
    code, body = readyz(port)
    assert str(parent) in body and "not ready" in body, body
    code, reply = send_one(stack, "bob@example.test", "while broken")
    assert code == 451 and reply.startswith("4.7.0"), (code, reply)
    # Mail for a recipient without a key needs no home.
    assert send_one(stack, "dave@example.test", "keyless")[0] == 250
    delivered(stack, 3)

    parent.unlink()
    wait_for(lambda: readyz(port)[0] == 200, what="/readyz to recover")
    code, reply = send_one(stack, "bob@example.test", "repaired")
    assert code == 250, reply
    assert opens_for(bob, key_file, delivered(stack, 4))
    assert [rcpts for _, rcpts, _ in stack.sink.messages] == [["bob@example.test"]] * 2 + [
        ["dave@example.test"], ["bob@example.test"]]


HANGING_GPG = """#!/bin/sh
# gpg, but one that stops itself for good on an encryption while {flag} exists
case " $* " in *" --encrypt "*) [ -e "{flag}" ] && kill -STOP $$ ;; esac
exec gpg "$@"
"""


def processes_in(path):
    """Processes whose arguments name something under path."""
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/cmdline", "rb") as f:
                    if str(path).encode() in f.read():
                        found.append(int(entry))
            except OSError:
                pass
    return found


def test_a_hung_gpg_is_killed_at_the_deadline(stack, tmp_path, monkeypatch):
    bob = Person(tmp_path / "people", "bob", "bob@example.test")
    import_keys(stack, bob)
    key_file = secret_key(bob, tmp_path / "bob.key")
    flag = tmp_path / "hang"
    wrapper = tmp_path / "gpg-that-hangs"
    wrapper.write_text(HANGING_GPG.format(flag=flag))
    wrapper.chmod(0o755)
    monkeypatch.setenv("SEALPOST_GPG_PROGRAM", str(wrapper))
    base = tmp_path / "homes"
    base.mkdir()
    port = free_port()
    timeout = 2
    # One thread: what follows the hang can only be served if it was freed.
    ingress = start(stack, monkeypatch, base,
                    f"engine_timeout = {timeout}\n[metrics]\nlisten = 127.0.0.1:{port}\n",
                    threads=1)
    assert send_one(stack, "bob@example.test", "before")[0] == 250
    assert opens_for(bob, key_file, delivered(stack, 1))
    threads = len(os.listdir(f"/proc/{ingress.proc.pid}/task"))

    flag.touch()
    began = time.monotonic()
    code, reply = send_one(stack, "bob@example.test", "hangs")
    took = time.monotonic() - began
    assert (code, reply) == (451, "4.7.0 Encryption timed out, message not accepted; try again "
                             "later"), (code, reply)
    assert timeout - 0.5 <= took < timeout + 10, took
    assert processes_in(base) == []  # the stopped gpg is gone, not left behind
    assert len(os.listdir(f"/proc/{ingress.proc.pid}/task")) == threads
    assert metric(port, 'sealpost_ingress_encryptions_total{outcome="timeout"}') == 1
    assert "event=encryption_failed" in ingress.read_log()

    flag.unlink()
    code, reply = send_one(stack, "bob@example.test", "after")
    assert code == 250, reply
    assert opens_for(bob, key_file, delivered(stack, 2))
    assert stack.sink.count() == 2
