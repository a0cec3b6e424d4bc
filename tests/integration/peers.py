"""Scripted SMTP peers written on raw sockets, for what aiosmtpd cannot be
made to do (announce DSN, record the exact bytes a client sent)."""

import socket
import threading
import time


class RawPeer(threading.Thread):
    """A minimal SMTP server on loopback that announces the extensions it is
    given and records every chunk and command line it receives, so a test
    can see exactly what the client sent, and together with what."""

    def __init__(self, refuse=(), hold=0.0, extensions=("PIPELINING", "8BITMIME"),
                 hang_after=None, max_messages=None, confused_after=None, data_reply=None):
        super().__init__(daemon=True)
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.refuse, self.chunks, self.delivered = set(refuse), [], []
        self.hold = hold  # seconds each session waits before its 220
        self.lock = threading.Lock()
        self.open = self.max_open = 0
        self.extensions = list(extensions)
        self.commands = []  # every command line, decoded
        self.sessions = 0  # connections accepted
        # After this many messages in a session, stop answering but keep the
        # connection open, as a server that silently dropped it would look.
        self.hang_after = hang_after
        # A server that takes this many messages per connection, then 421s.
        self.max_messages = max_messages
        self.stop_hanging = threading.Event()
        # After this many messages in a session, answer MAIL with 503, as a
        # server that lost track of the transaction would.
        self.confused_after = confused_after
        # The reply to the end of the data, else 250.
        self.data_reply = data_reply

    def run(self):
        while True:
            try:
                conn, _ = self.listener.accept()
            except OSError:
                return
            threading.Thread(target=self.serve, args=(conn,), daemon=True).start()

    def serve(self, conn):
        """Counts a session as open from its greeting until QUIT is answered:
        the client frees its slot only after the 221, so nothing overlaps
        that the client did not overlap."""
        with self.lock:
            self.open += 1
            self.sessions += 1
            self.max_open = max(self.max_open, self.open)
        try:
            with conn:
                time.sleep(self.hold)
                self.session(conn)
        finally:
            self.leave()

    def leave(self):
        with self.lock:
            if getattr(threading.current_thread(), "counted", True):
                self.open -= 1
                threading.current_thread().counted = False

    def session(self, conn):
        conn.sendall(b"220 peer ESMTP\r\n")
        buf, rcpts, in_data, body, messages = b"", [], False, b"", 0
        while True:
            chunk = conn.recv(65536)
            if not chunk:
                return
            self.chunks.append(chunk)
            buf += chunk
            while True:
                if in_data:
                    end = buf.find(b"\r\n.\r\n")
                    if end < 0:
                        break
                    self.delivered.append((list(rcpts), buf[:end]))
                    buf, in_data = buf[end + 5:], False
                    conn.sendall(self.data_reply or b"250 2.0.0 ok\r\n")
                    messages += 1
                    if self.hang_after and messages >= self.hang_after:
                        self.stop_hanging.wait(60)
                        return
                    continue
                line, sep, rest = buf.partition(b"\r\n")
                if not sep:
                    break
                buf, verb = rest, line[:4].upper()
                self.commands.append(line.decode("utf-8", "replace"))
                if verb == b"EHLO":
                    lines = ["peer"] + self.extensions
                    reply = "".join(f"250{'-' if i < len(lines) - 1 else ' '}{x}\r\n"
                                    for i, x in enumerate(lines))
                    conn.sendall(reply.encode())
                elif verb == b"MAIL" and self.max_messages and messages >= self.max_messages:
                    conn.sendall(b"421 4.7.0 too many messages on this connection\r\n")
                    return
                elif verb == b"MAIL" and self.confused_after and messages >= self.confused_after:
                    conn.sendall(b"503 5.5.1 Error: nested MAIL command\r\n")
                elif verb == b"MAIL":
                    rcpts = []
                    conn.sendall(b"250 2.1.0 ok\r\n")
                elif verb == b"RCPT":
                    addr = line.split(b"<")[1].split(b">")[0].decode()
                    if addr in self.refuse:
                        conn.sendall(b"550 5.1.1 no such user\r\n")
                    else:
                        rcpts.append(addr)
                        conn.sendall(b"250 2.1.5 ok\r\n")
                elif verb == b"DATA":
                    in_data = bool(rcpts)
                    conn.sendall(b"354 go on\r\n" if rcpts else b"554 5.5.1 no valid recipients\r\n")
                elif verb == b"QUIT":
                    self.leave()  # before the 221: the client may connect again right after
                    conn.sendall(b"221 bye\r\n")
                    return
                else:
                    conn.sendall(b"250 ok\r\n")

    def stop(self):
        self.stop_hanging.set()
        self.listener.close()
