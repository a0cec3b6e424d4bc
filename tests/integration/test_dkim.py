"""DKIM signing end to end: keys made with `sealpost dkim keygen`, mail sent
through the ingress and a worker to a real SMTP sink, and every message the
sink received verified by dkimpy (and, where it can be given the key
without real DNS, by OpenDKIM's opendkim-testmsg) against the TXT record
that keygen printed: plaintext, PGP/MIME, S/MIME, a bounce, UTF-8 headers
and body over SMTPUTF8, long folded fields, lines starting with a dot, a
sender's own signature broken by the gateway, both algorithms on one
message; and keys that change while the stack runs."""
import base64
import email
import email.policy
import re
import shutil
import subprocess
import time
import urllib.request

import dkim
import pytest
import redis

from conftest import BIN, free_port, wait_for
from peers import RawPeer
from pgp import Person
from smtpclient import RECEIVED, connect, expect
from test_gateway import import_keys, no_defects
from test_metrics import scrape, value
from test_smime import Holder, imported

# After each test every sealpost process stops cleanly (conftest.py: clean_exit).
pytestmark = pytest.mark.usefixtures("clean_exit")

TXT = re.compile(r'"((?:[^"\\]|\\.)*)"')


class Zone:
    """The DNS records keygen printed, for dkimpy's DNS hook and for a
    dnsmasq serving them to OpenDKIM."""

    def __init__(self):
        self.records = {}  # "s1._domainkey.origin.test." -> the TXT text

    def add(self, line):
        """Takes one zone line as keygen prints it; returns (name, text)."""
        m = re.fullmatch(r'(\S+) IN TXT ((?:"(?:[^"\\]|\\.)*" ?)+)', line)
        assert m, f"not a zone line: {line!r}"
        strings = [re.sub(r"\\(.)", r"\1", s) for s in TXT.findall(m.group(2))]
        assert all(len(s.encode()) <= 255 for s in strings), strings
        self.records[m.group(1)] = "".join(strings)
        return m.group(1), self.records[m.group(1)]

    def lookup(self, name, timeout=5):
        """dkimpy's dnsfunc: only what keygen printed, by its exact name."""
        text = self.records.get(name.decode() if isinstance(name, bytes) else name)
        return text.encode() if text is not None else None


def dkim_cli(stack, *args):
    path = stack.tmp / "dkim.conf"
    path.write_text(stack.config())
    return subprocess.run([BIN, "dkim", *args, "-c", str(path)], capture_output=True, timeout=60)


def keygen(stack, zone, domain, selector, algorithm="ed25519", bits=None):
    """`sealpost dkim keygen`; its one line on stdout goes into zone."""
    extra = ["--bits", str(bits)] if bits else []
    r = dkim_cli(stack, "keygen", domain, "--selector", selector, "--algorithm", algorithm, *extra)
    assert r.returncode == 0, r.stdout + r.stderr
    lines = r.stdout.decode().splitlines()
    assert len(lines) == 1, lines  # the zone line, nothing else
    name, text = zone.add(lines[0])
    assert name == f"{selector}._domainkey.{domain}."
    assert text.startswith(f"v=DKIM1; k={algorithm}; p="), text
    return r.stderr.decode()


def signatures(content):
    """The tags of each DKIM-Signature field of content, top down."""
    msg = email.message_from_bytes(content, policy=email.policy.compat32)
    return [dkim.util.parse_tag_value(re.sub(rb"\s+", b"", v.encode()))
            for v in msg.get_all("DKIM-Signature", [])]


def verify(content, zone, expect_signers):
    """Every signature of ours (d= and s= in expect_signers, as (d, s, a))
    verifies with dkimpy; returns the tags of each, top down."""
    tags = signatures(content)
    ours = [i for i, t in enumerate(tags) if (t[b"d"].decode(), t[b"s"].decode()) in
            {(d, s) for d, s, _ in expect_signers}]
    assert [(tags[i][b"d"].decode(), tags[i][b"s"].decode(), tags[i][b"a"].decode())
            for i in ours] == expect_signers, tags
    for i in ours:
        d = dkim.DKIM(content)
        assert d.verify(idx=i, dnsfunc=zone.lookup), (i, tags[i], d.logger)
        t = tags[i]
        assert t[b"c"] == b"relaxed/relaxed" and b"l" not in t and b"t" in t, t
        signed = [h.strip().lower() for h in t[b"h"].split(b":")]
        assert signed.count(b"from") == 2, signed  # over-signed
    # ours come first, above the ingress's Received line: added last
    assert content.startswith(b"DKIM-Signature:"), content[:200]
    return [tags[i] for i in ours]


