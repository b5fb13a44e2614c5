"""The exporter's HTTP server: /metrics, optional TLS and basic auth.

TLS and basic auth take the web configuration file of the Prometheus exporter
toolkit (the same file Prometheus and node_exporter read with --web.config.file),
so one file serves every exporter on a host::

    tls_server_config:
      cert_file: /etc/cgman/tls.crt
      key_file: /etc/cgman/tls.key
    basic_auth_users:
      prometheus: $2b$12$...        # bcrypt hash (htpasswd -nBC 12 "" | tr -d ':\\n')

The exporter's own health lives in a private prometheus_client registry (never the
global one) and is appended to each scrape.
"""

from __future__ import annotations

import base64
import io
import logging
import os
import socket
import ssl
import threading
import time
import zlib
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from ..errors import CgmanError
from .collector import Collector
from .health import ConnStats, Health, ProcessCollector
from .conns import WRITE_TIMEOUT_S, Connections, HeadRejected, Limits, answer_and_close, read_head, somaxconn

log = logging.getLogger(__name__)

DEFAULT_LISTEN = "127.0.0.1:9753"
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


@dataclass(frozen=True)
class WebConfig:
    """An exporter-toolkit web config: TLS files and basic-auth users."""

    cert_file: str | None = None
    key_file: str | None = None
    users: dict[str, bytes] = field(default_factory=dict)     # user -> bcrypt hash


def load_web_config(path: str) -> WebConfig:
    """Parse an exporter-toolkit web config; errors name the file and key."""
    import yaml
    try:
        with open(path, encoding="utf-8") as f:
            doc = yaml.safe_load(f) or {}
    except OSError as e:
        raise CgmanError(f"--web-config {path}: {e.strerror}") from None
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f"{path}:{mark.line + 1}:{mark.column + 1}" if mark else path
        raise CgmanError(f"{where}: not valid YAML ({getattr(e, 'problem', e)})") from None
    if not isinstance(doc, dict):
        raise CgmanError(f"{path}: expected a mapping with tls_server_config and/or basic_auth_users")
    unknown = set(doc) - {"tls_server_config", "basic_auth_users", "http_server_config"}
    if unknown:
        raise CgmanError(f"{path}: unknown key {sorted(unknown)[0]!r} (known: tls_server_config, "
                         f"basic_auth_users, http_server_config)")
    tls = doc.get("tls_server_config") or {}
    if not isinstance(tls, dict):
        raise CgmanError(f"{path}: tls_server_config: expected a mapping with cert_file and key_file")
    cert, key = tls.get("cert_file"), tls.get("key_file")
    if any(v is not None and not isinstance(v, str) for v in (cert, key)):
        raise CgmanError(f"{path}: tls_server_config: cert_file and key_file must be file paths")
    if tls and not (cert and key):
        raise CgmanError(f"{path}: tls_server_config: needs both cert_file and key_file")
    base = os.path.dirname(os.path.abspath(path))
    cert = os.path.join(base, cert) if cert else None         # relative to the file, as the toolkit
    key = os.path.join(base, key) if key else None
    users_raw = doc.get("basic_auth_users") or {}
    if not isinstance(users_raw, dict):
        raise CgmanError(f"{path}: basic_auth_users: expected a mapping of user: bcrypt-hash")
    users: dict[str, bytes] = {}
    for u, h in users_raw.items():
        if not isinstance(h, str) or not h.startswith(("$2a$", "$2b$", "$2y$")):
            raise CgmanError(f"{path}: basic_auth_users.{u}: expected a bcrypt hash ($2b$…), "
                             f"e.g. from `htpasswd -nBC 12 {u}`")
        users[str(u)] = h.encode()
    if users:
        try:
            import bcrypt  # noqa: F401
        except ImportError:
            raise CgmanError("basic_auth_users needs the bcrypt package: pip install bcrypt") from None
    return WebConfig(cert, key, users)


_DUMMY: list[bytes] = []


def _dummy_hash() -> bytes:
    if not _DUMMY:
        import bcrypt
        _DUMMY.append(bcrypt.hashpw(b"-", bcrypt.gensalt(12)))
    return _DUMMY[0]


