"""The compose cluster's Redis users (deploy/redis-users.acl.in), as
`sealpostctl redis-secrets` renders them with their passwords, on a real
redis-server that takes TLS only (its certificate made by the same command):
what each role may not do (FLUSHALL and the other server commands, a body
read by the ingress, the key directory, DKIM keys and users written by a
node, the library loaded by one), and that every call each role makes with
real arguments passes."""

import hashlib
import os
import re
import smtplib
import subprocess
import time
import types

import pytest
import redis as redis_py

from conftest import (BIN, ROOT, RedisServer, Sealpost, Stack, free_port, port_open,
                      wait_for)

SEALPOSTCTL = ROOT / "deploy" / "sealpostctl"
LIBRARY = (ROOT / "queue" / "functions" / "sealpost.lua").read_text()
# What queue/schema.c: library_prepare appends, so the nodes' first call
# (FCALL_RO library_digest) is tried as they make it.
def library_as_loaded(digest):
    return LIBRARY + (
        "\nredis.register_function{function_name='library_digest',\n"
        f"  callback=function() return '{digest}' end, flags={{'no-writes'}}}}\n")


LIBRARY_AS_LOADED = library_as_loaded("test")
# The digest the nodes look for: BLAKE2b-128 of the library's text.
NODES_DIGEST = hashlib.blake2b(LIBRARY.encode(), digest_size=16).hexdigest()

MID = "0123456789abcdef0123456789abcdef"
JID = f"{MID}.0.0"
ROLES = ("ingress", "worker", "admin")


def shard(name, s=0):
    return f"{{mq:{s}}}:{name}"


def crypto(name):
    return f"{{sealpost:crypto}}:{name}"


def dkim(name):
    return f"{{sealpost:dkim}}:{name}"


AUTH_KEYS = ["{sealpost:auth}:users", "{sealpost:auth}:cram"]
AUTH_MACS = "{sealpost:auth}:macs"
FAIL_KEY = "{sealpost:auth}:fail:192.0.2.1"