def unsigned(content):
    return not content.startswith(b"DKIM-Signature:") and not signatures(content)


def fails(content, zone, idx=0):
    d = dkim.DKIM(content)
    try:
        return not d.verify(idx=idx, dnsfunc=zone.lookup)
    except dkim.DKIMException:
        return True


# ---- OpenDKIM, a second verifier ----
#
# opendkim-testmsg has no option for a key: it asks DNS, through the C
# library's resolver, i.e. /etc/resolv.conf. So each check runs in a network
# and mount namespace of its own (unshare -mn: only a loopback, nothing
# reaches out), where a dnsmasq on 127.0.0.1:53 serves the records keygen
# printed and a resolv.conf bind-mounted over the system's names it.

OPENDKIM_SCRIPT = r"""
set -e
ip link set lo up
mount --bind "$DIR/resolv.conf" /etc/resolv.conf
dnsmasq --conf-file="$DIR/dnsmasq.conf" --pid-file="$DIR/dnsmasq.pid" \
  --listen-address=127.0.0.1 --bind-interfaces --port=53 --no-resolv --no-hosts --user=root
set +e
opendkim-testmsg < "$DIR/message"
rc=$?
kill "$(cat "$DIR/dnsmasq.pid")"
exit $rc
"""


def opendkim_available():
    """deploy/setup.sh installs them: a machine without them fails the tests
    rather than passing them with one verifier."""
    missing = [t for t in ("opendkim-testmsg", "dnsmasq", "unshare", "ip") if not shutil.which(t)]
    if missing:
        pytest.fail(f"{', '.join(missing)} not installed; run `make setup`")
    return True


def opendkim_verify(content, zone, tmp):
    """(exit code, output) of opendkim-testmsg over content, every zone record
    served by a dnsmasq of its own namespace."""
    d = tmp / f"opendkim-{time.monotonic_ns()}"
    d.mkdir()
    (d / "resolv.conf").write_text("nameserver 127.0.0.1\n")
    (d / "message").write_bytes(content)
    (d / "dnsmasq.conf").write_text("".join(
        "txt-record=" + name.rstrip(".") + "," + ",".join(
            f'"{text[i:i + 255]}"' for i in range(0, len(text), 255)) + "\n"
        for name, text in zone.records.items()))
    r = subprocess.run(["unshare", "-mn", "sh", "-c", OPENDKIM_SCRIPT],
                       env={"DIR": str(d), "PATH": "/usr/sbin:/usr/bin:/sbin:/bin"},
                       capture_output=True, timeout=60)
    return r.returncode, (r.stdout + r.stderr).decode(errors="replace")


def both_verifiers(content, zone, tmp, expect_signers):
    tags = verify(content, zone, expect_signers)
    if opendkim_available():
        rc, out = opendkim_verify(content, zone, tmp)
        assert rc == 0, out
    return tags


# ---- the stack ----

def worker_with_metrics(stack, extra=""):
    port = free_port()
    stack.worker(extra=f"[metrics]\nlisten = 127.0.0.1:{port}\n{extra}")
    return port


def metric(port, name, **labels):
    """One series' value from the worker's /metrics (None when it is absent:
    a series that should be there and is not fails a comparison)."""
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
    want = ",".join(f'{k}="{v}"' for k, v in sorted(labels.items()))
    for line in text.splitlines():
        if line.startswith("#"):
            continue
        series, _, value = line.rpartition(" ")
        sname, _, rest = series.partition("{")
        got = ",".join(sorted(rest.rstrip("}").split(","))) if rest else ""
        if sname == name and got == want:
            return float(value)
    return None


def message(sender="a@origin.test", to="bob@example.test", subject="Quarterly figures",
            extra=b"", body=b"Hello,\r\nthe figures.\r\n"):
    return (f"From: Alice <{sender}>\r\nTo: {to}\r\nSubject: {subject}\r\n"
            "Date: Sat, 28 Nov 2026 10:00:00 +0000\r\n"
            f"Message-ID: <{time.monotonic_ns()}@origin.test>\r\nMIME-Version: 1.0\r\n"
            "Content-Type: text/plain; charset=utf-8\r\nContent-Transfer-Encoding: 8bit\r\n"
            ).encode() + extra + b"\r\n" + body


