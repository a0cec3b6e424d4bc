"""Failover in the suite (issue 18, Deliver 7): a Redis Cluster of three
masters, each with one replica (AOF, fsync always), an ingress with
`[queue] min_replicas = 1` and a worker. Under a steady load a master is
SIGKILLed, its replica is promoted, the load goes on; the killed node is
started again and joins as the new master's replica; the load goes on, then
stops and the queue drains. Every message answered 250 must be at the sink:
0 lost. Duplicates (at least once is the promise) and the 4xx answers of the
failover (the client keeps the message and sends it again) are counted and
printed, not failed on.

Why the old master is started again: with min_replicas = 1 the promoted
master has no replica left, so its WAITs fail and its shards answer 451
until a replica is back; a cluster whose failed master never came back would
refuse a third of the mail for good, which is the promise of min_replicas,
not a failure."""

import json
import os
import smtplib
import subprocess
import threading
import time
import urllib.request
from collections import Counter
from datetime import datetime, timezone
from pathlib import Path

import pytest
from redis.crc import key_slot

from conftest import BIN, RedisCluster, Sealpost, Sink, base_config, free_port, wait_for

SHARDS = 128  # [redis] shards, the default
SENDERS = 3
PAUSE = 0.05  # seconds between a sender's messages
GIVE_UP = 20.0  # seconds a sender keeps trying one message after the load phase
NODE_TIMEOUT_MS = 1000


def shard_slot(mid):
    """The cluster slot of the shard a message id lands in (queue.c:
    queue_shard_for, the first 32 bits of the id; schema.c: the tag {mq:N})."""
    return key_slot(f"{{mq:{int(mid[:8], 16) % SHARDS}}}".encode())


class Sender(threading.Thread):
    """Sends messages one after another, each with its own token, and keeps
    one that got a 4xx or no answer to try again, as a client would, until
    it gets 250 or a 5xx. Records every answer with its time."""

    def __init__(self, n, port, stop, records):
        super().__init__(daemon=True)
        self.n, self.port, self.stop, self.records = n, port, stop, records

    def attempt(self, token):
        msg = (f"From: s@origin.test\r\nTo: r@example.test\r\nSubject: {token}\r\n"
               f"Message-ID: <{token}@origin.test>\r\n\r\nbody of {token}\r\n").encode()
        answer = None  # the last reply, kept when QUIT fails after it
        try:
            with smtplib.SMTP("127.0.0.1", self.port, timeout=15) as c:
                c.ehlo("client.test")
                code, text = c.mail("s@origin.test")
                if code == 250:
                    code, text = c.rcpt("r@example.test")
                if code == 250:
                    code, text = c.data(msg)
                answer = str(code), text.decode(errors="replace")
            return answer
        except smtplib.SMTPResponseException as e:  # a 421 greeting, among others
            return answer or (str(e.smtp_code), e.smtp_error.decode(errors="replace"))
        except (OSError, smtplib.SMTPException) as e:  # refused, dropped, timed out
            return answer or ("noreply", repr(e))

    def run(self):
        i = 0
        while not self.stop.is_set():
            token = f"fo{self.n}-{i}"
            i += 1
            rec = {"token": token, "answers": [], "outcome": None, "qid": None}
            self.records.append(rec)
            given_up_at = None
            while True:
                code, text = self.attempt(token)
                rec["answers"].append((time.monotonic(), code, text))
                if code == "250":
                    rec["outcome"], rec["qid"] = "250", text.rsplit(" ", 1)[1]
                    break
                if code.startswith("5"):
                    rec["outcome"] = code
                    break
                if self.stop.is_set():
                    given_up_at = given_up_at or time.monotonic() + GIVE_UP
                    if time.monotonic() > given_up_at:
                        rec["outcome"] = "gave up"
                        break
                time.sleep(0.2)
            time.sleep(PAUSE)


