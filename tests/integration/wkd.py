"""Key discovery's peers on loopback: a test CA, a Web Key Directory (and a
VKS keyserver) served over HTTPS by Python's http.server on port 443 of a
127.0.1.x address of its own, and dnsmasq naming the test domains."""
import hashlib
import http.server
import socket
import ssl
import subprocess
import threading
import time

import pytest

ZBASE32 = "ybndrfg8ejkmcpqxot1uwisza345h769"


def openssl(*args, cwd):
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True)


def wkd_hash(local):
    """The draft's z-base-32 of SHA-1 of the lower-cased local part, written
    here once more (gpg-wks-client is the reference the tests check it by)."""
    digest = int.from_bytes(hashlib.sha1(local.lower().encode()).digest(), "big")
    return "".join(ZBASE32[(digest >> (155 - 5 * i)) & 31] for i in range(32))


def wks_client_url(address):
    """GnuPG's own answer: gpg-wks-client --print-wkd-url."""
    out = subprocess.run(["/usr/lib/gnupg/gpg-wks-client", "--print-wkd-url", address],
                         capture_output=True, text=True, check=True).stdout
    return out.strip()


class Pki:
    """A test CA and one server certificate naming every host given."""

    def __init__(self, d, hosts):
        self.dir = d
        d.mkdir(exist_ok=True)
        openssl("req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
                "-keyout", "ca.key", "-out", "ca.pem", "-days", "2",
                "-subj", "/CN=sealpost discovery test CA", cwd=d)
        openssl("req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
                "-keyout", "server.key", "-out", "server.csr", "-subj", "/CN=wkd", cwd=d)
        (d / "server.ext").write_text(
            "subjectAltName=" + ",".join(f"DNS:{h}" for h in hosts) + "\n")
        openssl("x509", "-req", "-in", "server.csr", "-CA", "ca.pem", "-CAkey", "ca.key",
                "-CAcreateserial", "-out", "server.pem", "-days", "2", "-extfile", "server.ext",
                cwd=d)
        self.ca = d / "ca.pem"
        self.cert = d / "server.pem"
        self.key = d / "server.key"


class WebServer:
    """HTTPS on addr:443. files maps (host, path with query) to bytes, or to
    a (status, bytes, delay seconds) tuple; anything else is 404. Every
    request is kept in requests as (host, path)."""

    def __init__(self, addr, pki):
        self.addr = addr
        self.ca = pki.ca
        self.files = {}
        self.requests = []
        self.lock = threading.Lock()
        server = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_GET(self):
                host = self.headers.get("Host", "").split(":")[0]
                with server.lock:
                    server.requests.append((host, self.path))
                    entry = server.files.get((host, self.path))
                status, body, delay = 404, b"not here\n", 0
                if isinstance(entry, bytes):
                    status, body = 200, entry
                elif entry is not None:
                    status, body, delay = entry
                time.sleep(delay)
                try:
                    self.send_response(status)
                    self.send_header("Content-Type", "application/octet-stream")
                    self.send_header("Content-Length", str(len(body)))
                    self.end_headers()
                    self.wfile.write(body)
                except OSError:
                    pass  # the client gave up (its deadline)

            def log_message(self, *args):
                pass

        why = self._unbindable()
        if why:
            pytest.fail(f"cannot listen on {addr}:443 ({why}): run the tests as `make test` "
                        "does, in a network namespace of their own (sh tests/netns.sh pytest ...)")
        self.httpd = http.server.ThreadingHTTPServer((addr, 443), Handler)
        self.httpd.daemon_threads = True
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.load_cert_chain(pki.cert, pki.key)
        self.httpd.socket = ctx.wrap_socket(self.httpd.socket, server_side=True)
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def _unbindable(self):
        """None when addr:443 can be had; else why not."""
        try:
            with socket.socket() as s:
                s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                s.bind((self.addr, 443))
            return None
        except OSError as e:
            return str(e)

    def publish_wkd(self, address, key, method="advanced"):
        """Serves key (binary) for address by one method, with its policy file."""
        local, domain = address.split("@")
        h = wkd_hash(local)
        if method == "advanced":
            host, path = f"openpgpkey.{domain}", f"/.well-known/openpgpkey/{domain}/hu/{h}?l={local}"
            policy = f"/.well-known/openpgpkey/{domain}/policy"
        else:
            host, path = domain, f"/.well-known/openpgpkey/hu/{h}?l={local}"
            policy = "/.well-known/openpgpkey/policy"
        with self.lock:
            self.files[(host, path)] = key
            self.files[(host, policy)] = b""
        return host, path

    def key_requests(self):
        with self.lock:
            return [r for r in self.requests if "/hu/" in r[1] or "/vks/" in r[1]]

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()
