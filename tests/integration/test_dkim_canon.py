"""crypto/dkim.c against an independent implementation: random messages
(folded header fields with runs of SP and HTAB, empty values, UTF-8 octets,
long lines; bodies with trailing white space, empty lines at the end, lines of
white space only, lines starting with '.', or no body at all) are signed by
build/tests/dkim_tool with keys made by `openssl genpkey` (ed25519 and RSA
2048, both signatures on each message) and verified by dkimpy against
records derived with openssl; the body's canonical form is compared with
dkimpy's own relaxed canonicalisation. libopendkim (the library under
opendkim-testmsg, which itself can only look keys up in DNS) verifies every
message too, driven through ctypes with its file query method and the same
records. One mutated body octet and one mutated signed header octet must
each fail verification with both, so neither verifier is shown lenient.

Each test runs twice: with a fixed seed and with one taken from the clock,
printed (and named in every failure) so that a failure can be replayed with
DKIM_SEED=<seed>."""

import base64
import ctypes
import os
import random
import subprocess
import time
from pathlib import Path

import dkim
import pytest
from dkim.canonicalization import Relaxed

from conftest import BIN

TOOL = Path(BIN).parent / "tests" / "dkim_tool"
MESSAGES = int(os.environ.get("DKIM_MESSAGES", "300"))
DOMAIN = "origin.test"
NOW = 1_700_000_000


@pytest.fixture(autouse=True)
def tool_built():
    """The independent check must not pass by not running: a missing tool
    fails every test here (CMake builds it beside the unit tests)."""
    if not TOOL.exists():
        pytest.fail(f"{TOOL} is not built: build the tree with CMake first")


def seeds():
    fixed = 17
    clock = int(os.environ.get("DKIM_SEED", time.time_ns() % 1_000_000_007))
    return [pytest.param(fixed, id="fixed-seed"), pytest.param(clock, id="clock-seed")]


@pytest.fixture(scope="module")
def keys(tmp_path_factory):
    """Both keys, made by openssl, and their records derived with openssl
    alone (the raw 32 octets of an ed25519 key, RFC 8463 §4.2; the DER
    SubjectPublicKeyInfo of an RSA key), not by the code under test."""
    d = tmp_path_factory.mktemp("dkim-keys")
    out = {}
    for name, args in (("ed25519", ["-algorithm", "ed25519"]),
                       ("rsa", ["-algorithm", "rsa", "-pkeyopt", "rsa_keygen_bits:2048"])):
        pem = d / f"{name}.pem"
        subprocess.run(["openssl", "genpkey", *args, "-out", str(pem)], check=True,
                       capture_output=True)
        der = subprocess.run(["openssl", "pkey", "-in", str(pem), "-pubout", "-outform", "DER"],
                             check=True, capture_output=True).stdout
        p = der[-32:] if name == "ed25519" else der
        record = f"v=DKIM1; k={name}; p={base64.b64encode(p).decode()}"
        ours = subprocess.run([str(TOOL), "record", str(pem)], check=True, capture_output=True,
                              text=True).stdout.strip()
        assert ours == record, f"dkim_key_record differs from openssl's key for {name}"
        out[name] = (pem, record)
    return out


