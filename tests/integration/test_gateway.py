"""The encryption gateway with real gpg: keys imported with `sealpost keys`,
messages encrypted on the ingress to RFC 3156 PGP/MIME with RFC 9788 header
protection, decrypted here with nothing but each recipient's secret key."""
import email
import email.policy
import smtplib
import subprocess
import time

import pytest

from conftest import BIN, unseal, wait_for
from pgp import Person, recipient_key_ids
from smtpclient import HOST, connect, expect, strip_received

CONTENT_HEADERS = (b"Content-Type: text/plain; charset=utf-8\r\n"
                   b"Content-Transfer-Encoding: 8bit\r\n")
BODY = "Grüße aus Zürich — naïve café\r\n.leading dot line\r\nlast line\r\n".encode()


# Each test that starts a node runs once per OpenPGP engine (conftest.py:
# openpgp_engine); those that only use `sealpost keys` run once: keys are
# read by gpg whichever engine encrypts.
engines = pytest.mark.usefixtures("openpgp_engine")


@pytest.fixture(scope="module")
def people(tmp_path_factory):
    base = tmp_path_factory.mktemp("keys")
    return {name: Person(base, name, f"{name}@example.test")
            for name in ("alice", "bob", "carol", "erin")}


def keys(stack, *args, input=None):
    path = stack.tmp / "keys.conf"
    path.write_text(stack.config())
    return subprocess.run([BIN, "keys", *args, "-c", str(path)], input=input,
                          capture_output=True, timeout=60)


def import_keys(stack, *persons):
    r = keys(stack, "import", "-", input=b"".join(p.public() for p in persons))
    assert r.returncode == 0, r.stdout + r.stderr
    return r.stdout.decode()


def message(to, cc="", extra=b"", subject="Quarterly figures"):
    head = (f"From: Sender <sender@origin.test>\r\nTo: {to}\r\n"
            + (f"Cc: {cc}\r\n" if cc else "")
            + f"Subject: {subject}\r\nDate: Sat, 28 Nov 2026 10:00:00 +0000\r\n"
            "Message-ID: <m1@origin.test>\r\nBcc: carol@example.test\r\n"
            "MIME-Version: 1.0\r\n").encode()
    return head + extra + CONTENT_HEADERS + b"\r\n" + BODY


def submit(port, rcpts, data):
    with smtplib.SMTP(HOST, port, timeout=30) as c:
        c.ehlo()
        c.mail("sender@origin.test", ["BODY=8BITMIME"])
        for r in rcpts:
            code, _ = c.rcpt(r)
            assert code == 250, (r, code)
        code, msg = c.data(data)
        return code, msg


def by_rcpts(sink):
    return {tuple(sorted(rcpts)): content for _, rcpts, content in sink.messages}


def check_pgp_mime(content):
    """RFC 3156 as Python's email sees it; returns the armored part."""
    outer = email.message_from_bytes(strip_received(content), policy=email.policy.default)
    no_defects(outer)
    assert outer.get_content_type() == "multipart/encrypted"
    assert outer.get_param("protocol") == "application/pgp-encrypted"
    assert "Content-Transfer-Encoding" not in outer
    assert "Bcc" not in outer
    assert outer["Subject"] == "[...]"
    assert outer["From"] == "Sender <sender@origin.test>"
    assert outer["Message-ID"] == "<m1@origin.test>"
    parts = outer.get_payload()
    assert len(parts) == 2
    assert parts[0].get_content_type() == "application/pgp-encrypted"
    assert parts[0].get_payload().strip() == "Version: 1"
    assert parts[1].get_content_type() == "application/octet-stream"
    armor = parts[1].get_payload(decode=True)
    assert armor.startswith(b"-----BEGIN PGP MESSAGE-----")
    assert b"\r\n" in strip_received(content) and b"\n" not in strip_received(content).replace(
        b"\r\n", b"")
    return armor


def check_pgp_mime_armor(content):
    outer = email.message_from_bytes(strip_received(content), policy=email.policy.default)
    assert outer.get_content_type() == "multipart/encrypted"
    return outer.get_payload()[1].get_payload(decode=True)