def send(stack, data, rcpts=("bob@example.test",), sender="a@origin.test", params=" BODY=8BITMIME"):
    """One message through the ingress (raw SMTP: the octets as given)."""
    with connect(stack) as c:
        expect(c.cmd(f"MAIL FROM:<{sender}>{params}".encode()), 250, "2.1.0")
        for r in rcpts:
            expect(c.cmd(f"RCPT TO:<{r}>".encode()), 250, "2.1.5")
        expect(c.cmd("DATA"), 354)
        stuffed = re.sub(rb"(?m)^\.", b"..", data)
        expect(c.cmd(stuffed + b"."), 250, "2.0.0")


def next_message(stack, n):
    """The content of the sink's n-th message (from 1), once it is there."""
    wait_for(lambda: stack.sink.count() >= n, timeout=20, what=f"message {n} at the sink")
    return stack.sink.messages[n - 1][2]


def body_of_ingress(content, sent):
    """What the sink got is our signatures, the ingress's Received line, and
    the message exactly as it was sent."""
    head, _, rest = content.partition(b"Received: ")
    m = RECEIVED.match(b"Received: " + rest)
    assert m, content[:300]
    assert (b"Received: " + rest)[m.end():] == sent
    return head


@pytest.fixture
def zone():
    return Zone()


# ---- the "done means" ----

def test_plain_and_encrypted_from_origin_test_verify_against_the_printed_record(
        stack, zone, tmp_path):
    """keygen origin.test s1 ed25519, then a plain message and a PGP/MIME one
    from a@origin.test reach the sink signed, and both verifiers accept them."""
    alice = Person(tmp_path, "alice", "alice@example.test")
    import_keys(stack, alice)
    note = keygen(stack, zone, "origin.test", "s1", "ed25519")
    assert "origin.test s1 (ed25519) stored and active:" in note, note
    stack.ingress()
    port = worker_with_metrics(stack)
    plain = message()
    send(stack, plain)
    content = next_message(stack, 1)
    both_verifiers(content, zone, tmp_path, [("origin.test", "s1", "ed25519-sha256")])
    head = body_of_ingress(content, plain)
    assert head.count(b"DKIM-Signature:") == 1
    send(stack, message(to="alice@example.test"), rcpts=["alice@example.test"])
    enc = next_message(stack, 2)
    outer = email.message_from_bytes(enc, policy=email.policy.default)
    no_defects(outer)
    assert outer.get_content_type() == "multipart/encrypted" and outer["Subject"] == "[...]"
    assert b"the figures" not in enc
    both_verifiers(enc, zone, tmp_path, [("origin.test", "s1", "ed25519-sha256")])
    samples = scrape(port)  # promtool's lint of every series, ours included
    assert value(samples, "sealpost_dkim_signatures_total", domain="origin.test",
                 algorithm="ed25519") == 2
    assert value(samples, "sealpost_dkim_keys") == 1
    assert value(samples, "sealpost_dkim_signing_duration_seconds_count") == 2
    assert value(samples, "sealpost_dkim_unsigned_total", reason="no_key") == 0
    # the note's example: one signed encrypted message's outer header
    (tmp_path / "signed-encrypted-header.txt").write_bytes(enc.partition(b"\r\n\r\n")[0])


# ---- what is signed: each kind of message ----

def sender_signature(zone, data):
    """data signed by the sender's own system (dkimpy, an RSA key of
    selector "old"), whose record goes into zone."""
    key = subprocess.run(["openssl", "genrsa", "-traditional", "2048"],
                         capture_output=True, check=True).stdout
    pub = subprocess.run(["openssl", "rsa", "-pubout", "-outform", "DER"], input=key,
                         capture_output=True, check=True).stdout
    zone.records["old._domainkey.origin.test."] = "v=DKIM1; k=rsa; p=" + base64.b64encode(
        pub).decode()
    signed = dkim.sign(data, b"old", b"origin.test", key,
                       include_headers=[b"from", b"to", b"subject", b"content-type"]) + data
    assert dkim.DKIM(signed).verify(dnsfunc=zone.lookup)  # good as it was sent
    return signed


def test_smime_signed_and_the_sender_s_signature_goes_inside(stack, zone, tmp_path):
    """An S/MIME message whose sender had signed it: the rewrite breaks that
    signature, and the gateway drops it (crypto/pgpmime.c: a transport
    field, true only of the message as it was); ours on the outer message
    verifies."""
    bob = Holder(tmp_path, "bob", "bob@example.test", "rsa")
    imported(stack, bob.pem_bytes())
    keygen(stack, zone, "origin.test", "s1")
    stack.ingress()
    stack.worker()
    send(stack, sender_signature(zone, message(to="bob@example.test")))
    content = next_message(stack, 1)
    outer = email.message_from_bytes(content, policy=email.policy.default)
    assert outer.get_content_type() == "application/pkcs7-mime"
    inner = bob.decrypt(content)
    assert b"the figures" in inner and b"DKIM-Signature" not in inner
    both_verifiers(content, zone, tmp_path, [("origin.test", "s1", "ed25519-sha256")])
    assert [t[b"s"] for t in signatures(content)] == [b"s1"]


