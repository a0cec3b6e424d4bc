"""S/MIME end to end: certificates made by openssl (RSA 2048 and EC P-256),
imported with `sealpost keys import` (PEM, DER, PKCS#7), mail submitted over
SMTP and delivered to a real SMTP sink, then opened with nothing but each
recipient's private key, by `openssl cms -decrypt` and by gpgsm."""
import datetime
import email
import email.policy
import json
import os
import re
import signal
import subprocess
import time

import pytest

from conftest import wait_for
from pgp import Person
from smtpclient import connect, expect, strip_received
from test_gateway import by_rcpts, check_pgp_mime, keys, no_defects, submit

BODY = "Grüße aus Zürich, marker-smime-77\r\n.leading dot line\r\nlast line\r\n".encode()


def openssl(*args, input=None, check=True):
    r = subprocess.run(["openssl", *args], input=input, capture_output=True, timeout=60)
    if check and r.returncode != 0:
        raise AssertionError(f"openssl {args[0]}: {r.stderr.decode(errors='replace')}")
    return r


def utc(seconds_from_now):
    """A time for `openssl ca -startdate/-enddate`."""
    t = datetime.datetime.now(datetime.timezone.utc) + datetime.timedelta(seconds=seconds_from_now)
    return t.strftime("%Y%m%d%H%M%SZ")


ENCRYPTION_USAGE = {"rsa": "digitalSignature,keyEncipherment", "ec": "digitalSignature,keyAgreement"}


