"""`sealpost up` supervises its private redis-server: a killed one is
restarted with backoff on the same port and data, mail keeps flowing, the
restarts stop at a limit, and SIGTERM still stops everything."""

import os
import re
import signal
import smtplib
import socket

import redis as redis_py

from conftest import Sealpost, free_port, port_open, up_config, wait_for

WORKER = "[worker]\nmin_backoff = 1\nmax_backoff = 1\nlease_seconds = 3\n"
STARTED = re.compile(r"event=redis_(?:started|restarted) pid=(\d+)")


def message(n):
    return (f"From: sender@origin.test\r\nTo: rcpt@example.test\r\n"
            f"Subject: supervised {n}\r\nX-Seq: {n}\r\n\r\nbody {n}\r\n").encode()


def send(port, n):
    """The SMTP reply to the final dot of message n."""
    with smtplib.SMTP("127.0.0.1", port, timeout=30) as s:
        s.ehlo()
        s.mail("sender@origin.test")
        code, msg = s.rcpt("rcpt@example.test")
        assert code == 250, (code, msg)
        return s.data(message(n))


def redis_pids(up):
    """Every redis-server pid the log says `up` started, in order."""
    return [int(p) for p in STARTED.findall(up.read_log())]


def parent_of(pid):
    """The parent pid and the name of a live process, None when it is gone
    (a zombie counts as gone: it no longer runs)."""
    try:
        stat = open(f"/proc/{pid}/stat").read()
    except FileNotFoundError:
        return None
    name = stat[stat.index("(") + 1:stat.rindex(")")]
    state, ppid = stat[stat.rindex(")") + 2:].split()[:2]
    return None if state in ("Z", "X") else (int(ppid), name)


def redis_children(up):
    """The live redis-server processes whose parent is `up`."""
    out = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            info = parent_of(int(entry))
            if info == (up.proc.pid, "redis-server"):
                out.append(int(entry))
    return out


def live_redis(up):
    """The pid of the one redis-server `up` runs now, once it is up."""
    pids = wait_for(lambda: redis_children(up), what="a redis-server child")
    assert len(pids) == 1, pids
    assert pids[0] == redis_pids(up)[-1], (pids, redis_pids(up))
    return pids[0]


def kill_redis(up):
    """SIGKILLs up's redis-server; returns how many restarts the log showed before."""
    before = up.read_log().count("event=redis_restarted")
    os.kill(live_redis(up), signal.SIGKILL)
    return before


def wait_restarted(up, before):
    """Waits for the restart after a kill and for the node to be ready on
    the new server; returns the restart's log line."""
    wait_for(lambda: up.read_log().count("event=redis_restarted") > before, timeout=10,
             what="the restart")
    line = [x for x in up.read_log().splitlines() if "event=redis_restarted" in x][before]
    start = up.read_log().index(line)
    wait_for(lambda: "event=queue_ready" in up.read_log()[start:], timeout=10,
             what="the node ready on the restarted redis")
    return line


def leased_jobs(port):
    r = redis_py.Redis(port=port)
    return sum(r.zcard(f"{{mq:{s}}}:lease") for s in range(128))


def assert_all_stopped(up, redis_port):
    for pid in redis_pids(up):
        assert parent_of(pid) is None, f"redis-server {pid} still running"
    assert not port_open("127.0.0.1", redis_port), "a redis-server still listens"


def start_up(tmp_path, sink):
    smtp_port, redis_port = free_port(), free_port()
    config = up_config(tmp_path, smtp_port, redis_port, sink.port, WORKER)
    up = Sealpost(tmp_path, "up", config, "up").start(smtp_port)
    wait_for(lambda: "event=worker_started" in up.read_log(), what="the node to start")
    return up, smtp_port, redis_port