def test_a_sender_s_broken_signature_stays_and_ours_verifies(stack, zone, tmp_path):
    """A plain message carrying the sender's signature, broken on its way
    (a signed field changed, as a list would): it stays as it came, below
    ours, which verifies; theirs still fails."""
    keygen(stack, zone, "origin.test", "s1")
    stack.ingress()
    stack.worker()
    data = sender_signature(zone, message()).replace(b"Subject: Quarterly figures",
                                                     b"Subject: [list] Quarterly figures")
    send(stack, data)
    content = next_message(stack, 1)
    body_of_ingress(content, data)
    tags = signatures(content)
    assert [t[b"s"] for t in tags] == [b"s1", b"old"]
    both_verifiers(content, zone, tmp_path, [("origin.test", "s1", "ed25519-sha256")])
    assert fails(content, zone, 1)


def test_a_bounce_is_signed_with_the_key_of_the_reporting_host(stack, zone, tmp_path):
    keygen(stack, zone, "mx.sealpost.test", "bounces")
    keygen(stack, zone, "origin.test", "s1")
    stack.sink.rcpt_reply = lambda a: "550 5.1.1 no such user" if a.startswith("nobody@") else None
    stack.ingress()
    stack.worker()
    send(stack, message(to="nobody@example.test"), rcpts=["nobody@example.test"])
    bounce = next_message(stack, 1)
    assert stack.sink.messages[0][0] in ("", "<>")
    parsed = email.message_from_bytes(bounce, policy=email.policy.compat32)
    assert parsed["From"] == "Mail Delivery System <MAILER-DAEMON@mx.sealpost.test>"
    both_verifiers(bounce, zone, tmp_path, [("mx.sealpost.test", "bounces", "ed25519-sha256")])


def test_default_domain_signs_what_has_no_key_of_its_own(stack, zone, tmp_path):
    keygen(stack, zone, "origin.test", "s1")
    conf = "[dkim]\ndefault_domain = origin.test\n"
    stack.ingress()
    stack.worker(extra=conf)
    send(stack, message(sender="x@elsewhere.test"), sender="x@elsewhere.test")
    both_verifiers(next_message(stack, 1), zone, tmp_path, [("origin.test", "s1", "ed25519-sha256")])


def test_utf8_headers_and_body_over_smtputf8(stack, zone, tmp_path):
    """UTF-8 in the From's display name, the Subject and the body, sent with
    SMTPUTF8 to a peer that offers it: what the peer got, octet for octet
    (dot-unstuffed here), verifies."""
    keygen(stack, zone, "origin.test", "s1")
    peer = RawPeer(extensions=("PIPELINING", "8BITMIME", "SMTPUTF8"))
    peer.start()
    stack.ingress(extra="[ingress]\nrelay_domains = example.test peer.test\n")
    stack.worker(extra=f"[routes]\npeer.test = 127.0.0.1:{peer.port}\n")
    data = ("From: Jörg Müller <jörg@origin.test>\r\nTo: ünïcode@peer.test\r\n"
            "Subject: Grüße aus Zürich — naïve café\r\nMIME-Version: 1.0\r\n"
            "Content-Type: text/plain; charset=utf-8\r\nContent-Transfer-Encoding: 8bit\r\n"
            "\r\nGrüße, 日本語のテキスト\r\n").encode()
    # jörg@origin.test: a UTF-8 local part, the domain still ASCII
    send(stack, data, rcpts=["ünïcode@peer.test"], sender="jörg@origin.test",
         params=" SMTPUTF8 BODY=8BITMIME")
    wait_for(lambda: peer.delivered, timeout=15, what="delivery to the peer")
    peer.stop()
    wire = peer.delivered[0][1] + b"\r\n"
    content = re.sub(rb"(?m)^\.", b"", wire)
    assert "Grüße aus Zürich".encode() in content
    # dkimpy alone: libopendkim 2.11 refuses a header with 8-bit octets
    # ("dkim_chunk(): Syntax error") before it looks at any signature.
    verify(content, zone, [("origin.test", "s1", "ed25519-sha256")])