class Holder:
    """One certificate holder: a private key and a certificate for address,
    self-signed (as the guide makes them) unless a CA signs it."""

    def __init__(self, base, name, address, kind="rsa", ca=None, usage=None, eku="emailProtection",
                 start=None, end=None):
        self.address = address
        self.dir = base / f"x509-{name}"
        self.dir.mkdir(parents=True, exist_ok=True)
        self.key, self.pem = self.dir / "key.pem", self.dir / "cert.pem"
        newkey = (["-newkey", "rsa:2048"] if kind == "rsa"
                  else ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256"])
        ext = ["-addext", f"subjectAltName=email:{address}",
               "-addext", f"keyUsage=critical,{usage or ENCRYPTION_USAGE[kind]}"]
        if eku:
            ext += ["-addext", f"extendedKeyUsage={eku}"]
        subject = ["-subj", f"/CN={name.capitalize()}/O=Sealpost Tests"]
        if ca is None:
            openssl("req", "-x509", *newkey, "-nodes", "-days", "30", *subject, "-keyout",
                    str(self.key), "-out", str(self.pem), *ext)
        else:
            csr = self.dir / "req.pem"
            openssl("req", "-new", *newkey, "-nodes", *subject, "-keyout", str(self.key),
                    "-out", str(csr), *ext)
            ca.sign(csr, self.pem, start, end)
        self.id = openssl("x509", "-in", str(self.pem), "-noout", "-fingerprint",
                          "-sha256").stdout.decode().split("=", 1)[1].strip().replace(":", "")
        self.serial = int(openssl("x509", "-in", str(self.pem), "-noout",
                                  "-serial").stdout.decode().split("=", 1)[1], 16)

    def pem_bytes(self):
        return self.pem.read_bytes()

    def der_bytes(self):
        return openssl("x509", "-in", str(self.pem), "-outform", "DER").stdout

    def decrypt(self, message: bytes) -> bytes:
        """`openssl cms -decrypt` over the message as it arrived (S/MIME)."""
        r = openssl("cms", "-decrypt", "-inkey", str(self.key), "-recip", str(self.pem),
                    input=message)
        return r.stdout

    def cannot_decrypt(self, message: bytes) -> bool:
        return openssl("cms", "-decrypt", "-inkey", str(self.key), "-recip", str(self.pem),
                       input=message, check=False).returncode != 0

    def decrypt_with_gpgsm(self, der: bytes) -> bytes:
        """gpgsm, a second implementation, from a PKCS#12 it can read (the
        guide's recipe: legacy algorithms, loopback pinentry, no CRL checks)."""
        home = self.dir / "gpgsm"
        if not home.exists():
            home.mkdir(mode=0o700)
            (home / "gpg-agent.conf").write_text("allow-loopback-pinentry\n")
            (home / "gpgsm.conf").write_text("disable-crl-checks\n")
            p12 = self.dir / "key.p12"
            openssl("pkcs12", "-export", "-inkey", str(self.key), "-in", str(self.pem), "-out",
                    str(p12), "-passout", "pass:x", "-keypbe", "PBE-SHA1-3DES", "-certpbe",
                    "PBE-SHA1-3DES", "-macalg", "sha1")
            try:
                gpgsm(home, "--import", str(p12))
            except AssertionError:
                # Seen once in a full run, never alone: gpgsm refused the
                # PKCS#12's passphrase. This is set-up, not the check: one
                # more try with the agent started first.
                subprocess.run(["gpgconf", "--launch", "gpg-agent"], check=True,
                               env=dict(os.environ, GNUPGHOME=str(home)))
                gpgsm(home, "--import", str(p12))
        return gpgsm(home, "--decrypt", input=der)


def gpgsm(home, *args, input=None):
    env = dict(os.environ, GNUPGHOME=str(home))
    r = subprocess.run(["gpgsm", "--batch", "--pinentry-mode", "loopback", "--passphrase-fd", "0",
                        *args], input=b"x\n" + (input or b""), capture_output=True, env=env,
                       timeout=60)
    if r.returncode != 0:
        raise AssertionError(f"gpgsm {args[0]}: {r.stderr.decode(errors='replace')}")
    return r.stdout


class CA:
    """A test certificate authority (`openssl ca`), which can also date what
    it signs in the past or the future."""

    def __init__(self, base, name="Sealpost Test CA"):
        self.dir = base / f"ca-{name.replace(' ', '-')}"
        self.dir.mkdir(parents=True, exist_ok=True)
        (self.dir / "index.txt").write_text("")
        (self.dir / "serial").write_text("1000\n")
        self.key, self.pem = self.dir / "ca.key", self.dir / "ca.pem"
        openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "365", "-subj",
                f"/CN={name}", "-keyout", str(self.key), "-out", str(self.pem),
                "-addext", "basicConstraints=critical,CA:TRUE",
                "-addext", "keyUsage=critical,keyCertSign,cRLSign")
        self.config = self.dir / "ca.cnf"
        self.config.write_text(f"""[ca]
default_ca = this
[this]
database = {self.dir}/index.txt
serial = {self.dir}/serial
new_certs_dir = {self.dir}
certificate = {self.pem}
private_key = {self.key}
default_md = sha256
policy = anything
unique_subject = no
copy_extensions = copy
[anything]
commonName = supplied
organizationName = optional
""")

    def crl(self, out, revoke=None):
        """Writes the CA's CRL to out, revoking revoke (a certificate file) first."""
        if revoke:
            openssl("ca", "-batch", "-config", str(self.config), "-revoke", str(revoke))
        openssl("ca", "-batch", "-config", str(self.config), "-gencrl", "-crldays", "30", "-out",
                str(out))

    def sign(self, csr, out, start=None, end=None):
        dates = ["-startdate", start or utc(-3600), "-enddate", end or utc(30 * 86400)]
        openssl("ca", "-batch", "-config", str(self.config), "-in", str(csr), "-out", str(out),
                "-notext", *dates)


def pkcs7_bundle(*holders, der=False):
    args = ["crl2pkcs7", "-nocrl"]
    for h in holders:
        args += ["-certfile", str(h.pem)]
    return openssl(*args, *(["-outform", "DER"] if der else [])).stdout


def import_data(stack, data, extra=""):
    conf = stack.tmp / "keys-smime.conf"
    conf.write_text(stack.config(extra))
    from conftest import BIN
    return subprocess.run([BIN, "keys", "import", "-", "-c", str(conf)], input=data,
                          capture_output=True, timeout=60)


def imported(stack, data, extra=""):
    r = import_data(stack, data, extra)
    assert r.returncode == 0, r.stdout + r.stderr
    return r.stdout.decode()