class Exporter:
    """Collector + health metrics; one scrape at a time (the collector's caches are not shared)."""

    def __init__(self, collector: Collector) -> None:
        from prometheus_client import CollectorRegistry, Counter, Gauge, disable_created_metrics
        disable_created_metrics()       # *_created series would only add noise to a scrape
        self.collector = collector
        self.lock = threading.Lock()
        self.registry = CollectorRegistry(auto_describe=True)
        self.registry.register(ProcessCollector())
        self.duration = Gauge("cgman_exporter_scrape_duration_seconds",
                              "How long the previous scrape took to collect.", registry=self.registry)
        self.containers = Gauge("cgman_exporter_containers", "Live containers in the previous scrape.",
                                registry=self.registry)
        self.errors = Counter("cgman_exporter_read_errors",
                              "Stat files that could not be read or parsed (vanished containers excluded).",
                              registry=self.registry)
        self.ledger_up = Gauge("cgman_exporter_ledger_up",
                               "1 if the ledger could be read in the previous scrape (tenant counters "
                               "are left out while it cannot).", registry=self.registry)
        self.scrapes = Counter("cgman_exporter_scrapes", "Scrapes served.", registry=self.registry)
        self.open_files = Gauge("cgman_exporter_open_files", "Stat files kept open between scrapes "
                                "(about 12 per live container).", registry=self.registry)
        self._errors_seen = 0

    unhealthy: Any = None     # () -> str | None: why /healthz should answer 503 (the agent sets it)

    def add_health(self, fn: Any) -> None:
        """Serve ``fn()``'s (name, kind, help, value) tuples with every scrape."""
        self.registry.register(Health(fn))

    def scrape(self) -> list[bytes]:
        """The body of /metrics, as chunks (see Collector.collect_chunks)."""
        from prometheus_client import generate_latest
        with self.lock:
            t0 = time.perf_counter()
            body = self.collector.collect_chunks()
            self.duration.set(time.perf_counter() - t0)
            self.containers.set(self.collector.last_containers)
            self.errors.inc(self.collector.read_errors - self._errors_seen)
            self._errors_seen = self.collector.read_errors
            self.ledger_up.set(self.collector.ledger_up)
            self.scrapes.inc()
            self.open_files.set(self.collector.open_files())
            body.append(generate_latest(self.registry))
            return body


_LANDING = b"""<html><head><title>cgman exporter</title></head><body>
<h1>cgman exporter</h1><p><a href="/metrics">Metrics</a></p></body></html>
"""