def test_long_folded_fields_and_dot_lines(stack, zone, tmp_path):
    keygen(stack, zone, "origin.test", "s1")
    stack.ingress()
    stack.worker()
    many = ",\r\n\t".join(f"Person {i} <p{i}@example.test>" for i in range(40))
    refs = "\r\n ".join(f"<{i}.{'x' * 60}@origin.test>" for i in range(30))
    subject = "A subject that goes on " + "and on " * 30 + "\r\n\tand is folded\r\n  twice"
    data = (f"From: Alice <a@origin.test>\r\nTo: {many}\r\nCc: c@example.test\r\n"
            f"Subject: {subject}\r\nReferences: {refs}\r\nIn-Reply-To: <1.x@origin.test>\r\n"
            "Reply-To:   Alice   <a@origin.test>  \r\nList-Id: Figures <figures.origin.test>\r\n"
            "List-Unsubscribe: <mailto:u@origin.test>\r\nX-Long: " + "y" * 900 + "\r\n"
            "Date: Sat, 28 Nov 2026 10:00:00 +0000\r\nMessage-ID: <long@origin.test>\r\n"
            "\r\n.a line starting with a dot\r\n..two dots\r\n.\r\n trailing spaces   \r\n"
            "\t\r\n\r\n\r\n").encode()
    send(stack, data)
    content = next_message(stack, 1)
    body_of_ingress(content, data)
    tags = both_verifiers(content, zone, tmp_path, [("origin.test", "s1", "ed25519-sha256")])
    signed = [h.strip().lower() for h in tags[0][b"h"].split(b":")]
    for name in (b"to", b"cc", b"subject", b"references", b"in-reply-to", b"reply-to",
                 b"list-id", b"list-unsubscribe", b"date", b"message-id"):
        assert name in signed, (name, signed)
    assert b"x-long" not in signed
    # each line of our fields within 78 octets where it can be
    head = content.split(b"Received: ", 1)[0]
    assert all(len(line) <= 78 for line in head.split(b"\r\n")), head


def test_both_algorithms_sign_and_tampering_fails(stack, zone, tmp_path):
    """An ed25519 and an RSA key on one domain: two signatures, each
    verifies; an octet of the body or of a signed field changed, neither
    does (the verifier is not lenient); an unsigned field may change."""
    keygen(stack, zone, "origin.test", "s1", "ed25519")
    keygen(stack, zone, "origin.test", "r1", "rsa", bits=2048)
    rsa_name = "r1._domainkey.origin.test."
    assert len(zone.records[rsa_name]) > 255  # two strings in the zone line
    stack.ingress()
    stack.worker()
    send(stack, message(body=b"Pay 100 EUR to account 1234.\r\n"))
    content = next_message(stack, 1)
    both_verifiers(content, zone, tmp_path, [("origin.test", "s1", "ed25519-sha256"),
                                            ("origin.test", "r1", "rsa-sha256")])
    body = content.replace(b"Pay 100 EUR", b"Pay 900 EUR")
    subject = content.replace(b"Subject: Quarterly figures", b"Subject: Quarterly figurez")
    for bad in (body, subject):
        assert bad != content
        assert fails(bad, zone, 0) and fails(bad, zone, 1)
    # not signed: the ingress's Received line
    relaxed = content.replace(b"Received: from", b"Received: frOm", 1)
    assert relaxed != content and not fails(relaxed, zone, 0) and not fails(relaxed, zone, 1)
    if opendkim_available():
        assert opendkim_verify(body, zone, tmp_path)[0] != 0


# ---- no key ----

def test_a_domain_without_a_key_goes_unsigned_and_counted(stack, zone, tmp_path):
    keygen(stack, zone, "origin.test", "s1")
    stack.ingress()
    port = worker_with_metrics(stack)
    send(stack, message(sender="x@nokey.test"), sender="x@nokey.test")
    assert unsigned(next_message(stack, 1))
    assert metric(port, "sealpost_dkim_unsigned_total", reason="no_key") == 1
    assert metric(port, "sealpost_dkim_unsigned_total", reason="no_from") == 0
    # no From at all
    send(stack, b"To: bob@example.test\r\nSubject: none\r\n\r\nx\r\n")
    assert unsigned(next_message(stack, 2))
    assert metric(port, "sealpost_dkim_unsigned_total", reason="no_from") == 1
    # a UTF-8 From domain: d= would need its A-label, which sealpost does not
    # make; counted apart, so an operator sees why
    data = "From: <jörg@münchen.test>\r\nTo: bob@example.test\r\n\r\nx\r\n".encode()
    send(stack, data, sender="jörg@münchen.test", params=" SMTPUTF8")
    assert unsigned(next_message(stack, 3))
    assert metric(port, "sealpost_dkim_unsigned_total", reason="from_not_ascii") == 1
    assert metric(port, "sealpost_dkim_unsigned_total", reason="no_from") == 1
    assert metric(port, "sealpost_dkim_signatures_total", domain="origin.test",
                  algorithm="ed25519") == 0