def message(to, cc="", bcc="", subject="Quarterly figures"):
    return (f"From: Sender <sender@origin.test>\r\nTo: {to}\r\n"
            + (f"Cc: {cc}\r\n" if cc else "") + (f"Bcc: {bcc}\r\n" if bcc else "")
            + f"Subject: {subject}\r\nDate: Sat, 28 Nov 2026 10:00:00 +0000\r\n"
            "Message-ID: <m1@origin.test>\r\nMIME-Version: 1.0\r\n"
            "Content-Type: text/plain; charset=utf-8\r\nContent-Transfer-Encoding: 8bit\r\n"
            "\r\n").encode() + BODY


def check_smime(content):
    """application/pkcs7-mime as Python's email sees it; returns the DER."""
    outer = email.message_from_bytes(strip_received(content), policy=email.policy.default)
    no_defects(outer)
    assert outer.get_content_type() == "application/pkcs7-mime"
    assert outer.get_param("smime-type") == "enveloped-data"
    assert outer.get_param("name") == "smime.p7m"
    assert outer["Content-Transfer-Encoding"].strip().lower() == "base64"
    assert "Bcc" not in outer and b"marker-smime-77" not in content
    assert outer["Subject"] == "[...]" and outer["From"] == "Sender <sender@origin.test>"
    return outer.get_payload(decode=True)


def check_inner(plain, subject="Quarterly figures"):
    """The decrypted entity carries the original Subject and, somewhere in
    it, the body octet for octet; no Bcc."""
    plain = plain.replace(b"\r\n", b"\n").replace(b"\n", b"\r\n")
    inner = email.message_from_bytes(plain, policy=email.policy.default)
    no_defects(inner)
    assert inner["Subject"] == subject
    assert "Bcc" not in inner
    assert BODY in plain
    bodies = [p.get_payload(decode=True) for p in inner.walk() if not p.is_multipart()]
    assert BODY in bodies, bodies


def recipient_serials(content):
    """The serial numbers the RecipientInfos name (`openssl cms -cmsout -print`)."""
    text = openssl("cms", "-cmsout", "-print", input=strip_received(content)).stdout.decode()
    return sorted(int(v, 16) if v.lower().startswith("0x") else int(v)
                  for v in re.findall(r"serialNumber: (0x[0-9A-Fa-f]+|\d+)", text))


@pytest.fixture(scope="module")
def holders(tmp_path_factory):
    base = tmp_path_factory.mktemp("x509")
    return {"bob": Holder(base, "bob", "bob@example.test", "rsa"),
            "erin": Holder(base, "erin", "erin@example.test", "ec"),
            "carol": Holder(base, "carol", "carol@example.test", "rsa")}


def test_certificates_import_as_pem_der_and_pkcs7_and_are_listed(stack, holders, tmp_path):
    bob, erin, carol = holders["bob"], holders["erin"], holders["carol"]
    out = imported(stack, bob.pem_bytes())
    assert out.startswith(f"imported: {bob.id} bob@example.test (S/MIME, ")
    assert "CN=Bob" in out and re.search(r"expires \d{4}-\d\d-\d\dT", out)
    assert f"imported: {erin.id} erin@example.test" in imported(stack, erin.der_bytes())
    # a PKCS#7 bundle, DER and PEM: each certificate in it
    bundle = imported(stack, pkcs7_bundle(carol, bob, der=True))
    assert f"imported: {carol.id} carol@example.test" in bundle and bob.id in bundle
    assert carol.id in imported(stack, pkcs7_bundle(carol))
    listing = keys(stack, "list").stdout.decode()
    line = next(x for x in listing.splitlines() if x.startswith(erin.id))
    assert "erin@example.test" in line and "S/MIME" in line and "CN=Erin" in line
    assert int(re.search(r"serial ([0-9A-Fa-f:]+)\)", line).group(1).replace(":", ""),
               16) == erin.serial
    entries = {e["fingerprint"]: e for e in json.loads(keys(stack, "list", "--json").stdout)}
    assert set(entries) == {bob.id, erin.id, carol.id}
    assert entries[bob.id]["method"] == "smime" and "CN=Bob" in entries[bob.id]["subject"]
    assert entries[bob.id]["issuer"] == entries[bob.id]["subject"]  # self-signed
    assert int(entries[bob.id]["serial"], 16) == bob.serial
    shown = keys(stack, "show", "bob@example.test").stdout.decode()
    assert bob.id in shown and "method: S/MIME" in shown and "-----BEGIN CERTIFICATE-----" in shown
    assert keys(stack, "delete", erin.id).returncode == 0
    assert erin.id not in keys(stack, "list").stdout.decode()


