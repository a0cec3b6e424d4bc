"""The functions library (queue/functions/sealpost.lua) called directly on a
real redis-server, with keys and arguments spelled here as its KEYS and ARGV
comments give them: leases and their fencing tokens, poison jobs, idempotent
enqueue, what complete refuses, and the writes of users, keys and policies
that `sealpost users` and `sealpost keys` make through it."""

import time

import pytest
import redis as redis_py

from conftest import ROOT

LIBRARY = (ROOT / "queue" / "functions" / "sealpost.lua").read_text()

SHARD = 0
MID = "0123456789abcdef0123456789abcdef"
OTHER_MID = "fedcba9876543210fedcba9876543210"


def shard(name):
    return f"{{mq:{SHARD}}}:{name}"


def crypto(name):
    return f"{{sealpost:crypto}}:{name}"


AUTH_KEYS = ["{sealpost:auth}:users", "{sealpost:auth}:cram", "{sealpost:auth}:macs"]


@pytest.fixture
def r(redis_server):
    client = redis_server.client()
    assert client.execute_command("FUNCTION", "LOAD", "REPLACE", LIBRARY) == b"sealpost"
    return client


def snapshot(r):
    """Every key with its value: equal snapshots, nothing changed. A hash is
    read, not dumped: a lookup in a large one may rehash it, which changes
    the order its dump lists the fields in, not what it holds."""
    return {key: r.hgetall(key) if r.type(key) == b"hash" else r.dump(key)
            for key in r.scan_iter()}


# ---- the queue ----

def enqueue(r, mid, jobs, bodies=(b"sealed body 0",), jids=None, deadline=0, copies=(0, 0, 0, 1)):
    """jobs: [(domain, rcpts, variant)]; deadline: the ingress's, in ms of
    the realtime clock (0: none); copies: the recipients by kind of copy
    (OpenPGP, S/MIME, passthrough, plain). Returns the reply and the job ids."""
    jids = jids or [f"{mid}.{v}.{n}" for n, (_, _, v) in enumerate(jobs)]
    keys = [shard(f"m:{mid}"), shard("due"), shard("st"), shard("dom"), shard("age"),
            shard("log"), shard("dq"), shard(f"w:{mid}"), shard("enc")]
    keys += [shard(f"b:{mid}:{v}") for v in range(len(bodies))]
    keys += [shard(f"j:{jid}") for jid in jids]
    args = [mid, SHARD, "sender@origin.test", "", "a test", len(bodies), len(jobs), *bodies]
    for jid, (domain, rcpts, v) in zip(jids, jobs):
        args += [jid, domain, rcpts, v]
    args += ["", "", deadline, *copies]  # no MAC, no env
    return r.fcall("enqueue", len(keys), *keys, *args), jids


def claim(r, owner="w1", lease_ms=60000, max_jobs=10, max_expiries=3):
    """{jid: token} of the jobs leased."""
    keys = [shard("due"), shard("lease"), shard("meta"), shard("held"), shard("st")]
    _, leased = r.fcall("claim", len(keys), *keys, owner, lease_ms, max_jobs, max_expiries)
    return {leased[i].decode(): leased[i + 1] for i in range(0, len(leased), 2)}


def complete(r, jid, token, job_jid=None, variant=None, pending="", domain="example.test"):
    """job_jid and variant name the job hash and body in KEYS: jid's own unless given."""
    mid, v, _ = jid.split(".")
    keys = [shard("due"), shard("lease"), shard("meta"), shard("st"), shard("dom"),
            shard(f"j:{job_jid or jid}"), shard(f"m:{mid}"),
            shard(f"b:{mid}:{v if variant is None else variant}"), shard("age"), shard("log"),
            shard("held"), shard("dq")]
    args = [jid, token, pending, 1000, "", domain, SHARD, f"x@{domain}\tdelivered\t250 ok\n"]
    return r.fcall("complete", len(keys), *keys, *args)


def counter(r, name):
    return int(r.hget(shard("st"), name) or 0)


def withdraw(r, mid, jids, n_bodies=1, ttl=3600):
    keys = [shard(f"m:{mid}"), shard("due"), shard("held"), shard("meta"), shard("st"),
            shard("dom"), shard("age"), shard("log"), shard("dq"), shard(f"w:{mid}")]
    keys += [shard(f"b:{mid}:{v}") for v in range(n_bodies)]
    keys += [shard(f"j:{jid}") for jid in jids]
    return r.fcall("withdraw", len(keys), *keys, mid, n_bodies, ttl)


def trace_events(r, mid):
    return [dict(e[1]).get(b"event").decode() for e in r.xrange(shard("log"))
            if dict(e[1]).get(b"mid") == mid.encode()]


def test_a_duplicate_enqueue_is_idempotent(r):
    jobs = [("example.test", "a@example.test\nb@example.test", 0),
            ("origin.test", "c@origin.test", 0)]
    reply, jids = enqueue(r, MID, jobs)
    assert reply == b"ok"
    before = snapshot(r)
    reply, _ = enqueue(r, MID, jobs)
    assert reply == b"duplicate"
    assert snapshot(r) == before
    # what one enqueue makes, once: two jobs due, one message, counters at one
    assert sorted(m.decode() for m in r.zrange(shard("due"), 0, -1)) == sorted(jids)
    assert r.zcard(shard("dq")) == 2
    assert counter(r, "enqueued") == 1
    assert r.hgetall(shard("dom")) == {b"example.test": b"1", b"origin.test": b"1"}
    assert r.zrange(shard("age"), 0, -1) == [MID.encode()]
    assert r.xlen(shard("log")) == 1
    assert r.hget(shard(f"m:{MID}"), "open") == b"2"