# ---- keys that change while the stack runs ----

MID = re.compile(rb"(?m)^Message-ID: <([^>]+)>")


def selectors(content):
    return [t[b"s"].decode() for t in signatures(content)]


def first_changed(stack, changed_at, changed, within=1.2):
    """After a key change whose command returned at changed_at
    (time.monotonic()): a message every 100 ms until one arrives for which
    changed(content) holds. That first one must have been sent within
    `within` seconds of the change, and every message sent after it must
    hold too (the worker never goes back to the keys before). Returns its
    content."""
    seen = stack.sink.count()
    sent = {}  # Message-ID -> when it was sent

    def arrived():
        return [m[2] for m in stack.sink.messages[seen:]]

    while not any(changed(c) for c in arrived()):
        assert time.monotonic() - changed_at < 10, "no message shows the change"
        data = message()
        sent[MID.search(data).group(1)] = time.monotonic()
        send(stack, data)
        time.sleep(0.1)
    wait_for(lambda: stack.sink.count() >= seen + len(sent), timeout=20, what="every message")
    got = sorted((sent[MID.search(c).group(1)], c) for c in arrived())
    first = next(i for i, (_, c) in enumerate(got) if changed(c))
    assert got[first][0] - changed_at < within, got[first][0] - changed_at
    assert all(changed(c) for _, c in got[first:])
    return got[first][1]


def test_keys_added_rotated_and_deleted_while_running(stack, zone, tmp_path):
    """No restart: a key added signs within a second; a second selector is
    stored inactive, and activating it changes s= within a second; deleting
    the active one stops signing within a second."""
    stack.ingress()
    port = worker_with_metrics(stack)
    send(stack, message())
    assert unsigned(next_message(stack, 1))
    keygen(stack, zone, "origin.test", "s1")
    content = first_changed(stack, time.monotonic(), lambda c: not unsigned(c))
    verify(content, zone, [("origin.test", "s1", "ed25519-sha256")])
    note = keygen(stack, zone, "origin.test", "s2")
    assert "origin.test s2 (ed25519) stored, inactive:" in note, note
    time.sleep(1.0)  # it must not change: a second is twice what a change takes
    send(stack, message())
    verify(next_message(stack, stack.sink.count() + 1), zone,
           [("origin.test", "s1", "ed25519-sha256")])
    r = dkim_cli(stack, "activate", "origin.test", "s2")
    assert r.returncode == 0, r.stderr
    content = first_changed(stack, time.monotonic(), lambda c: selectors(c) == ["s2"])
    verify(content, zone, [("origin.test", "s2", "ed25519-sha256")])
    r = dkim_cli(stack, "delete", "origin.test", "s2")
    assert r.returncode == 0, r.stderr
    first_changed(stack, time.monotonic(), unsigned)
    wait_for(lambda: metric(port, "sealpost_dkim_keys") == 0, timeout=5, what="no key loaded")
    unsigned_at_sink = sum(unsigned(m[2]) for m in stack.sink.messages)
    assert metric(port, "sealpost_dkim_unsigned_total", reason="no_key") == unsigned_at_sink
    signed = stack.sink.count() - unsigned_at_sink
    assert metric(port, "sealpost_dkim_signatures_total", domain="origin.test",
                  algorithm="ed25519") == signed
    log = stack.procs[-1].read_log()
    assert log.count("event=dkim_keys_loaded") >= 4, log


def test_a_key_that_will_not_unseal_is_logged_and_left_out(stack, zone, tmp_path):
    """A stored key sealed under another context (here: copied to another
    selector in Redis) does not load; the domain's other key still signs."""
    keygen(stack, zone, "origin.test", "s1", "ed25519")
    keygen(stack, zone, "origin.test", "r1", "rsa")
    r = stack.redis.client()
    key = "{sealpost:dkim}:d:origin.test"
    r.hset(key, "r1:key", r.hget(key, "s1:key"))  # sealed for s1, not for r1
    r.incr("{sealpost:dkim}:version")
    stack.ingress()
    port = worker_with_metrics(stack)
    send(stack, message())
    verify(next_message(stack, 1), zone, [("origin.test", "s1", "ed25519-sha256")])
    log = stack.procs[-1].read_log()
    assert "event=dkim_key_unusable domain=origin.test selector=r1" in log, log
    assert metric(port, "sealpost_dkim_key_errors_total") == 1
    assert metric(port, "sealpost_dkim_keys") == 1