class Handler(BaseHTTPRequestHandler):
    """One connection: heads read under conns' deadlines, one request at a time, the metrics,
    health and landing pages. What it serves comes from its server (``_Server``)."""

    server: "_Server"
    protocol_version = "HTTP/1.1"
    server_version = "cgman-exporter"
    # The head and the body are separate writes: with Nagle, a kept-alive client's delayed
    # ACK held each answer's body back 40 ms.
    disable_nagle_algorithm = True
    timeout = None                # each read and write sets its own (conns.py)

    @property
    def conns(self) -> Connections:
        return self.server.conns

    def setup(self) -> None:
        self.accepted = time.monotonic()
        super().setup()
        self.rfile.close()        # heads are read by conns.read_head into self.buf, never buffered here
        self.rfile = io.BytesIO()
        self.buf = bytearray()
        self.first = True
        if isinstance(self.request, ssl.SSLSocket):
            # Under the head's deadline, in this thread: a client that never finishes the
            # handshake holds one slot for --header-timeout, never the accept loop.
            self.request.settimeout(max(0.001, self.accepted + self.conns.limits.header_timeout_s - time.monotonic()))
            try:
                self.request.do_handshake()
            except TimeoutError:
                self.conns.count("header_timeout")
                raise

    def handle_one_request(self) -> None:
        sock = self.connection
        self.close_connection = True
        limits = self.conns.limits
        wait_until = self.accepted + limits.header_timeout_s if self.first else \
            time.monotonic() + limits.idle_timeout_s
        try:
            head = read_head(sock, self.buf, limits, wait_until, self.first)
        except HeadRejected as e:
            self.conns.count(e.reason)
            log.debug("%s: %s", self.address_string(), e.text)
            if e.code:
                answer_and_close(sock, e.code, e.text)
            return
        self.first = False
        if head is None or not self.conns.busy(sock):
            return
        try:
            self._serve(head)
        except TimeoutError:
            self.close_connection = True        # it stopped reading the answer
        finally:
            self.conns.waiting(sock)

    def _serve(self, head: bytes) -> None:
        line, _, rest = head.partition(b"\n")
        self.raw_requestline = line + b"\n"
        self.rfile = io.BytesIO(rest + b"\r\n")          # parse_request reads the headers from here
        if not self.parse_request():
            return
        if self.headers.get("Content-Length", "0").strip() != "0" or "Transfer-Encoding" in self.headers:
            self.close_connection = True        # a body is never read: the next request would start in it
        method = getattr(self, "do_" + self.command, None)
        self.connection.settimeout(WRITE_TIMEOUT_S)
        if method is None:
            self.send_error(501, f"Unsupported method ({self.command!r})")
            return
        method()
        self.wfile.flush()

    def log_message(self, fmt: str, *args: Any) -> None:
        log.debug("%s " + fmt, self.address_string(), *args)

    def _send(self, code: int, body: bytes | list[bytes], ctype: str = "text/plain; charset=utf-8",
              extra: dict[str, str] | None = None) -> None:
        chunks = body if isinstance(body, list) else [body]
        self.send_response(code)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(sum(len(c) for c in chunks)))
        for k, v in (extra or {}).items():
            self.send_header(k, v)
        deadline = time.monotonic() + WRITE_TIMEOUT_S
        self.end_headers()
        if self.command != "HEAD":
            for c in chunks:
                self.connection.settimeout(max(0.001, deadline - time.monotonic()))
                self.wfile.write(c)

    def _authorized(self) -> bool:
        if not self.server.web.users:
            return True
        h = self.headers.get("Authorization", "")
        if not h.startswith("Basic "):
            return False
        try:
            user, _, pw = base64.b64decode(h[6:], validate=True).decode().partition(":")
        except (ValueError, UnicodeDecodeError):
            return False
        want = self.server.web.users.get(user)
        import bcrypt
        secret = pw.encode()[:72]        # bcrypt's limit (bcrypt 5 raises beyond it)
        try:
            if want is None:
                # The same work for an unknown user, so timing does not tell which users exist.
                bcrypt.checkpw(secret, _dummy_hash())
                return False
            return bool(bcrypt.checkpw(secret, want))
        except ValueError:
            return False

    def do_GET(self) -> None:  # noqa: N802 (http.server's naming)
        if not self.conns.requests.acquire(blocking=False):
            self.conns.reject_request()
            self._send(503, f"{self.conns.limits.max_requests} requests already in flight (--max-requests); "
                            f"retry later\n".encode(), extra={"Retry-After": "1"})
            return
        try:
            self._get()
        finally:
            self.conns.requests.release()

    def _get(self) -> None:
        path = self.path.split("?", 1)[0]
        if not self._authorized():
            self._send(401, b"Unauthorized\n", extra={"WWW-Authenticate": 'Basic realm="cgman"'})
        elif path == "/metrics":
            self._metrics()
        elif path == "/":
            self._send(200, _LANDING, "text/html; charset=utf-8")
        elif path == "/healthz":
            unhealthy = self.server.exporter.unhealthy
            problem = unhealthy() if unhealthy is not None else None
            if problem:
                self._send(503, f"{problem}\n".encode())
            else:
                self._send(200, b"ok\n")
        else:
            self._send(404, b"Not found: try /metrics\n")

    def _metrics(self) -> None:
        try:
            body = self.server.exporter.scrape()
        except Exception as e:      # a broken scrape is a 500, never a dead exporter
            log.exception("scrape failed")
            self._send(500, f"scrape failed: {e}\n".encode())
            return
        extra = {}
        if self.server.gzip_ok and "gzip" in self.headers.get("Accept-Encoding", ""):
            z = zlib.compressobj(1, zlib.DEFLATED, 31)      # 31: the gzip container
            body = [z.compress(c) for c in body] + [z.flush()]
            extra["Content-Encoding"] = "gzip"
        self._send(200, body, CONTENT_TYPE, extra)

    do_HEAD = do_GET