def no_defects(msg):
    """Every entity of msg parses without a defect."""
    for part in msg.walk():
        assert not part.defects, (part.get_content_type(), part.defects)


def content_lines(head):
    return [f for f in head.split(b"\r\n") if f.lower().startswith(b"content-")]


def check_inner(plain, original, subject="Quarterly figures", legacy=True, shown=""):
    """The decrypted entity: the original's header (no Bcc) and, under its own
    Content-* fields, its body byte for byte. With [crypto] legacy_display
    (the default) a multipart/mixed marked hp="cipher" and
    protected-headers="v1" holding first the legacy display element (the
    hidden Subject, for readers that do not look inside), then the original;
    without it, the original's Content-Type with hp="cipher" added."""
    head, _, body = plain.partition(b"\r\n\r\n")
    orig_head, _, orig_body = original.partition(b"\r\n\r\n")
    inner = email.message_from_bytes(plain, policy=email.policy.default)
    no_defects(inner)
    assert inner["Subject"] == subject
    assert "Bcc" not in inner and b"carol@example.test" not in head
    assert b"secret@x.test" not in plain
    assert inner.get_param("hp") == "cipher"
    assert any(v == "Subject: [...]" for v in inner.get_all("HP-Outer", []))
    if not legacy:
        assert body == orig_body
        assert inner.get_param("protected-headers") is None
        ct = [f + b'; hp="cipher"' if f.lower().startswith(b"content-type:") else f
              for f in content_lines(orig_head)]
        assert content_lines(head) == ct
        return
    assert inner.get_content_type() == "multipart/mixed"
    assert inner.get_param("protected-headers") == "v1"
    display, main = inner.get_payload()
    assert display.get_content_type() == "text/plain"
    assert display.get_param("hp-legacy-display") == "1"
    assert display.get_param("protected-headers") == "v1"
    assert display.get_content_disposition() == "inline"
    assert display.get_content().replace("\r\n", "\n") == f"Subject: {subject}\n{shown}\n"
    # the original part, octet for octet, between the delimiters
    boundary = inner.get_boundary().encode()
    raw = body.split(b"\r\n--" + boundary + b"\r\n")[1]
    assert raw.endswith(b"\r\n--" + boundary + b"--\r\n")
    part_head, _, part_body = raw[:-len(boundary) - 8].partition(b"\r\n\r\n")
    assert content_lines(part_head + b"\r\n") == content_lines(orig_head)
    assert part_body == orig_body
    assert main.get_content_type() == "text/plain" and main.get_param("hp") is None


@engines
def test_to_cc_share_a_copy_bcc_gets_its_own_keyless_gets_the_original(stack, people, tmp_path):
    import_keys(stack, people["alice"], people["bob"], people["carol"])
    stack.ingress()
    stack.worker()
    original = message("alice@example.test, Bob <bob@example.test>")
    rcpts = ["alice@example.test", "bob@example.test", "carol@example.test", "dave@example.test"]
    code, msg = submit(stack.smtp_port, rcpts, original)
    assert code == 250, msg
    wait_for(lambda: stack.sink.count() == 3, what="three copies")
    got = by_rcpts(stack.sink)
    assert set(got) == {("alice@example.test", "bob@example.test"), ("carol@example.test",),
                        ("dave@example.test",)}
    shared, bcc, plain = (got[("alice@example.test", "bob@example.test")],
                          got[("carol@example.test",)], got[("dave@example.test",)])
    assert len({shared, bcc, plain}) == 3
    # The keyless recipient gets the message as it was sent, but its Bcc.
    assert strip_received(plain) == original.replace(b"Bcc: carol@example.test\r\n", b"")
    # The shared copy opens with Alice's key alone, and with Bob's alone.
    armor = check_pgp_mime(shared)
    for who in ("alice", "bob"):
        check_inner(people[who].decrypt(armor), original)
    assert people["carol"].cannot_decrypt(armor)
    assert recipient_key_ids(tmp_path, armor) == sorted(
        people["alice"].subkey_ids + people["bob"].subkey_ids)
    # The Bcc copy names Carol's key and no other.
    armor = check_pgp_mime(bcc)
    check_inner(people["carol"].decrypt(armor), original)
    assert recipient_key_ids(tmp_path, armor) == people["carol"].subkey_ids
    assert people["alice"].cannot_decrypt(armor)


