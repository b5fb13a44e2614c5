"""Bounds on what an HTTP client can make the exporter hold: connections, threads,
request-head bytes and time. Nothing here trusts the peer.

http.server gives every connection a thread and reads up to 100 header lines of
64 KiB each, one socket timeout per read, so a client trickling bytes or sending
huge headers that never end kept a thread and megabytes forever. Here:

* at most ``max_connections`` connections (so threads) at once. A new one past the
  limit first evicts the connection that has waited longest for a request head (a
  slow or idle client); only when every connection is mid-request is it refused;
* a request head (request line and headers) is at most MAX_HEAD_BYTES and MAX_HEADERS
  lines, read by hand into one small buffer, and must arrive whole within
  ``header_timeout_s`` of the connection (TLS handshake included) or of its first
  byte on a kept-alive connection, which may idle ``idle_timeout_s`` in between;
* at most ``max_requests`` requests in flight (server.py answers 503 past it).
"""

from __future__ import annotations

import socket
import threading
import time
from dataclasses import dataclass
from typing import Any

MAX_REQUEST_LINE_BYTES = 8192         # longer: 414
MAX_HEAD_BYTES = 16384                # request line + headers; longer: 431
MAX_HEADERS = 64                      # more lines: 431
WRITE_TIMEOUT_S = 30.0                # a client that stops reading a response is dropped
_LINGER_S = 0.5                       # after an error answer: read what the client still sends, so
_LINGER_BYTES = 65536                 # close() does not reset the connection before it reads the answer


@dataclass(frozen=True)
class Limits:
    """The HTTP server's bounds: connections, requests per connection and timeouts."""

    max_connections: int = 64
    max_requests: int = 40
    header_timeout_s: float = 10.0
    idle_timeout_s: float = 120.0


class HeadRejected(Exception):
    """The request head broke a bound: answer ``code`` (0: just close) and close."""

    def __init__(self, code: int, reason: str, text: str) -> None:
        super().__init__(text)
        self.code, self.reason, self.text = code, reason, text


def somaxconn() -> int:
    """The kernel's cap on a listen backlog (listen(2) truncates to it anyway)."""
    try:
        with open("/proc/sys/net/core/somaxconn", "rb") as f:
            return max(128, int(f.read().strip()))
    except (OSError, ValueError):
        return 4096


def _head_end(buf: bytearray, start: int) -> tuple[int, int]:
    """(length of the head up to and with its last header line's LF, bytes to consume),
    or (-1, -1) while the empty line that ends it has not arrived."""
    crlf, lf = buf.find(b"\n\r\n", start), buf.find(b"\n\n", start)
    if crlf >= 0 and (lf < 0 or crlf < lf):
        return crlf + 1, crlf + 3
    if lf >= 0:
        return lf + 1, lf + 2
    return -1, -1


def _check(head: bytes | bytearray) -> None:
    line_end = head.find(b"\n")
    if (line_end if line_end >= 0 else len(head)) > MAX_REQUEST_LINE_BYTES:
        raise HeadRejected(414, "header_too_large", f"request line over {MAX_REQUEST_LINE_BYTES} bytes")
    if len(head) > MAX_HEAD_BYTES or head.count(b"\n") - 1 > MAX_HEADERS:
        raise HeadRejected(431, "header_too_large",
                           f"request headers over {MAX_HEAD_BYTES} bytes or {MAX_HEADERS} lines")