def test_unusable_certificates_are_refused_at_import_with_the_reason(stack, tmp_path):
    ca = CA(tmp_path)
    cases = {
        "expired": Holder(tmp_path, "old", "old@example.test", ca=ca, start=utc(-86400 * 60),
                          end=utc(-86400)),
        "not yet valid": Holder(tmp_path, "soon", "soon@example.test", ca=ca,
                                start=utc(86400 * 10), end=utc(86400 * 40)),
        "key usage does not allow encryption": Holder(tmp_path, "signer", "signer@example.test",
                                                      usage="digitalSignature"),
        "extended key usage does not allow email": Holder(tmp_path, "web", "web@example.test",
                                                          eku="serverAuth"),
    }
    for why, holder in cases.items():
        r = import_data(stack, holder.pem_bytes())
        assert r.returncode == 1, (why, r.stdout)
        line = r.stdout.decode()
        assert line.startswith("refused stdin: certificate ") and why in line, (why, line)
        assert holder.id in line and "O=Sealpost Tests" in line
    assert keys(stack, "list").stdout == b""
    # with a CA file, only what chains to it
    other = CA(tmp_path, "Another CA")
    trusted = Holder(tmp_path, "trusted", "trusted@example.test", ca=ca)
    stranger = Holder(tmp_path, "stranger", "stranger@example.test", ca=other)
    extra = f"[crypto]\nsmime_ca_file = {ca.pem}\n"
    assert trusted.id in imported(stack, trusted.pem_bytes(), extra)
    r = import_data(stack, stranger.pem_bytes(), extra)
    assert r.returncode == 1 and b"not signed by the configured CA" in r.stdout, r.stdout
    selfsigned = Holder(tmp_path, "self", "self@example.test")
    r = import_data(stack, selfsigned.pem_bytes(), extra)
    assert r.returncode == 1 and b"not signed by the configured CA" in r.stdout, r.stdout


def test_preference_is_set_listed_and_removed(stack):
    assert keys(stack, "policy", "set", "Example.TEST", "prefer", "smime").returncode == 0
    assert keys(stack, "policy", "set", "Bob@Example.test", "prefer", "openpgp").returncode == 0
    assert keys(stack, "policy", "set", "example.test", "required").returncode == 0
    listed = keys(stack, "policy", "list").stdout.decode().splitlines()
    assert sorted(listed) == ["bob@example.test prefer openpgp", "example.test prefer smime",
                              "example.test required"]
    bad = keys(stack, "policy", "set", "example.test", "prefer", "pgp")
    assert bad.returncode == 2 and b"not openpgp or smime" in bad.stderr
    r = stack.redis.client()
    before = int(r.get("{sealpost:crypto}:version"))
    assert keys(stack, "policy", "delete", "example.test", "prefer").returncode == 0
    assert int(r.get("{sealpost:crypto}:version")) == before + 1
    listed = keys(stack, "policy", "list").stdout.decode().splitlines()
    assert sorted(listed) == ["bob@example.test prefer openpgp", "example.test required"]