def header_of(content):
    return strip_received(content).partition(b"\r\n\r\n")[0] + b"\r\n"


@engines
def test_bcc_reaches_no_copy_clear_or_encrypted(stack, people, tmp_path):
    """A Bcc left in the message by the client (folded, in any case) is in no
    copy: not the clear one a keyless recipient gets, not outside nor inside
    the encrypted ones, read by gpg, sq and rnp alike."""
    import_keys(stack, people["alice"], people["carol"])
    stack.ingress()
    stack.worker()
    original = (b"From: Sender <sender@origin.test>\r\nTo: alice@example.test, dave@example.test\r\n"
                b"bcc: secret@x.test,\r\n\tcarol@example.test\r\n"
                b"Subject: Quarterly figures\r\nDate: Sat, 28 Nov 2026 10:00:00 +0000\r\n"
                b"Message-ID: <m1@origin.test>\r\nRESENT-BCC: secret@x.test\r\n"
                b"MIME-Version: 1.0\r\n" + CONTENT_HEADERS + b"\r\n" + BODY)
    rcpts = ["alice@example.test", "dave@example.test", "carol@example.test"]
    code, msg = submit(stack.smtp_port, rcpts, original)
    assert code == 250, msg
    wait_for(lambda: stack.sink.count() == 3, what="three copies")
    got = by_rcpts(stack.sink)
    clear = got[("dave@example.test",)]
    assert b"secret@x.test" not in clear and b"carol@" not in clear
    parsed = email.message_from_bytes(strip_received(clear), policy=email.policy.default)
    no_defects(parsed)
    assert "Bcc" not in parsed and "Resent-Bcc" not in parsed
    assert parsed["To"] == "alice@example.test, dave@example.test"
    assert parsed.get_content() == BODY.decode()
    for who, content in (("alice", got[("alice@example.test",)]),
                         ("carol", got[("carol@example.test",)])):
        assert b"secret@x.test" not in header_of(content)
        armor = check_pgp_mime(content)
        plain = people[who].decrypt(armor)
        assert people[who].decrypt_with_sq(armor) == plain
        assert people[who].decrypt_with_rnp(armor) == plain
        check_inner(plain, original)
        assert "Resent-Bcc" not in email.message_from_bytes(plain, policy=email.policy.default)


def key_made_by(tool, base, email):
    """A key without a passphrase made by gpg, sq or rnp (each with its own
    defaults: gpg and sq Curve25519, rnp RSA): (its certificate, the file
    of its secret key)."""
    if tool == "gpg":
        p = Person(base, "gpg", email)
        return p.public(), p.secret_key_file()
    d = base / tool
    d.mkdir(parents=True)
    if tool == "sq":
        run_tool("sq", "key", "generate", "--userid", f"S <{email}>", "--export", str(d / "k"))
        return run_tool("sq", "key", "extract-cert", str(d / "k")), d / "k"
    home = ["--homedir", str(d)]
    run_tool("rnpkeys", *home, "--generate-key", "--userid", f"R <{email}>", "--password", "",
             "--notty")
    (d / "secret.asc").write_bytes(run_tool("rnpkeys", *home, "--export-key", "--secret", email))
    return run_tool("rnpkeys", *home, "--export-key", email), d / "secret.asc"


def run_tool(*argv, data=None):
    r = subprocess.run(list(argv), input=data, capture_output=True, timeout=120,
                       stdin=None if data is not None else subprocess.DEVNULL)
    assert r.returncode == 0, (argv, r.stderr)
    return r.stdout