def queue_stats(config_path):
    out = subprocess.run([BIN, "queue", "stats", "--json", "-c", str(config_path)],
                         capture_output=True, text=True, timeout=30)
    return json.loads(out.stdout) if out.returncode == 0 else None


def metric_lines(port, prefix):
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10).read().decode()
    return [ln for ln in text.splitlines() if ln.startswith(prefix)]


def log_lines(proc, needle, most=8):
    return [ln for ln in proc.read_log().splitlines() if needle in ln][-most:]


def report(lines):
    """Prints the reconciliation (seen with -s or on a failure) and, as the
    chaos suite does, appends it to SEALPOST_TEST_OUTPUT's
    cluster-failover-report.txt."""
    text = "\n".join(lines)
    print(text)
    out = os.environ.get("SEALPOST_TEST_OUTPUT")
    if out:
        Path(out).mkdir(parents=True, exist_ok=True)
        with open(Path(out) / "cluster-failover-report.txt", "a") as f:
            f.write(text + "\n")


def found_at(proc, port):
    """time.time() of the process's first queue_ready on 127.0.0.1:port, or None."""
    for ln in proc.read_log().splitlines():
        if f"event=queue_ready redis=127.0.0.1:{port}" in ln and ln.startswith("ts="):
            stamp = ln[3:ln.index(" ")].rstrip("Z")
            return datetime.fromisoformat(stamp).replace(tzinfo=timezone.utc).timestamp()
    return None


def answers_line(rec, t0, marks):
    """A message's answers, runs of the same code in one phase folded:
    "421 x15 master down (+0.1..+2.7 s)"."""
    runs = []
    for at, code, text in rec["answers"]:
        phase = phase_of(at, marks)
        if runs and runs[-1][0] == (code, phase):
            runs[-1][2] = at
            runs[-1][3] += 1
        else:
            runs.append([(code, phase), at, at, 1, text])
    return "; ".join(f"{code} x{n} {phase} (+{a - t0:.1f}..+{b - t0:.1f} s)"
                     + (f" \"{text[:50]}\"" if code != "250" else "")
                     for (code, phase), a, b, n, text in runs)


def phase_of(t, marks):
    """The phase of the load a moment falls in."""
    name = "before the kill"
    for at, label in marks:
        if t >= at:
            name = label
    return name


@pytest.fixture
def replicated_cluster(tmp_path):
    c = RedisCluster(tmp_path, masters=3, replicas=1, node_timeout_ms=NODE_TIMEOUT_MS).start()
    yield c
    c.stop()