def test_an_only_key_that_will_not_unseal_leaves_its_domain_unsigned(stack, zone, tmp_path):
    """other.test's one key does not unseal: its mail goes unsigned, counted
    as key_unusable, and not signed by default_domain (the operator gave
    other.test a key of its own); a domain without any key still is."""
    keygen(stack, zone, "origin.test", "s1")
    keygen(stack, zone, "other.test", "s1")
    r = stack.redis.client()
    r.hset("{sealpost:dkim}:d:other.test", "s1:key",
           r.hget("{sealpost:dkim}:d:origin.test", "s1:key"))  # sealed for origin.test
    stack.ingress()
    port = worker_with_metrics(stack, "[dkim]\ndefault_domain = origin.test\n")
    send(stack, message(sender="x@other.test"), sender="x@other.test")
    assert unsigned(next_message(stack, 1))
    send(stack, message(sender="x@nokey.test"), sender="x@nokey.test")
    verify(next_message(stack, 2), zone, [("origin.test", "s1", "ed25519-sha256")])
    assert metric(port, "sealpost_dkim_unsigned_total", reason="key_unusable") == 1
    assert metric(port, "sealpost_dkim_unsigned_total", reason="no_key") == 0
    assert metric(port, "sealpost_dkim_key_errors_total") == 1
    log = stack.procs[-1].read_log()
    assert "event=dkim_key_unusable domain=other.test selector=s1" in log, log


def test_entries_the_store_cannot_give_whole_are_skipped_not_fatal(stack, zone, tmp_path):
    """Written with plain Redis commands, past the functions' checks: a
    domain in the set over 253 octets, and an active selector over 253
    octets of broken.test. Each is logged and counted as an unusable key;
    origin.test still signs; broken.test goes unsigned (key_unusable), not
    signed by default_domain; `sealpost dkim list` lists the good key and
    says why the bad ones are unreadable."""
    keygen(stack, zone, "origin.test", "s1")
    r = stack.redis.client()
    long_domain = ("a" * 60 + ".") * 5 + "test"  # 309 octets
    long_selector = "s" * 300
    r.sadd("{sealpost:dkim}:domains", long_domain, "broken.test")
    r.hset("{sealpost:dkim}:d:broken.test", mapping={
        f"{long_selector}:algorithm": "ed25519", f"{long_selector}:created": "1",
        f"{long_selector}:record": "v=DKIM1; k=ed25519; p=x", f"{long_selector}:key": "x",
        "active:ed25519": long_selector})
    r.incr("{sealpost:dkim}:version")
    stack.ingress()
    port = worker_with_metrics(stack, "[dkim]\ndefault_domain = origin.test\n")
    send(stack, message())
    verify(next_message(stack, 1), zone, [("origin.test", "s1", "ed25519-sha256")])
    send(stack, message(sender="x@broken.test"), sender="x@broken.test")
    assert unsigned(next_message(stack, 2))
    assert metric(port, "sealpost_dkim_unsigned_total", reason="key_unusable") == 1
    assert metric(port, "sealpost_dkim_key_errors_total") == 2
    assert metric(port, "sealpost_dkim_keys") == 1
    log = stack.procs[-1].read_log()
    assert "event=dkim_keys_unavailable" not in log
    unusable = [line for line in log.splitlines() if "event=dkim_key_unusable" in line]
    assert len(unusable) == 2, unusable
    assert any("domain=broken.test" in line and "selector is not a string" in line
               for line in unusable), unusable
    assert any("domain is not a string" in line for line in unusable), unusable
    listed = dkim_cli(stack, "list")
    assert listed.returncode == 0, listed.stderr
    lines = listed.stdout.decode().splitlines()
    assert len(lines) == 3, lines
    assert any(line.startswith("origin.test s1 ed25519 ") for line in lines), lines
    assert sum("unreadable: " in line and "not a string of at most 253 octets" in line
               for line in lines) == 2, lines


