"""Retiring a key by importing its revocation certificate, as gpg, sq and
rnp write them: alone (gpg's ':'-guarded file as it is), or merged with the
key. The stored key is removed and the CLI says so; mail to the address is
then not encrypted to it (plain under opportunistic, refused at RCPT under
required); a revocation of a key not in the directory, or one that does not
verify against the stored key, changes nothing and exits non-zero."""
import base64
import subprocess

import pytest

from pgp import Person, gpg
from smtpclient import connect, expect, strip_received
from test_gateway import check_pgp_mime_armor, keys, submit
from conftest import wait_for



def rcpt_code(stack, addr):
    with connect(stack) as c:
        expect(c.cmd("MAIL FROM:<sender@origin.test>"), 250)
        return c.cmd(f"RCPT TO:<{addr}>").code


def run(*args, **kw):
    r = subprocess.run(list(args), capture_output=True, timeout=120, **kw)
    assert r.returncode == 0, (args, r.stderr)
    return r.stdout


class Revocable:
    """A key made by one implementation: its certificate, its revocation
    certificate alone, and the certificate with the revocation merged."""

    def __init__(self, tool, base, email):
        self.email = email
        getattr(self, "_make_" + tool)(base / tool, email)

    def _make_gpg(self, d, email):
        p = Person(d, "gpg", email)
        self.fpr, self.cert = p.fpr, p.public()
        self.bare = (p.home / "openpgp-revocs.d" / f"{p.fpr}.rev").read_bytes()
        assert self.bare.count(b"\n:-----BEGIN PGP PUBLIC KEY BLOCK-----") == 1
        p.revoke()
        self.merged = p.public()

    def _make_sq(self, d, email):
        d.mkdir(parents=True)
        run("sq", "key", "generate", "--userid", f"S <{email}>", "--export", str(d / "k"))
        self.cert = run("sq", "key", "extract-cert", str(d / "k"))
        self.bare = (d / "k.rev").read_bytes()
        assert b"-----BEGIN PGP SIGNATURE-----" in self.bare
        self.merged = self.cert + self.bare  # concatenated, two armor blocks
        self.fpr = fingerprint(d, self.cert)

    def _make_rnp(self, d, email):
        d.mkdir(parents=True)
        home = ["--homedir", str(d)]
        run("rnpkeys", *home, "--generate-key", "--userid", f"R <{email}>", "--password", "",
            "--notty", stdin=subprocess.DEVNULL)
        self.cert = run("rnpkeys", *home, "--export-key", email)
        self.bare = run("rnpkeys", *home, "--export-rev", email, "--password", "", "--notty",
                        stdin=subprocess.DEVNULL)
        run("rnpkeys", *home, "--revoke-key", email, "--password", "", "--notty", "--force",
            stdin=subprocess.DEVNULL)
        self.merged = run("rnpkeys", *home, "--export-key", email)
        self.fpr = fingerprint(d, self.cert)


def fingerprint(d, cert):
    home = d / "gnupg"
    home.mkdir(mode=0o700, exist_ok=True)
    gpg(home, "--import", input=cert)
    out = gpg(home, "--with-colons", "--list-keys").stdout.decode()
    return [line.split(":")[9] for line in out.splitlines() if line.startswith("fpr:")][0]


def import_data(stack, data):
    return keys(stack, "import", "-", input=data)


def listed(stack):
    return keys(stack, "list").stdout.decode()


