"""A raw SMTP client for byte-exact conformance tests: it reads complete,
multi-line replies and can tell a server's close from its silence."""

import re
import socket
import time

HOST = "127.0.0.1"
HOSTNAME = "mx.sealpost.test"  # [ingress] hostname in conftest.base_config
RECEIVED = re.compile(rb"\AReceived: [^\r]*\r\n(?:[ \t][^\r]*\r\n)*")  # as in test_skeleton.py
ENHANCED = re.compile(r"^([245])\.(\d{1,3})\.(\d{1,3})(?: |$)")


def strip_received(content):
    """The message as the client sent it: without the Received: header on top."""
    m = RECEIVED.match(content)
    assert m, f"no Received: header on top: {content[:200]!r}"
    return content[m.end():]


class Reply:
    def __init__(self, code, lines):
        self.code = code
        self.lines = lines  # the text of every line, after "ddd-" / "ddd "

    @property
    def text(self):
        return self.lines[0]

    @property
    def enhanced(self):
        m = ENHANCED.match(self.lines[0])
        return m.group(0).strip() if m else None

    def __repr__(self):
        return f"Reply({self.code}, {self.lines!r})"


class Client:
    """A raw SMTP client socket that reads complete (multi-line) replies."""

    def __init__(self, port, timeout=5.0):
        self.sock = socket.create_connection((HOST, port), timeout=timeout)
        self.buf = b""
        self.timeout = timeout

    def close(self):
        self.sock.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def send(self, data: bytes):
        self.sock.sendall(data)

    def _line(self, deadline):
        while b"\r\n" not in self.buf:
            left = deadline - time.monotonic()
            if left <= 0:
                raise AssertionError(f"timed out waiting for a reply; have {self.buf!r}")
            self.sock.settimeout(left)
            try:
                chunk = self.sock.recv(65536)
            except socket.timeout:
                raise AssertionError(f"timed out waiting for a reply; have {self.buf!r}") from None
            if not chunk:
                raise AssertionError(f"connection closed in mid-reply; have {self.buf!r}")
            self.buf += chunk
        line, self.buf = self.buf.split(b"\r\n", 1)
        return line

    def reply(self, timeout=None):
        deadline = time.monotonic() + (timeout or self.timeout)
        code, lines = None, []
        while True:
            line = self._line(deadline)
            m = re.fullmatch(rb"([2-5]\d\d)([ -]?)(.*)", line, re.S)
            assert m, f"malformed reply line {line!r}"
            this = int(m.group(1))
            assert code is None or this == code, f"code changed within a reply: {line!r}"
            code = this
            lines.append(m.group(3).decode("utf-8", "replace"))
            if m.group(2) != b"-":
                return Reply(code, lines)

    def cmd(self, line, timeout=None):
        self.send(line.encode() + b"\r\n" if isinstance(line, str) else line + b"\r\n")
        return self.reply(timeout)

    def _recv_by(self, deadline):
        """One chunk before the deadline: bytes, b"" when the server closed
        (or reset) the connection, None on timeout."""
        left = deadline - time.monotonic()
        if left <= 0:
            return None
        self.sock.settimeout(left)
        try:
            return self.sock.recv(65536)
        except socket.timeout:
            return None
        except ConnectionResetError:
            return b""

    def pending(self, wait=0.3):
        """Whatever the server sends, unasked, within `wait` seconds."""
        data, self.buf = self.buf, b""
        deadline = time.monotonic() + wait
        while (chunk := self._recv_by(deadline)):
            data += chunk
        return data

    def closed_by_server(self, timeout=3.0):
        """True when the server closes the connection within `timeout` (and sends
        nothing more before that)."""
        assert self.buf == b"", f"unread data {self.buf!r}"
        chunk = self._recv_by(time.monotonic() + timeout)
        if chunk is None:
            return False
        assert chunk == b"", f"unexpected data before close: {chunk!r}"
        return True


def expect(reply, code, enhanced=None):
    assert reply.code == code, f"expected {code} {enhanced or ''}, got {reply!r}"
    if enhanced is not None:
        assert reply.enhanced == enhanced, f"expected {code} {enhanced}, got {reply!r}"
    return reply


def connect(stack, ehlo=True):
    c = Client(stack.smtp_port)
    expect(c.reply(), 220)
    if ehlo:
        expect(c.cmd("EHLO client.test"), 250)
    return c


def open_transaction(c, sender="a@x.test", rcpts=("rcpt@example.test",), mail_params=""):
    expect(c.cmd(f"MAIL FROM:<{sender}>{mail_params}"), 250, "2.1.0")
    for r in rcpts:
        expect(c.cmd(f"RCPT TO:<{r}>"), 250, "2.1.5")
    expect(c.cmd("DATA"), 354)