def decrypt_with(reader, secret, data, tmp):
    """data decrypted by gpg, sq or rnp with nothing but the secret key file."""
    if reader == "gpg":
        from pgp import gpg
        home = tmp / f"reader-{secret.parent.name}"
        home.mkdir(mode=0o700, exist_ok=True)
        gpg(home, "--import", str(secret))
        return gpg(home, "--decrypt", input=data).stdout
    if reader == "sq":
        return run_tool("sq", "decrypt", "--recipient-key", str(secret), data=data)
    return run_tool("rnp", "--homedir", str(tmp / "rnp-reader"), "--keyfile", str(secret),
                    "--decrypt", "--output", "-", data=data)


TOOLS = ("gpg", "sq", "rnp")


@engines
def test_keys_made_by_gpg_sq_and_rnp_each_open_with_gpg_sq_and_rnp(stack, tmp_path):
    """One copy to three keys, made by gpg, sq and rnp: each of gpg, sq and
    rnp opens it with any one of the three secret keys, to the same text."""
    made = {tool: key_made_by(tool, tmp_path, f"{tool}@example.test") for tool in TOOLS}
    r = keys(stack, "import", "-", input=b"".join(cert for cert, _ in made.values()))
    assert r.returncode == 0, r.stdout + r.stderr
    stack.ingress()
    stack.worker()
    rcpts = [f"{tool}@example.test" for tool in TOOLS]
    original = message(", ".join(rcpts))
    code, msg = submit(stack.smtp_port, rcpts, original)
    assert code == 250, msg
    wait_for(lambda: stack.sink.count() == 1, what="the shared copy")
    armor = check_pgp_mime(stack.sink.messages[0][2])
    plains = {(maker, reader): decrypt_with(reader, secret, armor, tmp_path)
              for maker, (_, secret) in made.items() for reader in TOOLS}
    assert len(set(plains.values())) == 1, plains.keys()
    check_inner(plains["gpg", "gpg"], original)


LIST_FIELDS = (b"Reply-To: Help <help@list.example>\r\n"
               b"Sender: bounces@list.example\r\n"
               b"Auto-Submitted: auto-generated\r\n"
               b"Precedence: bulk\r\n"
               b"List-Id: Weekly news <weekly.list.example>\r\n"
               b"List-Unsubscribe: <https://list.example/u/123>,\r\n"
               b" <mailto:unsub@list.example?subject=123>\r\n"
               b"List-Unsubscribe-Post: List-Unsubscribe=One-Click\r\n")


