"""sealpost on Redis Cluster: three masters on loopback, the client following
the slot map, MOVED, ASK and TRYAGAIN, the library on every master, shards
spread over the masters, a slot migrated while mail flows, and the CLI."""

import json
import smtplib
import subprocess
import threading
import time
import urllib.request

import pytest
import redis as redis_py

from conftest import (BIN, RedisCluster, Sealpost, Sink, base_config, free_port, port_open,
                      wait_for)


@pytest.fixture
def cluster(tmp_path):
    c = RedisCluster(tmp_path).start()
    yield c
    c.stop()


class Nodes:
    def __init__(self, tmp, cluster, sink, extra=""):
        self.smtp_port = free_port()
        self.metrics_port = free_port()
        config = base_config(cluster.ports[0], self.smtp_port, sink.port, extra).replace(
            "timeout_ms = 1000", "timeout_ms = 3000")
        self.ingress = Sealpost(tmp, "ingress", config + f"\n[metrics]\nlisten = 127.0.0.1:"
                                f"{self.metrics_port}\n", "ingress").start(self.smtp_port)
        self.worker = Sealpost(tmp, "worker", config, "worker").start()
        self.config_path = self.worker.path
        for p in (self.ingress, self.worker):
            wait_for(lambda p=p: p.read_log().count("event=queue_ready") >= 3,
                     what="the library on every master")

    def stop(self):
        self.ingress.check_clean_exit()
        self.worker.check_clean_exit()

    def kill(self):
        self.ingress.kill()
        self.worker.kill()


def send(port, token, retry_4xx=False):
    """One message: "250", or the code that refused it. A real client keeps
    a message that got 4xx and tries again later; retry_4xx does that."""
    msg = (f"From: s@origin.test\r\nTo: r@example.test\r\nSubject: {token}\r\n"
           f"Message-ID: <{token}@origin.test>\r\n\r\nbody of {token}\r\n")
    for _ in range(50):
        try:
            with smtplib.SMTP("127.0.0.1", port, timeout=30) as c:
                c.sendmail("s@origin.test", ["r@example.test"], msg)
                return "250"
        except smtplib.SMTPRecipientsRefused as e:
            code = next(iter(e.recipients.values()))[0]
        except smtplib.SMTPResponseException as e:
            code = e.smtp_code
        if not (retry_4xx and 400 <= code < 500):
            return str(code)
        time.sleep(0.2)
    return "gave up"


def delivered_tokens(sink):
    with sink.lock:
        return [m[2].split(b"Subject: ", 1)[1].split(b"\r\n", 1)[0].decode()
                for m in sink.messages]


def queue_stats(config_path):
    out = subprocess.run([BIN, "queue", "stats", "--json", "-c", str(config_path)],
                         capture_output=True, text=True, timeout=30)
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout)


def test_cluster_spreads_shards_and_delivers(tmp_path, cluster):
    sink = Sink().start()
    nodes = Nodes(tmp_path, cluster, sink)
    try:
        # The library is on every master, not only the one in the configuration.
        for c in cluster.clients():
            libs = c.execute_command("FUNCTION", "LIST", "LIBRARYNAME", "sealpost")
            assert libs, f"no library on {c}"

        # Hold delivery back for a moment so the queue has something to show.
        sink.rcpt_reply = lambda addr: "451 4.3.0 not now"
        tokens = [f"c{i}" for i in range(60)]
        for t in tokens:
            assert send(nodes.smtp_port, t) == "250"
        # Messages went to all three masters: the shards' slots are spread.
        sizes = [c.dbsize() for c in cluster.clients()]
        assert all(n > 0 for n in sizes), sizes
        # The CLI reads every master's shards.
        stats = queue_stats(nodes.config_path)
        assert stats["messages"] == 60 and stats["due"] + stats["scheduled"] + stats["leased"] == 60, stats

        sink.rcpt_reply = lambda addr: None
        wait_for(lambda: len(delivered_tokens(sink)) >= 60, timeout=60, what="delivery")
        assert sorted(delivered_tokens(sink)) == sorted(tokens)
        wait_for(lambda: queue_stats(nodes.config_path)["messages"] == 0, what="an empty queue")
        nodes.stop()
    finally:
        nodes.kill()
        sink.stop()


