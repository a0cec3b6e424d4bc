"""Found by the chaos suite: a node that reconnects to a Redis still loading
its AOF after a restart gets `-LOADING` for FUNCTION LOAD, and must not stay
"not ready" once Redis has loaded.

A real redis-server with a dataset that takes a few seconds to load (its
test-only `key-load-delay` setting stretches loading the way a large
production dataset does) is SIGKILLed and started again at once, so the
nodes' reconnect lands while it is loading. Then, what a user checks: once
Redis answers again, both nodes report ready within a few seconds, the
ingress takes a message with 250 and the worker delivers it."""

import smtplib
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import chaos  # noqa: E402

it = chaos.it

BALLAST_KEYS = 20000
LOAD_DELAY_US = 100  # per key: about 2-5 s of loading here


class SlowLoadingRedis(it.RedisServer):
    """redis-server as in tests/integration (AOF, fsync always), loading slowly."""

    def start(self):
        self.proc = subprocess.Popen(
            ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1",
             "--dir", str(self.dir), "--appendonly", "yes", "--appendfsync", "always",
             "--save", "", "--maxmemory-policy", "noeviction",
             "--key-load-delay", str(LOAD_DELAY_US),
             "--loading-process-events-interval-bytes", "1024",
             "--logfile", str(self.dir / "redis.log")],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        it.wait_for(lambda: it.port_open("127.0.0.1", self.port), what="redis-server")
        return self


def ready(port):
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=2) as r:
            return r.status == 200
    except OSError:
        return False


def config(redis_port, smtp_port, metrics_port, sink_port):
    return it.base_config(redis_port, smtp_port, sink_port,
                          f"[worker]\nstop_grace = 2\n[metrics]\nlisten = 127.0.0.1:{metrics_port}\n")


def test_nodes_recover_when_redis_restarts_slowly(tmp_path):
    redis = SlowLoadingRedis(tmp_path).start()
    sink = it.Sink().start()
    procs = []
    try:
        c = redis.client()
        c.eval("for i = 1, tonumber(ARGV[1]) do redis.call('SET', 'ballast:' .. i, 'x') end",
               0, BALLAST_KEYS)
        c.bgrewriteaof()  # an RDB preamble: loading it honours key-load-delay
        it.wait_for(lambda: c.info("persistence")["aof_rewrite_in_progress"] == 0
                    and c.info("persistence")["aof_rewrite_scheduled"] == 0,
                    timeout=30, what="the AOF rewrite")
        smtp_port = it.free_port()
        ports = {"ingress": it.free_port(), "worker": it.free_port()}
        for name, mport in ports.items():
            p = it.Sealpost(tmp_path, name, config(redis.port, smtp_port, mport, sink.port), name)
            p.start()
            procs.append(p)
        for name, mport in ports.items():
            it.wait_for(lambda: ready(mport), timeout=30, what=f"{name} ready")

        redis.proc.kill()
        redis.proc.wait()
        redis.start()  # at once: the nodes reconnect while it loads
        started = time.monotonic()
        it.wait_for(lambda: chaos.redis_answers(redis.port, 1), timeout=60, what="redis to load its AOF")
        loading = time.monotonic() - started
        print(f"\nredis loaded in {loading:.1f}s")
        logs = "\n".join(p.read_log() for p in procs)
        # The case this test is for: a node reconnected while Redis loaded.
        assert "LOADING" in logs, f"no node met Redis loading (it loaded in {loading:.1f}s)"

        for name, mport in ports.items():
            it.wait_for(lambda: ready(mport), timeout=10,
                        what=f"{name} ready again after Redis loaded "
                             f"(log: {tmp_path / (name + '.log')})")
        with smtplib.SMTP("127.0.0.1", smtp_port, timeout=30) as s:
            s.sendmail("sender@example.test", ["rcpt@example.test"],
                       b"Subject: after loading\r\n\r\nhello\r\n")
        it.wait_for(lambda: sink.count() == 1, timeout=20, what="the delivery")
        for p in procs:
            p.check_clean_exit()
    finally:
        for p in procs:
            p.kill()
        redis.stop()
        sink.stop()
