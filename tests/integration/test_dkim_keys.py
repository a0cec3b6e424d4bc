"""sealpost dkim: keys made and imported, stored sealed in a real Redis, their
DNS records checked against the keys with OpenSSL, and the rotation rules
(two selectors per algorithm, one active) as the command line shows them."""
import base64
import calendar
import re
import subprocess
import time

import pytest

from conftest import BIN, SEAL_KEY, unseal

DOMAIN = "origin.test"
ZONE_LINE = re.compile(r'^(?P<selector>[a-z0-9.-]+)\._domainkey\.(?P<domain>[a-z0-9.-]+)\. IN TXT '
                       r'(?P<strings>"[^"]*"(?: "[^"]*")*)$')
# What precedes the 32 octets of an Ed25519 public key in its DER
# SubjectPublicKeyInfo (RFC 8410).
ED25519_SPKI_PREFIX = bytes.fromhex("302a300506032b6570032100")


@pytest.fixture
def conf(tmp_path, redis_server):
    path = tmp_path / "admin.conf"
    path.write_text(f"[redis]\nurl = redis://127.0.0.1:{redis_server.port}\n"
                    f"timeout_ms = 2000\n[seal]\nkeys = {SEAL_KEY}\n")
    return path


def dkim(conf, *args, stdin=None):
    return subprocess.run([BIN, "dkim", *args, "-c", str(conf)], capture_output=True,
                          input=stdin, timeout=120)


def ok(r):
    assert r.returncode == 0, r.stderr.decode()
    return r


def refused(r, *words):
    """Exit 1 with one line on stderr that says each of words, nothing on stdout."""
    assert r.returncode == 1, (r.stdout, r.stderr)
    err = r.stderr.decode()
    assert err.count("\n") == 1 and err.startswith("sealpost: "), err
    for w in words:
        assert w in err, err
    assert r.stdout == b""
    return err


def parse_zone_line(line):
    """(selector, domain, the strings, the record they make)."""
    m = ZONE_LINE.match(line)
    assert m, line
    strings = re.findall(r'"([^"]*)"', m["strings"])
    return m["selector"], m["domain"], strings, "".join(strings)


def record_tags(record):
    tags = dict(t.strip().split("=", 1) for t in record.split(";") if t.strip())
    assert list(tags)[0] == "v" and tags["v"] == "DKIM1", record
    return tags


def public_der(pem):
    """The DER SubjectPublicKeyInfo of a PEM private key, by OpenSSL."""
    return subprocess.run(["openssl", "pkey", "-pubout", "-outform", "DER"], input=pem,
                          capture_output=True, check=True).stdout


def assert_record_matches(record, pem):
    tags = record_tags(record)
    p = base64.b64decode(tags["p"], validate=True)
    der = public_der(pem)
    if tags["k"] == "ed25519":
        assert len(p) == 32 and der == ED25519_SPKI_PREFIX + p
    else:
        assert tags["k"] == "rsa" and p == der


def dkim_keys(r):
    return sorted(r.scan_iter(match="{sealpost:dkim}:*"))


def dkim_values(r):
    """Every octet string stored under {sealpost:dkim}: names, fields, values."""
    out = []
    for key in dkim_keys(r):
        kind = r.type(key)
        out.append(key)
        if kind == b"hash":
            for f, v in r.hgetall(key).items():
                out += [f, v]
        elif kind == b"set":
            out += list(r.smembers(key))
        else:
            out.append(r.get(key))
    return out


def version(r):
    return int(r.get("{sealpost:dkim}:version") or 0)


def stored_pem(r, domain, selector):
    """The stored key opened with the cluster key: sealed under the context
    dkim:<domain>:<selector> (unseal appends ":<variant>" to its second argument)."""
    blob = r.hget(f"{{sealpost:dkim}}:d:{domain}", f"{selector}:key")
    assert blob is not None
    return unseal(blob, f"dkim:{domain}", selector)


def listed(conf):
    """`dkim list` as {(domain, selector): (algorithm, created, state, zone line)}."""
    out = {}
    for line in ok(dkim(conf, "list")).stdout.decode().splitlines():
        domain, selector, algorithm, created, state, zone = line.split(" ", 5)
        out[(domain, selector)] = (algorithm, created, state, zone)
    return out


def genpkey(tmp_path, name, *args):
    path = tmp_path / name
    subprocess.run(["openssl", "genpkey", *args, "-out", str(path)], check=True,
                   capture_output=True)
    return path