def test_slot_migrated_while_mail_flows(tmp_path, cluster):
    """A shard's slot moves to another master under load: while it moves, the
    old master answers ASK or TRYAGAIN; after, MOVED. Every message that got
    250 arrives, and mail to that shard keeps flowing after the move."""
    sink = Sink().start()
    # Four shards, so the load keeps hitting the one that moves.
    nodes = Nodes(tmp_path, cluster, sink, "\n[redis]\nshards = 4\n")
    try:
        slot = redis_py.Redis(port=cluster.ports[0]).execute_command("CLUSTER", "KEYSLOT",
                                                                       "{mq:0}")
        src = cluster.owner(slot)
        dst = next(p for p in cluster.ports if p != src)
        results = {}
        stop = threading.Event()

        def load(worker):
            i = 0
            while not stop.is_set() or i < 20:
                token = f"m{worker}-{i}"
                results[token] = send(nodes.smtp_port, token, retry_4xx=True)
                i += 1

        threads = [threading.Thread(target=load, args=(w,)) for w in range(3)]
        for t in threads:
            t.start()
        time.sleep(1)

        s, d = redis_py.Redis(port=src), redis_py.Redis(port=dst)
        d.execute_command("CLUSTER", "SETSLOT", slot, "IMPORTING", cluster.node_id(src))
        s.execute_command("CLUSTER", "SETSLOT", slot, "MIGRATING", cluster.node_id(dst))
        # One key at a time, slowly, so the load meets the half-moved slot.
        moved = 0
        while True:
            keys = s.execute_command("CLUSTER", "GETKEYSINSLOT", slot, 1)
            if not keys:
                break
            s.execute_command("MIGRATE", "127.0.0.1", dst, "", 0, 5000, "KEYS", *keys)
            moved += 1
            time.sleep(0.05)
        # Every key moved, the slot not yet handed over: the old master
        # answers ASK, the new one TRYAGAIN to a call that creates keys.
        # Long enough for calls backing off after TRYAGAIN to come back.
        time.sleep(3)
        for c in cluster.clients():
            c.execute_command("CLUSTER", "SETSLOT", slot, "NODE", cluster.node_id(dst))
        assert moved > 0
        time.sleep(2)
        stop.set()
        for t in threads:
            t.join(120)

        acked = [t for t, r in results.items() if r == "250"]
        assert len(acked) == len(results), {t: r for t, r in results.items() if r != "250"}
        wait_for(lambda: set(acked) <= set(delivered_tokens(sink)), timeout=90,
                 what="every acknowledged message at the sink")
        assert cluster.owner(slot) == dst
        # The client followed the move: redirects were seen and counted.
        metrics = urllib.request.urlopen(
            f"http://127.0.0.1:{nodes.metrics_port}/metrics", timeout=10).read().decode()
        followed = {line.split("{")[1].split("}")[0]: float(line.split()[-1])
                    for line in metrics.splitlines()
                    if line.startswith("sealpost_redis_redirects_total{")}
        print(f"messages {len(results)}, keys migrated {moved}, redirects {followed}")
        assert followed['kind="ask"'] > 0 and followed['kind="retry"'] > 0, followed
        # The shard that moved still takes mail.
        assert send(nodes.smtp_port, "after-move") == "250"
        wait_for(lambda: "after-move" in delivered_tokens(sink), what="mail after the move")
        nodes.stop()
    finally:
        nodes.kill()
        sink.stop()