def test_an_enqueue_whose_job_id_names_another_variant_writes_nothing(r):
    jobs = [("example.test", "a@example.test", 0), ("example.test", "b@example.test", 1)]
    with pytest.raises(redis_py.ResponseError, match="job id"):
        enqueue(r, MID, jobs, bodies=(b"v0", b"v1"), jids=[f"{MID}.0.0", f"{MID}.0.1"])
    assert snapshot(r) == {}
    reply, _ = enqueue(r, MID, jobs, bodies=(b"v0", b"v1"))
    assert reply == b"ok"


def test_a_poison_job_goes_to_held_after_max_lease_expiries(r):
    _, (jid,) = enqueue(r, MID, [("example.test", "a@example.test", 0)])
    tokens = [claim(r, lease_ms=50)[jid]]
    assert claim(r, lease_ms=50) == {}  # leased: nobody else gets it meanwhile
    for expiry in (1, 2):
        time.sleep(0.1)
        again = claim(r, owner=f"w{expiry + 1}", lease_ms=50)
        assert list(again) == [jid], f"expiry {expiry}: reclaimed and leased again"
        tokens.append(again[jid])
        assert r.zscore(shard("held"), jid) is None
        assert int(r.hget(shard("meta"), f"{jid}:exp")) == expiry
    assert tokens == sorted(set(tokens)), "each lease has a newer fencing token"
    time.sleep(0.1)
    assert claim(r, lease_ms=50) == {}  # the third expiry: held, not leased again
    assert r.zscore(shard("held"), jid) is not None
    assert r.zscore(shard("due"), jid) is None and r.zscore(shard("lease"), jid) is None
    assert counter(r, "poisoned") == 1
    assert counter(r, "lease_expired") == 2
    assert r.exists(shard(f"j:{jid}")) == 1  # held, not lost


def test_a_completion_with_a_stale_fencing_token_is_refused(r):
    _, (jid,) = enqueue(r, MID, [("example.test", "a@example.test", 0)])
    first = claim(r, owner="w1", lease_ms=50)[jid]
    time.sleep(0.1)
    second = claim(r, owner="w2", lease_ms=60000)[jid]
    assert second > first
    before = snapshot(r)
    assert complete(r, jid, first) == b"stale"
    lease = [shard("due"), shard("lease"), shard("meta")]
    assert r.fcall("extend", 3, *lease, jid, first, 60000) == b"stale"
    assert snapshot(r) == before
    # the holder of the lease completes it
    assert complete(r, jid, second) == b"done"
    assert r.exists(shard(f"j:{jid}"), shard(f"m:{MID}"), shard(f"b:{MID}:0")) == 0
    assert counter(r, "completed") == 1


def test_extend_only_checks_a_young_lease_and_renews_one_past_keep(r):
    """The check before a delivery's dot: a lease with more than keep_ms left
    is read, not written (no write for the AOF to fsync); one with less is
    renewed; a lost one is stale either way."""
    _, (jid,) = enqueue(r, MID, [("example.test", "a@example.test", 0)])
    token = claim(r, owner="w1", lease_ms=60000)[jid]
    lease = [shard("due"), shard("lease"), shard("meta")]
    deadline = r.zscore(shard("lease"), jid)
    writes = r.info("persistence")["rdb_changes_since_last_save"]
    assert r.fcall("extend", 3, *lease, jid, token, 60000, 30000) == b"ok"
    assert r.info("persistence")["rdb_changes_since_last_save"] == writes, "a check writes nothing"
    assert r.zscore(shard("lease"), jid) == deadline
    # less than keep_ms left (60 s of 90): renewed, to 120 s from now
    assert r.fcall("extend", 3, *lease, jid, token, 120000, 90000) == b"ok"
    assert r.zscore(shard("lease"), jid) >= deadline + 59000
    assert r.fcall("extend", 3, *lease, jid, token + 1, 120000, 90000) == b"stale"
    # without keep_ms (an older node's call), every extend renews
    deadline = r.zscore(shard("lease"), jid)
    assert r.fcall("extend", 3, *lease, jid, token, 180000) == b"ok"
    assert r.zscore(shard("lease"), jid) >= deadline + 59000


def test_a_completion_naming_another_variant_than_the_jobs_body_is_refused(r):
    jobs = [("example.test", "a@example.test", 0), ("example.test", "b@example.test", 1)]
    _, (jid0, jid1) = enqueue(r, MID, jobs, bodies=(b"v0", b"v1"))
    tokens = claim(r)
    before = snapshot(r)
    # the id says variant 1, the job hash given (jid0's) has body 0
    with pytest.raises(redis_py.ResponseError, match="variant"):
        complete(r, jid1, tokens[jid1], job_jid=jid0)
    assert snapshot(r) == before
    # named consistently, it completes, and only its own body goes
    assert complete(r, jid1, tokens[jid1]) == b"done"
    assert r.exists(shard(f"b:{MID}:1")) == 0 and r.get(shard(f"b:{MID}:0")) == b"v0"


