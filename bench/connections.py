#!/usr/bin/python3
"""Memory: idle connections, and one large message.

Open N SMTP connections (default 10,000) to one server, read each greeting,
hold them all idle, and read the server's memory before and after, so the
cost of a connection shows: sealpost's ingress, and as peers Haraka (one
process) and smtp-sink. While they are held, one ordinary session must still
go through. Then one 25 MiB message to the ingress: its peak resident memory
above the idle figure, as a multiple of the message size.

usage: bench/connections.py [--build DIR] [--connections N] [--out FILE]
"""
import argparse
import datetime
import resource
import selectors
import smtplib
import socket
import sys
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from peers import ROOT, workdir, Haraka, Sealpost, SmtpSink, emit, memory_bytes, tree  # noqa: E402


def rss(pid):
    """Resident memory of the process and its children (Haraka's launcher
    runs the server in a child)."""
    total = 0
    for p in tree([pid]):
        try:
            with open(f"/proc/{p}/status") as f:
                total += next(int(line.split()[1]) for line in f if line.startswith("VmRSS:"))
        except (OSError, StopIteration):
            pass
    return total * 1024


def open_idle(port, n, timeout=30):
    """n connections whose 220 greeting arrived; the sockets, kept open."""
    sel = selectors.DefaultSelector()
    greeted, pending, started = [], 0, 0
    deadline = time.monotonic() + timeout
    while (started < n or pending) and time.monotonic() < deadline:
        while started < n and pending < 500:  # a bounded backlog of handshakes
            s = socket.socket()
            s.setblocking(False)
            s.connect_ex(("127.0.0.1", port))
            sel.register(s, selectors.EVENT_READ)
            started += 1
            pending += 1
        for key, _ in sel.select(timeout=1):
            s = key.fileobj
            sel.unregister(s)
            pending -= 1
            try:
                data = s.recv(512)
            except OSError:
                data = b""
            if data.startswith(b"220"):
                greeted.append(s)
            else:
                s.close()
    for key in list(sel.get_map().values()):
        key.fileobj.close()
    return greeted


def measure(server, pid, n):
    before = rss(pid)
    t0 = time.monotonic()
    held = open_idle(server.port, n)
    took = time.monotonic() - t0
    time.sleep(2)  # idle: whatever the server keeps per connection now
    after = rss(pid)
    pss = memory_bytes([pid])
    try:
        with smtplib.SMTP("127.0.0.1", server.port, timeout=30) as c:
            c.sendmail("s@origin.test", ["r@example.test"], "Subject: while held\r\n\r\nhi\r\n")
        ordinary = "yes"
    except (OSError, smtplib.SMTPException) as e:
        ordinary = f"no ({e.__class__.__name__})"
    for s in held:
        s.close()
    per = (after - before) / len(held) if held else float("nan")
    return {"held": len(held), "seconds": took, "before": before, "after": after, "per": per,
            "pss": pss, "ordinary": ordinary}


def large_message(server, size=(25 << 20) - (64 << 10)):
    """The ingress's peak RSS while it takes one message of size bytes (just
    under the default 25 MiB limit)."""
    idle = rss(server.ingress.pid)
    peak, done = [idle], threading.Event()

    def sample():
        while not done.wait(0.01):
            peak[0] = max(peak[0], rss(server.ingress.pid))

    t = threading.Thread(target=sample, daemon=True)
    t.start()
    line = b"x" * 76 + b"\r\n"
    body = b"Subject: large\r\n\r\n" + line * (size // len(line))
    with smtplib.SMTP("127.0.0.1", server.port, timeout=120) as c:
        c.sendmail("s@origin.test", ["r@example.test"], body)
    done.set()
    t.join()
    return len(body), idle, peak[0]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--build", default=str(ROOT / "build"))
    ap.add_argument("--connections", type=int, default=10000)
    ap.add_argument("--out", help="append the table to this file")
    args = ap.parse_args()
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = args.connections + 100
    if hard < want:
        raise SystemExit(f"the open-file limit ({hard}) is below {want}: raise `ulimit -Hn`")
    resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))
    rows = []
    with workdir() as (tmp, servers):
        servers["sealpost"] = Sealpost(tmp, args.build)
        # On a fresh ingress, before the connections leave a heap it could reuse.
        size, idle, peak = large_message(servers["sealpost"])
        servers["haraka"] = Haraka(tmp, nodes=None)
        servers["smtp-sink"] = SmtpSink(tmp)
        for name, server in servers.items():
            pid = server.ingress.pid if name == "sealpost" else server.pids()[0]
            r = measure(server, pid, args.connections)
            rows.append((name, r))
            print(f"{name}: {r['held']} held, {r['per'] / 1024:.1f} KiB each", flush=True)
        text = [f"### connections ({datetime.date.today()}, {args.connections} idle SMTP "
                "connections opened at once, each greeted, held 2 s)", "",
                "| server | held | opened in s | RSS before MB | RSS after MB | "
                "RSS per connection KiB | PSS after MB | a new session meanwhile |",
                "|---|---|---|---|---|---|---|---|"]
        for name, r in rows:
            text.append(f"| {name} | {r['held']} | {r['seconds']:.1f} | "
                        f"{r['before'] / 2**20:.1f} | {r['after'] / 2**20:.1f} | "
                        f"{r['per'] / 1024:.1f} | {r['pss'] / 2**20:.1f} | {r['ordinary']} |")
        text += ["", "smtp-sink stops at a few hundred connections (its own limit): not a bound "
                 "here, only a peer that was measured.", "",
                 f"One message of {size / 2**20:.1f} MiB into the ingress: RSS {idle / 2**20:.1f} MB "
                 f"before, peak {peak / 2**20:.1f} MB while taking it: "
                 f"{(peak - idle) / size:.1f} × the message size (a fresh ingress)."]
        out = "\n".join(text) + "\n"
        emit(out, args.out)


if __name__ == "__main__":
    sys.exit(main())