def test_smime_mail_decrypts_with_openssl_and_gpgsm_and_bcc_gets_its_own(stack, holders):
    bob, erin, carol = holders["bob"], holders["erin"], holders["carol"]
    imported(stack, bob.pem_bytes() + erin.pem_bytes() + carol.pem_bytes())
    stack.ingress()
    stack.worker()
    original = message("Bob <bob@example.test>", cc="erin@example.test", bcc="carol@example.test")
    rcpts = ["bob@example.test", "erin@example.test", "carol@example.test", "dave@example.test"]
    code, msg = submit(stack.smtp_port, rcpts, original)
    assert code == 250, msg
    wait_for(lambda: stack.sink.count() == 3, what="three copies")
    got = by_rcpts(stack.sink)
    shared = got[("bob@example.test", "erin@example.test")]
    bcc, plain = got[("carol@example.test",)], got[("dave@example.test",)]
    # the keyless recipient gets the original without its Bcc
    assert strip_received(plain) == original.replace(b"Bcc: carol@example.test\r\n", b"")
    der = check_smime(shared)
    for who in (bob, erin):  # RSA and EC recipients of one ciphertext
        check_inner(who.decrypt(strip_received(shared)))
    # gpgsm 2.2.40 reads RSA recipients only: it crashes importing an EC
    # key's PKCS#12, so Erin's copy has OpenSSL alone as its reader.
    check_inner(bob.decrypt_with_gpgsm(der))
    assert carol.cannot_decrypt(strip_received(shared))
    assert recipient_serials(shared) == sorted([bob.serial, erin.serial])
    # the Bcc copy names Carol's certificate and no other
    check_smime(bcc)
    check_inner(carol.decrypt(strip_received(bcc)))
    check_inner(carol.decrypt_with_gpgsm(check_smime(bcc)))
    assert recipient_serials(bcc) == [carol.serial]
    assert bob.cannot_decrypt(strip_received(bcc))
    assert b"marker-smime-77" not in shared + bcc


def reload(ingress):
    """SIGHUP, and the ingress saying it has read the CA file and CRLs again."""
    before = ingress.read_log().count("event=smime_trust_reloaded")
    ingress.proc.send_signal(signal.SIGHUP)
    wait_for(lambda: ingress.read_log().count("event=smime_trust_reloaded") > before,
             what="the S/MIME trust reloaded")


@pytest.mark.usefixtures("openpgp_engine")  # the OpenPGP copies, from either engine
def test_a_key_and_a_certificate_mail_goes_as_prefer_says(stack, tmp_path):
    ca, other = CA(tmp_path), CA(tmp_path, "Other CA")
    frank_pgp = Person(tmp_path, "frank", "frank@example.test")
    frank = Holder(tmp_path, "frank", "frank@example.test", ca=ca)
    imported(stack, frank_pgp.public())
    imported(stack, frank.pem_bytes())
    shown = keys(stack, "show", "frank@example.test").stdout.decode()
    assert frank_pgp.fpr in shown and frank.id in shown
    trust = tmp_path / "trust.pem"
    trust.write_bytes(ca.pem.read_bytes())
    ingress = stack.ingress(f"[crypto]\nsmime_ca_file = {trust}\n")
    stack.worker()
    # default: OpenPGP
    assert submit(stack.smtp_port, ["frank@example.test"], message("frank@example.test"))[0] == 250
    wait_for(lambda: stack.sink.count() == 1, what="the first copy")
    armor = check_pgp_mime(stack.sink.messages[0][2])
    assert BODY in frank_pgp.decrypt(armor)
    # preferred per domain: S/MIME
    assert keys(stack, "policy", "set", "example.test", "prefer", "smime").returncode == 0
    time.sleep(0.6)
    assert submit(stack.smtp_port, ["frank@example.test"], message("frank@example.test"))[0] == 250
    wait_for(lambda: stack.sink.count() == 2, what="the second copy")
    content = stack.sink.messages[1][2]
    check_smime(content)
    check_inner(frank.decrypt(strip_received(content)))
    # the certificate is no longer trusted (checked at each use): the
    # OpenPGP key stands in
    trust.write_bytes(other.pem.read_bytes())
    reload(ingress)
    assert submit(stack.smtp_port, ["frank@example.test"], message("frank@example.test"))[0] == 250
    wait_for(lambda: stack.sink.count() == 3, what="the third copy")
    assert BODY in frank_pgp.decrypt(check_pgp_mime(stack.sink.messages[2][2]))


def not_after(holder):
    text = openssl("x509", "-in", str(holder.pem), "-noout", "-enddate").stdout.decode()
    when = datetime.datetime.strptime(text.split("=", 1)[1].strip(), "%b %d %H:%M:%S %Y %Z")
    return when.replace(tzinfo=datetime.timezone.utc).timestamp()


