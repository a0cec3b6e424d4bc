"""PROXY protocol v1 and v2 from load balancers in proxy_networks: the
client's address in the header is what policy, limits, logs and Received:
use; anyone else's PROXY line is just an unknown command. Tested with a
real HAProxy in front, and byte-exact headers over raw sockets."""

import shutil
import socket
import struct
import subprocess

import pytest

from conftest import free_port, port_open, wait_for
from smtpclient import Client, expect
from test_ingress_tls import client_context, make_cert


# After each test every sealpost process stops cleanly (conftest.py: clean_exit).
pytestmark = pytest.mark.usefixtures("clean_exit")


def proxied(stack, header: bytes):
    c = Client(stack.smtp_port)
    c.send(header)
    return c


def v1(src, port=40000):
    family = "TCP6" if ":" in src else "TCP4"
    dst = "::1" if ":" in src else "127.0.0.1"
    return f"PROXY {family} {src} {dst} {port} 25\r\n".encode()


def v2(src, port=40000, command=1):
    body = socket.inet_aton(src) + socket.inet_aton("127.0.0.1") + struct.pack("!HH", port, 25)
    return (b"\r\n\r\n\x00\r\nQUIT\n" + bytes([0x20 | command, 0x11]) +
            struct.pack("!H", len(body)) + body)


PROXY_ONLY = "[ingress]\nproxy_networks = 127.0.0.1/32\ntrusted_networks = 203.0.113.0/24\n"


@pytest.mark.parametrize("make_header", [v1, v2])
def test_proxied_address_is_the_client(stack, make_header):
    """The address from the header decides relaying (trusted or not) and is
    the one in the log and the Received: line."""
    route = f"[routes]\nelsewhere.test = 127.0.0.1:{stack.sink.port}\n"
    stack.ingress(extra=PROXY_ONLY + route)
    stack.worker(extra=route)
    with proxied(stack, make_header("203.0.113.9")) as c:  # trusted by its real address
        expect(c.reply(), 220)
        expect(c.cmd("EHLO client.test"), 250)
        expect(c.cmd("MAIL FROM:<a@origin.test>"), 250, "2.1.0")
        expect(c.cmd("RCPT TO:<r@elsewhere.test>"), 250, "2.1.5")
        expect(c.cmd("DATA"), 354)
        expect(c.cmd(b"Subject: via a balancer\r\n\r\nx\r\n."), 250, "2.0.0")
    with proxied(stack, make_header("198.51.100.1")) as c:  # not trusted
        expect(c.reply(), 220)
        expect(c.cmd("EHLO client.test"), 250)
        expect(c.cmd("MAIL FROM:<a@origin.test>"), 250, "2.1.0")
        expect(c.cmd("RCPT TO:<r@elsewhere.test>"), 554, "5.7.1")
    wait_for(lambda: stack.sink.count() == 1, timeout=15, what="delivery")
    assert b"Received: from client.test ([203.0.113.9])" in stack.sink.messages[0][2]
    log = stack.procs[0].read_log()
    assert "client=203.0.113.9" in log and "reason=relay_denied client=198.51.100.1" in log


def test_local_header_keeps_the_connection_address(stack):
    stack.ingress(extra=PROXY_ONLY)
    with proxied(stack, v2("192.0.2.1", command=0)) as c:  # LOCAL: a health check
        expect(c.reply(), 220)
        expect(c.cmd("EHLO client.test"), 250)
        expect(c.cmd("MAIL FROM:<a@origin.test>"), 250, "2.1.0")
        expect(c.cmd("RCPT TO:<r@elsewhere.test>"), 554, "5.7.1")  # 127.0.0.1 is not trusted here
    with proxied(stack, b"PROXY UNKNOWN\r\n") as c:
        expect(c.reply(), 220)


def test_local_header_does_not_inherit_the_balancers_trust(stack):
    """The balancer's own address may well be trusted (loopback is by
    default); a LOCAL or UNKNOWN connection through it is nobody's mail and
    must not relay on that trust."""
    stack.ingress(extra="[ingress]\nproxy_networks = 127.0.0.1/32\n")
    for header in (b"PROXY UNKNOWN\r\n", v2("192.0.2.1", command=0)):
        with proxied(stack, header) as c:
            expect(c.reply(), 220)
            expect(c.cmd("EHLO client.test"), 250)
            expect(c.cmd("MAIL FROM:<a@origin.test>"), 250, "2.1.0")
            expect(c.cmd("RCPT TO:<victim@elsewhere.test>"), 554, "5.7.1")