def test_a_completion_bounces_in_the_same_call(r):
    _, (jid,) = enqueue(r, MID, [("example.test", "a@example.test", 0)])
    token = claim(r)[jid]
    bounce_jid = f"{OTHER_MID}.0.0"
    keys = [shard("due"), shard("lease"), shard("meta"), shard("st"), shard("dom"),
            shard(f"j:{jid}"), shard(f"m:{MID}"), shard(f"b:{MID}:0"), shard("age"), shard("log"),
            shard("held"), shard("dq"), shard(f"m:{OTHER_MID}"), shard(f"b:{OTHER_MID}:0"),
            shard(f"j:{bounce_jid}")]
    args = [jid, token, "", 1000, "550 no", "example.test", SHARD,
            "a@example.test\tbounced\t550 no\n", OTHER_MID, "bounce", b"sealed bounce",
            bounce_jid, "origin.test", "sender@origin.test", "0", "", ""]
    assert r.fcall("complete", len(keys), *keys, *args) == b"done"
    assert r.exists(shard(f"j:{jid}")) == 0
    assert r.hget(shard(f"j:{bounce_jid}"), "rcpts") == b"sender@origin.test"
    assert r.get(shard(f"b:{OTHER_MID}:0")) == b"sealed bounce"
    assert r.hget(shard(f"m:{OTHER_MID}"), "sender") == b""
    assert counter(r, "bounced") == 1 and counter(r, "enqueued") == 2


# ---- withdrawing what the ingress answered 451 ----

TWO_BODIES = [("example.test", "a@example.test\nb@example.test", 0),
              ("origin.test", "c@origin.test", 0), ("example.test", "bcc@example.test", 1)]


def test_a_withdraw_before_any_claim_deletes_everything_and_leaves_a_tombstone(r):
    _, other_jids = enqueue(r, OTHER_MID, [("example.test", "o@example.test", 0)])
    kept = snapshot(r)  # another message's keys, and the counters and trace as they were
    _, jids = enqueue(r, MID, TWO_BODIES, bodies=(b"v0", b"v1"))
    r.zadd(shard("held"), {jids[2]: 1})  # an operator's hold is no claim
    r.zrem(shard("due"), jids[2])
    assert withdraw(r, MID, jids, n_bodies=2) == b"withdrawn"
    # nothing of it is left: envelope, bodies, jobs, and every index
    names = [f"m:{MID}", f"b:{MID}:0", f"b:{MID}:1"] + [f"j:{j}" for j in jids]
    assert r.exists(*[shard(n) for n in names]) == 0
    for index in ("due", "held", "lease"):
        assert not set(m.decode() for m in r.zrange(shard(index), 0, -1)) & set(jids), index
    assert r.zrange(shard("due"), 0, -1) == [j.encode() for j in other_jids]
    assert r.hgetall(shard("dom")) == {b"example.test": b"1"}
    assert r.zrange(shard("age"), 0, -1) == [OTHER_MID.encode()]
    assert all(MID not in m.decode() for m in r.zrange(shard("dq"), 0, -1))
    assert r.zcard(shard("dq")) == 1
    assert not [f for f in r.hkeys(shard("meta")) if f.decode().startswith(MID)]
    assert counter(r, "withdrawn") == 1 and counter(r, "enqueued") == 2
    assert trace_events(r, MID) == ["accepted", "withdrawn"]
    # a tombstone, expiring, and the other message untouched; the counters,
    # the trace and the recipients by kind of copy (a withdrawn message stays
    # counted there, as it was stored: its client sends it again) aside
    assert 3500 < r.ttl(shard(f"w:{MID}")) <= 3600
    counted = (shard("st").encode(), shard("log").encode(), shard("enc").encode())
    left = {k: v for k, v in snapshot(r).items()
            if k not in (*counted, shard(f"w:{MID}").encode())}
    assert left == {k: v for k, v in kept.items() if k not in counted}
    assert claim(r) == {other_jids[0]: 1}  # the workers find nothing of it


def test_a_withdraw_after_a_claim_refuses_and_keeps_the_message(r):
    _, jids = enqueue(r, MID, TWO_BODIES, bodies=(b"v0", b"v1"))
    claim(r, max_jobs=1)  # one job of three leased: the message is a worker's now
    before = snapshot(r)
    assert withdraw(r, MID, jids, n_bodies=2) == b"claimed"
    after = snapshot(r)
    assert r.exists(shard(f"w:{MID}")) == 0  # no tombstone: nothing was withdrawn
    assert {k: v for k, v in after.items() if k != shard("log").encode()} == \
        {k: v for k, v in before.items() if k != shard("log").encode()}
    assert trace_events(r, MID)[-1] == "withdraw_refused"
    assert counter(r, "withdrawn") == 0