class OpenDKIM:
    """libopendkim's verifier with keys from a file (DKIM_QUERY_FILE: lines
    "<selector>._domainkey.<domain> <record>"), no DNS. The constants are
    those of OpenDKIM's dkim.h."""

    SETOPT, OPTS_QUERYMETHOD, OPTS_QUERYINFO, QUERY_FILE = 1, 6, 7, 1
    SIGFLAG_PASSED, SIGBH_MATCH = 0x04, 0

    def __init__(self, key_file):
        v, p, i, s = ctypes.c_void_p, ctypes.c_char_p, ctypes.c_int, ctypes.c_size_t
        lib = self.lib = ctypes.CDLL("libopendkim.so.11")
        for name, res, args in (("dkim_init", v, [v, v]), ("dkim_options", i, [v, i, i, v, s]),
                                ("dkim_verify", v, [v, p, v, ctypes.POINTER(i)]),
                                ("dkim_chunk", i, [v, p, s]), ("dkim_eom", i, [v, v]),
                                ("dkim_getsiglist", i, [v, ctypes.POINTER(ctypes.POINTER(v)),
                                                        ctypes.POINTER(i)]),
                                ("dkim_sig_getflags", ctypes.c_uint, [v]),
                                ("dkim_sig_getbh", i, [v]), ("dkim_free", i, [v]),
                                ("dkim_close", None, [v])):
            getattr(lib, name).restype = res
            getattr(lib, name).argtypes = args
        self.handle = lib.dkim_init(None, None)
        method = ctypes.c_int(self.QUERY_FILE)
        self.path = ctypes.create_string_buffer(str(key_file).encode())
        assert lib.dkim_options(self.handle, self.SETOPT, self.OPTS_QUERYMETHOD,
                                ctypes.cast(ctypes.byref(method), v), ctypes.sizeof(method)) == 0
        assert lib.dkim_options(self.handle, self.SETOPT, self.OPTS_QUERYINFO,
                                ctypes.cast(self.path, v), len(self.path)) == 0

    def passed(self, msg):
        """Whether each signature of msg passes, in the order of the fields."""
        lib, status = self.lib, ctypes.c_int(0)
        d = lib.dkim_verify(self.handle, b"test", None, ctypes.byref(status))
        assert d, f"dkim_verify: {status.value}"
        try:
            lib.dkim_chunk(d, msg, len(msg))
            lib.dkim_chunk(d, None, 0)
            lib.dkim_eom(d, None)
            sigs, n = ctypes.POINTER(ctypes.c_void_p)(), ctypes.c_int(0)
            lib.dkim_getsiglist(d, ctypes.byref(sigs), ctypes.byref(n))
            return [bool(lib.dkim_sig_getflags(sigs[i]) & self.SIGFLAG_PASSED)
                    and lib.dkim_sig_getbh(sigs[i]) == self.SIGBH_MATCH for i in range(n.value)]
        finally:
            lib.dkim_free(d)


@pytest.fixture(scope="module")
def opendkim(keys, tmp_path_factory):
    try:
        ctypes.CDLL("libopendkim.so.11")
    except OSError:
        pytest.fail("libopendkim.so.11 (Debian's libopendkim11) is not installed; "
                    "run `make setup`")
    path = tmp_path_factory.mktemp("opendkim") / "keys"
    path.write_text("".join(f"s-{name}._domainkey.{DOMAIN} {rec}\n"
                            for name, (_, rec) in keys.items()))
    lib = OpenDKIM(path)
    yield lib
    lib.lib.dkim_close(lib.handle)


def dns_for(keys):
    table = {f"s-{name}._domainkey.{DOMAIN}.".encode(): rec.encode()
             for name, (_, rec) in keys.items()}

    def dnsfunc(name, timeout=5):
        return table.get(name)
    return dnsfunc


# ---- the generator ----

WORDS = ["hello", "x", "a.b", "<id@host>", "=?utf-8?q?caf=C3=A9?=", "(comment)", "\"quoted\"",
         "caf\u00e9", "\u65e5\u672c", "Stra\u00dfe", "\u00fcber", "-", "#", "...", "a;b", ":"]
SIGNED = ["To", "Cc", "Subject", "Date", "Message-ID", "MIME-Version", "Content-Type",
          "Content-Transfer-Encoding", "In-Reply-To", "References", "Reply-To", "Sender",
          "List-Id", "List-Unsubscribe", "List-Post", "Autocrypt"]
UNSIGNED = ["X-Mailer", "Received", "X-Spam", "Keywords", "Comments"]
# The sender's own signature, which the gateway's rewriting broke.
STALE = ("DKIM-Signature: v=1; a=rsa-sha256; c=relaxed/relaxed; d=sender.test; s=old;\r\n"
         "\th=from:to:subject; bh=47DEQpj8HBSa+/TImW+5JCeuQeRkm5NMpJWZG3hSuFU=;\r\n"
         "\tb=dGhpcyBzaWduYXR1cmUgd2FzIGJyb2tlbiBieSB0aGUgZ2F0ZXdheQ==")