# This one encrypts a message before the revocation: it runs on both engines.
# The tests after it read keys only (`sealpost keys`, always gpg): they run once.
@pytest.mark.usefixtures("openpgp_engine")
@pytest.mark.parametrize("form", ["bare", "merged"])
@pytest.mark.parametrize("tool", ["gpg", "sq", "rnp"])
def test_revocation_retires_the_stored_key(stack, tmp_path, tool, form):
    k = Revocable(tool, tmp_path, f"{tool}@example.test")
    keyless = Revocable("gpg", tmp_path / "other", "kept@example.test")
    r = import_data(stack, k.cert + keyless.cert)
    assert r.returncode == 0, r.stdout + r.stderr
    assert k.fpr in listed(stack)
    assert keys(stack, "policy", "set", k.email, "required").returncode == 0
    # before: mail to it is encrypted (the engine's thread now holds the key)
    stack.ingress()
    stack.worker()
    before = f"From: s@origin.test\r\nTo: {k.email}\r\nSubject: b\r\n\r\nsecret\r\n".encode()
    assert submit(stack.smtp_port, [k.email], before)[0] == 250
    wait_for(lambda: stack.sink.count() == 1, what="the encrypted message")
    assert b"secret" not in stack.sink.messages[0][2]
    check_pgp_mime_armor(stack.sink.messages[0][2])

    r = import_data(stack, getattr(k, form))
    assert r.returncode == 0, r.stdout + r.stderr
    assert r.stdout.decode() == f"revoked: {k.fpr} {k.email}, key removed\n"
    assert k.fpr not in listed(stack) and keyless.fpr in listed(stack)
    # again: the key is gone, so the revocation has nothing to retire
    again = import_data(stack, getattr(k, form))
    assert again.returncode == 1 and k.fpr[-16:].encode() in again.stdout, again.stdout

    # required: refused at RCPT, with the code the policy has
    wait_for(lambda: rcpt_code(stack, k.email) == 550, what="the ingress to see the key gone")
    with connect(stack) as c:
        expect(c.cmd("MAIL FROM:<sender@origin.test>"), 250)
        expect(c.cmd(f"RCPT TO:<{k.email}>"), 550, "5.7.1")
    # opportunistic: sent as it came, not to the revoked key
    assert keys(stack, "policy", "set", k.email, "opportunistic").returncode == 0
    wait_for(lambda: rcpt_code(stack, k.email) == 250, what="the ingress to see the new policy")
    msg = (f"From: s@origin.test\r\nTo: {k.email}\r\nSubject: after\r\n\r\nplain now\r\n"
           .encode())
    code, _ = submit(stack.smtp_port, [k.email], msg)
    assert code == 250
    wait_for(lambda: stack.sink.count() == 2, what="the message")
    assert strip_received(stack.sink.messages[1][2]) == msg


def test_revocation_of_a_key_not_in_the_directory_is_an_error(stack, tmp_path):
    k = Revocable("sq", tmp_path, "absent@example.test")
    r = import_data(stack, k.bare)
    assert r.returncode == 1, r.stdout + r.stderr
    assert r.stdout.decode() == (f"refused {k.fpr}: a revocation of a key that is not in the "
                                 "directory\n")
    assert listed(stack) == ""


def test_revocation_that_does_not_verify_leaves_the_key(stack, tmp_path):
    """A's revocation with its issuer rewritten to name B: it names B's key
    but B never signed it."""
    a = Revocable("sq", tmp_path / "a", "a@example.test")
    b = Revocable("sq", tmp_path / "b", "b@example.test")
    assert import_data(stack, b.cert).returncode == 0
    packet = run("sq", "dearmor", input=a.bare)
    fa, fb = bytes.fromhex(a.fpr), bytes.fromhex(b.fpr)
    forged = packet.replace(fa, fb).replace(fa[12:], fb[12:])
    assert forged != packet
    armored = (b"-----BEGIN PGP PUBLIC KEY BLOCK-----\n\n" + base64.encodebytes(forged)
               + b"-----END PGP PUBLIC KEY BLOCK-----\n")
    r = import_data(stack, armored)
    assert r.returncode == 1, r.stdout + r.stderr
    assert b"does not verify" in r.stdout
    assert b.fpr in listed(stack)


def test_an_old_expired_copy_does_not_retire_a_renewed_key(stack, tmp_path):
    """The operator extended a key's expiry and imported it; then a stale
    copy from before, whose self-signature has lapsed, is imported: the
    stored key stays (an old copy says nothing of the expiry since)."""
    p = Person(tmp_path, "renew", "renew@example.test", expire="1d",
               faked_time="20200101T000000")
    stale = p.public()
    gpg(p.home, "--quick-set-expire", p.fpr, "0")
    gpg(p.home, "--quick-set-expire", p.fpr, "0", "*")
    r = import_data(stack, p.public())
    assert r.returncode == 0 and b"imported " + p.fpr.encode() in r.stdout, r.stdout
    r = import_data(stack, stale)
    assert b"the stored copy is newer" in r.stdout and b"kept" in r.stdout, r.stdout
    assert p.fpr in listed(stack)
