"""GET /metrics, /healthz and /readyz on each process's metrics port: the
exposition parses with the Prometheus client's own parser, and the ingress
and worker counters move when a user does the thing they count."""

import math
import re
import socket
import subprocess
import time
import urllib.error
import urllib.request

import pytest
from prometheus_client.parser import text_string_to_metric_families

from conftest import Sealpost, free_port, up_config, wait_for
from smtpclient import Client, connect, expect, open_transaction


# After each test every sealpost process stops cleanly (conftest.py: clean_exit).
pytestmark = pytest.mark.usefixtures("clean_exit")


def get(port, path, method="GET"):
    req = urllib.request.Request(f"http://127.0.0.1:{port}{path}", method=method)
    try:
        with urllib.request.urlopen(req, timeout=5) as r:
            return r.status, r.headers, r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.headers, e.read().decode()


def scrape(port):
    """{(name, labels as a sorted tuple): value}, after checking the format."""
    status, headers, text = get(port, "/metrics")
    assert status == 200
    assert headers["Content-Type"].startswith("text/plain; version=0.0.4")
    # Prometheus's own linter: format, names, units, HELP and TYPE.
    lint = subprocess.run(["promtool", "check", "metrics"], input=text, capture_output=True,
                          text=True, timeout=30)
    assert lint.returncode == 0, lint.stdout + lint.stderr
    samples = {}
    for family in text_string_to_metric_families(text):
        assert family.name.startswith("sealpost_"), family.name
        assert family.documentation, f"{family.name} has no HELP"
        if family.type == "histogram":
            check_histogram(family)
        for s in family.samples:
            samples[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return samples


def check_histogram(family):
    """What every histogram series must show, whatever it measured: its
    buckets in ascending `le` order, cumulative (never fewer observations
    below a larger bound), the last one +Inf and equal to _count."""
    series = {}
    for s in family.samples:
        key = tuple(sorted((k, v) for k, v in s.labels.items() if k != "le"))
        part = series.setdefault(key, {"buckets": []})
        if s.name.endswith("_bucket"):
            part["buckets"].append((float(s.labels["le"]), s.value))
        else:
            part[s.name.rsplit("_", 1)[1]] = s.value
    for key, part in series.items():
        bounds = [le for le, _ in part["buckets"]]
        counts = [n for _, n in part["buckets"]]
        what = (family.name, key, part)
        assert bounds and bounds == sorted(set(bounds)) and bounds[-1] == math.inf, what
        assert counts == sorted(counts), what
        assert counts[-1] == part["count"], what


def buckets(samples, name):
    """{upper bound: cumulative count} of a histogram without labels."""
    return {float(dict(labels)["le"]): v for (n, labels), v in samples.items()
            if n == name + "_bucket"}


def value(samples, name, **labels):
    return samples.get((name, tuple(sorted(labels.items()))))


def with_metrics(stack, extra=""):
    port = free_port()
    return port, f"[metrics]\nlisten = 127.0.0.1:{port}\n{extra}"


# How long Redis holds the store of the message the enqueue histogram times.
ENQUEUE_PAUSE = 0.5


def test_ingress_counters_follow_what_clients_do(stack):
    port, extra = with_metrics(stack)
    stack.ingress(extra=extra + "[ingress]\ntrusted_networks =\n")
    before = scrape(port)
    assert value(before, "sealpost_ingress_refused_total", reason="relay_denied") == 0
    assert value(before, "sealpost_build_info", version="0.1.0") == 1
    assert value(before, "sealpost_ingress_enqueue_duration_seconds_count") == 0
    with connect(stack) as c:
        expect(c.cmd("MAIL FROM:<a@origin.test>"), 250, "2.1.0")
        expect(c.cmd("RCPT TO:<x@elsewhere.test>"), 554, "5.7.1")
        expect(c.cmd("RCPT TO:<r@example.test>"), 250, "2.1.5")
        expect(c.cmd("DATA"), 354)
        # Redis holds every write (the store's FCALL among them) for
        # ENQUEUE_PAUSE from now, so the enqueue the histogram times takes at
        # least that, less the moments before the ingress sends the store.
        stack.redis.client().execute_command("CLIENT", "PAUSE", int(ENQUEUE_PAUSE * 1000),
                                             "WRITE")
        sent = time.monotonic()
        expect(c.cmd(b"Subject: counted\r\n\r\nbody\r\n."), 250, "2.0.0")
        answered = time.monotonic() - sent
        during = scrape(port)
        assert value(during, "sealpost_ingress_connections") == 1
    with connect(stack, ehlo=False) as c:
        c.send(b"GET / HTTP/1.1\r\n\r\n")
        expect(c.reply(), 421, "4.7.0")
    wait_for(lambda: value(scrape(port), "sealpost_ingress_connections") == 0,
             what="the gauge to fall back")
    after = scrape(port)
    assert value(after, "sealpost_ingress_refused_total", reason="relay_denied") == 1
    assert value(after, "sealpost_ingress_refused_total", reason="non_smtp") == 1
    assert value(after, "sealpost_ingress_messages_accepted_total") == 1
    assert value(after, "sealpost_ingress_recipients_total") == 1
    assert value(after, "sealpost_ingress_received_bytes_total") > len("Subject: counted")
    assert value(after, "sealpost_ingress_enqueue_duration_seconds_count") == 1
    # The one observation: at least most of the pause, at most what the
    # client waited for its 250 (plus a millisecond: the process times in
    # whole milliseconds), and in every bucket from the first bound above it.
    took = value(after, "sealpost_ingress_enqueue_duration_seconds_sum")
    assert ENQUEUE_PAUSE / 2 <= took <= answered + 0.001, (took, answered)
    for le, n in buckets(after, "sealpost_ingress_enqueue_duration_seconds").items():
        assert n == (1 if took <= le else 0), (le, n, took)
    opened = (value(after, "sealpost_ingress_connections_total", listener="listen") -
              value(before, "sealpost_ingress_connections_total", listener="listen"))
    assert opened == 2


def test_worker_counts_outcomes(stack):
    replies = {"gone": "550 5.1.1 no such user", "later": "451 4.2.0 busy"}
    stack.sink.rcpt_reply = lambda a: replies.get(a.split("@")[0])
    port, extra = with_metrics(stack)
    stack.ingress()
    stack.worker(extra=extra)
    started = time.monotonic()
    with connect(stack) as c:
        open_transaction(c, "a@origin.test",
                         ("here@example.test", "gone@example.test", "later@example.test"))
        expect(c.cmd(b"Subject: outcomes\r\n\r\nbody\r\n."), 250, "2.0.0")
    wait_for(lambda: value(scrape(port), "sealpost_delivery_notifications_total") == 1,
             timeout=15, what="the bounce")
    samples = scrape(port)
    elapsed = time.monotonic() - started
    assert value(samples, "sealpost_delivery_attempts_total", outcome="delivered") >= 1
    assert value(samples, "sealpost_delivery_attempts_total", outcome="bounced") == 1
    assert value(samples, "sealpost_delivery_attempts_total", outcome="deferred") >= 1
    # every Redis call is timed; none failed
    assert value(samples, "sealpost_redis_request_duration_seconds_count") >= 3
    assert value(samples, "sealpost_redis_errors_total", kind="error_reply") == 0
    # histograms: a transaction timed, one recipient's time in the queue
    assert value(samples, "sealpost_delivery_duration_seconds_count") >= 1
    assert value(samples, "sealpost_delivery_duration_seconds_bucket", le="+Inf") == \
        value(samples, "sealpost_delivery_duration_seconds_count")
    assert value(samples, "sealpost_delivery_time_in_queue_seconds_count") >= 1
    assert value(samples, "sealpost_delivery_time_in_queue_seconds_bucket", le="432000") >= 1
    # One time in the queue per delivered recipient (the bounce's included);
    # each of them, like each transaction, took some time and less than the
    # test has run (an SMTP exchange with the sink takes milliseconds at least).
    assert value(samples, "sealpost_delivery_time_in_queue_seconds_count") == \
        value(samples, "sealpost_delivery_attempts_total", outcome="delivered")
    for name in ("sealpost_delivery_time_in_queue_seconds", "sealpost_delivery_duration_seconds"):
        n, total = value(samples, name + "_count"), value(samples, name + "_sum")
        assert 0 < total <= n * elapsed, (name, n, total, elapsed)


def test_health_and_readiness(stack):
    port, extra = with_metrics(stack)
    stack.ingress(extra=extra)
    assert get(port, "/healthz")[0] == 200
    assert get(port, "/readyz")[0] == 200
    stack.redis.stop()
    wait_for(lambda: get(port, "/readyz")[0] == 503, what="readyz to see redis gone")
    assert get(port, "/healthz")[0] == 200  # alive all the same
    # An ingress that is not ready turns clients away at once, with 421.
    with Client(stack.smtp_port) as c:
        expect(c.reply(), 421, "4.3.2")
        assert c.closed_by_server()
    refused = scrape(port)
    assert value(refused, "sealpost_ingress_refused_total", reason="not_ready") >= 1
    stack.redis.start()
    wait_for(lambda: get(port, "/readyz")[0] == 200, timeout=30, what="readyz to recover")
    with Client(stack.smtp_port) as c:
        expect(c.reply(), 220)


def test_http_refuses_what_it_does_not_serve(stack):
    port, extra = with_metrics(stack)
    stack.ingress(extra=extra)
    assert get(port, "/nothing")[0] == 404
    assert get(port, "/metrics", method="POST")[0] == 405
    status, headers, body = get(port, "/metrics", method="HEAD")
    assert status == 200 and body == "" and int(headers["Content-Length"]) > 0
    with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
        s.sendall(b"GET /metrics HTTP/1.1\r\nX-Pad: " + b"a" * 9000)
        assert s.recv(100).startswith(b"HTTP/1.1 431 ")
    with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
        s.sendall(b"nonsense\r\n\r\n")
        assert s.recv(100).startswith(b"HTTP/1.1 400 ")
    # The request line is read from its octets, whole: a NUL (which sscanf
    # stopped at, serving /metrics) or anything after the version is 400, a
    # target too long to keep is 414, not cut.
    for line, status in ((b"GET /metrics HTTP/1.1\0junk", b"400"), (b"GET /metrics\0/x HTTP/1.1", b"400"),
                         (b"GET /metrics HTTP/1.1 extra", b"400"), (b"GET /metrics HTTP/2.0", b"400"),
                         (b"GET /" + b"m" * 300 + b" HTTP/1.1", b"414")):
        with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
            s.sendall(line + b"\r\n\r\n")
            assert s.recv(100).startswith(b"HTTP/1.1 " + status + b" "), line


def test_up_serves_both_sides_on_one_port(tmp_path, sink):
    smtp_port, redis_port, port = free_port(), free_port(), free_port()
    config = up_config(tmp_path, smtp_port, redis_port, sink.port,
                       f"[metrics]\nlisten = 127.0.0.1:{port}\n")
    up = Sealpost(tmp_path, "up", config, "up").start(smtp_port)
    wait_for(lambda: get(port, "/readyz")[0] == 200, what="up to be ready")
    samples = scrape(port)
    assert value(samples, "sealpost_ingress_messages_accepted_total") == 0
    assert value(samples, "sealpost_delivery_attempts_total", outcome="delivered") == 0
    up.check_clean_exit()


def _open(stack, n):
    return [connect(stack, ehlo=False) for _ in range(n)]


def _mail(c, *rcpts):
    expect(c.cmd("EHLO client.test"), 250)
    expect(c.cmd("MAIL FROM:<a@origin.test>"), 250, "2.1.0")
    for r in rcpts:
        expect(c.cmd(f"RCPT TO:<{r}>"), 250, "2.1.5")


def _data(stack, body):
    with connect(stack, ehlo=False) as c:
        _mail(c, "r@example.test")
        expect(c.cmd("DATA"), 354)
        return c.cmd(body + b"\r\n.")


def _command(stack, *lines):
    with connect(stack) as c:
        for line in lines[:-1]:
            c.cmd(line)
        return c.cmd(lines[-1])


def _second_connection(stack):
    first = connect(stack, ehlo=False)
    with Client(stack.smtp_port) as second:
        r = second.reply()
    first.close()
    return r


def _timeout(stack):
    with connect(stack, ehlo=False) as c:
        return c.reply(timeout=5)


def _proxy_junk(stack):
    with Client(stack.smtp_port) as c:
        c.send(b"HELLO THERE\r\n")
        assert c.closed_by_server(5.0)
    return None


# reason, extra [ingress] config, what to do, the reply it gets
REFUSALS = [
    ("max_connections", "max_connections = 1\n", _second_connection, (421, "4.7.0")),
    ("max_connections_per_ip", "max_connections_per_ip = 1\ntrusted_networks =\n",
     _second_connection, (421, "4.7.0")),
    ("bad_proxy_header", "proxy_networks = 127.0.0.1/32\n", _proxy_junk, None),
    ("bare_line_end", "", lambda st: _data(st, b"Subject: x\r\n\r\na\nb\r\n"), (550, "5.6.0")),
    ("nul_in_data", "", lambda st: _data(st, b"Subject: x\r\n\r\na\x00b\r\n"), (550, "5.6.0")),
    ("line_too_long", "", lambda st: _data(st, b"x" * 1200 + b"\r\n"), (550, "5.6.0")),
    ("message_too_big", "max_message_size = 2048\n",
     lambda st: _command(st, "MAIL FROM:<a@origin.test> SIZE=4096"), (552, "5.3.4")),
    ("too_many_recipients", "max_recipients = 1\n",
     lambda st: _command(st, "MAIL FROM:<a@origin.test>", "RCPT TO:<a@example.test>",
                         "RCPT TO:<b@example.test>"), (452, "4.5.3")),
    ("too_many_errors", "max_errors = 2\n",
     lambda st: _command(st, "FROB", "FROB", "NOOP"), (421, "4.7.0")),
    ("timeout", "command_timeout = 1\n", _timeout, (421, "4.4.2")),
    ("smtputf8_required", "",
     lambda st: _command(st, "MAIL FROM:<a@origin.test>", "RCPT TO:<jörg@example.test>"),
     (553, "5.6.7")),
    ("no_postmaster", "relay_domains =\n",
     lambda st: _command(st, "MAIL FROM:<a@origin.test>", "RCPT TO:<Postmaster>"),
     (550, "5.1.1")),
]


@pytest.mark.parametrize("reason, extra, action, reply", REFUSALS, ids=[r[0] for r in REFUSALS])
def test_each_refusal_has_its_code_and_its_counter(stack, reason, extra, action, reply):
    port, metrics = with_metrics(stack)
    stack.ingress(extra=metrics + "[ingress]\n" + extra)
    before = value(scrape(port), "sealpost_ingress_refused_total", reason=reason)
    got = action(stack)
    if reply:
        expect(got, *reply)
    wait_for(lambda: value(scrape(port), "sealpost_ingress_refused_total", reason=reason) ==
             before + 1, what=f"the {reason} counter")
    others = {k: v for k, v in scrape(port).items()
              if k[0] == "sealpost_ingress_refused_total" and k[1] != (("reason", reason),)}
    assert not any(others.values()), others


# The queue-wide figures a scrape shows were read from Redis at most a second
# before (cmd/serve.c: scrape_metrics), by the event loop's clock, which may
# lag a little; the age is measured once the message has been queued this
# long, so a gauge stuck at 0 (or counting in milliseconds) cannot pass.
FIGURES_MAX_AGE = 1.0 + 0.1
AGE_AT_LEAST = 2.5


def test_queue_depth_goes_up_then_down(stack):
    """A message its next hop defers shows in the queue-wide gauges (on the
    ingress's /metrics too: they come from Redis) and in `sealpost queue
    stats`; once delivered, the queue is empty again."""
    import json
    import subprocess
    from conftest import BIN
    answer = {"code": "451 4.3.2 not now"}
    stack.sink.rcpt_reply = lambda a: answer["code"]
    port, extra = with_metrics(stack)
    stack.ingress(extra=extra)
    stack.worker(extra="[worker]\nmin_backoff = 1\nmax_backoff = 1\n")
    assert value(scrape(port), "sealpost_queue_messages") == 0
    assert value(scrape(port), "sealpost_queue_oldest_message_age_seconds") == 0
    with connect(stack) as c:
        open_transaction(c, "a@origin.test", ("r@example.test",))
        sent = time.time()  # Redis stamps the message between these two
        expect(c.cmd(b"Subject: queued\r\n\r\nbody\r\n."), 250, "2.0.0")
        acked = time.time()
    wait_for(lambda: "event=deferred" in stack.procs[1].read_log(), what="a deferral")
    # the figures are at most a second old
    wait_for(lambda: value(scrape(port), "sealpost_queue_messages") == 1, timeout=5,
             what="the message in the gauges")
    time.sleep(max(0.0, acked + AGE_AT_LEAST - time.time()))
    asked = time.time()
    samples = scrape(port)
    got = time.time()
    jobs = sum(value(samples, "sealpost_queue_jobs", state=s) for s in
               ("due", "scheduled", "leased"))
    assert jobs == 1 and value(samples, "sealpost_queue_jobs", state="held") == 0
    # The age: Redis's clock (the host's) now less when it stored the
    # message, as read at most FIGURES_MAX_AGE before the scrape.
    age = value(samples, "sealpost_queue_oldest_message_age_seconds")
    assert asked - FIGURES_MAX_AGE - acked <= age <= got - sent, (age, asked - acked, got - sent)
    conf = stack.tmp / "cli.conf"
    conf.write_text(f"[redis]\nurl = redis://127.0.0.1:{stack.redis.port}\n")
    asked = time.time()
    out = subprocess.run([BIN, "queue", "stats", "--json", "-c", str(conf)], capture_output=True,
                         text=True, timeout=30)
    got = time.time()
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout)["messages"] == 1
    age = json.loads(out.stdout)["oldest_age_seconds"]  # read now, not cached
    # printed to the millisecond: up to half of one either way
    assert asked - acked - 0.0005 <= age <= got - sent + 0.0005, (age, asked - acked, got - sent)
    answer["code"] = None
    wait_for(lambda: stack.sink.count() == 1, timeout=20, what="the delivery")
    wait_for(lambda: value(scrape(port), "sealpost_queue_messages") == 0, timeout=5,
             what="an empty queue")
    assert value(scrape(port), "sealpost_queue_oldest_message_age_seconds") == 0
    text = subprocess.run([BIN, "queue", "stats", "-c", str(conf)], capture_output=True,
                          text=True, timeout=30).stdout
    assert "messages queued   0" in text, text