def test_a_store_that_cannot_be_read_delays_mail_five_seconds_then_not(stack, zone, tmp_path):
    """{sealpost:dkim}:domains made a string: every read of the keys fails
    (WRONGTYPE), as against a Redis without the functions. The worker waits
    for its first load 5 s, then delivers unsigned, counted as
    keys_unavailable, logging dkim_keys_unavailable once and the failures
    at warn once; once the store is mended, mail is signed again."""
    keygen(stack, zone, "origin.test", "s1")
    r = stack.redis.client()
    domains = "{sealpost:dkim}:domains"
    members = r.smembers(domains)
    r.delete(domains)
    r.set(domains, "not a set")
    stack.ingress()
    started = time.monotonic()
    port = worker_with_metrics(stack)
    send(stack, message())
    content = next_message(stack, 1)
    assert time.monotonic() - started >= 5.0
    assert unsigned(content)
    assert metric(port, "sealpost_dkim_unsigned_total", reason="keys_unavailable") == 1
    time.sleep(1.5)  # failing polls go on
    log = stack.procs[-1].read_log()
    assert log.count("event=dkim_keys_unavailable") == 1, log
    assert log.count("event=dkim_reload_failed") == 1, log  # at warn once, then at debug
    assert "level=warn event=dkim_reload_failed" in log, log
    r.delete(domains)
    r.sadd(domains, *members)
    r.incr("{sealpost:dkim}:version")
    wait_for(lambda: "event=dkim_keys_loaded" in stack.procs[-1].read_log(), timeout=5,
             what="the keys to load")
    send(stack, message())
    verify(next_message(stack, 2), zone, [("origin.test", "s1", "ed25519-sha256")])
    assert metric(port, "sealpost_dkim_unsigned_total", reason="keys_unavailable") == 1
    assert stack.procs[-1].read_log().count("event=dkim_poll_recovered") == 1


def test_dkim_put_refuses_names_outside_the_selector_syntax(stack, zone, tmp_path):
    """The function itself refuses what the command line would (defence in
    depth: a ':' in a selector would read as another selector's field)."""
    stack.ingress()  # loads the functions
    r = stack.redis.client()
    keys = ["{sealpost:dkim}:d:origin.test", "{sealpost:dkim}:domains", "{sealpost:dkim}:version"]
    for domain, selector, what in (("origin.test", "a:key", "selector"),
                                   ("origin.test", "S1", "selector"),
                                   ("origin.test", "", "selector"),
                                   ("origin.test", "s" * 254, "selector"),
                                   ("Origin.test", "s1", "domain"),
                                   ("origin.test x", "s1", "domain")):
        with pytest.raises(redis.ResponseError, match=f"the {what} is not"):
            r.fcall("dkim_put", 3, *keys, domain, selector, "ed25519", "v=DKIM1", "sealed")
    assert r.hgetall(keys[0]) == {} and r.smembers(keys[1]) == set()
    assert r.get(keys[2]) is None
    assert r.fcall("dkim_put", 3, *keys, "origin.test", "s-1.a", "ed25519", "v=DKIM1",
                   "sealed") == b"active"


def test_expire_puts_x_that_many_seconds_after_t(stack, zone, tmp_path):
    keygen(stack, zone, "origin.test", "s1")
    stack.ingress()
    stack.worker(extra="[dkim]\nexpire = 86400\n")
    before = int(time.time())
    send(stack, message())
    tags = verify(next_message(stack, 1), zone, [("origin.test", "s1", "ed25519-sha256")])
    t, x = int(tags[0][b"t"]), int(tags[0][b"x"])
    assert before - 1 <= t <= int(time.time()) + 1, (before, t)
    assert x == t + 86400, (t, x)


def test_a_delay_notice_is_signed(stack, zone, tmp_path):
    """The worker's own delay notice (delay_warning_time) goes out signed
    with the reporting host's key, as bounces do."""
    keygen(stack, zone, "mx.sealpost.test", "bounces")
    stack.sink.rcpt_reply = lambda a: "451 4.3.2 try later" if a.startswith("slow") else None
    stack.ingress()
    stack.worker(extra="[worker]\ndelay_warning_time = 1\nmax_queue_lifetime = 60\n")
    send(stack, message(to="slow@example.test"), rcpts=["slow@example.test"])
    notice = next_message(stack, 1)
    assert stack.sink.messages[0][0] in ("", "<>")
    parsed = email.message_from_bytes(notice, policy=email.policy.compat32)
    assert parsed["Subject"] == "Delayed Mail (still being retried)", parsed["Subject"]
    both_verifiers(notice, zone, tmp_path, [("mx.sealpost.test", "bounces", "ed25519-sha256")])