def rcpt_reply(stack, rcpt, code, enhanced=None):
    with connect(stack) as c:
        expect(c.cmd("MAIL FROM:<sender@origin.test>"), 250)
        expect(c.cmd(f"RCPT TO:<{rcpt}>"), code, enhanced)


def test_each_use_checks_the_chain_and_crl_and_sighup_reads_them_again(stack, tmp_path):
    """Imported while no CA file was set; a node whose CA file does not
    sign it refuses it at RCPT (required), takes it once the CA file does
    (SIGHUP, no restart), and refuses it again when a CRL revokes it."""
    ca, other = CA(tmp_path), CA(tmp_path, "Other CA")
    grace = Holder(tmp_path, "grace", "grace@example.test", ca=ca)
    imported(stack, grace.pem_bytes())
    assert keys(stack, "policy", "set", "grace@example.test", "required").returncode == 0
    trust, crl = tmp_path / "trust.pem", tmp_path / "crl.pem"
    trust.write_bytes(other.pem.read_bytes())
    ca.crl(crl)
    ingress = stack.ingress(f"[crypto]\nsmime_ca_file = {trust}\nsmime_crl_file = {crl}\n")
    rcpt_reply(stack, "grace@example.test", 550, "5.7.1")
    assert 'why="smime: not signed by the configured CA' in ingress.read_log()
    trust.write_bytes(other.pem.read_bytes() + ca.pem.read_bytes())
    reload(ingress)
    rcpt_reply(stack, "grace@example.test", 250)
    ca.crl(crl, revoke=grace.pem)
    reload(ingress)
    rcpt_reply(stack, "grace@example.test", 550, "5.7.1")
    assert 'why="smime: revoked (CRL)"' in ingress.read_log()


def test_a_stale_crl_makes_mail_wait_never_go_in_clear(stack, tmp_path):
    """A CRL past its nextUpdate says nothing of the certificate: mail to it
    waits (451 4.7.5, not 550, not clear text) under either policy, until a
    fresh CRL is read (SIGHUP)."""
    ca = CA(tmp_path)
    hal = Holder(tmp_path, "hal", "hal@example.test", ca=ca)
    ivy = Holder(tmp_path, "ivy", "ivy@example.test", ca=ca)
    imported(stack, hal.pem_bytes() + ivy.pem_bytes())
    assert keys(stack, "policy", "set", "ivy@example.test", "required").returncode == 0
    crl = tmp_path / "crl.pem"
    openssl("ca", "-batch", "-config", str(ca.config), "-gencrl", "-crlsec", "1", "-out", str(crl))
    time.sleep(2)  # its nextUpdate a second after it was made
    ingress = stack.ingress(f"[crypto]\nsmime_ca_file = {ca.pem}\nsmime_crl_file = {crl}\n")
    for rcpt in ("hal@example.test", "ivy@example.test"):  # opportunistic, required
        rcpt_reply(stack, rcpt, 451, "4.7.5")
    assert "event=key_in_doubt" in ingress.read_log() and "CRL check failed" in ingress.read_log()
    ca.crl(crl)
    reload(ingress)
    for rcpt in ("hal@example.test", "ivy@example.test"):
        rcpt_reply(stack, rcpt, 250)


def test_required_with_an_expired_certificate_is_refused_at_rcpt(stack, tmp_path):
    ca = CA(tmp_path)
    grace = Holder(tmp_path, "grace", "grace@example.test", ca=ca, end=utc(12))
    imported(stack, grace.pem_bytes())
    assert keys(stack, "policy", "set", "grace@example.test", "required").returncode == 0
    stack.ingress()
    with connect(stack) as c:  # while it is valid: taken, and cached
        expect(c.cmd("MAIL FROM:<sender@origin.test>"), 250)
        expect(c.cmd("RCPT TO:<grace@example.test>"), 250)
    wait_for(lambda: time.time() > not_after(grace) + 1, timeout=20, what="expiry")
    with connect(stack) as c:
        expect(c.cmd("MAIL FROM:<sender@origin.test>"), 250)
        expect(c.cmd("RCPT TO:<grace@example.test>"), 550, "5.7.1")
    log = stack.procs[-1].read_log()
    assert "reason=encryption_required" in log and 'why="smime: expired"' in log