def test_killed_redis_is_restarted_and_mail_flows(tmp_path, sink):
    """A message queued before the kill survives it (AOF, fsync always) and
    is delivered after the restart; one sent after the restart gets 250 and
    is delivered; SIGTERM stops `up` with exit 0 and its redis-server with it."""
    deferring = [True]
    sink.rcpt_reply = lambda addr: "451 4.3.0 not yet" if deferring[0] else None
    up, smtp_port, redis_port = start_up(tmp_path, sink)
    code, msg = send(smtp_port, 1)
    assert code == 250, (code, msg)
    # Deferred by the sink and back in Redis alone: nothing of it in the worker.
    wait_for(lambda: "event=deferred" in up.read_log(), what="the first attempt")
    wait_for(lambda: leased_jobs(redis_port) == 0, what="the deferral recorded")
    first = live_redis(up)

    before = kill_redis(up)
    line = wait_restarted(up, before)
    assert re.search(r"event=redis_exited pid=%d status=0 signal=9 " % first, up.read_log())
    assert "attempt=1 after_ms=" in line, line
    second = live_redis(up)
    assert second != first and parent_of(first) is None

    deferring[0] = False
    code, msg = send(smtp_port, 2)
    assert code == 250, (code, msg)
    wait_for(lambda: sink.count() == 2, timeout=20, what="both messages")
    subjects = sorted(re.search(rb"Subject: (supervised \d)", m[2]).group(1)
                      for m in sink.messages)
    assert subjects == [b"supervised 1", b"supervised 2"], subjects

    up.check_clean_exit()
    assert_all_stopped(up, redis_port)


def test_restarted_empty_redis_gets_the_library_again(tmp_path, sink):
    """A server that comes back without the functions library (as one without
    its data would) gets it loaded again by the node before mail is taken."""
    up, smtp_port, redis_port = start_up(tmp_path, sink)
    r = redis_py.Redis(port=redis_port)
    assert r.function_list(library="sealpost")
    r.function_flush()  # written to the AOF: the restarted server has none
    before = kill_redis(up)
    wait_restarted(up, before)
    code, msg = send(smtp_port, 1)
    assert code == 250, (code, msg)
    assert r.function_list(library="sealpost"), "the library was not loaded again"
    wait_for(lambda: sink.count() == 1, what="delivery")
    up.check_clean_exit()
    assert_all_stopped(up, redis_port)


def test_restarts_back_off_and_sigterm_calls_the_next_off(tmp_path, sink):
    """Each kill within a short time waits twice as long before the restart;
    a SIGTERM while a restart waits stops `up` at once, with exit 0, and
    starts no other redis-server."""
    up, smtp_port, redis_port = start_up(tmp_path, sink)
    waits = []
    for _ in range(4):
        waits.append(int(re.search(r"after_ms=(\d+)", wait_restarted(up, kill_redis(up)))
                         .group(1)))
    assert waits == [100, 200, 400, 800], waits
    kill_redis(up)
    wait_for(lambda: "event=redis_restarting attempt=5 in_ms=1600" in up.read_log(),
             what="the fifth restart to be scheduled")
    up.check_clean_exit()
    assert up.read_log().count("event=redis_restarted") == 4, "a restart after the SIGTERM"
    assert_all_stopped(up, redis_port)


def test_gives_up_on_a_redis_that_keeps_exiting(tmp_path, sink):
    """A server that exits at once every time (here: its port is taken) is
    restarted 5 times, then left dead: `up` stops with an error and exit 1."""
    up, smtp_port, redis_port = start_up(tmp_path, sink)
    squatter = socket.socket()
    squatter.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        def take_port():
            pid = redis_children(up)
            if pid:
                os.kill(pid[0], signal.SIGKILL)
            try:
                squatter.bind(("127.0.0.1", redis_port))
                squatter.listen()
                return True
            except OSError:
                return False

        wait_for(take_port, timeout=10, what="the port taken from redis-server")
        up.proc.wait(20)
        log = up.read_log()
        assert up.proc.returncode == 1, log[-3000:]
        assert "event=redis_gave_up restarts=5 window_s=30" in log, log[-3000:]
        assert log.count("event=redis_restarted") == 5, log[-3000:]
        assert log.count("event=redis_exited") == 6, log[-3000:]
        assert "status=1 signal=0" in log, log[-3000:]  # the port was taken
        assert "ERROR: AddressSanitizer" not in log
    finally:
        squatter.close()
    assert_all_stopped(up, redis_port)