@engines
@pytest.mark.parametrize("legacy", [True, False], ids=["legacy_display", "no_legacy_display"])
def test_outer_keeps_what_responders_and_lists_need(stack, people, legacy):
    """Auto-Submitted, Precedence, List-*, Reply-To and Sender stay outside,
    verbatim, so that responders do not loop and one-click unsubscribe
    works; inside they are protected as well, and HP-Outer says so."""
    import_keys(stack, people["alice"])
    stack.ingress("" if legacy else "[crypto]\nlegacy_display = no\n")
    stack.worker()
    original = message("alice@example.test", extra=LIST_FIELDS + b"Keywords: inside only\r\n")
    code, msg = submit(stack.smtp_port, ["alice@example.test"], original)
    assert code == 250, msg
    wait_for(lambda: stack.sink.count() == 1, what="the message")
    content = stack.sink.messages[0][2]
    head = header_of(content)
    assert LIST_FIELDS in head  # verbatim, folding and order kept
    assert b"Keywords" not in head and b"\r\nSubject: [...]\r\n" in head
    outer = email.message_from_bytes(strip_received(content), policy=email.policy.default)
    assert outer["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click"
    assert outer["Auto-Submitted"] == "auto-generated"
    armor = check_pgp_mime(content)
    plain = people["alice"].decrypt(armor)
    assert people["alice"].decrypt_with_sq(armor) == plain
    check_inner(plain, original, legacy=legacy, shown="Keywords: inside only\n")
    inner = email.message_from_bytes(plain, policy=email.policy.default)
    assert inner["Precedence"] == "bulk" and inner["Keywords"] == "inside only"
    hp_outer = inner.get_all("HP-Outer")
    for name in ("Reply-To", "Sender", "Auto-Submitted", "Precedence", "List-Id",
                 "List-Unsubscribe", "List-Unsubscribe-Post"):
        assert sum(v.startswith(name + ": ") for v in hp_outer) == 1, (name, hp_outer)
    assert not any(v.startswith("Keywords") for v in hp_outer)


@engines
def test_no_plaintext_at_rest_when_encrypted(stack, people):
    import_keys(stack, people["alice"])
    stack.ingress()
    code, _ = submit(stack.smtp_port, ["alice@example.test"],
                     message("alice@example.test", subject="Top secret marker-55"))
    assert code == 250
    r = stack.redis.client()
    for key in r.scan_iter():
        assert "naïve".encode() not in (r.dump(key) or b""), key
        assert b"marker-55" not in (r.dump(key) or b""), key
    # Inside the seal: ciphertext only, and the Subject hidden.
    (key,) = list(r.scan_iter(match="{mq:*}:b:*"))
    mid, variant = key.decode().split(":b:")[1].split(":")
    stored = unseal(r.get(key), mid, int(variant))
    assert b"-----BEGIN PGP MESSAGE-----" in stored and b"marker-55" not in stored
    assert b"Subject: [...]" in stored


@engines
def test_required_without_key_is_refused_at_rcpt(stack, people):
    assert keys(stack, "policy", "set", "secure.example.test", "required").returncode == 0
    assert keys(stack, "policy", "set", "Vip@Example.test", "required").returncode == 0
    stack.ingress()
    with connect(stack) as c:
        expect(c.cmd("MAIL FROM:<sender@origin.test>"), 250)
        expect(c.cmd("RCPT TO:<vip@example.test>"), 550, "5.7.1")
        expect(c.cmd("RCPT TO:<someone@example.test>"), 250)
    refused = stack.procs[-1].read_log()
    assert "reason=encryption_required" in refused
    # Once the key is imported, within a second, the same recipient is taken.
    vip = Person(stack.tmp, "vip", "vip@example.test")
    import_keys(stack, vip)
    time.sleep(1.0)
    with connect(stack) as c:
        expect(c.cmd("MAIL FROM:<sender@origin.test>"), 250)
        expect(c.cmd("RCPT TO:<vip@example.test>"), 250)


@engines
def test_expired_or_revoked_key_counts_as_none(stack, tmp_path):
    old = Person(tmp_path, "old", "old@example.test", expire="1d", faked_time="20200101T000000")
    gone = Person(tmp_path, "gone", "gone@example.test")
    assert keys(stack, "policy", "set", "example.test", "required").returncode == 0
    # The import itself refuses them, saying why.
    r = keys(stack, "import", "-", input=old.public())
    assert r.returncode == 1 and b"expired" in r.stdout
    import_keys(stack, gone)
    stack.ingress()
    # Revoked after it was imported: importing the revocation removes it.
    gone.revoke()
    r = keys(stack, "import", "-", input=gone.public())
    assert r.returncode == 0, r.stdout
    assert r.stdout == f"revoked: {gone.fpr} gone@example.test, key removed\n".encode()
    assert gone.fpr.encode() not in keys(stack, "list").stdout
    time.sleep(0.6)
    with connect(stack) as c:
        expect(c.cmd("MAIL FROM:<sender@origin.test>"), 250)
        expect(c.cmd("RCPT TO:<old@example.test>"), 550, "5.7.1")
        expect(c.cmd("RCPT TO:<gone@example.test>"), 550, "5.7.1")


def sq_decrypt(person, tmp_path, armor):
    """Decrypts with Sequoia, a second implementation, from the person's
    secret key as gpg exports it."""
    from pgp import gpg
    key = tmp_path / f"{person.email}.sec"
    key.write_bytes(gpg(person.home, "--armor", "--export-secret-keys", person.fpr).stdout)
    r = subprocess.run(["sq", "decrypt", "--recipient-key", str(key)], input=armor,
                       capture_output=True, timeout=60)
    assert r.returncode == 0, r.stderr
    return r.stdout


def smime_certificate(tmp_path):
    key, cert = tmp_path / "bob.key", tmp_path / "bob.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "30",
                    "-subj", "/CN=Bob", "-keyout", str(key), "-out", str(cert),
                    "-addext", "subjectAltName=email:bob@example.test"],
                   check=True, capture_output=True, timeout=60)
    return key, cert


