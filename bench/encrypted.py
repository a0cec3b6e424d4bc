#!/usr/bin/python3
"""Encrypted accept rate of the ingress per engine (OpenPGP through
[crypto] openpgp_engine gpgme or rnp; S/MIME through OpenSSL) against a bare
GPGME loop and the plaintext accept rate, in one run.

Each encrypts the same 4 KB message to the same recipient, with the same
number of threads: the loop as fast as it can (bench/gpgme_loop.c, each
thread with its own GnuPG home, to the OpenPGP key: Curve25519), one ingress
per engine fed by SMTP clients over kept connections into Redis with
appendfsync always (no worker). The recipient has both an OpenPGP key and an
RSA-3072 certificate made by openssl (the size the issue's 0.12 ms for CMS
was measured with); the S/MIME ingress has [crypto] prefer = smime, the
others the default (openpgp). The plaintext rate is the same load to a
keyless recipient. Meanwhile a probe measures whole plaintext SMTP sessions
(connect to QUIT, to the keyless recipient), 20 a second: alone at the
start of every run, then while each engine is saturated.

The goals of issue 15, printed beside the ratios: rnp >= 8x gpgme, S/MIME
>= 0.7x plaintext, gpgme >= 0.75x the bare loop, and with the in-process
engines (rnp, smime) the plaintext p99 while saturated <= 2x its idle p99.

usage: bench/encrypted.py [--build DIR] [--seconds S] [--runs N] [--clients C]
                          [--threads T] [--engines gpgme,rnp,smime] [--quick] [--out FILE]
                          [--redis-dir DIR]
"""
import argparse
import base64
import datetime
import json
import os
import shutil
import smtplib
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from peers import ROOT, emit, free_port, percentile, wait_port  # noqa: E402


def make_key(home):
    home.mkdir(mode=0o700)
    gpg = ["gpg", "--homedir", str(home), "--batch", "--passphrase", ""]
    subprocess.run(gpg + ["--quick-gen-key", "Bench <bench@example.test>", "future-default",
                          "default", "never"], check=True, capture_output=True)
    return subprocess.run(gpg + ["--armor", "--export", "bench@example.test"], check=True,
                          capture_output=True).stdout


def make_certificate(tmp):
    """A self-signed RSA-3072 certificate for the benchmark's address, fit
    for S/MIME encryption; its PEM."""
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:3072", "-nodes",
                    "-keyout", str(tmp / "cert.key"), "-out", str(tmp / "cert.pem"),
                    "-subj", "/CN=Bench", "-days", "30",
                    "-addext", "subjectAltName=email:bench@example.test",
                    "-addext", "keyUsage=keyEncipherment,digitalSignature",
                    "-addext", "extendedKeyUsage=emailProtection"],
                   check=True, capture_output=True)
    return tmp / "cert.pem"


IN_PROCESS = ("rnp", "smime")  # the engines the latency goal is for
KEYED, KEYLESS = "bench@example.test", "plain@example.test"