@pytest.mark.parametrize("victim_is", ["another master", "the seed"])
def test_master_killed_under_load_loses_no_acknowledged_mail(tmp_path, replicated_cluster,
                                                             victim_is):
    """The seed is the master [redis] url names: the nodes must find the
    promoted replica from the slot map of the other masters, and the command
    line (queue stats) reaches the cluster again once the seed is back as a
    replica. Another master: the nodes' way in stays up throughout."""
    cluster = replicated_cluster
    masters = cluster.master_ports()
    assert len(masters) == 3 and len(cluster.replica_ports()) == 3, cluster.nodes()
    seed = masters[0]
    victim = seed if victim_is == "the seed" else masters[1]
    survivor = masters[2]  # asked for the cluster's view of itself
    sink = Sink().start()
    smtp_port, metrics_port = free_port(), free_port()
    config = base_config(seed, smtp_port, sink.port,
                         "\n[queue]\nmin_replicas = 1\nreplica_timeout_ms = 500\n").replace(
        "timeout_ms = 1000", "timeout_ms = 3000")
    ingress = Sealpost(tmp_path, "ingress",
                       config + f"\n[metrics]\nlisten = 127.0.0.1:{metrics_port}\n",
                       "ingress").start(smtp_port)
    worker = Sealpost(tmp_path, "worker", config, "worker").start()
    records, stop = [], threading.Event()
    senders = [Sender(n, smtp_port, stop, records) for n in range(SENDERS)]
    try:
        for p in (ingress, worker):
            wait_for(lambda p=p: p.read_log().count("event=queue_ready") >= 3,
                     what=f"the library on every master ({p.command})")

        t_start = time.monotonic()
        for s in senders:
            s.start()
        time.sleep(2)
        victim_slots = {s for s in range(16384) if cluster.owner(s) == victim}
        replica = next(p for p, (_, m) in cluster.nodes(survivor).items() if m == victim)

        cluster.kill(victim)
        t_kill = time.monotonic()

        def promoted():
            nodes = cluster.nodes(survivor)
            return "master" in nodes[replica][0] and "fail" in nodes[victim][0] and \
                all(c.cluster("INFO")["cluster_state"] == "ok" for c in cluster.clients())
        wait_for(promoted, timeout=30, interval=0.1, what=f"replica {replica} promoted")
        t_promoted, wall_promoted = time.monotonic(), time.time()
        time.sleep(3)  # mail goes on with the promoted master alone

        cluster.restart(victim)
        t_restart = time.monotonic()
        wait_for(lambda: cluster.link_up(victim) and cluster.nodes(survivor)[victim][1] == replica,
                 timeout=30, interval=0.1,
                 what=f"old master {victim} back as the replica of {replica}")
        t_rejoined = time.monotonic()
        time.sleep(3)  # and with its replica again
        stop.set()
        t_stop = time.monotonic()
        for s in senders:
            s.join(GIVE_UP + 20)

        # The queue drains: nothing acknowledged is left behind in Redis.
        stats = wait_for(lambda: (lambda st: st if st and st["messages"] == 0 else None)(
            queue_stats(worker.path)), timeout=60, interval=0.5, what="the queue to drain")
        t_drained = time.monotonic()
        time.sleep(1)  # a redelivery of a lease that ran out may still be on its way

        with sink.lock:
            arrived = [(m[0], m[2]) for m in sink.messages]
        delivered = Counter()
        others = []
        for mail_from, content in arrived:
            if b"Subject: fo" in content and mail_from == "s@origin.test":
                delivered[content.split(b"Subject: ", 1)[1].split(b"\r\n", 1)[0].decode()] += 1
            else:
                others.append((mail_from, content[:200]))
        acked = [r for r in records if r["outcome"] == "250"]
        lost = [r for r in acked if not delivered[r["token"]]]
        dups = {t: n for t, n in delivered.items() if n > 1}
        by_token = {r["token"]: r for r in records}
        sent = set(by_token)
        phantoms = [t for t in delivered if t not in sent]
        unacked_delivered = [r for r in records if r["outcome"] != "250" and
                             delivered[r["token"]]]
        # Every attempt that was not a 250, by phase of the load.
        marks = [(t_kill, "master down"), (t_promoted, "promoted, no replica"),
                 (t_rejoined, "replica back"), (t_stop, "after the load")]
        refusals = Counter()
        for r in records:
            for at, code, _ in r["answers"]:
                if code != "250":
                    refusals[(phase_of(at, marks), code)] += 1
        # Messages stored after the rejoin in the shards the promoted replica
        # took over: the ingress followed the new master.
        followed = [r for r in acked if r["answers"][-1][0] > t_rejoined
                    and shard_slot(r["qid"]) in victim_slots]
        first_250 = min((r["answers"][-1][0] for r in acked if r["answers"][-1][0] > t_kill),
                        default=None)
        redirects = metric_lines(metrics_port, "sealpost_redis_redirects_total{")
        withdrawals = metric_lines(metrics_port, "sealpost_queue_withdrawals_total{")

        def found(p):
            t = found_at(p, replica)
            return f"{t - wall_promoted:+.1f} s" if t else "never"

        rows = [
            ("masters / replicas", f"3 / 3, cluster-node-timeout {NODE_TIMEOUT_MS} ms"),
            ("killed master -> promoted replica",
             f"{victim} ({victim_is}, {len(victim_slots)} slots) -> {replica}"),
            ("kill to promotion / restart to rejoin",
             f"{t_promoted - t_kill:.1f} s / {t_rejoined - t_restart:.1f} s"),
            ("promoted master first used, after promotion: ingress / worker",
             f"{found(ingress)} / {found(worker)}"),
            ("first 250 after the kill", f"+{first_250 - t_kill:.1f} s" if first_250 else "none"),
            ("load phase / queue drained after the load in",
             f"{t_stop - t_start:.0f} s / {t_drained - t_stop:.1f} s"),
            ("messages (tokens) sent", len(records)),
            ("  acknowledged (250)", len(acked)),
            ("  not acknowledged", f"{len(records) - len(acked)} " + " ".join(
                f"{o}={n}" for o, n in sorted(Counter(
                    str(r["outcome"]) for r in records if r["outcome"] != "250").items()))),
            ("  of those delivered anyway", len(unacked_delivered)),
            ("attempts answered other than 250", sum(refusals.values())),
        ]
        rows += [(f"  {phase}: {code}", n) for (phase, code), n in sorted(refusals.items())]
        rows += [
            ("acknowledged, LOST", len(lost)),
            ("duplicate deliveries (tokens)", f"{sum(n - 1 for n in dups.values())} "
                                              f"({len(dups)})"),
            # The client sent it again after a 4xx or no answer to a copy that
            # was stored all the same; else the queue delivered one job twice.
            ("  of messages sent again / of messages sent once",
             f"{sum(1 for t in dups if len(by_token[t]['answers']) > 1)} / "
             f"{sum(1 for t in dups if len(by_token[t]['answers']) == 1)}"),
            ("phantom deliveries / other messages at the sink",
             f"{len(phantoms)} / {len(others)}"),
            ("250s after the rejoin in the promoted master's shards", len(followed)),
            ("ingress redirects", " ".join(ln.split("{")[1].replace("} ", "=")
                                           for ln in redirects) or "-"),
            ("ingress withdrawals", " ".join(ln.split("{")[1].replace("} ", "=")
                                             for ln in withdrawals) or "-"),
            ("queue at the end", json.dumps(stats)),
        ]
        width = max(len(k) for k, _ in rows)
        lines = ["", "=" * (width + 20), f"cluster failover run: {victim_is} killed"]
        lines += [f"{k:<{width}}  {v}" for k, v in rows]
        lines.append("=" * (width + 20))
        if dups:
            lines.append("duplicates: " + ", ".join(
                f"{t} x{n}" + ("" if len(by_token[t]["answers"]) > 1
                               else f" (sent once, mid {by_token[t]['qid']})")
                for t, n in sorted(dups.items())))
        lines.append("messages answered more than once (times from the kill):")
        for r in records:
            if len(r["answers"]) > 1 or r["outcome"] != "250":
                lines.append(
                    f"  {r['token']} {r['qid'] or ''} -> {r['outcome']}"
                    f"{' x' + str(delivered[r['token']]) if delivered[r['token']] > 1 else ''}: "
                    + answers_line(r, t_kill, marks))
        report(lines)

        evidence = []
        for r in lost:
            slot = shard_slot(r["qid"])
            evidence.append(f"{r['token']} mid={r['qid']} slot={slot}"
                            f"{' (the killed master)' if slot in victim_slots else ''}: "
                            + answers_line(r, t_kill, marks))
            evidence += log_lines(ingress, r["qid"]) + log_lines(worker, r["qid"])
        assert not lost, "acknowledged messages lost:\n" + "\n".join(evidence) + \
            f"\nlogs: {tmp_path}"
        assert not phantoms, phantoms
        assert followed, ("no 250 in the promoted master's shards after its replica came back:\n"
                          + "\n".join(log_lines(ingress, "event=redis")))
        for p in (ingress, worker):
            assert found_at(p, replica), f"{p.command} never used the promoted master {replica}"
        ingress.check_clean_exit()
        worker.check_clean_exit()
    finally:
        stop.set()
        for p in (ingress, worker):
            p.kill()
        sink.stop()