@pytest.mark.parametrize("args, k, split", [
    ([], "ed25519", False),
    (["--algorithm", "rsa"], "rsa", True),
    (["--algorithm", "rsa", "--bits", "3072"], "rsa", True),
])
def test_keygen_prints_the_zone_line_of_the_key_it_stored(conf, redis_server, args, k, split):
    r = redis_server.client()
    out = ok(dkim(conf, "keygen", "Origin.TEST", "--selector", "S1", *args))
    assert out.stdout.count(b"\n") == 1  # one line, nothing else
    selector, domain, strings, record = parse_zone_line(out.stdout.decode().rstrip("\n"))
    assert (selector, domain) == ("s1", DOMAIN)  # lower-cased
    assert all(1 <= len(s) <= 255 for s in strings)
    assert (len(strings) > 1) == split  # RSA's record is longer than one string holds
    assert record_tags(record)["k"] == k
    assert_record_matches(record, stored_pem(r, DOMAIN, "s1"))
    if "3072" in args:
        der = public_der(stored_pem(r, DOMAIN, "s1"))
        assert len(der) > 390  # a 3072-bit modulus (2048 bits: 294 octets)
    assert b"active" in out.stderr and b"publish" in out.stderr


def test_keygen_default_selector_is_algorithm_and_date(conf):
    out = ok(dkim(conf, "keygen", DOMAIN, "--algorithm", "rsa"))
    selector, _, _, _ = parse_zone_line(out.stdout.decode().strip())
    assert selector == "rsa-" + time.strftime("%Y%m%d", time.gmtime())
    out = ok(dkim(conf, "keygen", DOMAIN))
    assert parse_zone_line(out.stdout.decode().strip())[0] == "ed25519-" + time.strftime(
        "%Y%m%d", time.gmtime())


def test_import_stores_the_key_sealed_never_in_clear(conf, redis_server, tmp_path):
    r = redis_server.client()
    keys = {"ed": genpkey(tmp_path, "ed.pem", "-algorithm", "ED25519"),
            "rsa": genpkey(tmp_path, "rsa.pem", "-algorithm", "RSA",
                           "-pkeyopt", "rsa_keygen_bits:2048")}
    ok(dkim(conf, "keygen", DOMAIN, "--selector", "made"))
    ed = ok(dkim(conf, "import", DOMAIN, "ed", str(keys["ed"])))
    rsa = ok(dkim(conf, "import", DOMAIN, "rsa", "-", stdin=keys["rsa"].read_bytes()))
    for out, name in ((ed, "ed"), (rsa, "rsa")):
        selector, domain, _, record = parse_zone_line(out.stdout.decode().strip())
        assert (selector, domain) == (name, DOMAIN)
        assert_record_matches(record, keys[name].read_bytes())  # OpenSSL's own public key
        assert stored_pem(r, DOMAIN, name) == keys[name].read_bytes()

    values = b"\n".join(dkim_values(r))
    assert b"PRIVATE KEY" not in values
    for path in keys.values():
        body = b"".join(path.read_bytes().splitlines()[1:-1])  # the DER, base64
        assert body not in values
        assert base64.b64decode(body) not in values  # nor the DER itself
        assert body[:40] not in values
    # the one generated here never was in clear either
    made = stored_pem(r, DOMAIN, "made")
    assert made.startswith(b"-----BEGIN PRIVATE KEY-----")
    assert b"".join(made.splitlines()[1:-1]) not in values


def test_import_refuses_weak_rsa_and_ec_keys_storing_nothing(conf, redis_server, tmp_path):
    r = redis_server.client()
    weak = genpkey(tmp_path, "weak.pem", "-algorithm", "RSA", "-pkeyopt", "rsa_keygen_bits:1024")
    ec = genpkey(tmp_path, "ec.pem", "-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-256")
    refused(dkim(conf, "import", DOMAIN, "weak", str(weak)), "1024", "2048")
    refused(dkim(conf, "import", DOMAIN, "ec", str(ec)), "EC", "ed25519 or rsa")
    garbage = tmp_path / "garbage.pem"
    garbage.write_bytes(b"not a key\n")
    refused(dkim(conf, "import", DOMAIN, "junk", str(garbage)))
    refused(dkim(conf, "import", DOMAIN, "gone", str(tmp_path / "missing.pem")), "missing.pem")
    assert dkim_keys(r) == []
    assert ok(dkim(conf, "list")).stdout == b""