class AclRedis(RedisServer):
    """The test fixtures' redis-server, but on a TLS port only, with the
    rendered ACL file, as deploy/docker-compose.yml runs it."""

    def __init__(self, tmp, secrets, plain_port=0, acl_file=None):
        super().__init__(tmp)
        self.secrets = secrets
        self.plain_port = plain_port
        self.acl_file = acl_file or secrets / "redis-users.acl"

    def start(self):
        s = self.secrets
        self.proc = subprocess.Popen(
            ["redis-server", "--port", str(self.plain_port), "--tls-port", str(self.port),
             "--bind", "127.0.0.1", "--dir", str(self.dir), "--save", "",
             "--aclfile", str(self.acl_file),
             "--tls-cert-file", str(s / "redis.crt"), "--tls-key-file", str(s / "redis.key"),
             "--tls-ca-cert-file", str(s / "redis-ca.crt"), "--tls-auth-clients", "no",
             # so that only the ACL stands between a role and these
             "--enable-debug-command", "yes", "--enable-module-command", "yes",
             "--logfile", str(self.dir / "redis.log")],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wait_for(lambda: port_open("127.0.0.1", self.port), what="redis-server (TLS)")
        return self

    def password(self, role):
        return (self.secrets / f"redis-{role}.password").read_text()

    def login(self, role, password=None):
        return redis_py.Redis(port=self.port, username=role,
                              password=password or self.password(role), ssl=True,
                              ssl_ca_certs=str(self.secrets / "redis-ca.crt"))


@pytest.fixture
def secrets(tmp_path):
    d = tmp_path / "secrets"
    env = dict(os.environ, SEALPOST_SECRETS_DIR=str(d))
    subprocess.run([str(SEALPOSTCTL), "redis-secrets"], env=env, check=True,
                   capture_output=True)
    return d


@pytest.fixture
def server(tmp_path, secrets):
    s = AclRedis(tmp_path, secrets).start()
    yield s
    s.stop()


@pytest.fixture
def as_role(server):
    """{role: client logged in as it}, the library loaded by admin."""
    clients = {role: server.login(role) for role in ROLES}
    assert clients["admin"].execute_command("FUNCTION", "LOAD", "REPLACE",
                                            LIBRARY_AS_LOADED) == b"sealpost"
    yield clients
    for c in clients.values():
        c.close()


def refused(call, *args, **kwargs):
    """Refused by the ACL: the command itself (NOPERM), or one that a
    function runs (then Redis words it as the script's error)."""
    with pytest.raises(redis_py.exceptions.ResponseError) as e:
        call(*args, **kwargs)
    assert (isinstance(e.value, redis_py.exceptions.NoPermissionError)
            or re.search(r"can't access|can't run|no permissions", str(e.value))), e.value
    return True


def every_key(r):
    """The keys these tests write, with their values, read as admin (who
    may not SCAN nor ask a key's TYPE)."""
    hashes = [shard("meta"), shard("st"), shard("dom"), shard("enc"), shard(f"m:{MID}"),
              shard(f"j:{JID}"), *AUTH_KEYS, AUTH_MACS, crypto("policy"), crypto("prefer"),
              crypto("k:AAAA"), crypto("a:x@example.test"), crypto("macs"), crypto("dirmac"),
              dkim("d:origin.test")]
    zsets = [shard(n) for n in ("due", "lease", "held", "age", "dq")]
    zsets += [crypto("expiry_openpgp"), crypto("expiry_smime")]
    strings = [shard(f"b:{MID}:0"), crypto("version"), dkim("version")]
    sets = [crypto("keys"), dkim("domains")]
    out = {k: r.hgetall(k) for k in hashes}
    out.update({k: r.zrange(k, 0, -1, withscores=True) for k in zsets})
    out.update({k: r.get(k) for k in strings})
    out.update({k: r.smembers(k) for k in sets})
    return out


# ---- the calls each role makes, with the arguments the nodes give ----

def enqueue(r, body=b"sealed body"):
    keys = [shard(f"m:{MID}"), shard("due"), shard("st"), shard("dom"), shard("age"),
            shard("log"), shard("dq"), shard(f"w:{MID}"), shard("enc"), shard(f"b:{MID}:0"),
            shard(f"j:{JID}")]
    args = [MID, 0, "sender@origin.test", "", "a test", 1, 1, body,
            JID, "example.test", "rcpt@example.test", 0, "", "", 0, 0, 0, 0, 1]  # no MAC, no env
    return r.fcall("enqueue", len(keys), *keys, *args)


def withdraw(r):
    keys = [shard(f"m:{MID}"), shard("due"), shard("held"), shard("meta"), shard("st"),
            shard("dom"), shard("age"), shard("log"), shard("dq"), shard(f"w:{MID}"),
            shard(f"b:{MID}:0"), shard(f"j:{JID}")]
    return r.fcall("withdraw", len(keys), *keys, MID, 1, 3600)


def claim(r):
    keys = [shard("due"), shard("lease"), shard("meta"), shard("held"), shard("st")]
    _, leased = r.fcall("claim", len(keys), *keys, "w1", 60000, 10, 3)
    return {leased[i].decode(): leased[i + 1] for i in range(0, len(leased), 2)}


def fetch(r):
    return r.fcall_ro("fetch", 4, shard(f"j:{JID}"), shard(f"m:{MID}"), shard(f"b:{MID}:0"),
                      shard("meta"), JID)


def complete(r, token):
    keys = [shard("due"), shard("lease"), shard("meta"), shard("st"), shard("dom"),
            shard(f"j:{JID}"), shard(f"m:{MID}"), shard(f"b:{MID}:0"), shard("age"),
            shard("log"), shard("held"), shard("dq")]
    args = [JID, token, "", 1000, "", "example.test", 0, "rcpt@example.test\tdelivered\t250 ok\n"]
    return r.fcall("complete", len(keys), *keys, *args)


def job_op(r, op):
    keys = [shard("due"), shard("lease"), shard("held"), shard("meta"), shard("st"),
            shard("dom"), shard(f"j:{JID}"), shard(f"m:{MID}"), shard(f"b:{MID}:0"),
            shard("age"), shard("log"), shard("dq")]
    return r.fcall("job_op", len(keys), *keys, op, JID, 0)


def status_page_reads(r):
    """What every node's status page and metrics read (queue_report, queue_stats)."""
    r.fcall_ro("stats", 4, shard("due"), shard("lease"), shard("held"), shard("age"))
    r.fcall_ro("top", 2, shard("dom"), shard("dq"))
    r.fcall_ro("recent", 1, shard("log"))
    r.fcall_ro("copy_shares", 1, shard("enc"))
    r.fcall_ro("key_summary", 3, crypto("keys"), crypto("expiry_openpgp"),
               crypto("expiry_smime"), 86400, 20)
    r.fcall_ro("key_addresses", 1, crypto("k:AAAA"))
    r.fcall_ro("key_fprs", 1, crypto("keys"))


def seal_check(r):
    return r.fcall("seal_check", 1, crypto("sealcheck"), "k1", "check value")


def key_put(r, fpr="AAAA", address="x@example.test"):
    keys = [crypto(f"k:{fpr}"), crypto("keys"), crypto("version"), crypto("expiry_openpgp"),
            crypto("expiry_smime"), crypto(f"a:{address}")]
    args = [fpr, 0, f"key {fpr}", 1, 0, "openpgp", "", "", "", address]
    return r.fcall("key_put", len(keys), *keys, *args)


def key_delete(r, fpr="AAAA", address="x@example.test"):
    keys = [crypto(f"k:{fpr}"), crypto("keys"), crypto("version"), crypto("expiry_openpgp"),
            crypto("expiry_smime"), crypto(f"a:{address}")]
    return r.fcall("key_delete", len(keys), *keys, fpr, 1, address)


def key_lookup(r, address="x@example.test"):
    return r.fcall_ro("key_lookup", 8, crypto(f"a:{address}"), crypto("policy"),
                      crypto("prefer"), crypto("version"), crypto(f"disc:{address}"),
                      crypto(f"miss:{address}"), crypto("dversion"),
                      crypto(f"dmiss:{address.split('@')[1]}"), address,
                      address.split("@")[1])


def disc_put(r, address="d@example.test", fpr="DDDD"):
    """A discovered key filed as `keys lookup` and the ingress file it."""
    return r.fcall("disc_put", 4, crypto(f"disc:{address}"), crypto(f"miss:{address}"),
                   crypto("dversion"), crypto("dindex"), address, fpr, 0, "key data", "wkd",
                   "https://openpgpkey.example.test/x", 1, 2, "k1:disc tag")


def policy_set(r, target, *policy):
    """No policy: the target's is removed."""
    return r.fcall("policy_set", 2, crypto("policy"), crypto("version"), target, *policy)


def dkim_put(r, selector="s1"):
    return r.fcall("dkim_put", 3, dkim("d:origin.test"), dkim("domains"), dkim("version"),
                   "origin.test", selector, "ed25519", "v=DKIM1; k=ed25519; p=x", "sealed",
                   f"k1:{selector} tag")


def dkim_tag(r, selector="s1", tag="k1:retagged"):
    """What `sealpost dkim authenticate` stores: 1 when the sealed key is
    still the one read."""
    return r.fcall("dkim_tag", 2, dkim("d:origin.test"), dkim("version"), selector, "sealed",
                   tag)


def dkim_reads(r):
    version = r.fcall_ro("dkim_version", 1, dkim("version"))
    domains = r.fcall_ro("dkim_domains", 1, dkim("domains"))
    return version, domains, r.fcall_ro("dkim_get", 1, dkim("d:origin.test"))


def user_set(r, name="u@origin.test"):
    return r.fcall("user_set", 3, *AUTH_KEYS, AUTH_MACS, name, "$argon2id$x")


def user_tag(r, name="u@origin.test", tag="k1:hash tag"):
    """What `sealpost users add` stores after user_set: the hash's tag (no
    CRAM-MD5 secret)."""
    return r.fcall("user_tag", 3, *AUTH_KEYS, AUTH_MACS, name, "$argon2id$x", tag, "", "")


def user_records(r):
    return r.fcall_ro("user_records", 2, *AUTH_KEYS)


def auth_begin(r, name="u@origin.test"):
    return r.fcall("auth_begin", 4, *AUTH_KEYS, FAIL_KEY, AUTH_MACS, name, 10, 600, "1")


DIRECTORY_KEYS = [crypto("version"), crypto("macs"), crypto("dirmac"), crypto("keys"),
                  crypto("policy"), crypto("prefer")]


def key_directory(r):
    """What the ingress reads when the version moves: {version, sealed at,
    index tag, entries stored, {entry, tag, ...}}."""
    return r.fcall_ro("key_directory", len(DIRECTORY_KEYS), *DIRECTORY_KEYS)


def key_seal(r, read, new, *index):
    """What every write of `sealpost keys` ends with: the index, sealed at
    the version read (or a higher one)."""
    return r.fcall("key_seal", 3, *DIRECTORY_KEYS[:3], read, new, "k1:index tag", *index)


# ---- the tests ----

def test_no_login_without_a_name_or_with_a_wrong_password(server):
    anonymous = redis_py.Redis(port=server.port, ssl=True,
                               ssl_ca_certs=str(server.secrets / "redis-ca.crt"))
    with pytest.raises(redis_py.exceptions.AuthenticationError):
        anonymous.ping()
    with pytest.raises(redis_py.exceptions.ResponseError, match="WRONGPASS"):
        server.login("admin", password=server.password("ingress")).ping()
    # the health check's user may PING and nothing else
    health = server.login("health")
    assert health.ping()
    assert refused(health.get, "x")


def test_the_server_refuses_plain_text(server):
    plain = redis_py.Redis(port=server.port, username="admin",
                           password=server.password("admin"), socket_timeout=2)
    with pytest.raises(redis_py.exceptions.ConnectionError):
        plain.ping()


@pytest.mark.parametrize("role", ROLES)
def test_no_role_may_flush_configure_list_keys_or_stop_the_server(as_role, role):
    r = as_role[role]
    enqueue(as_role["ingress"])
    for command in (["FLUSHALL"], ["FLUSHDB"], ["CONFIG", "GET", "*"], ["CONFIG", "SET",
                    "appendonly", "no"], ["DEBUG", "SLEEP", "0"], ["KEYS", "*"], ["SCAN", "0"],
                    ["SHUTDOWN", "NOSAVE"], ["MODULE", "LIST"], ["ACL", "LIST"],
                    ["ACL", "SETUSER", role, "+@all"], ["EVAL", "return 1", "0"],
                    ["FUNCTION", "FLUSH"], ["FUNCTION", "DELETE", "sealpost"],
                    ["SELECT", "1"], ["MIGRATE", "127.0.0.1", "1", "", "0", "1000", "KEYS",
                                       shard(f"b:{MID}:0")]):
        assert refused(r.execute_command, *command), command
    # nothing was flushed
    assert as_role["admin"].exists(shard(f"m:{MID}"), shard(f"b:{MID}:0")) == 2
    # nor any key of someone else's
    assert refused(r.set, "other:key", "x")
    assert refused(r.get, "other:key")


def test_only_admin_may_load_the_library(as_role):
    for role in ("ingress", "worker"):
        assert refused(as_role[role].execute_command, "FUNCTION", "LOAD", "REPLACE",
                       LIBRARY_AS_LOADED)
    assert as_role["admin"].execute_command("FUNCTION", "LOAD", "REPLACE",
                                            LIBRARY_AS_LOADED) == b"sealpost"


def test_the_ingress_cannot_read_a_body_it_stored(as_role):
    ingress = as_role["ingress"]
    assert enqueue(ingress, b"sealed secret") == b"ok"
    assert refused(ingress.get, shard(f"b:{MID}:0"))
    assert refused(ingress.getrange, shard(f"b:{MID}:0"), 0, -1)
    assert refused(ingress.dump, shard(f"b:{MID}:0"))
    # nor through a function that reads it
    assert refused(fetch, ingress)
    assert as_role["worker"].get(shard(f"b:{MID}:0")) == b"sealed secret"


def admin_stores_a_directory_a_dkim_key_and_a_user(admin):
    """What `sealpost keys import`, `keys policy`, `dkim import` and `users
    add` leave: each entry with its tag, the directory's index sealed."""
    assert key_put(admin) == b"ok" and policy_set(admin, "example.test", "required") == b"ok"
    version = int(admin.get(crypto("version")))
    assert key_seal(admin, version, version, "a:x@example.test:openpgp", "k1:a tag",
                    "k:AAAA", "k1:k tag", "p:example.test", "k1:p tag") == b"ok"
    assert dkim_put(admin) == b"active"
    assert user_set(admin) == b"ok" and user_tag(admin) == b"ok"
    return version


def test_the_ingress_cannot_write_the_key_directory_dkim_keys_or_users(as_role):
    admin, ingress = as_role["admin"], as_role["ingress"]
    version = admin_stores_a_directory_a_dkim_key_and_a_user(admin)
    before = every_key(admin)
    assert refused(policy_set, ingress, "example.test", "never")
    assert refused(policy_set, ingress, "example.test")
    assert refused(ingress.fcall, "prefer_set", 2, crypto("prefer"), crypto("version"),
                   "example.test", "smime")
    assert refused(key_put, ingress, "EVIL", "x@example.test")
    assert refused(key_delete, ingress)
    assert refused(ingress.fcall, "key_index", 3, crypto("expiry_openpgp"),
                   crypto("expiry_smime"), crypto("k:AAAA"), "AAAA")
    assert refused(ingress.hset, crypto("a:x@example.test"), "fpr", "EVIL")
    assert refused(ingress.delete, crypto("k:AAAA"))
    assert refused(ingress.incr, crypto("version"))
    # its discovered keys' function cannot be turned on the directory's keys
    assert refused(ingress.fcall, "disc_put", 4, crypto("a:x@example.test"),
                   crypto("miss:x@example.test"), crypto("dversion"), crypto("dindex"),
                   "x@example.test", "EVIL", 0, "evil", "wkd", "", 1, 1, "k1:evil")
    assert refused(ingress.fcall, "disc_miss", 2, crypto("policy"), crypto("dversion"),
                   9999999999, "none", "k1:evil")
    # nor seal a directory of its own, nor tag a user or a DKIM key
    assert refused(key_seal, ingress, version, version + 1, "k:EVIL", "k1:evil")
    assert refused(ingress.hset, crypto("macs"), "k:EVIL", "k1:evil")
    assert refused(ingress.hset, crypto("dirmac"), "version", version + 1)
    assert refused(ingress.delete, crypto("macs"))
    assert refused(user_tag, ingress, tag="k1:evil")
    assert refused(ingress.hset, AUTH_MACS, "h:evil@origin.test", "k1:evil")
    assert refused(ingress.hdel, AUTH_MACS, "h:u@origin.test")
    assert refused(dkim_tag, ingress, tag="k1:evil")
    assert refused(dkim_put, ingress, "evil")
    assert refused(dkim_reads, ingress)
    assert refused(user_set, ingress, "evil@origin.test")
    assert refused(ingress.fcall, "user_delete", 3, *AUTH_KEYS, AUTH_MACS, "u@origin.test")
    assert refused(ingress.hset, AUTH_KEYS[0], "evil@origin.test", "$argon2id$x")
    # every user's hash at once is the command line's (`users authenticate`)
    assert refused(user_records, ingress)
    assert every_key(admin) == before


def test_the_worker_cannot_touch_users_nor_write_dkim_keys_or_the_directory(as_role):
    admin, worker = as_role["admin"], as_role["worker"]
    version = admin_stores_a_directory_a_dkim_key_and_a_user(admin)
    before = every_key(admin)
    assert refused(worker.hgetall, AUTH_KEYS[0])
    assert refused(worker.hget, AUTH_KEYS[0], "u@origin.test")
    assert refused(worker.hgetall, AUTH_MACS)
    assert refused(worker.fcall_ro, "user_list", 2, *AUTH_KEYS)
    assert refused(user_records, worker)
    assert refused(auth_begin, worker)
    assert refused(user_set, worker, "evil@origin.test")
    assert refused(user_tag, worker, tag="k1:evil")
    assert refused(dkim_put, worker, "evil")
    assert refused(dkim_tag, worker, tag="k1:evil")
    assert refused(worker.hset, dkim("d:origin.test"), "s1:tag", "k1:evil")
    assert refused(worker.fcall, "dkim_activate", 2, dkim("d:origin.test"), dkim("version"),
                   "s1")
    assert refused(worker.hset, dkim("d:origin.test"), "active:ed25519", "evil")
    assert refused(policy_set, worker, "example.test", "never")
    assert refused(key_put, worker, "EVIL")
    assert refused(disc_put, worker)
    assert refused(key_seal, worker, version, version + 1, "k:EVIL", "k1:evil")
    assert refused(worker.hset, crypto("macs"), "k:EVIL", "k1:evil")
    assert every_key(admin) == before


def test_each_roles_own_calls_pass(as_role):
    admin, ingress, worker = as_role["admin"], as_role["ingress"], as_role["worker"]
    # admin: what `sealpost users add`, `keys import`, `policy`, `dkim import`
    # store, with their tags and the directory's seal
    version = admin_stores_a_directory_a_dkim_key_and_a_user(admin)
    # ... and what `keys authenticate`, `users authenticate` and `dkim
    # authenticate` read and write
    assert key_directory(admin)[:4] == [str(version).encode(), str(version).encode(),
                                        b"k1:index tag", 2]
    assert key_seal(admin, version, version + 1, "k:AAAA", "k1:k tag") == b"ok"
    assert user_records(admin) == [b"u@origin.test", b"$argon2id$x", b""]
    assert user_tag(admin) == b"ok"
    assert dkim_tag(admin) == 1
    # each node at start: the library's digest, its sealing key's check value
    for r in (ingress, worker):
        assert r.fcall_ro("library_digest", 0) == b"test"
        assert seal_check(r) == b"check value"
        # a single Redis answers CLUSTER SLOTS with an error, not NOPERM
        with pytest.raises(redis_py.exceptions.ResponseError, match="cluster support disabled"):
            r.execute_command("CLUSTER", "SLOTS")
    # the ingress: SMTP AUTH, the recipient's key, the enqueue with WAIT
    hashed, cram, before, hash_tag, cram_tag = auth_begin(ingress)
    assert hashed == b"$argon2id$x" and before == 0 and hash_tag == b"k1:hash tag"
    assert cram == b"" and cram_tag == b""
    assert ingress.fcall("auth_uncount", 1, FAIL_KEY) is not None
    found = key_lookup(ingress)
    assert found[1] == b"AAAA" and found[5] == b"required"
    assert ingress.fcall_ro("key_version", 2, crypto("version"), crypto("dversion")) == [
        found[0], found[11]]
    # the directory's index, checked before the lookup is trusted
    sealed = str(version + 1).encode()
    assert key_directory(ingress) == [found[0], sealed, b"k1:index tag", 2,
                                      [b"k:AAAA", b"k1:k tag"]]
    assert enqueue(ingress) == b"ok"
    assert ingress.execute_command("WAIT", 0, 0) == 0
    status_page_reads(ingress)
    # the worker: woken, claims, reads, extends, delivers, with its DKIM keys
    wake = worker.pubsub()
    wake.subscribe("sealpost:wake")
    assert wake.get_message(timeout=5)["type"] == "subscribe"
    other = worker.pubsub()
    other.subscribe("another:channel")
    assert refused(other.get_message, False, 5)
    _, domains, selectors = dkim_reads(worker)
    assert domains == [b"origin.test"]
    # the selector with its tag, which the signer checks before it unseals the key
    assert selectors[0] == b"s1" and selectors[5:] == [b"sealed", b"k1:retagged"]
    token = claim(worker)[JID]
    job, envelope, body, flag = fetch(worker)
    assert body == b"sealed body" and flag == b""
    assert worker.fcall("extend", 3, shard("due"), shard("lease"), shard("meta"), JID, token,
                        60000) == b"ok"
    assert complete(worker, token) == b"done"
    assert worker.fcall("forget", 4, shard("due"), shard("lease"), shard("meta"),
                        shard(f"j:{JID}"), JID, token) == b"stale"
    status_page_reads(worker)
    wake.close()
    # a withdrawal by the ingress, and an operator's act, on a new message
    assert enqueue(ingress) == b"ok" and withdraw(ingress) == b"withdrawn"
    admin.delete(shard(f"w:{MID}"))
    assert enqueue(ingress) == b"ok"
    assert job_op(admin, "hold").startswith(b"held")
    # the admin's direct reads: `queue list`, `show`, `trace`
    assert admin.execute_command("TIME")
    assert JID.encode() in [m for m, _ in admin.zrange(shard("held"), 0, -1, withscores=True)]
    assert admin.hgetall(shard(f"j:{JID}"))[b"domain"] == b"example.test"
    assert admin.hmget(shard(f"m:{MID}"), "sender", "received")[0] == b"sender@origin.test"
    assert admin.zscore(shard("held"), JID) is not None
    assert admin.xrange(shard("log"), "-", "+")
    assert admin.fcall_ro("user_list", 2, *AUTH_KEYS) == [[b"u@origin.test", 0]]
    # discovered keys: the ingress (or `keys lookup`) files one and a miss,
    # `keys list` reads them, the ingress finds them with the address's lookup
    assert disc_put(ingress) == b"ok" and disc_put(admin, "c@example.test") == b"ok"
    assert sorted(admin.fcall_ro("disc_addresses", 1, crypto("dindex"))) == [
        b"c@example.test", b"d@example.test"]
    assert admin.fcall_ro("disc_get", 1, crypto("disc:d@example.test"))[:4] == [
        b"DDDD", b"0", b"key data", b"wkd"]
    assert key_lookup(ingress, "d@example.test")[12:19] == [
        b"DDDD", b"0", b"key data", b"wkd", b"1", b"2", b"k1:disc tag"]
    assert ingress.fcall("disc_miss", 2, crypto("miss:e@example.test"), crypto("dversion"),
                       int(time.time()) + 60, "none", "k1:miss tag") == b"ok"
    assert key_lookup(ingress, "e@example.test")[19].endswith(b" none k1:miss tag")
    # the refresh: the ingress takes what is due, and drops a revoked key
    now = int(time.time())
    assert ingress.fcall("disc_due", 1, crypto("dindex"), 5, now, 10) == [
        b"c@example.test", b"d@example.test"]
    assert ingress.fcall("disc_due", 1, crypto("dindex"), 5, now, 10) == []  # taken
    assert ingress.fcall("disc_delete", 4, crypto("disc:c@example.test"),
                         crypto("miss:c@example.test"), crypto("dversion"), crypto("dindex"),
                         "c@example.test") == b"deleted"
    assert admin.fcall("disc_delete", 4, crypto("disc:d@example.test"),
                       crypto("miss:d@example.test"), crypto("dversion"), crypto("dindex"),
                       "d@example.test") == b"deleted"


# ---- the real nodes under their role's rules ----

def role_rules(acl_file, role):
    """The rules of a user of the rendered file, as ACL SETUSER arguments:
    a selector in parentheses is one argument."""
    line = next(l for l in acl_file.read_text().splitlines() if l.startswith(f"user {role} "))
    rules = line.split(" #", 1)[1].split(" ", 1)[1]
    return re.findall(r"\([^)]*\)|\S+", rules)


def test_the_nodes_run_under_their_roles_rules(tmp_path, secrets, sink):
    """The ingress and the worker themselves, each under its role's rules
    from the rendered file: the library loaded by admin (a node may not, and
    waits), a message accepted, then delivered to the sink. Each runs as
    `default` given its role's rules, one after the other,
    by a user only this test adds: what each role's rules allow, apart from
    the login (the next test logs in)."""
    acl = tmp_path / "test-users.acl"
    acl.write_text((secrets / "redis-users.acl").read_text()
                   + "user root on >root-of-the-test +@all ~* &*\n")
    server = AclRedis(tmp_path, secrets, plain_port=free_port(), acl_file=acl).start()
    stack = Stack(tmp_path, types.SimpleNamespace(port=server.plain_port), sink)
    root = redis_py.Redis(port=server.plain_port, username="root", password="root-of-the-test")
    admin = redis_py.Redis(port=server.plain_port, username="admin",
                           password=server.password("admin"))
    try:
        root.execute_command("ACL", "SETUSER", "default", "reset", "on", "nopass",
                             *role_rules(acl, "ingress"))
        ingress = Sealpost(tmp_path, "ingress", stack.config(), "ingress").start()
        stack.procs.append(ingress)
        # its library load is refused: it waits, without listening, until
        # admin loads the library
        wait_for(lambda: "event=function_load_failed" in ingress.read_log(),
                 what="the refused load")
        assert "NOPERM" in ingress.read_log() and not port_open("127.0.0.1", stack.smtp_port)
        assert admin.execute_command("FUNCTION", "LOAD", "REPLACE",
                                     library_as_loaded(NODES_DIGEST)) == b"sealpost"
        wait_for(lambda: port_open("127.0.0.1", stack.smtp_port), what="the ingress ready")
        # the ingress's rules refuse what only admin may do
        add = subprocess.run([BIN, "users", "add", "u@origin.test", "-c", str(ingress.path)],
                             input="a password\n", capture_output=True, text=True)
        assert add.returncode != 0, add
        assert re.search(r"can.t (run|access)|no permissions", add.stderr), add.stderr
        with smtplib.SMTP("127.0.0.1", stack.smtp_port, timeout=30) as c:
            c.sendmail("sender@origin.test", ["rcpt@example.test"],
                       b"Subject: under the ACL\r\n\r\nhello\r\n")
        assert ingress.stop() == 0
        root.execute_command("ACL", "SETUSER", "default", "reset", "on", "nopass",
                             *role_rules(acl, "worker"))
        worker = stack.worker()
        wait_for(lambda: sink.count() == 1, what="the delivery")
        assert b"Subject: under the ACL" in sink.messages[0][2]
        assert sink.messages[0][1] == ["rcpt@example.test"]
        assert worker.stop() == 0
        for p in (ingress, worker):
            log = p.read_log()
            assert "NOPERM" not in log.split("event=queue_ready", 1)[1], log[-3000:]
    finally:
        stack.close()
        for c in (root, admin):
            c.close()
        server.stop()


# ---- the real stack, each part logged in as its role ----

def login_config(server, role):
    """The [redis] of a process logged in as role over TLS; a second [redis]
    section overrides the url of the stack's first."""
    return (f"\n[redis]\nurl = rediss://127.0.0.1:{server.port}\nusername = {role}\n"
            f"password_file = {server.secrets / f'redis-{role}.password'}\n"
            f"tls_ca_file = {server.secrets / 'redis-ca.crt'}\n")


def test_the_stack_logged_in_as_its_roles_accepts_and_delivers(tmp_path, server, sink):
    """The CLI as admin (on a Redis without the library: it loads it), then
    the ingress and the worker as their users: a message accepted after
    and delivered; the CLI's admin verbs work, and no password shows in a log."""
    from pgp import Person
    stack = Stack(tmp_path, types.SimpleNamespace(port=server.port), sink)
    admin_conf = tmp_path / "admin.conf"
    admin_conf.write_text(stack.config(login_config(server, "admin")))

    def cli(*args, stdin=None):
        return subprocess.run([BIN, *args, "-c", str(admin_conf)], input=stdin,
                              capture_output=True, timeout=60)

    try:
        out = cli("users", "add", "u@origin.test", stdin=b"a password\n")
        assert out.returncode == 0, out.stderr
        person = Person(tmp_path, "erin", "erin@example.test")
        out = cli("keys", "import", "-", stdin=person.public())
        assert out.returncode == 0 and person.fpr.encode() in out.stdout, out.stderr
        ingress = stack.ingress(login_config(server, "ingress"))
        worker = stack.worker(login_config(server, "worker"))
        with smtplib.SMTP("127.0.0.1", stack.smtp_port, timeout=30) as c:
            c.sendmail("sender@origin.test", ["rcpt@example.test"],
                       b"Subject: logged in\r\n\r\nhello\r\n")
        wait_for(lambda: sink.count() == 1, what="the delivery")
        assert b"Subject: logged in" in sink.messages[0][2]
        out = cli("queue", "stats")
        assert out.returncode == 0, out.stderr
        assert cli("users", "list").stdout == b"u@origin.test\n"
        for p in (ingress, worker):
            assert "NOPERM" not in p.read_log(), p.read_log()[-3000:]
            assert server.password(p.command) not in p.read_log()
    finally:
        stack.close()


def test_the_command_line_replaces_another_library_and_the_nodes_become_ready(
        tmp_path, secrets, sink):
    """After an upgrade Redis holds the old library, and a node may not
    replace it (only admin may FUNCTION LOAD): it waits, unready. The first
    call of the new command line, as admin, finds the digest not its own and
    loads its library; the node then finds it its own and becomes ready."""
    acl = tmp_path / "test-users.acl"
    acl.write_text((secrets / "redis-users.acl").read_text()
                   + "user root on >root-of-the-test +@all ~* &*\n")
    server = AclRedis(tmp_path, secrets, plain_port=free_port(), acl_file=acl).start()
    stack = Stack(tmp_path, types.SimpleNamespace(port=server.plain_port), sink)
    root = redis_py.Redis(port=server.plain_port, username="root", password="root-of-the-test")
    admin_conf = tmp_path / "admin.conf"
    admin_conf.write_text(stack.config(
        f"\n[redis]\nurl = redis://127.0.0.1:{server.plain_port}\nusername = admin\n"
        f"password_file = {secrets / 'redis-admin.password'}\n"))
    try:
        # another version's library, with another digest and without user_records
        older = re.sub(r"redis\.register_function\{function_name = 'user_records'.*?\}\n",
                       "", library_as_loaded("an older version"), flags=re.S)
        assert older != library_as_loaded("an older version")
        assert root.execute_command("FUNCTION", "LOAD", "REPLACE", older) == b"sealpost"
        root.execute_command("ACL", "SETUSER", "default", "reset", "on", "nopass",
                             *role_rules(acl, "ingress"))
        ingress = Sealpost(tmp_path, "ingress", stack.config(), "ingress").start()
        stack.procs.append(ingress)
        wait_for(lambda: "event=function_load_failed" in ingress.read_log(),
                 what="the ingress's refused load")
        assert "NOPERM" in ingress.read_log() and not port_open("127.0.0.1", stack.smtp_port)
        # a read of the command line's is enough: it replaces the library first
        out = subprocess.run([BIN, "users", "list", "-c", str(admin_conf)],
                             capture_output=True, timeout=60)
        assert out.returncode == 0, out.stderr
        assert root.fcall_ro("library_digest", 0) == NODES_DIGEST.encode()
        assert root.fcall_ro("user_records", 2, *AUTH_KEYS) == []
        wait_for(lambda: port_open("127.0.0.1", stack.smtp_port), what="the ingress ready")
        assert "event=queue_ready" in ingress.read_log()
        # with its own library there, the command line loads nothing again
        before = root.info("commandstats").get("cmdstat_function|load", {}).get("calls", 0)
        out = subprocess.run([BIN, "users", "list", "-c", str(admin_conf)],
                             capture_output=True, timeout=60)
        assert out.returncode == 0, out.stderr
        assert root.info("commandstats").get("cmdstat_function|load", {}).get("calls", 0) \
            == before
    finally:
        stack.close()
        root.close()
        server.stop()