def test_a_withdraw_after_one_job_was_delivered_refuses(r):
    jobs = [("example.test", "a@example.test", 0), ("origin.test", "c@origin.test", 0)]
    _, jids = enqueue(r, MID, jobs)
    tokens = claim(r, max_jobs=1)
    (done_jid, token), = tokens.items()
    domain = jobs[int(done_jid.rsplit(".", 1)[1])][0]
    assert complete(r, done_jid, token, domain=domain) == b"done"
    # the delivered job is gone, its lease and token with it: still too late
    assert r.exists(shard(f"j:{done_jid}")) == 0
    assert withdraw(r, MID, jids) == b"claimed"
    assert r.exists(shard(f"m:{MID}")) == 1


def test_an_enqueue_after_its_withdrawal_stores_nothing(r):
    """The withdraw overtook its enqueue (a new connection after a timeout):
    it finds nothing, leaves the tombstone, and the enqueue is a no-op."""
    jobs = [("example.test", "a@example.test", 0)]
    assert withdraw(r, MID, [f"{MID}.0.0"]) == b"gone"
    before = snapshot(r)
    assert list(before) == [shard(f"w:{MID}").encode()]
    reply, _ = enqueue(r, MID, jobs)
    assert reply == b"withdrawn"
    assert r.exists(shard(f"m:{MID}"), shard(f"b:{MID}:0"), shard(f"j:{MID}.0.0")) == 0
    assert r.zcard(shard("due")) == 0 and claim(r) == {}
    assert counter(r, "enqueued") == 0
    assert trace_events(r, MID) == ["withdrawn"]
    assert enqueue(r, OTHER_MID, jobs)[0] == b"ok"  # another id is not affected


def test_a_late_enqueue_is_held_back_for_its_withdrawal(r):
    """Run after its deadline (Redis stalled with it in its input while the
    client got 451): stored, but no worker can claim it before the
    withdrawal on its way has taken it back. One in time is due at once."""
    now_ms = int(time.time() * 1000)
    jobs = [("example.test", "a@example.test", 0)]
    reply, (jid,) = enqueue(r, MID, jobs, deadline=now_ms - 5000)
    assert reply == b"ok"
    due = r.zscore(shard("due"), jid)
    assert due >= now_ms + 9000  # held back about LATE_GRACE_MS
    assert claim(r) == {}
    assert trace_events(r, MID) == ["accepted", "late"]
    assert counter(r, "late") == 1
    assert withdraw(r, MID, [jid]) == b"withdrawn"
    reply, (other,) = enqueue(r, OTHER_MID, jobs, deadline=now_ms + 60000)
    assert reply == b"ok" and r.zscore(shard("due"), other) <= now_ms + 5000
    assert list(claim(r)) == [other]
    assert counter(r, "late") == 1


def test_a_withdraw_naming_other_jobs_than_the_enqueue_writes_nothing(r):
    _, jids = enqueue(r, MID, TWO_BODIES, bodies=(b"v0", b"v1"))
    before = snapshot(r)
    with pytest.raises(redis_py.ResponseError, match="withdraw"):
        withdraw(r, MID, jids[:2], n_bodies=2)  # a job left out
    with pytest.raises(redis_py.ResponseError, match="withdraw"):
        withdraw(r, MID, [jids[1], jids[0], jids[2]], n_bodies=2)  # in another order
    with pytest.raises(redis_py.ResponseError, match="withdraw"):
        withdraw(r, MID, jids, n_bodies=1)
    assert snapshot(r) == before


def test_a_tombstone_expires(r):
    assert withdraw(r, MID, [f"{MID}.0.0"], ttl=1) == b"gone"
    wait = time.monotonic() + 5
    while r.exists(shard(f"w:{MID}")) and time.monotonic() < wait:
        time.sleep(0.1)
    assert enqueue(r, MID, [("example.test", "a@example.test", 0)])[0] == b"ok"


# ---- the recipients by kind of copy (the status page's shares) ----

def server_minute(r):
    """The minute of the server's clock, not within two seconds of its end
    (waited out), so that a test's enqueues all fall into it."""
    while True:
        secs, _ = r.time()
        if secs % 60 < 58:
            return secs // 60
        time.sleep(0.5)


def copy_shares(r):
    return r.fcall_ro("copy_shares", 1, shard("enc"))


def test_an_enqueue_counts_its_recipients_by_kind_of_copy(r):
    minute = server_minute(r)
    jobs = [("example.test", "a@example.test\nb@example.test\nc@example.test", 0),
            ("origin.test", "d@origin.test", 1)]
    assert enqueue(r, MID, jobs, bodies=(b"v0", b"v1"), copies=(2, 1, 0, 1))[0] == b"ok"
    assert copy_shares(r) == [2, 1, 0, 1]
    # a duplicate and a withdrawn one store nothing, and count nothing
    assert enqueue(r, MID, jobs, bodies=(b"v0", b"v1"), copies=(2, 1, 0, 1))[0] == b"duplicate"
    assert withdraw(r, OTHER_MID, [f"{OTHER_MID}.0.0"]) == b"gone"
    assert enqueue(r, OTHER_MID, [("example.test", "e@example.test", 0)],
                   copies=(0, 0, 1, 0))[0] == b"withdrawn"
    assert copy_shares(r) == [2, 1, 0, 1]
    slot = str(minute % 10)
    assert r.hget(shard("enc"), slot) == str(minute).encode()
    assert r.hget(shard("enc"), f"{slot}:openpgp") == b"2"