def openssl_cms(*args, input):
    r = subprocess.run(["openssl", "cms", *args], input=input, capture_output=True, timeout=60)
    assert r.returncode == 0, r.stderr
    return r.stdout.replace(b"\r\n", b"\n").replace(b"\n", b"\r\n")


def pgp_mime(head, armored, extra_part=b""):
    return (head + b"MIME-Version: 1.0\r\nContent-Type: multipart/encrypted;\r\n"
            b" protocol=\"application/pgp-encrypted\"; boundary=\"b1\"\r\n\r\n--b1\r\n"
            b"Content-Type: application/pgp-encrypted\r\n\r\nVersion: 1\r\n--b1\r\n"
            b"Content-Type: application/octet-stream\r\n\r\n" + armored + extra_part
            + b"--b1--\r\n")


@engines
def test_already_encrypted_input_passes_unchanged(stack, people, tmp_path):
    """Inline PGP and PGP/MIME made by gpg and by sq, S/MIME made by openssl:
    each stored and delivered as it came."""
    import_keys(stack, people["alice"])
    stack.ingress()
    stack.worker()
    from pgp import gpg
    armored = gpg(people["alice"].home, "--armor", "--encrypt", "-r", people["alice"].fpr,
                  input=b"already encrypted by the sender").stdout.replace(b"\n", b"\r\n")
    cert = tmp_path / "alice.pub"
    cert.write_bytes(people["alice"].public())
    by_sq = subprocess.run(["sq", "encrypt", "--recipient-cert", str(cert)],
                           input=b"encrypted by sq", capture_output=True, timeout=60)
    assert by_sq.returncode == 0, by_sq.stderr
    head = b"From: sender@origin.test\r\nTo: alice@example.test\r\nSubject: s\r\n"
    inline = head + b"\r\n" + armored
    mime = pgp_mime(head, armored)
    mime_sq = pgp_mime(head, by_sq.stdout.replace(b"\n", b"\r\n"))
    _, bob_cert = smime_certificate(tmp_path)
    smime = head + openssl_cms("-encrypt", str(bob_cert), input=b"Content-Type: text/plain\r\n"
                               b"\r\nencrypted by openssl\r\n")
    assert b"smime-type=enveloped-data" in smime
    sent = (inline, mime, mime_sq, smime)
    for data in sent:
        code, _ = submit(stack.smtp_port, ["alice@example.test"], data)
        assert code == 250
    wait_for(lambda: stack.sink.count() == len(sent), what="the messages")
    got = sorted(strip_received(c) for _, _, c in stack.sink.messages)
    assert got == sorted(sent)
    assert stack.procs[0].read_log().count("outcome=passthrough") == len(sent)