def wsp(rng):
    return "".join(rng.choice(" \t") for _ in range(rng.choice([1, 1, 1, 2, 3, 7])))


def word(rng):
    if rng.random() < 0.05:
        return "y" * rng.randint(200, 1200)      # a long line
    return rng.choice(WORDS)


def header_value(rng):
    """A value: words and white space, folded (CRLF then SP or HTAB) here and
    there; sometimes empty or white space only."""
    r = rng.random()
    if r < 0.05:
        return ""
    if r < 0.1:
        return wsp(rng)
    parts = [wsp(rng) if rng.random() < 0.7 else ""]
    for _ in range(rng.randint(1, 8)):
        parts.append(word(rng))
        r = rng.random()
        if r < 0.2:
            parts.append("\r\n" + wsp(rng))           # a fold
        elif r < 0.8:
            parts.append(wsp(rng))
    if rng.random() < 0.3:
        parts.append(wsp(rng))                        # white space at the end
    return "".join(parts)


def field_name(rng, name):
    r = rng.random()
    return name.upper() if r < 0.1 else name.lower() if r < 0.2 else name


def header(rng):
    display = rng.choice(["", "Jane ", "\"Doe, Jane\" ", "J\u00f6rg ", "=?utf-8?q?J=C3=B6rg?= "])
    fields = [f"{field_name(rng, 'From')}:{wsp(rng)}{display}<a{rng.randint(0, 99)}@{DOMAIN}>"
              f"{wsp(rng) if rng.random() < 0.3 else ''}"]
    for _ in range(rng.randint(0, 12)):
        name = rng.choice(SIGNED + UNSIGNED)
        fields.append(f"{field_name(rng, name)}:{header_value(rng)}")
    rng.shuffle(fields)
    if rng.random() < 0.2:
        fields.insert(0, STALE)
    return "".join(f + "\r\n" for f in fields)


def body_line(rng):
    r = rng.random()
    if r < 0.15:
        return ""
    if r < 0.25:
        return wsp(rng)                                  # white space only
    parts = ["." if rng.random() < 0.15 else ""]         # a leading dot
    if rng.random() < 0.2:
        parts.append(wsp(rng))
    for _ in range(rng.randint(1, 10)):
        parts.append(word(rng))
        parts.append(wsp(rng) if rng.random() < 0.8 else "")
    return "".join(parts)


def body(rng):
    """A body as it goes on the wire: lines ending in CRLF, maybe none."""
    r = rng.random()
    if r < 0.08:
        return ""
    lines = [body_line(rng) for _ in range(rng.randint(1, 30))]
    lines += [rng.choice(["", wsp(rng)]) for _ in range(rng.choice([0, 0, 1, 2, 5]))]
    return "".join(line + "\r\n" for line in lines)


def message(rng):
    h = header(rng).encode()
    if rng.random() < 0.03:
        return h, b""                   # all header, no empty line
    return h, body(rng).encode()


# ---- the checks ----

def tool(*args, data):
    return subprocess.run([str(TOOL), *args], input=data, capture_output=True, check=True).stdout


def sign(keys, msg):
    return tool("sign", str(keys["ed25519"][0]), DOMAIN, "s-ed25519", str(NOW),
                str(keys["rsa"][0]), "s-rsa", data=msg)


def verifies(msg, idx, dnsfunc):
    try:
        return dkim.DKIM(msg).verify(idx=idx, dnsfunc=dnsfunc)
    except dkim.DKIMException:
        return False


def mutate_body(rng, msg, body_at):
    """One octet of the body that is no white space or line end, changed to
    another such octet: the canonical body changes, so bh= must not match."""
    spots = [i for i in range(body_at, len(msg)) if msg[i] not in b" \t\r\n"]
    if not spots:
        return None
    i = rng.choice(spots)
    return msg[:i] + (b"Z" if msg[i] != ord("Z") else b"Q") + msg[i + 1:]