def test_list_shows_what_was_stored(conf):
    before = time.time()
    zone = {}
    for sel, alg in (("b", "rsa"), ("a", "ed25519")):
        zone[sel] = ok(dkim(conf, "keygen", "two.test", "--selector", sel, "--algorithm", alg)
                       ).stdout.decode().strip()
    zone["c"] = ok(dkim(conf, "keygen", DOMAIN, "--selector", "c")).stdout.decode().strip()
    out = ok(dkim(conf, "list")).stdout.decode().splitlines()
    # by domain, then selector
    assert [tuple(line.split(" ")[:2]) for line in out] == [
        (DOMAIN, "c"), ("two.test", "a"), ("two.test", "b")]
    entries = listed(conf)
    for (domain, sel), (alg, created, state, line) in entries.items():
        assert line == zone[sel]
        assert state == "active"  # the first of each algorithm signs
        stamp = calendar.timegm(time.strptime(created, "%Y-%m-%dT%H:%M:%SZ"))
        assert before - 2 <= stamp <= time.time() + 2
    assert entries[("two.test", "b")][0] == "rsa" and entries[("two.test", "a")][0] == "ed25519"


@pytest.mark.parametrize("alg", ["ed25519", "rsa"])
def test_rotation_two_selectors_one_active(conf, redis_server, alg):
    r = redis_server.client()
    new = lambda sel: dkim(conf, "keygen", DOMAIN, "--selector", sel, "--algorithm", alg)
    first = ok(new("old"))
    assert b"stored and active" in first.stderr
    second = ok(new("new"))
    assert b"inactive" in second.stderr
    assert f"sealpost dkim activate {DOMAIN} new".encode() in second.stderr
    assert {s: e[2] for (_, s), e in listed(conf).items()} == {"old": "active", "new": "inactive"}
    # a third of one algorithm is refused, another algorithm is not
    refused(new("third"), "full", "delete one first")
    other = "rsa" if alg == "ed25519" else "ed25519"
    out = ok(dkim(conf, "keygen", DOMAIN, "--selector", "other", "--algorithm", other))
    assert b"stored and active" in out.stderr
    # an existing selector, even of the other algorithm, is refused
    refused(dkim(conf, "keygen", DOMAIN, "--selector", "other", "--algorithm", alg), "exists")
    assert "third" not in str(r.hkeys(f"{{sealpost:dkim}}:d:{DOMAIN}"))

    assert ok(dkim(conf, "activate", DOMAIN, "new")).stdout == f"activated: {DOMAIN} new\n".encode()
    states = {s: e[2] for (_, s), e in listed(conf).items()}
    assert states == {"old": "inactive", "new": "active", "other": "active"}

    # deleting the active one leaves none active, and says which to activate
    out = ok(dkim(conf, "delete", DOMAIN, "new"))
    assert out.stdout == f"deleted: {DOMAIN} new\n".encode()
    err = out.stderr.decode()
    assert f"no active {alg} key" in err and f"sealpost dkim activate {DOMAIN} old" in err
    states = {s: e[2] for (_, s), e in listed(conf).items()}
    assert states == {"old": "inactive", "other": "active"}
    # with none active, a new selector signs at once (as the first did)
    assert b"stored and active" in ok(new("newer")).stderr
    refused(new("third"), "full")
    ok(dkim(conf, "activate", DOMAIN, "old"))
    states = {s: e[2] for (_, s), e in listed(conf).items()}
    assert states == {"old": "active", "newer": "inactive", "other": "active"}


def test_delete(conf, redis_server):
    r = redis_server.client()
    ok(dkim(conf, "keygen", DOMAIN, "--selector", "s1"))
    ok(dkim(conf, "keygen", "other.test", "--selector", "s1"))
    refused(dkim(conf, "delete", DOMAIN, "s2"), "no DKIM key s2 of origin.test")
    refused(dkim(conf, "activate", DOMAIN, "s2"), "no DKIM key s2 of origin.test")
    out = ok(dkim(conf, "delete", "ORIGIN.test", "S1"))
    assert out.stdout == f"deleted: {DOMAIN} s1\n".encode()
    assert b"no ed25519 key now" in out.stderr and b"keygen" in out.stderr
    assert list(listed(conf)) == [("other.test", "s1")]
    # the domain's hash and its place in the list go with its last key
    assert not r.exists(f"{{sealpost:dkim}}:d:{DOMAIN}")
    assert r.smembers("{sealpost:dkim}:domains") == {b"other.test"}
    refused(dkim(conf, "delete", DOMAIN, "s1"), "no DKIM key")