@engines
def test_what_only_looks_encrypted_is_encrypted(stack, people, tmp_path):
    """Armor next to readable text, signed-only S/MIME (also when labelled
    enveloped), a PGP/MIME label on a readable body or with a clear third
    part: none of these is encrypted, so the gateway is."""
    import_keys(stack, people["alice"])
    stack.ingress()
    stack.worker()
    from pgp import gpg
    head = b"From: sender@origin.test\r\nTo: alice@example.test\r\nSubject: s\r\n"
    armor = gpg(people["alice"].home, "--armor", "--encrypt", "-r", people["alice"].fpr,
                input=b"encrypted part").stdout.replace(b"\n", b"\r\n")
    bob_key, bob_cert = smime_certificate(tmp_path)
    signed = openssl_cms("-sign", "-nodetach", "-signer", str(bob_cert), "-inkey", str(bob_key),
                         input=b"Content-Type: text/plain\r\n\r\nSECRET-5\r\n")
    assert b"smime-type=signed-data" in signed
    fakes = [
        head + b"Content-Type: multipart/mixed; boundary=b\r\n\r\n--b\r\n\r\nSECRET-1\r\n"
               b"--b\r\n\r\n" + armor + b"--b--\r\n",
        head + b"\r\nSECRET-2 forwarded:\r\n" + armor,
        head + b"Content-Type: application/pkcs7-mime; smime-type=signed-data\r\n\r\n"
               b"SECRET-3\r\n",
        head + b"Content-Type: multipart/encrypted; protocol=\"application/pgp-encrypted\";"
               b" boundary=b\r\n\r\nSECRET-4\r\n",
        head + signed.replace(b"smime-type=signed-data", b"smime-type=enveloped-data"),
        pgp_mime(head, armor, b"--b1\r\nContent-Type: text/plain\r\n\r\nSECRET-6\r\n"),
    ]
    for data in fakes:
        code, _ = submit(stack.smtp_port, ["alice@example.test"], data)
        assert code == 250
    wait_for(lambda: stack.sink.count() == len(fakes), what="the messages")
    # the signed text is inside the base64 of its SignedData
    markers = [b"SECRET-1", b"SECRET-2", b"SECRET-3", b"SECRET-4",
               signed.split(b"\r\n\r\n", 1)[1].split(b"\r\n")[0], b"SECRET-6"]
    plains = []
    for _, _, content in stack.sink.messages:
        assert b"SECRET-" not in content and markers[4] not in content
        armored = check_pgp_mime_armor(content)
        plain = people["alice"].decrypt(armored)
        assert sq_decrypt(people["alice"], tmp_path, armored) == plain
        plains.append(plain)
    for marker in markers:
        assert sum(marker in p for p in plains) == 1, marker
    assert "outcome=passthrough" not in stack.procs[0].read_log()


@engines
def test_utf8_headers_and_8bit_body_survive(stack, people):
    import_keys(stack, people["alice"])
    stack.ingress()
    stack.worker()
    original = message("alice@example.test", subject="=?utf-8?q?Gr=C3=BC=C3=9Fe?=")
    original = original.replace(b"Subject: ", b"X-Note: \xc3\xa9t\xc3\xa9\r\nSubject: ")
    code, _ = submit(stack.smtp_port, ["alice@example.test"], original)
    assert code == 250
    wait_for(lambda: stack.sink.count() == 1, what="the message")
    outer = email.message_from_bytes(strip_received(stack.sink.messages[0][2]),
                                     policy=email.policy.default)
    armor = outer.get_payload()[1].get_payload(decode=True)
    plain = people["alice"].decrypt(armor)
    # the body untouched, under the legacy display element
    assert b"\r\n\r\n" + BODY + b"\r\n--" in plain
    no_defects(email.message_from_bytes(plain, policy=email.policy.default))
    assert b"X-Note: \xc3\xa9t\xc3\xa9\r\n" in plain
    assert b"Subject: =?utf-8?q?Gr=C3=BC=C3=9Fe?=\r\n" in plain


@engines
def test_corrupted_key_gives_451_never_cleartext(stack, people):
    """A key's data changed in Redis no longer matches its tag in the
    directory's index (issue 18): 451 at RCPT already, nothing stored."""
    import_keys(stack, people["alice"])
    r = stack.redis.client()
    key = "{sealpost:crypto}:a:alice@example.test"
    r.hset(key, "data", b"-----BEGIN PGP PUBLIC KEY BLOCK-----\n\nbroken\n"
                        b"-----END PGP PUBLIC KEY BLOCK-----\n")
    r.incr("{sealpost:crypto}:version")
    stack.ingress()
    stack.worker()
    with smtplib.SMTP(HOST, stack.smtp_port, timeout=30) as c:
        c.ehlo()
        c.mail("sender@origin.test")
        code, msg = c.rcpt("alice@example.test")
    assert code == 451 and msg.startswith(b"4.7.5"), (code, msg)
    time.sleep(1.0)
    assert stack.sink.count() == 0
    assert list(r.scan_iter(match="{mq:*}:b:*")) == []