def test_logs_are_key_value_lines_and_redact_addresses_when_asked(stack):
    """One line per event, key=value, the message id on each line about a
    message; with [log] redact_addresses the addresses become hashes, in the
    servers' replies the logs quote too."""
    stack.sink.rcpt_reply = lambda a: (f"550 5.1.1 <{a}>: no such user"
                                       if a.startswith("quoted") else None)
    ingress = stack.ingress(extra="[log]\nredact_addresses = yes\n")
    worker = stack.worker(extra="[log]\nredact_addresses = yes\n")
    with connect(stack) as c:
        open_transaction(c, "secret.sender@origin.test",
                         ("hidden.rcpt@example.test", "quoted.rcpt@example.test"))
        reply = expect(c.cmd(b"Subject: private\r\n\r\nbody\r\n."), 250, "2.0.0")
    mid = reply.text.split()[-1]
    wait_for(lambda: f"event=delivered mid={mid}" in worker.read_log(), what="delivery logged")
    logs = ingress.read_log() + worker.read_log()
    assert "secret.sender" not in logs and "hidden.rcpt" not in logs
    assert "quoted.rcpt" not in logs and "event=bounced" in worker.read_log()
    assert "private" not in logs and "body" not in logs  # never the message
    lines = [line for line in logs.splitlines() if mid in line]
    assert any("event=accepted" in line for line in lines)
    for line in logs.splitlines():
        assert line.startswith("ts=") and " level=" in line and " event=" in line, line
    delivered = next(line for line in lines if "event=delivered" in line)
    assert re.search(r"rcpt=<[0-9a-f]{16}@example\.test>", delivered), delivered
