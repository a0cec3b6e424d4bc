"""What an operator sees of the encryption gateway: the ingress's metrics per
method and engine (ciphertexts by outcome, the engine call's latency), and
the status page's share of the last ten minutes' recipients by the kind of
copy they got, the key directory's size, and the keys and certificates that
expire within 30 days. Mail goes in over SMTP on both OpenPGP engines and
S/MIME; keys and certificates come in through `sealpost keys import`."""
import re
import urllib.request

import pytest

from conftest import free_port, wait_for
from pgp import Person, gpg
from test_gateway import import_keys, keys, submit
from test_smime import CA, Holder, imported, utc

DAY = 86400


def scrape(port):
    """{'name{labels}': value} of every series on /metrics."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as r:
        text = r.read().decode()
    series = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            name, value = line.rsplit(" ", 1)
            series[name] = float(value)
    return series


def page(port):
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=10) as r:
        return r.read().decode()


def by_id(html, ident):
    m = re.search(rf"id={ident}>([^<]*)<", html)
    return m and m.group(1)


def message(to, subject, body=b"figures attached\r\n"):
    return (f"From: sender@origin.test\r\nTo: {to}\r\nSubject: {subject}\r\n"
            "MIME-Version: 1.0\r\nContent-Type: text/plain\r\n\r\n").encode() + body


@pytest.fixture(scope="module")
def people(tmp_path_factory):
    base = tmp_path_factory.mktemp("operator-keys")
    return {name: Person(base, name, f"{name}@example.test") for name in ("alice", "carol")}


@pytest.fixture(scope="module")
def bob(tmp_path_factory):
    base = tmp_path_factory.mktemp("operator-certs")
    return Holder(base, "bob", "bob@example.test", ca=CA(base), end=utc(60 * DAY))


def test_ciphertexts_and_shares_count_what_was_sent(stack, openpgp_engine, people, bob):
    import_keys(stack, people["alice"], people["carol"])
    imported(stack, bob.pem_bytes())
    port = free_port()
    stack.ingress(extra=f"[metrics]\nlisten = 127.0.0.1:{port}\n")
    before = scrape(port)
    other = "rnp" if openpgp_engine == "gpgme" else "gpgme"
    assert before[f'sealpost_ingress_ciphertexts_total{{method="openpgp",engine="{openpgp_engine}"'
                  ',outcome="ok"}'] == 0

    # To alice and bob, with dave (no key) in the envelope: one PGP/MIME
    # and one S/MIME ciphertext; alice, carol as a Bcc: two PGP/MIME ones
    # (carol gets a copy of her own); and one the sender encrypted already
    assert submit(stack.smtp_port, ["alice@example.test", "bob@example.test", "dave@example.test"],
                  message("alice@example.test, bob@example.test", "one"))[0] == 250
    assert submit(stack.smtp_port, ["alice@example.test", "carol@example.test"],
                  message("alice@example.test", "two"))[0] == 250
    armored = gpg(people["alice"].home, "--armor", "--encrypt", "-r", people["alice"].fpr,
                  input=b"encrypted by the sender").stdout.replace(b"\n", b"\r\n")
    assert submit(stack.smtp_port, ["alice@example.test"],
                  message("alice@example.test", "three", armored))[0] == 250

    m = scrape(port)

    def ciphertexts(method, engine, outcome):
        return m[f'sealpost_ingress_ciphertexts_total{{method="{method}",engine="{engine}",'
                 f'outcome="{outcome}"}}']

    assert ciphertexts("openpgp", openpgp_engine, "ok") == 3
    assert ciphertexts("smime", "openssl", "ok") == 1
    for outcome in ("failed", "timeout"):
        assert ciphertexts("openpgp", openpgp_engine, outcome) == 0
        assert ciphertexts("smime", "openssl", outcome) == 0
    assert ciphertexts("openpgp", other, "ok") == 0
    hist = "sealpost_ingress_encryption_duration_seconds"
    for engine, n in ((openpgp_engine, 3), ("openssl", 1), (other, 0)):
        assert m[f'{hist}_count{{engine="{engine}"}}'] == n, engine
        assert m[f'{hist}_bucket{{engine="{engine}",le="+Inf"}}'] == n, engine
        assert (m[f'{hist}_sum{{engine="{engine}"}}'] > 0) == (n > 0), engine
    # the per-message outcomes are as before: two encrypted, one passthrough
    assert m['sealpost_ingress_encryptions_total{outcome="encrypted"}'] == 2
    assert m['sealpost_ingress_encryptions_total{outcome="passthrough"}'] == 1

    # six recipients: alice three times and carol OpenPGP, bob S/MIME, dave
    # plain, alice's third passthrough. Counted in Redis, per shard.
    html = page(port)
    want = {"openpgp": (3, "50%"), "smime": (1, "16.7%"), "passthrough": (1, "16.7%"),
            "plain": (1, "16.7%")}
    for kind, (count, share) in want.items():
        assert by_id(html, f"copies_{kind}") == str(count), kind
        assert by_id(html, f"share_{kind}") == share, kind
    assert by_id(html, "copies_all") == "6"


def test_the_page_shows_the_directory_and_what_expires_within_30_days(stack, tmp_path):
    soon = Person(tmp_path, "soon", "soon@example.test", expire="10d")
    later = Person(tmp_path, "later", "later@example.test", expire="60d")
    ca = CA(tmp_path)
    cert_soon = Holder(tmp_path, "certsoon", "certsoon@example.test", ca=ca, end=utc(10 * DAY))
    cert_later = Holder(tmp_path, "certlater", "certlater@example.test", ca=ca, end=utc(60 * DAY))
    never = Person(tmp_path, "never", "never@example.test")
    import_keys(stack, soon, later, never)
    imported(stack, cert_soon.pem_bytes() + cert_later.pem_bytes())
    # one that expires a few seconds after its import: counted as expired
    brief = Holder(tmp_path, "brief", "brief@example.test", ca=ca, end=utc(4))
    imported(stack, brief.pem_bytes())
    # a key stored by the version before the expiry index: in the directory,
    # not in the index, which the node fills in once it sees it short
    old = Person(tmp_path, "old", "old@example.test", expire="5d")
    import_keys(stack, old)
    r = stack.redis.client()
    assert r.zrem("{sealpost:crypto}:expiry_openpgp", old.fpr) == 1
    port = free_port()
    stack.ingress(extra=f"[metrics]\nlisten = 127.0.0.1:{port}\n")

    def counts():
        html = page(port)
        return by_id(html, "keys_openpgp"), by_id(html, "keys_smime"), html

    wait_for(lambda: counts()[:2] == ("4", "3"), timeout=30,
             what="the page to count every key, the one stored before the index too")
    assert "event=keys_indexed count=7" in stack.procs[0].read_log()
    wait_for(lambda: by_id(counts()[2], "keys_expired") == "1", timeout=30,
             what="the brief certificate counted as expired")
    html = counts()[2]
    listed = re.search(r"<table id=expiring>(.*?)</table>", html, re.S).group(1)
    rows = re.findall(r"<tr><td>.*?</tr>", listed)
    assert len(rows) == 3, rows  # old (5 days), soon and certsoon (10 days), soonest first
    assert old.fpr in rows[0] and "old@example.test" in rows[0] and "OpenPGP" in rows[0]
    assert {soon.fpr, cert_soon.id} == {next(i for i in (soon.fpr, cert_soon.id) if i in row)
                                        for row in rows[1:]}
    assert "S/MIME" in next(row for row in rows if cert_soon.id in row)
    assert "certsoon@example.test" in listed and "soon@example.test" in listed
    for absent in (later.fpr, cert_later.id, never.fpr, brief.id, "later@example.test",
                   "never@example"):
        assert absent not in listed, absent
    # deleting a key takes it off the page (after the page's 5 s cache)
    assert keys(stack, "delete", soon.fpr).returncode == 0
    wait_for(lambda: soon.fpr not in counts()[2], timeout=30, what="the deleted key to go")
    assert counts()[:2] == ("3", "3")