def make_message():
    line = "The quick brown fox jumps over the lazy dog, again and again. 0123456789\r\n"
    body = line * (4096 // len(line))
    return ("From: sender@origin.test\r\nTo: bench@example.test\r\nSubject: bench\r\n"
            "Date: Sat, 28 Nov 2026 10:00:00 +0000\r\nMessage-ID: <bench@origin.test>\r\n"
            "MIME-Version: 1.0\r\nContent-Type: text/plain; charset=us-ascii\r\n\r\n" + body)


def bare_loop(build, key_file, msg_file, threads, seconds):
    out = subprocess.run([str(build / "gpgme_loop"), str(key_file), str(msg_file), str(threads),
                          str(seconds)], check=True, capture_output=True, text=True).stdout
    return json.loads(out)


def probe_session(port, msg):
    t0 = time.monotonic()
    with smtplib.SMTP("127.0.0.1", port, timeout=30) as c:
        c.sendmail("sender@origin.test", [KEYLESS], msg)
    return (time.monotonic() - t0) * 1000


class Probe(threading.Thread):
    """Plaintext sessions one after another, 20 a second."""

    def __init__(self, port, msg):
        super().__init__(daemon=True)
        self.port, self.msg = port, msg
        self.latencies = []
        self.stop = threading.Event()

    def run(self):
        while not self.stop.is_set():
            self.latencies.append(probe_session(self.port, self.msg))
            self.stop.wait(0.05)


def load(port, msg_file, sessions, count, rcpt=KEYED):
    """Postfix's smtp-source (C, cheap on the CPU the two sides share) sending
    count messages to rcpt (the keyed recipient unless said) over kept
    connections. Returns (accepted, refused, seconds)."""
    t0 = time.monotonic()
    r = subprocess.run(["smtp-source", "-A", "-d", "-s", str(sessions), "-m", str(count),
                        "-F", str(msg_file), "-f", "sender@origin.test",
                        "-t", rcpt, f"127.0.0.1:{port}"],
                       capture_output=True, text=True, timeout=600)
    took = time.monotonic() - t0
    refused = (r.stdout + r.stderr).count("rejected")
    if r.returncode != 0 or refused > count // 10:
        raise SystemExit(f"smtp-source failed: {(r.stdout + r.stderr)[-2000:]}")
    return count - refused, refused, took


SEAL = "b1:" + base64.b64encode(os.urandom(32)).decode()
PILOT = 200  # messages that warm an engine and tell how many fill the seconds


def start_ingress(build, tmp, redis_port, engine, threads):
    """An ingress encrypting with engine (gpgme, rnp: the OpenPGP engine;
    smime: certificates preferred); (process, its SMTP port, its config)."""
    smtp_port = free_port()
    # gpgme is the default: said by saying nothing, which builds from before
    # the engines issue read too (for before/after runs)
    choice = {"smime": "prefer = smime", "gpgme": ""}.get(engine, f"openpgp_engine = {engine}")
    conf = tmp / f"{engine}.conf"
    conf.write_text(f"""[redis]
url = redis://127.0.0.1:{redis_port}
[ingress]
listen = 127.0.0.1:{smtp_port}
hostname = bench.test
relay_domains = example.test
max_connections_per_ip = 1000
[crypto]
{choice}
[seal]
keys = {SEAL}
[log]
level = warn
""")
    env = dict(os.environ, UV_THREADPOOL_SIZE=str(threads), TMPDIR=str(tmp))
    proc = subprocess.Popen([str(build / "sealpost"), "ingress", "-c", str(conf)], env=env,
                            stderr=open(tmp / f"{engine}.log", "wb"))
    wait_port(smtp_port)
    return proc, smtp_port, conf


def saturate(port, msg, msg_file, clients, seconds, rcpt=KEYED, probe=True):
    """The rate to rcpt: a pilot, then as many messages as fill the seconds,
    with the plaintext probe running when asked. (rate, refused, probe
    latencies)."""
    accepted, busy, took = load(port, msg_file, clients, PILOT, rcpt)
    count = max(PILOT, int(accepted / took * seconds))
    prober = Probe(port, msg)
    if probe:
        prober.start()
    accepted, busy2, took = load(port, msg_file, clients, count, rcpt)
    if probe:
        prober.stop.set()
        prober.join()
    return accepted / took, busy + busy2, prober.latencies


def idle_latencies(port, msg, seconds):
    """The probe alone, paced as it is under load, for seconds."""
    prober = Probe(port, msg)
    prober.start()
    time.sleep(seconds)
    prober.stop.set()
    prober.join()
    return prober.latencies


def ratio_rows(med, med_loop):
    """The goals' ratios that this run's engines allow."""
    rows = []

    def row(what, value, goal):
        rows.append(f"| **{what}** | **{value:.2f}** | goal {goal} | |")

    if "gpgme" in med:
        row("ratio gpgme ingress / bare loop", med["gpgme"] / med_loop, "≥ 0.75")
        if "rnp" in med:
            row("ratio rnp / gpgme", med["rnp"] / med["gpgme"], "≥ 8")
    if "smime" in med:
        row("ratio S/MIME / plaintext", med["smime"] / med["plain"], "≥ 0.7")
    return rows


def latency_rows(idle, loaded, engines):
    idle99 = percentile(idle, 99)
    rows = [f"| alone | {percentile(idle, 50):.1f} | {idle99:.1f} | 1.00 | | {len(idle)} |"]
    for e in ["plain"] + engines:
        p99 = percentile(loaded[e], 99)
        goal = "≤ 2" if e in IN_PROCESS else ""
        what = ("while plaintext saturates the ingress (the reference: the loop's own load)"
                if e == "plain" else f"while the `{e}` engine is saturated")
        rows.append(f"| {what} | {percentile(loaded[e], 50):.1f} | "
                    f"{p99:.1f} | {p99 / idle99:.2f} | {goal} | {len(loaded[e])} |")
    return rows


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--build", default=str(ROOT / "build"))
    ap.add_argument("--seconds", type=float, default=8)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--clients", type=int, default=8, help="smtp-source sessions")
    ap.add_argument("--threads", type=int, default=4, help="UV_THREADPOOL_SIZE and loop threads")
    ap.add_argument("--engines", default="gpgme,rnp,smime",
                    help="[crypto] openpgp_engine values, and smime")
    ap.add_argument("--quick", action="store_true", help="one run of 3 s")
    ap.add_argument("--out", help="append the table to this file")
    ap.add_argument("--redis-dir", help="where Redis writes its AOF (default: the run's "
                    "directory, on disk; a tmpfs such as /dev/shm takes the disk's fsync "
                    "stalls out of the session latencies, leaving the CPU's share)")
    args = ap.parse_args()
    if args.quick:
        args.runs, args.seconds = 1, 3
    engines = args.engines.split(",")
    build = Path(args.build)
    tmp = Path(tempfile.mkdtemp(prefix="sealpost-bench-"))
    aof = tmp
    procs = []
    try:
        key = make_key(tmp / "gnupg")
        (tmp / "key.asc").write_bytes(key)
        cert = make_certificate(tmp)
        msg = make_message()
        (tmp / "msg.eml").write_text(msg)  # for the loop, as the ingress stores it
        (tmp / "msg.lf").write_text(msg.replace("\r\n", "\n"))  # smtp-source adds the CRs

        redis_port = free_port()
        if args.redis_dir:
            aof = Path(tempfile.mkdtemp(prefix="sealpost-bench-redis-", dir=args.redis_dir))
        procs.append(subprocess.Popen(
            ["redis-server", "--port", str(redis_port), "--bind", "127.0.0.1", "--dir", str(aof),
             "--appendonly", "yes", "--appendfsync", "always", "--save", ""],
            stdout=subprocess.DEVNULL))
        wait_port(redis_port)
        ports = {}
        for engine in engines:
            proc, ports[engine], conf = start_ingress(build, tmp, redis_port, engine, args.threads)
            procs.append(proc)
        for keyfile in (tmp / "key.asc", cert):
            subprocess.run([str(build / "sealpost"), "keys", "import", str(keyfile), "-c",
                            str(conf)], check=True, capture_output=True)
        time.sleep(0.5)

        for _ in range(20):  # warm: the first sessions of a process are not its steady state
            probe_session(ports[engines[0]], msg)
        idle, loops, loaded, refused = [], [], {e: [] for e in ["plain"] + engines}, 0
        rates = {e: [] for e in ["plain"] + engines}
        for _ in range(args.runs):
            # alone in every run, paced as under load, so that both sides
            # of the ratio see the same machine in the same minutes
            idle += idle_latencies(ports[engines[0]], msg, args.seconds)
            loops.append(bare_loop(build, tmp / "key.asc", tmp / "msg.eml", args.threads,
                                   args.seconds)["rate"])
            rate, busy, latencies = saturate(ports[engines[0]], msg, tmp / "msg.lf",
                                             args.clients, args.seconds, rcpt=KEYLESS)
            rates["plain"].append(rate)
            loaded["plain"] += latencies
            refused += busy
            for engine in engines:
                rate, busy, latencies = saturate(ports[engine], msg, tmp / "msg.lf",
                                                 args.clients, args.seconds)
                rates[engine].append(rate)
                loaded[engine] += latencies
                refused += busy
        med_loop = statistics.median(loops)
        med = {e: statistics.median(v) for e, v in rates.items()}
        rows = [f"| bare GPGME loop, encryptions/s | {med_loop:.0f} | {min(loops):.0f} | "
                f"{max(loops):.0f} |",
                f"| ingress, plaintext messages accepted/s | {med['plain']:.0f} | "
                f"{min(rates['plain']):.0f} | {max(rates['plain']):.0f} |"]
        rows += [f"| ingress, `{e}` engine, encrypted messages accepted/s | {med[e]:.0f} | "
                 f"{min(rates[e]):.0f} | {max(rates[e]):.0f} |" for e in engines]
        rows += ratio_rows(med, med_loop)
        nl = "\n"
        table = f"""### encrypted ({datetime.date.today()}, {args.threads} threads, {args.clients} clients, 4 KB, {args.runs} runs of {args.seconds:g} s; OpenPGP key Curve25519, certificate RSA-3072)

| what | median | min | max |
|---|---|---|---|
{nl.join(rows)}

| plaintext session (connect to QUIT) | p50 ms | p99 ms | p99 ÷ alone | goal | sessions |
|---|---|---|---|---|---|
{nl.join(latency_rows(idle, loaded, engines))}

Messages refused (451) during the runs: {refused}.
"""
        emit(table, args.out)
    finally:
        for p in reversed(procs):
            p.terminate()
            try:
                p.wait(10)
            except subprocess.TimeoutExpired:
                p.kill()
        shutil.rmtree(tmp, ignore_errors=True)
        if aof != tmp:
            shutil.rmtree(aof, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