@pytest.mark.parametrize("first", [
    b"EHLO client.test\r\n",                 # no header at all
    b"PROXY TCP4 1.2.3 127.0.0.1 1 25\r\n",  # a bad address
    b"PROXY TCP4 " + b"1" * 200,             # too long for a v1 line
])
def test_balancer_without_a_good_header_is_closed(stack, first):
    stack.ingress(extra=PROXY_ONLY)
    with proxied(stack, first) as c:
        assert c.closed_by_server(5.0), "no greeting, only the close"
    assert "reason=bad_proxy_header client=127.0.0.1" in stack.procs[0].read_log()


def test_proxy_line_from_anyone_else_is_an_unknown_command(stack):
    stack.ingress(extra="[ingress]\ntrusted_networks =\n")
    with Client(stack.smtp_port) as c:
        expect(c.reply(), 220)
        expect(c.cmd(v1("203.0.113.9").rstrip(b"\r\n")), 500, "5.5.2")
        expect(c.cmd("EHLO client.test"), 250)
        expect(c.cmd("MAIL FROM:<a@origin.test>"), 250, "2.1.0")
        expect(c.cmd("RCPT TO:<r@elsewhere.test>"), 554, "5.7.1")


def test_per_address_limit_counts_the_proxied_address(stack):
    stack.ingress(extra=PROXY_ONLY + "max_connections_per_ip = 1\n")
    first = proxied(stack, v1("198.51.100.7"))
    expect(first.reply(), 220)
    with proxied(stack, v1("198.51.100.7")) as second:
        expect(second.reply(), 421, "4.7.0")
    with proxied(stack, v1("198.51.100.8")) as other:
        expect(other.reply(), 220)
    first.close()


def test_implicit_tls_behind_a_balancer(stack, tmp_path):
    """PROXY header first, then the TLS handshake, then the greeting."""
    crt, key = make_cert(tmp_path, "mx.sealpost.test")
    smtps = free_port()
    stack.ingress(extra=PROXY_ONLY + f"tls_cert = {crt}\ntls_key = {key}\n"
                                     f"smtps_listen = 127.0.0.1:{smtps}\n")
    raw = socket.create_connection(("127.0.0.1", smtps), timeout=5)
    raw.sendall(v2("203.0.113.20"))
    with client_context().wrap_socket(raw, server_hostname="mx.sealpost.test") as tls:
        tls.settimeout(5)
        assert tls.recv(1024).startswith(b"220 ")
    wait_for(lambda: "event=tls client=203.0.113.20" in stack.procs[0].read_log(),
             what="the TLS session under the proxied address")


@pytest.mark.skipif(not shutil.which("haproxy"), reason="haproxy is not installed")
@pytest.mark.parametrize("send_proxy", ["send-proxy", "send-proxy-v2"])
def test_through_haproxy(stack, tmp_path, send_proxy):
    """HAProxy in TCP mode in front: swaks from 127.0.0.5 through it; the
    ingress sees HAProxy's connection but uses 127.0.0.5 (trusted: relays),
    while a client from 127.0.0.6 (not trusted) may not relay."""
    front = free_port()
    cfg = tmp_path / "haproxy.cfg"
    cfg.write_text(f"""
defaults
    mode tcp
    timeout connect 5s
    timeout client 30s
    timeout server 30s
frontend smtp
    bind 127.0.0.1:{front}
    default_backend ingress
backend ingress
    server sealpost 127.0.0.1:{stack.smtp_port} {send_proxy}
""")
    stack.ingress(extra="[ingress]\nproxy_networks = 127.0.0.1/32\n"
                        "trusted_networks = 127.0.0.5/32\n")
    stack.worker(extra=f"[routes]\nelsewhere.test = 127.0.0.1:{stack.sink.port}\n")
    haproxy = subprocess.Popen(["haproxy", "-db", "-f", str(cfg)], stdout=subprocess.DEVNULL,
                               stderr=subprocess.PIPE)
    try:
        wait_for(lambda: port_open("127.0.0.1", front), what="haproxy")

        def swaks(local, rcpt):
            return subprocess.run(["swaks", "--server", f"127.0.0.1:{front}", "--local-interface",
                                   local, "--to", rcpt, "--from", "a@origin.test"],
                                  capture_output=True, text=True, timeout=60)

        ok = swaks("127.0.0.5", "r@elsewhere.test")
        assert ok.returncode == 0, ok.stdout + ok.stderr
        denied = swaks("127.0.0.6", "r@elsewhere.test")
        assert "554 5.7.1" in denied.stdout, denied.stdout
        wait_for(lambda: stack.sink.count() == 1, timeout=15, what="delivery")
        assert b"([127.0.0.5])" in stack.sink.messages[0][2]
    finally:
        haproxy.terminate()
        haproxy.wait(10)