def mutate_signed_header(rng, msg):
    """One octet of the From field's value changed (From is always signed)."""
    start = msg.lower().index(b"\r\nfrom:") + len(b"\r\nfrom:") if not msg.lower().startswith(
        b"from:") else len(b"from:")
    end = msg.index(b"\r\n", start)
    spots = [i for i in range(start, end) if msg[i] not in b" \t"]
    i = rng.choice(spots)
    return msg[:i] + (b"Z" if msg[i] != ord("Z") else b"Q") + msg[i + 1:]


@pytest.mark.parametrize("seed", seeds())
def test_signatures_verify_with_dkimpy_and_opendkim(keys, opendkim, seed):
    print(f"DKIM_SEED={seed}")
    rng = random.Random(seed)
    dnsfunc = dns_for(keys)
    counts = {"signed": 0, "body_mutations": 0, "header_mutations": 0}
    for n in range(MESSAGES):
        h, b = message(rng)
        msg = h + (b"\r\n" + b if b or rng.random() < 0.5 else b"")
        signed = sign(keys, msg)
        assert signed.endswith(msg)
        what = f"seed {seed} message {n}:\n{signed!r}"
        assert verifies(signed, 0, dnsfunc), f"ed25519 signature fails, {what}"
        assert verifies(signed, 1, dnsfunc), f"rsa signature fails, {what}"
        assert opendkim.passed(signed)[:2] == [True, True], f"opendkim fails, {what}"
        counts["signed"] += 1
        sigs = len(signed) - len(msg)
        body_at = signed.find(b"\r\n\r\n", sigs)
        if body_at >= 0:
            bad = mutate_body(rng, signed, body_at + 4)
            if bad is not None:
                assert not verifies(bad, 0, dnsfunc), f"ed25519 passes a changed body, {what}"
                assert not verifies(bad, 1, dnsfunc), f"rsa passes a changed body, {what}"
                assert not any(opendkim.passed(bad)), f"opendkim passes it, {what}"
                counts["body_mutations"] += 1
        bad = signed[:sigs] + mutate_signed_header(rng, signed[sigs:])
        assert not verifies(bad, 0, dnsfunc), f"ed25519 passes a changed From, {what}"
        assert not verifies(bad, 1, dnsfunc), f"rsa passes a changed From, {what}"
        assert not any(opendkim.passed(bad)), f"opendkim passes a changed From, {what}"
        counts["header_mutations"] += 1
    print(counts)
    assert counts["signed"] == MESSAGES
    assert counts["body_mutations"] > MESSAGES // 2


@pytest.mark.parametrize("seed", seeds())
def test_canon_body_matches_dkimpy(seed):
    """Ours against dkimpy's relaxed body canonicalisation. A body that does
    not end in CRLF (no SMTP body does) is canonicalised as if it did: white
    space at the end of its last line goes too, where dkimpy keeps it."""
    print(f"DKIM_SEED={seed}")
    rng = random.Random(seed)
    for n in range(MESSAGES):
        b = body(rng).encode()
        if b and rng.random() < 0.1:
            b = b[:rng.randint(0, len(b) - 1)]          # cut anywhere
        ours = tool("canon-body", data=b)
        want = Relaxed.canonicalize_body(b if b.endswith(b"\r\n") or not b else b + b"\r\n")
        assert ours == want, f"seed {seed} body {n}: {b!r}"
        assert tool("canon-body", data=ours) == ours, f"not idempotent: seed {seed} body {n}"


@pytest.mark.parametrize("seed", seeds())
def test_canon_header_matches_dkimpy(seed):
    print(f"DKIM_SEED={seed}")
    rng = random.Random(seed)
    for n in range(MESSAGES):
        name = field_name(rng, rng.choice(SIGNED + UNSIGNED))
        field = f"{name}:{header_value(rng)}\r\n".encode()
        (cname, cvalue), = Relaxed.canonicalize_headers([[name.encode(), field[len(name) + 1:]]])
        assert tool("canon-header", data=field) == cname + b":" + cvalue, \
            f"seed {seed} field {n}: {field!r}"