def read_head(sock: socket.socket, buf: bytearray, limits: Limits, wait_until: float,
              first: bool) -> bytes | None:
    """The next request head from ``sock`` (request line and header lines), leaving any
    later bytes in ``buf``; None when the peer closed, or stayed silent until
    ``wait_until`` on a kept-alive connection. Raises HeadRejected past a bound."""
    deadline: float | None = wait_until if first else None
    scanned = 0
    while True:
        if not scanned:
            del buf[:len(buf) - len(buf.lstrip(b"\r\n"))]       # empty lines before a request: ignored
        if buf and deadline is None:
            deadline = time.monotonic() + limits.header_timeout_s
        size, used = _head_end(buf, max(0, scanned - 2))
        if size >= 0:
            head = bytes(buf[:size])
            _check(head)
            del buf[:used]
            return head
        _check(buf)
        scanned = len(buf)
        left = (deadline if deadline is not None else wait_until) - time.monotonic()
        try:
            if left <= 0:
                raise TimeoutError
            sock.settimeout(left)
            data = sock.recv(4096)
        except TimeoutError:
            if deadline is None:
                return None                                        # an idle keep-alive: close quietly
            raise HeadRejected(0, "header_timeout",
                               f"request head not complete within {limits.header_timeout_s:g}s") from None
        if not data:
            return None
        buf += data


def answer_and_close(sock: socket.socket, code: int, text: str) -> None:
    """Write a one-line error answer and close, reading (bounded) what the client still
    sends so it sees the answer rather than a reset."""
    reasons = {400: "Bad Request", 414: "URI Too Long", 431: "Request Header Fields Too Large",
               503: "Service Unavailable"}
    body = (text + "\n").encode()
    head = (f"HTTP/1.1 {code} {reasons.get(code, 'Error')}\r\nContent-Type: text/plain; charset=utf-8\r\n"
            f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n").encode()
    try:
        sock.settimeout(_LINGER_S)
        sock.sendall(head + body)
        socket.socket.shutdown(sock, socket.SHUT_WR)      # the plain socket's: an SSLSocket's would unwrap
        end, got = time.monotonic() + _LINGER_S, 0
        while got < _LINGER_BYTES and (left := end - time.monotonic()) > 0:
            sock.settimeout(left)
            data = sock.recv(16384)
            if not data:
                break
            got += len(data)
    except OSError:
        pass


class Connections:
    """Open connections and why they were turned away; the accept loop admits, each
    connection's thread reports when it waits for a head and when it is busy."""

    def __init__(self, limits: Limits) -> None:
        self.limits = limits
        self.lock = threading.Lock()
        self.waiting_since: dict[Any, float | None] = {}     # socket -> when it began waiting (None: busy)
        self.rejected: dict[str, int] = {"max_connections": 0, "header_timeout": 0, "header_too_large": 0}
        self.requests_rejected = 0
        self.requests = threading.BoundedSemaphore(limits.max_requests)

    def admit(self, sock: Any) -> bool:
        """Take a slot for ``sock``, evicting the longest-waiting connection if all are
        taken; False when every connection is mid-request (the caller refuses it)."""
        with self.lock:
            if len(self.waiting_since) >= self.limits.max_connections:
                waiting = [(t, id(s), s) for s, t in self.waiting_since.items() if t is not None]
                self.rejected["max_connections"] += 1
                if not waiting:
                    return False
                victim = min(waiting, key=lambda w: w[:2])[2]
                del self.waiting_since[victim]
                try:
                    # Its thread is blocked in recv (or the TLS handshake): this wakes it with EOF.
                    socket.socket.shutdown(victim, socket.SHUT_RDWR)
                except OSError:
                    pass
            self.waiting_since[sock] = time.monotonic()
            return True

    def waiting(self, sock: Any) -> None:
        with self.lock:
            if sock in self.waiting_since:
                self.waiting_since[sock] = time.monotonic()

    def busy(self, sock: Any) -> bool:
        """Mark ``sock`` mid-request (no longer evictable); False if it was evicted."""
        with self.lock:
            if sock not in self.waiting_since:
                return False
            self.waiting_since[sock] = None
            return True

    def release(self, sock: Any) -> None:
        with self.lock:
            self.waiting_since.pop(sock, None)

    def count(self, reason: str) -> None:
        with self.lock:
            self.rejected[reason] += 1

    def open(self) -> int:
        return len(self.waiting_since)

    def reject_request(self) -> None:
        with self.lock:
            self.requests_rejected += 1