def parse_listen(listen: str) -> tuple[str, int]:
    host, sep, port = listen.rpartition(":")
    if not sep or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise CgmanError(f"--listen {listen!r}: expected HOST:PORT, e.g. 127.0.0.1:9753 or :9753 (all addresses)")
    host = host.strip("[]") or "0.0.0.0"
    return host, int(port)


_BUSY_BODY = b"every connection is busy (--max-connections); retry later\n"
_BUSY = (b"HTTP/1.1 503 Service Unavailable\r\nContent-Type: text/plain; charset=utf-8\r\nConnection: close\r\n"
         b"Retry-After: 1\r\nContent-Length: %d\r\n\r\n%s" % (len(_BUSY_BODY), _BUSY_BODY))


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    ssl_context: ssl.SSLContext | None = None
    # What Handler serves: set by make_server before the first request.
    conns: Connections
    exporter: Exporter
    web: WebConfig
    gzip_ok: bool

    def server_activate(self) -> None:
        # http.server's backlog is 5: a burst of scrapes waited out SYN retries (1 s each).
        self.request_queue_size = somaxconn()
        super().server_activate()

    def get_request(self) -> tuple[Any, Any]:
        sock, addr = self.socket.accept()
        if self.ssl_context is not None:
            # The handshake happens in the connection's thread (Handler.setup), so a client
            # that never completes it cannot stall the accept loop.
            sock = self.ssl_context.wrap_socket(sock, server_side=True, do_handshake_on_connect=False)
        return sock, addr

    def process_request(self, request: Any, client_address: Any) -> None:
        """A thread for the connection if conns.admit gives it a slot; else a 503 without one."""
        if not self.conns.admit(request):
            if self.ssl_context is None:
                try:
                    request.send(_BUSY, socket.MSG_DONTWAIT)        # never blocks the accept loop
                except OSError:
                    pass
            self.shutdown_request(request)
            return
        try:
            super().process_request(request, client_address)
        except RuntimeError:                    # no thread to be had: the connection goes, the server stays
            self.conns.release(request)
            self.shutdown_request(request)

    def process_request_thread(self, request: Any, client_address: Any) -> None:
        try:
            super().process_request_thread(request, client_address)
        finally:
            self.conns.release(request)

    def handle_error(self, request: Any, client_address: Any) -> None:
        import sys
        log.debug("connection from %s failed: %s", client_address, sys.exc_info()[1])


def make_server(exp: Exporter, listen: str, web: WebConfig | None = None, gzip_ok: bool = False,
                limits: Limits | None = None) -> _Server:
    """Bind (and wrap in TLS if configured); serve_forever() is the caller's."""
    web = web or WebConfig()
    host, port = parse_listen(listen)
    if ":" in host:
        class _Server6(_Server):
            address_family = socket.AF_INET6
        cls: type[_Server] = _Server6
    else:
        cls = _Server
    conns = Connections(limits or Limits())
    try:
        srv = cls((host, port), Handler)
    except OSError as e:
        raise CgmanError(f"cannot listen on {listen}: {e.strerror} (is another exporter running? "
                         f"pick another --listen)") from None
    srv.conns, srv.exporter, srv.web, srv.gzip_ok = conns, exp, web, gzip_ok
    exp.registry.register(ConnStats(conns))
    if web.cert_file and web.key_file:
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.minimum_version = ssl.TLSVersion.TLSv1_2
        try:
            ctx.load_cert_chain(web.cert_file, web.key_file)
        except (OSError, ssl.SSLError) as e:
            srv.server_close()
            raise CgmanError(f"TLS: cannot load {web.cert_file} / {web.key_file}: {e}") from None
        srv.ssl_context = ctx
    return srv