@pytest.mark.parametrize("domain, selector, bad", [
    ("localhost", "s1", "localhost"),            # one label: no signing domain
    ("a_b.test", "s1", "a_b.test"),
    ("a-.test", "s1", "a-.test"),               # a hyphen ending a label
    ("a." + "b" * 64 + ".test", "s1", "bbbb"),   # a label over 63
    ("x." * 127 + "test", "s1", "x.x."),         # over 253
    ("exämple.test", "s1", "exämple.test"),      # not ASCII
    (DOMAIN, "s_1", "s_1"),
    (DOMAIN, "s1-", "s1-"),
    (DOMAIN, "a..b", "a..b"),
    (DOMAIN, "s:1", "s:1"),                      # would be read as a field's name
])
def test_invalid_domain_or_selector_refused(conf, redis_server, domain, selector, bad):
    r = redis_server.client()
    refused(dkim(conf, "keygen", domain, "--selector", selector), bad)
    refused(dkim(conf, "delete", domain, selector), bad)
    refused(dkim(conf, "activate", domain, selector), bad)
    assert dkim_keys(r) == []


def test_bad_options_refused(conf, redis_server):
    refused(dkim(conf, "keygen", DOMAIN, "--algorithm", "dsa"), "dsa")
    refused(dkim(conf, "keygen", DOMAIN, "--bits", "4096"), "--bits")  # ed25519 has none
    refused(dkim(conf, "keygen", DOMAIN, "--algorithm", "rsa", "--bits", "1024"), "2048")
    assert dkim(conf, "list", "extra").returncode == 2
    assert dkim(conf, "import", DOMAIN, "s1").returncode == 2
    assert dkim(conf, "delete", DOMAIN, "s1", "--selector", "x").returncode == 2
    assert dkim_keys(redis_server.client()) == []


def test_the_version_moves_on_every_change(conf, redis_server, tmp_path):
    r = redis_server.client()
    seen = [version(r)]

    def moved(result):
        ok(result)
        assert version(r) > seen[-1]
        seen.append(version(r))

    def still(result):
        assert result.returncode != 0
        assert version(r) == seen[-1]

    moved(dkim(conf, "keygen", DOMAIN, "--selector", "a"))
    moved(dkim(conf, "keygen", DOMAIN, "--selector", "b"))
    still(dkim(conf, "keygen", DOMAIN, "--selector", "c"))  # full
    still(dkim(conf, "keygen", DOMAIN, "--selector", "a"))  # exists
    moved(dkim(conf, "activate", DOMAIN, "b"))
    moved(dkim(conf, "activate", DOMAIN, "a"))
    still(dkim(conf, "activate", DOMAIN, "zz"))
    pem = genpkey(tmp_path, "k.pem", "-algorithm", "ED25519")
    moved(dkim(conf, "import", "other.test", "k", str(pem)))
    moved(dkim(conf, "delete", DOMAIN, "b"))
    still(dkim(conf, "delete", DOMAIN, "b"))
    moved(dkim(conf, "delete", DOMAIN, "a"))
    assert r.smembers("{sealpost:dkim}:domains") == {b"other.test"}


def test_sealed_under_the_cluster_key_a_node_opens_with(conf, redis_server, tmp_path):
    """The context binds the sealed key to its domain and selector: moved to
    another selector, it would not open."""
    r = redis_server.client()
    ok(dkim(conf, "keygen", DOMAIN, "--selector", "s1"))
    blob = r.hget(f"{{sealpost:dkim}}:d:{DOMAIN}", "s1:key")
    assert blob.startswith(b"SPS1")
    assert stored_pem(r, DOMAIN, "s1").startswith(b"-----BEGIN PRIVATE KEY-----")
    with pytest.raises(Exception):
        unseal(blob, f"dkim:{DOMAIN}", "s2")
    other = SEAL_KEY.split(":")[0] + ":" + base64.b64encode(bytes(32)).decode()  # same id
    with pytest.raises(Exception):
        unseal(blob, f"dkim:{DOMAIN}", "s1", key=other)


def up_conf(tmp_path, redis_server):
    conf = tmp_path / "up.conf"
    conf.write_text(f"[redis]\nurl = redis://127.0.0.1:{redis_server.port}\n"
                    f"[up]\ndata_dir = {tmp_path}/var\n")
    return conf