def test_a_redis_that_refuses_cluster_commands_is_a_single_redis(tmp_path):
    """CLUSTER renamed away (or refused by an ACL) is not an outage: the
    server is used as a single Redis."""
    d = tmp_path / "redis"
    d.mkdir()
    port = free_port()
    proc = subprocess.Popen(
        ["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--dir", str(d),
         "--appendonly", "yes", "--save", "", "--rename-command", "CLUSTER", ""],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    sink = Sink().start()
    smtp_port = free_port()
    config = base_config(port, smtp_port, sink.port)
    ingress = worker = None
    try:
        wait_for(lambda: port_open("127.0.0.1", port), what="redis")
        ingress = Sealpost(tmp_path, "ingress", config, "ingress").start(smtp_port)
        worker = Sealpost(tmp_path, "worker", config, "worker").start()
        wait_for(lambda: "event=queue_ready" in ingress.read_log(), what="ingress ready")
        assert "mode=single" in ingress.read_log()
        assert send(smtp_port, "renamed") == "250"
        wait_for(lambda: "renamed" in delivered_tokens(sink), what="delivery")
        out = subprocess.run([BIN, "queue", "stats", "--json", "-c", str(ingress.path)],
                             capture_output=True, text=True, timeout=30)
        assert out.returncode == 0, out.stderr
        ingress.check_clean_exit()
        worker.check_clean_exit()
    finally:
        for p in (ingress, worker):
            if p:
                p.kill()
        sink.stop()
        proc.terminate()
        proc.wait(10)


def test_the_cli_writes_users_keys_and_policies_on_a_fresh_cluster(tmp_path, cluster):
    """Before any node has run, so no master has the functions library: the
    command line loads it on the masters it writes to (those of
    {sealpost:auth} and {sealpost:crypto}), and each of its calls stays in
    the slot of its hash tag."""
    from conftest import SEAL_KEY
    from pgp import Person
    config = tmp_path / "cli.conf"
    # the sealing key: `sealpost keys` tags and seals what it writes (issue 18)
    config.write_text(f"[redis]\nurl = redis://127.0.0.1:{cluster.ports[0]}\ntimeout_ms = 3000\n"
                      f"[seal]\nkeys = {SEAL_KEY}\n")

    def cli(*args, stdin=None):
        return subprocess.run([BIN, *args, "-c", str(config)], input=stdin, capture_output=True,
                              timeout=60)

    out = cli("users", "add", "u@origin.test", "--cram-md5", stdin=b"a password\n")
    assert out.returncode == 0, out.stderr
    assert cli("users", "list").stdout == b"u@origin.test cram-md5\n"
    person = Person(tmp_path, "erin", "erin@example.test")
    out = cli("keys", "import", "-", stdin=person.public())
    assert out.returncode == 0 and person.fpr.encode() in out.stdout, out.stdout + out.stderr
    assert cli("keys", "policy", "set", "example.test", "required").returncode == 0
    assert cli("keys", "policy", "list").stdout == b"example.test required\n"

    seed = redis_py.Redis(port=cluster.ports[0])
    for tag in ("{sealpost:auth}", "{sealpost:crypto}"):
        owner = redis_py.Redis(port=cluster.owner(seed.execute_command("CLUSTER", "KEYSLOT", tag)))
        assert owner.execute_command("FUNCTION", "LIST", "LIBRARYNAME", "sealpost"), tag
    auth = redis_py.Redis(port=cluster.owner(seed.execute_command("CLUSTER", "KEYSLOT",
                                                                  "{sealpost:auth}")))
    assert auth.hget("{sealpost:auth}:users", "u@origin.test").startswith(b"$argon2id$")
    crypto = redis_py.Redis(port=cluster.owner(seed.execute_command("CLUSTER", "KEYSLOT",
                                                                    "{sealpost:crypto}")))
    assert crypto.hget("{sealpost:crypto}:a:erin@example.test", "fpr") == person.fpr.encode()
    assert int(crypto.get("{sealpost:crypto}:version")) == 2
    assert cli("keys", "delete", person.fpr).returncode == 0
    assert crypto.exists("{sealpost:crypto}:a:erin@example.test") == 0
    assert cli("users", "delete", "u@origin.test").returncode == 0
    assert cli("users", "list").stdout == b""


def test_a_master_back_at_a_new_address_replaces_the_old_one(tmp_path, cluster):
    """A master restarted at another address (a pod rescheduled) three
    times: each old address leaves the slot map, and the processes close
    their connection to it instead of keeping it for ever. Mail queued on
    that master before the moves is delivered, and mail goes on."""
    from test_metrics import scrape, value
    sink = Sink().start()
    sink.rcpt_reply = lambda addr: "451 4.3.0 not now"
    nodes = Nodes(tmp_path, cluster, sink)
    try:
        seed = redis_py.Redis(port=cluster.ports[0])
        assert value(scrape(nodes.metrics_port), "sealpost_redis_nodes") == 3
        before = [f"m{i}" for i in range(30)]
        for t in before:
            assert send(nodes.smtp_port, t) == "250"
        moving, gone = cluster.ports[1], []
        assert redis_py.Redis(port=moving).dbsize() > 0  # it holds queued mail
        for _ in range(3):
            gone.append(moving)
            moving = cluster.move(moving)
            wait_for(lambda: any(int(master[1]) == moving for _, _, master, *_ in
                                 seed.execute_command("CLUSTER", "SLOTS")),
                     timeout=30, what=f"the slot map naming {moving}")
            wait_for(lambda: seed.cluster("INFO")["cluster_state"] == "ok", what="cluster ok")
            for p in (nodes.ingress, nodes.worker):  # each address is used before it goes
                wait_for(lambda p=p: f"event=redis_connected redis=127.0.0.1:{moving} "
                         in p.read_log(), timeout=30, what=f"{p.command} following to {moving}")
        for p in (nodes.ingress, nodes.worker):
            for old in gone:
                wait_for(lambda p=p, old=old: f"event=redis_node_retired redis=127.0.0.1:{old} "
                         in p.read_log(), timeout=30, what=f"{p.command} retiring {old}")
        assert value(scrape(nodes.metrics_port), "sealpost_redis_nodes") == 3

        sink.rcpt_reply = lambda addr: None
        after = [f"n{i}" for i in range(30)]
        for t in after:
            assert send(nodes.smtp_port, t, retry_4xx=True) == "250"
        wait_for(lambda: len(delivered_tokens(sink)) >= 60, timeout=90, what="delivery")
        assert sorted(delivered_tokens(sink)) == sorted(before + after)
        nodes.stop()
    finally:
        nodes.kill()
        sink.stop()