def test_copy_shares_sum_the_last_ten_minutes_and_a_slot_is_cleared_when_reused(r):
    minute = server_minute(r)
    ring = {}
    # slots by how many minutes back they count, and which minute they hold:
    # 1 and 9 back are in the window; the slot of 2 back still holds the
    # minute twelve back, and the current one's the minute ten back
    for back, held, count in ((1, 1, 5), (9, 9, 7), (2, 12, 1000), (0, 10, 1000)):
        slot = (minute - back) % 10
        ring.update({str(slot): minute - held, f"{slot}:openpgp": 0, f"{slot}:smime": count,
                     f"{slot}:passthrough": 0, f"{slot}:plain": 1000 if back == 0 else 0})
    r.hset(shard("enc"), mapping=ring)
    assert copy_shares(r) == [0, 5 + 7, 0, 0]
    assert enqueue(r, MID, [("example.test", "a@example.test", 0)], copies=(0, 0, 0, 1))[0] == b"ok"
    assert copy_shares(r) == [0, 5 + 7, 0, 1]  # the old minute's counts went
    assert r.hget(shard("enc"), f"{minute % 10}:plain") == b"1"
    assert r.hget(shard("enc"), f"{minute % 10}:smime") == b"0"


def test_an_enqueue_without_its_counts_writes_nothing(r):
    keys = [shard(f"m:{MID}"), shard("due"), shard("st"), shard("dom"), shard("age"),
            shard("log"), shard("dq"), shard(f"w:{MID}"), shard("enc"), shard(f"b:{MID}:0"),
            shard(f"j:{MID}.0.0")]
    args = [MID, SHARD, "s@origin.test", "", "x", 1, 1, b"v0", f"{MID}.0.0", "example.test",
            "a@example.test", 0, 0]  # the deadline, and no counts
    with pytest.raises(redis_py.ResponseError, match="arguments do not match"):
        r.fcall("enqueue", len(keys), *keys, *args)
    with pytest.raises(redis_py.ResponseError, match="arguments do not match"):
        r.fcall("enqueue", len(keys), *keys, *args, 1, 0, -1, 0)
    assert snapshot(r) == {}


# ---- users ----

def test_user_set_and_delete(r):
    assert r.fcall("user_set", 3, *AUTH_KEYS, "u@origin.test", "$argon2id$one", "secret") == b"ok"
    assert r.hgetall(AUTH_KEYS[0]) == {b"u@origin.test": b"$argon2id$one"}
    assert r.hgetall(AUTH_KEYS[1]) == {b"u@origin.test": b"secret"}
    r.fcall("user_set", 3, *AUTH_KEYS, "v@origin.test", "$argon2id$v")
    # replaced without a secret: the old secret goes with the old hash
    r.fcall("user_set", 3, *AUTH_KEYS, "u@origin.test", "$argon2id$two")
    assert r.hget(AUTH_KEYS[0], "u@origin.test") == b"$argon2id$two"
    assert r.hgetall(AUTH_KEYS[1]) == {}
    r.fcall("user_set", 3, *AUTH_KEYS, "v@origin.test", "$argon2id$v", "vs")
    listed = sorted((name, flag) for name, flag in r.fcall_ro("user_list", 2, *AUTH_KEYS[:2]))
    assert listed == [(b"u@origin.test", 0), (b"v@origin.test", 1)]
    assert r.fcall("user_delete", 3, *AUTH_KEYS, "v@origin.test") == 1
    assert r.fcall("user_delete", 3, *AUTH_KEYS, "v@origin.test") == 0
    assert r.hkeys(AUTH_KEYS[0]) == [b"u@origin.test"] and r.hgetall(AUTH_KEYS[1]) == {}


def test_user_tag_only_over_what_is_stored(r):
    """user_tag writes the tags only for the hash and secret still stored;
    user_set and user_delete drop a user's old tags, so an old hash put back
    with its old tag cannot log in (issue 18)."""
    r.fcall("user_set", 3, *AUTH_KEYS, "u@origin.test", "$argon2id$one", "secret")
    assert r.fcall("user_tag", 3, *AUTH_KEYS, "u@origin.test", "$argon2id$other", "t1",
                   "secret", "t2") == b"changed"
    assert r.hgetall(AUTH_KEYS[2]) == {}
    assert r.fcall("user_tag", 3, *AUTH_KEYS, "u@origin.test", "$argon2id$one", "t1",
                   "secret", "t2") == b"ok"
    assert r.hgetall(AUTH_KEYS[2]) == {b"h:u@origin.test": b"t1", b"c:u@origin.test": b"t2"}
    assert r.fcall_ro("user_records", 2, *AUTH_KEYS[:2]) == [b"u@origin.test", b"$argon2id$one",
                                                             b"secret"]
    reply = r.fcall("auth_begin", 4, AUTH_KEYS[0], AUTH_KEYS[1], "{sealpost:auth}:fail:c",
                    AUTH_KEYS[2], "u@origin.test", 5, 60, "1")
    assert reply == [b"$argon2id$one", b"secret", 0, b"t1", b"t2"]
    r.fcall("user_set", 3, *AUTH_KEYS, "u@origin.test", "$argon2id$two")
    assert r.hgetall(AUTH_KEYS[2]) == {}
    r.fcall("user_tag", 3, *AUTH_KEYS, "u@origin.test", "$argon2id$two", "t3", "", "")
    assert r.fcall("user_delete", 3, *AUTH_KEYS, "u@origin.test") == 1
    assert r.hgetall(AUTH_KEYS[2]) == {}