def test_without_a_seal_key_it_refuses_and_makes_none(tmp_path, redis_server):
    """No [seal] key and no key of `sealpost up` in [up] data_dir (a command
    run from another directory, say): a key made now would be one no node
    opens with, so none is made and nothing is stored."""
    conf = up_conf(tmp_path, redis_server)
    r = redis_server.client()
    for args in (["keygen", DOMAIN, "--selector", "s1"],
                 ["import", DOMAIN, "s1", str(genpkey(tmp_path, "k.pem", "-algorithm",
                                                      "ED25519"))]):
        refused(dkim(conf, *args), "no sealing key", "sealpost up", "[seal] key_file")
    assert not (tmp_path / "var").exists()
    assert dkim_keys(r) == []
    assert r.exists("{sealpost:crypto}:sealcheck") == 0


def test_it_seals_with_the_key_sealpost_up_keeps(tmp_path, redis_server):
    """No [seal] key: the key `sealpost up` made in [up] data_dir, when it is
    there, and the same one each time."""
    conf = up_conf(tmp_path, redis_server)
    (tmp_path / "var").mkdir()
    key = "1:" + base64.b64encode(bytes(range(100, 132))).decode()  # as `up` writes it
    (tmp_path / "var" / "seal.key").write_text(key + "\n")
    ok(dkim(conf, "keygen", DOMAIN, "--selector", "s1"))
    ok(dkim(conf, "keygen", DOMAIN, "--selector", "s2"))
    assert (tmp_path / "var" / "seal.key").read_text().strip() == key
    r = redis_server.client()
    for selector in ("s1", "s2"):
        blob = r.hget(f"{{sealpost:dkim}}:d:{DOMAIN}", f"{selector}:key")
        assert unseal(blob, f"dkim:{DOMAIN}", selector, key=key).startswith(
            b"-----BEGIN PRIVATE KEY")


def test_the_first_seal_check_is_stored_as_a_node_stores_it(conf, redis_server):
    """A cluster with no check value yet for the key id gets the command's,
    which opens with the cluster key as a node's would."""
    r = redis_server.client()
    assert r.hget("{sealpost:crypto}:sealcheck", SEAL_KEY.split(":")[0]) is None
    ok(dkim(conf, "keygen", DOMAIN, "--selector", "s1"))
    check = r.hget("{sealpost:crypto}:sealcheck", SEAL_KEY.split(":")[0])
    assert unseal(check, "sealpost", "key-check") == b"sealpost"  # crypto/seal.c's check
    ok(dkim(conf, "keygen", DOMAIN, "--selector", "s2"))  # kept, not replaced
    assert r.hget("{sealpost:crypto}:sealcheck", SEAL_KEY.split(":")[0]) == check


def test_another_seal_key_under_the_cluster_id_is_refused(conf, redis_server, tmp_path):
    """A command given a sealing key other than the cluster's under the same
    id would seal keys no worker opens: refused before anything is stored."""
    r = redis_server.client()
    ok(dkim(conf, "keygen", DOMAIN, "--selector", "s1"))
    before = dkim_values(r)
    check = r.hget("{sealpost:crypto}:sealcheck", SEAL_KEY.split(":")[0])
    wrong = tmp_path / "wrong.conf"
    other = SEAL_KEY.split(":")[0] + ":" + base64.b64encode(bytes(32)).decode()
    wrong.write_text(f"[redis]\nurl = redis://127.0.0.1:{redis_server.port}\n"
                     f"timeout_ms = 2000\n[seal]\nkeys = {other}\n")
    pem = genpkey(tmp_path, "k.pem", "-algorithm", "ED25519")
    refused(dkim(wrong, "keygen", DOMAIN, "--selector", "s2"), "differs", "nothing stored")
    refused(dkim(wrong, "import", "other.test", "k", str(pem)), "differs", "nothing stored")
    assert dkim_values(r) == before
    assert r.hget("{sealpost:crypto}:sealcheck", SEAL_KEY.split(":")[0]) == check
    ok(dkim(wrong, "list"))  # reading needs no sealing key


def test_list_escapes_what_redis_holds(conf, redis_server):
    """A damaged or planted record is shown, but cannot drive the terminal:
    octets that are not printable ASCII come out as \\xHH."""
    r = redis_server.client()
    ok(dkim(conf, "keygen", DOMAIN, "--selector", "s1"))
    r.hset(f"{{sealpost:dkim}}:d:{DOMAIN}", "s1:record", b"v=DKIM1; \x1b[2J\xc3\xa9\\")
    out = ok(dkim(conf, "list")).stdout
    assert b"\x1b" not in out and b"\xc3" not in out
    assert out.decode("ascii").strip().endswith(
        '(record not printable: "v=DKIM1; \\x1b[2J\\xc3\\xa9\\x5c")')