@engines
def test_too_many_keyed_bcc_copies_is_552(stack, people):
    import_keys(stack, people["alice"], people["bob"], people["carol"])
    stack.ingress("[crypto]\nmax_bcc_copies = 2\n")
    data = message("dave@example.test")
    code, msg = submit(stack.smtp_port, ["alice@example.test", "bob@example.test",
                                         "carol@example.test"], data)
    assert (code, msg[:5]) == (552, b"5.5.3"), (code, msg)
    assert list(stack.redis.client().scan_iter(match="{mq:*}:m:*")) == []
    # two Bcc addresses of one key make one copy
    shared = Person(stack.tmp, "shared", "one@example.test",
                    extra_uids=("Shared <two@example.test>",))
    import_keys(stack, shared)
    time.sleep(0.6)
    code, msg = submit(stack.smtp_port, ["alice@example.test", "one@example.test",
                                         "two@example.test"], data)
    assert code == 250, msg
    assert "variants=2" in stack.procs[0].read_log()


def test_deleting_the_newer_of_two_keys_leaves_the_older(stack, tmp_path):
    first = Person(tmp_path, "first", "shared@example.test")
    second = Person(tmp_path, "second", "shared@example.test")
    import_keys(stack, first)
    import_keys(stack, second)
    assert second.fpr.encode() in keys(stack, "show", "shared@example.test").stdout
    assert keys(stack, "delete", second.fpr).returncode == 0
    shown = keys(stack, "show", "shared@example.test")
    assert shown.returncode == 0 and first.fpr.encode() in shown.stdout


def test_keys_cli_round_trip(stack, people):
    out = import_keys(stack, people["erin"])
    assert f"imported {people['erin'].fpr}" in out and "erin@example.test" in out
    listing = keys(stack, "list").stdout.decode()
    assert people["erin"].fpr in listing and "never" in listing
    import json
    (entry,) = json.loads(keys(stack, "list", "--json").stdout)
    assert entry["fingerprint"] == people["erin"].fpr
    assert entry["addresses"] == ["erin@example.test"]
    shown = keys(stack, "show", "ERIN@example.test").stdout.decode()
    assert people["erin"].fpr in shown and "-----BEGIN PGP PUBLIC KEY BLOCK-----" in shown
    assert keys(stack, "delete", people["erin"].fpr).returncode == 0
    assert keys(stack, "list").stdout == b""
    missing = keys(stack, "show", "erin@example.test")
    assert missing.returncode == 1 and b"no key" in missing.stderr
    bad = keys(stack, "import", "-", input=b"not a key")
    assert bad.returncode == 1 and b"no OpenPGP public key" in bad.stderr


@engines
def test_full_encryption_queue_answers_451_4_3_2(stack, people):
    """Beyond [crypto] max_pending messages at once, new ones are refused
    with 451 4.3.2 at once (the client retries), and plaintext mail still
    flows meanwhile."""
    import concurrent.futures
    import_keys(stack, people["alice"])
    stack.ingress("[crypto]\nmax_pending = 1\n")
    big = message("alice@example.test").replace(BODY, BODY * 40000)  # ~3 MB to encrypt

    def one(_):
        try:
            return submit(stack.smtp_port, ["alice@example.test"], big)
        except smtplib.SMTPDataError as e:
            return e.smtp_code, e.smtp_error
    with concurrent.futures.ThreadPoolExecutor(6) as pool:
        running = pool.map(one, range(6))
        # a keyless recipient is not held up by the encryption queue
        code, _ = submit(stack.smtp_port, ["dave@example.test"], message("dave@example.test"))
        assert code == 250
        results = list(running)
    codes = sorted(code for code, _ in results)
    assert 250 in codes and 451 in codes, results
    assert set(codes) <= {250, 451}, results
    assert all(msg.startswith(b"4.3.2") for code, msg in results if code == 451), results
    log = stack.procs[0].read_log()
    assert "event=encryption_busy" in log
    r = stack.redis.client()
    # only what got 250 is stored: the encrypted ones and the plain one
    assert len(list(r.scan_iter(match="{mq:*}:m:*"))) == codes.count(250) + 1