# ---- the key directory ----

def version(r):
    return int(r.get(crypto("version")) or 0)


def key_put(r, fpr, addresses, dropped=(), others=(), data=None, expires=0, smime=None):
    """smime: (subject, issuer, serial) for a certificate."""
    keys = [crypto(f"k:{fpr}"), crypto("keys"), crypto("version"), crypto("expiry_openpgp"),
            crypto("expiry_smime")]
    keys += [crypto(f"a:{a}") for a in (*addresses, *dropped)]
    keys += [crypto(f"k:{o}") for o in others]
    method = ["smime", *smime] if smime else ["openpgp", "", "", ""]
    args = [fpr, expires, data or f"key {fpr}", len(addresses), len(dropped), *method,
            *addresses, *dropped, *others]
    return r.fcall("key_put", len(keys), *keys, *args)


def key_delete(r, fpr, addresses, others=()):
    keys = [crypto(f"k:{fpr}"), crypto("keys"), crypto("version"), crypto("expiry_openpgp"),
            crypto("expiry_smime")]
    keys += [crypto(f"a:{a}") for a in addresses] + [crypto(f"k:{o}") for o in others]
    return r.fcall("key_delete", len(keys), *keys, fpr, len(addresses), *addresses, *others)


def filed_under(r, address):
    return (r.hget(crypto(f"a:{address}"), "fpr") or b"").decode()


def test_key_put_stores_a_key_under_each_address(r):
    assert key_put(r, "AAAA", ["x@example.test", "y@example.test"], expires=1999999999) == b"ok"
    stored = r.hgetall(crypto("k:AAAA"))
    assert stored[b"addrs"] == b"x@example.test\ny@example.test"
    assert stored[b"expires"] == b"1999999999" and stored[b"data"] == b"key AAAA"
    assert abs(int(stored[b"imported"]) - time.time()) < 60
    for a in ("x@example.test", "y@example.test"):
        assert r.hgetall(crypto(f"a:{a}")) == {b"fpr": b"AAAA", b"expires": b"1999999999",
                                               b"data": b"key AAAA"}
    assert r.smembers(crypto("keys")) == {b"AAAA"}
    assert version(r) == 1
    got = r.fcall_ro("key_get", 1, crypto("k:AAAA"))
    assert got[0] == b"x@example.test\ny@example.test" and got[3] == b"key AAAA"
    assert r.fcall_ro("key_get", 1, crypto("k:NONE")) is None
    # a later import of another key for an address takes it
    assert key_put(r, "BBBB", ["y@example.test"]) == b"ok"
    assert filed_under(r, "y@example.test") == "BBBB" and version(r) == 2
    assert r.fcall_ro("key_fprs", 1, crypto("keys")) in ([b"AAAA", b"BBBB"], [b"BBBB", b"AAAA"])


def test_deleting_a_key_files_its_addresses_under_another_that_lists_them(r):
    key_put(r, "AAAA", ["x@example.test", "y@example.test"])
    key_put(r, "BBBB", ["y@example.test", "z@example.test"])
    before = version(r)
    assert key_delete(r, "BBBB", ["y@example.test", "z@example.test"], others=["AAAA"]) == 1
    assert filed_under(r, "y@example.test") == "AAAA"
    assert r.hget(crypto("a:y@example.test"), "data") == b"key AAAA"
    assert r.exists(crypto("a:z@example.test"), crypto("k:BBBB")) == 0
    assert r.smembers(crypto("keys")) == {b"AAAA"}
    assert version(r) == before + 1
    assert key_delete(r, "BBBB", []) == 0  # gone already: 0, and the version still moves
    assert version(r) == before + 2


def test_the_most_recently_imported_other_key_takes_the_address(r):
    for fpr in ("OLD1", "NEW1", "GONE"):
        key_put(r, fpr, ["q@example.test"])
    for newest, older in (("NEW1", "OLD1"), ("OLD1", "NEW1")):
        r.hset(crypto(f"k:{newest}"), "imported", 2000)
        r.hset(crypto(f"k:{older}"), "imported", 1000)
        key_put(r, "GONE", ["q@example.test"])
        assert key_delete(r, "GONE", ["q@example.test"], others=["NEW1", "OLD1"]) == 1
        assert filed_under(r, "q@example.test") == newest


def test_key_put_dropping_an_address_files_it_under_another_key(r):
    key_put(r, "CCCC", ["z@example.test"])
    key_put(r, "DDDD", ["z@example.test", "w@example.test"])
    assert filed_under(r, "z@example.test") == "DDDD"
    assert key_put(r, "DDDD", ["w@example.test"], dropped=["z@example.test"],
                   others=["CCCC"]) == b"ok"
    assert filed_under(r, "z@example.test") == "CCCC"
    assert r.hget(crypto("k:DDDD"), "addrs") == b"w@example.test"
    # an address that another key took meanwhile stays with that key
    key_put(r, "EEEE", ["v@example.test"])
    key_put(r, "FFFF", ["v@example.test"])
    assert key_put(r, "EEEE", [], dropped=["v@example.test"],
                   others=["CCCC", "DDDD", "FFFF"]) == b"ok"
    assert filed_under(r, "v@example.test") == "FFFF"


def test_a_directory_changed_since_it_was_read_is_not_written(r):
    key_put(r, "AAAA", ["x@example.test", "y@example.test"])
    key_put(r, "BBBB", ["y@example.test"])
    before = snapshot(r)
    # an address left out, an other key left out, one that is not there
    assert key_delete(r, "AAAA", ["x@example.test"], others=["BBBB"]) == b"changed"
    assert key_delete(r, "AAAA", ["x@example.test", "y@example.test"]) == b"changed"
    assert key_delete(r, "AAAA", ["x@example.test", "y@example.test"],
                      others=["BBBB", "CCCC"]) == b"changed"
    assert key_put(r, "AAAA", ["x@example.test"]) == b"changed"  # y is dropped
    assert key_put(r, "AAAA", ["x@example.test"], dropped=["y@example.test"]) == b"changed"
    assert snapshot(r) == before
    assert key_delete(r, "AAAA", ["x@example.test", "y@example.test"], others=["BBBB"]) == 1


def test_policy_set_and_remove_move_the_version(r):
    keys = [crypto("policy"), crypto("version")]
    assert r.fcall("policy_set", 2, *keys, "example.test", "required") == b"ok"
    assert r.fcall("policy_set", 2, *keys, "a@example.test", "never") == b"ok"
    assert r.hgetall(crypto("policy")) == {b"example.test": b"required",
                                           b"a@example.test": b"never"}
    assert version(r) == 2
    assert r.fcall("policy_set", 2, *keys, "example.test") == b"ok"
    assert r.hgetall(crypto("policy")) == {b"a@example.test": b"never"}
    assert version(r) == 3
    assert r.fcall_ro("policy_list", 2, crypto("policy"), crypto("prefer")) == [
        [b"a@example.test", b"never"], []]
    # what a node reads for an address: the policies and the version
    found = lookup(r, "a@example.test")
    assert found == [b"3", None, None, None, b"never", None, None, None, None, None, None,
                     b"0", None, None, None, None, None, None, None, None, None]


def lookup(r, address):
    return r.fcall_ro("key_lookup", 8, crypto(f"a:{address}"), crypto("policy"),
                      crypto("prefer"), crypto("version"), crypto(f"disc:{address}"),
                      crypto(f"miss:{address}"), crypto("dversion"),
                      crypto(f"dmiss:{address.split('@')[1]}"), address,
                      address.split("@")[1])


CERT = ("CN=Bob", "CN=Test CA", "01AB")


def test_an_address_has_a_key_and_a_certificate_side_by_side(r):
    key_put(r, "AAAA", ["b@example.test"], expires=1999999999)
    assert key_put(r, "C1", ["b@example.test"], data="pem C1", expires=1888888888,
                   smime=CERT) == b"ok"
    assert r.hgetall(crypto("a:b@example.test")) == {
        b"fpr": b"AAAA", b"expires": b"1999999999", b"data": b"key AAAA",
        b"smime_fpr": b"C1", b"smime_expires": b"1888888888", b"smime_data": b"pem C1"}
    stored = r.hgetall(crypto("k:C1"))
    assert stored[b"method"] == b"smime" and stored[b"subject"] == b"CN=Bob"
    assert stored[b"issuer"] == b"CN=Test CA" and stored[b"serial"] == b"01AB"
    got = r.fcall_ro("key_get", 1, crypto("k:C1"))
    assert got[3:] == [b"pem C1", b"smime", b"CN=Bob", b"CN=Test CA", b"01AB"]
    # a key stored before certificates existed has no method: it is OpenPGP
    r.hdel(crypto("k:AAAA"), "method")
    assert r.fcall_ro("key_get", 1, crypto("k:AAAA"))[4:] == [b"openpgp", None, None, None]
    found = lookup(r, "b@example.test")
    assert found[1:4] == [b"AAAA", b"1999999999", b"key AAAA"]
    assert found[6:9] == [b"C1", b"1888888888", b"pem C1"]
    # deleting the certificate leaves the key, and the other way round
    assert key_delete(r, "C1", ["b@example.test"], others=["AAAA"]) == 1
    assert r.hgetall(crypto("a:b@example.test")) == {
        b"fpr": b"AAAA", b"expires": b"1999999999", b"data": b"key AAAA"}
    key_put(r, "C1", ["b@example.test"], data="pem C1", smime=CERT)
    assert key_delete(r, "AAAA", ["b@example.test"], others=["C1"]) == 1
    assert r.hget(crypto("a:b@example.test"), "fpr") is None
    assert r.hget(crypto("a:b@example.test"), "smime_fpr") == b"C1"


def test_an_address_losing_a_certificate_goes_to_the_newest_other_certificate(r):
    key_put(r, "OLDC", ["q@example.test"], data="pem OLDC", smime=CERT)
    key_put(r, "KEY1", ["q@example.test"])  # a newer OpenPGP key: never a stand-in
    key_put(r, "NEWC", ["q@example.test"], data="pem NEWC", smime=CERT)
    r.hset(crypto("k:OLDC"), "imported", 1000)
    r.hset(crypto("k:KEY1"), "imported", 3000)
    r.hset(crypto("k:NEWC"), "imported", 2000)
    assert key_delete(r, "NEWC", ["q@example.test"], others=["KEY1", "OLDC"]) == 1
    a = r.hgetall(crypto("a:q@example.test"))
    assert a[b"smime_fpr"] == b"OLDC" and a[b"smime_data"] == b"pem OLDC"
    assert a[b"fpr"] == b"KEY1"
    # and the key's address, lost, is never filed under a certificate
    assert key_put(r, "KEY1", [], dropped=["q@example.test"], others=["OLDC"]) == b"ok"
    assert r.hget(crypto("a:q@example.test"), "fpr") is None
    assert r.hget(crypto("a:q@example.test"), "smime_fpr") == b"OLDC"


def test_prefer_set_is_read_with_the_address_and_moves_the_version(r):
    keys = [crypto("prefer"), crypto("version")]
    assert r.fcall("prefer_set", 2, *keys, "example.test", "smime") == b"ok"
    assert r.fcall("prefer_set", 2, *keys, "a@example.test", "openpgp") == b"ok"
    assert version(r) == 2
    found = lookup(r, "a@example.test")
    assert found[0] == b"2" and found[9:11] == [b"openpgp", b"smime"]
    with pytest.raises(redis_py.ResponseError, match="not openpgp or smime"):
        r.fcall("prefer_set", 2, *keys, "example.test", "pgp")
    assert r.fcall("prefer_set", 2, *keys, "a@example.test") == b"ok"
    assert lookup(r, "a@example.test")[9:11] == [None, b"smime"]
    assert r.fcall_ro("policy_list", 2, crypto("policy"), crypto("prefer")) == [
        [], [b"example.test", b"smime"]]


# ---- the expiry index (the status page's key directory) ----

EXPIRY = [crypto("expiry_openpgp"), crypto("expiry_smime")]


def key_summary(r, horizon, most=20):
    reply = r.fcall_ro("key_summary", 3, crypto("keys"), *EXPIRY, horizon, most)
    return reply[:5], [(reply[i].decode(), reply[i + 1].decode(), int(reply[i + 2]))
                       for i in range(5, len(reply), 3)]


def test_key_put_and_delete_keep_the_expiry_index(r):
    now = r.time()[0]
    key_put(r, "AAAA", ["a@example.test"], expires=now + 10 * 86400)
    key_put(r, "BBBB", ["b@example.test"])  # never expires
    key_put(r, "C1", ["c@example.test"], data="pem C1", expires=now + 60 * 86400, smime=CERT)
    key_put(r, "C2", ["c@example.test", "d@example.test"], data="pem C2",
            expires=now + 3 * 86400, smime=CERT)
    key_put(r, "OLD", ["e@example.test"], expires=now - 86400)
    assert r.zscore(EXPIRY[0], "AAAA") == now + 10 * 86400
    assert r.zscore(EXPIRY[0], "BBBB") == float("inf")
    assert r.zrange(EXPIRY[1], 0, -1) == [b"C2", b"C1"]
    counts, soon = key_summary(r, 30 * 86400)
    assert counts == [5, 3, 2, 1, 2]  # stored, OpenPGP, S/MIME, expired, expiring
    assert soon == [("C2", "smime", now + 3 * 86400), ("AAAA", "openpgp", now + 10 * 86400)]
    assert key_summary(r, 30 * 86400, most=1)[1] == [("C2", "smime", now + 3 * 86400)]
    assert r.fcall_ro("key_addresses", 2, crypto("k:C2"), crypto("k:GONE")) == [
        b"c@example.test\nd@example.test", b""]
    # a new expiry moves it; a deleted key leaves the index
    key_put(r, "AAAA", ["a@example.test"], expires=now + 90 * 86400)
    assert key_delete(r, "C2", ["c@example.test", "d@example.test"], others=["AAAA", "BBBB",
                      "C1", "OLD"]) == 1
    counts, soon = key_summary(r, 30 * 86400)
    assert counts == [4, 3, 1, 1, 0] and soon == []
    assert r.zscore(EXPIRY[1], "C2") is None


def test_key_index_files_keys_stored_before_the_index(r):
    now = r.time()[0]
    key_put(r, "AAAA", ["a@example.test"], expires=now + 86400)
    key_put(r, "C1", ["c@example.test"], data="pem C1", expires=now + 2 * 86400, smime=CERT)
    r.delete(*EXPIRY)  # as a directory of the version before
    r.hdel(crypto("k:AAAA"), "method")  # and older: no method at all
    assert key_summary(r, 30 * 86400)[0] == [2, 0, 0, 0, 0]
    ids = ["AAAA", "C1", "GONE"]
    assert r.fcall("key_index", 5, *EXPIRY, *[crypto(f"k:{i}") for i in ids], *ids) == 2
    counts, soon = key_summary(r, 30 * 86400)
    assert counts == [2, 1, 1, 0, 2]
    assert soon == [("AAAA", "openpgp", now + 86400), ("C1", "smime", now + 2 * 86400)]
    with pytest.raises(redis_py.ResponseError, match="key_index"):
        r.fcall("key_index", 3, *EXPIRY, crypto("k:AAAA"))
