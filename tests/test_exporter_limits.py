"""The exporter's HTTP bounds against hostile clients (cgman/exporter/conns.py): real
exporter processes and real sockets on 127.0.0.1; the in-flight limits use an in-process
server whose scrape waits on an event, so "a scrape is in flight" is a fact, not a timing."""

from __future__ import annotations

import re
import socket
import subprocess
import threading
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Iterator

import pytest

from .test_exporter_http import _get, _start


@pytest.fixture
def exporter(tmp_path: Path) -> Iterator[Any]:
    procs: list[subprocess.Popen] = []

    def start(*args: str) -> tuple[int, int]:
        p, port = _start(tmp_path, *args)
        procs.append(p)
        return p.pid, port
    yield start
    for p in procs:
        p.terminate()
        try:
            p.wait(10)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()


def _status(pid: int, key: str) -> int:
    with open(f"/proc/{pid}/status") as f:
        return int(next(ln.split()[1] for ln in f if ln.startswith(key + ":")))


def _metric(body: str, name: str) -> float:
    m = re.search(rf"^{re.escape(name)} (\S+)$", body, re.M)
    assert m, f"{name} not in the scrape"
    return float(m.group(1))


def _answer(port: int, raw: bytes) -> tuple[bytes, bool]:
    """Send ``raw``; (the status line, whether the server then closed)."""
    with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
        try:
            s.sendall(raw)
        except OSError:
            pass
        data = b""
        try:
            while chunk := s.recv(65536):
                data += chunk
            closed = True
        except TimeoutError:
            closed = False
        except ConnectionResetError:
            closed = True
    return data.split(b"\r\n", 1)[0], closed


def _closed_by_server(s: socket.socket, trickle: bytes, rounds: int) -> bool:
    """Trickle a byte every 0.1 s until the server closes (True) or ``rounds`` pass (False)."""
    s.setblocking(False)
    for _ in range(rounds):
        try:
            if s.recv(1) == b"":
                return True
        except BlockingIOError:
            pass
        except ConnectionResetError:
            return True
        try:
            s.send(trickle)
        except (BrokenPipeError, ConnectionResetError):
            return True
        time.sleep(0.1)
    return False


def _eof_before(s: socket.socket, end: float) -> bool:
    try:
        while (left := end - time.monotonic()) > 0:
            s.settimeout(left)
            if not s.recv(65536):
                return True
    except TimeoutError:
        return False
    except OSError:
        return True
    return False


def test_huge_unfinished_heads_cost_no_memory(exporter):
    pid, port = exporter()
    url = f"http://127.0.0.1:{port}/metrics"
    assert _get(url)[0] == 200
    pad = b"".join(b"X-Pad-%d: %s\r\n" % (i, b"a" * 64000) for i in range(40))       # 2.5 MB, never ended

    def hostile(_: int) -> socket.socket:
        s = socket.create_connection(("127.0.0.1", port), timeout=10)
        try:
            s.sendall(b"GET /metrics HTTP/1.1\r\nHost: x\r\n" + pad)
        except OSError:
            pass
        return s
    with ThreadPoolExecutor(10) as pool:
        socks = list(pool.map(hostile, range(50)))
    try:
        # The server answers each and closes it; waiting for that (10 s in all) makes the figures
        # below settled facts. The old server read every byte and kept it.
        end = time.monotonic() + 10
        closed = sum(_eof_before(s, end) for s in socks)
        code, body = _get(url)
        assert code == 200
        rss_mb = _status(pid, "VmRSS") / 1024
        assert rss_mb < 60, f"{rss_mb:.0f} MB resident with 50 huge unfinished heads"
        assert closed == 50
        assert _metric(body, 'cgman_exporter_connections_rejected_total{reason="header_too_large"}') == 50
    finally:
        for s in socks:
            s.close()


@pytest.mark.parametrize("raw, status", [
    (b"GET /metrics HTTP/1.1\r\n" + b"".join(b"X-%d: 1\r\n" % i for i in range(65)) + b"\r\n", b"431"),
    (b"GET /metrics HTTP/1.1\r\nX-Big: " + b"a" * 20000 + b"\r\n\r\n", b"431"),
    (b"GET /" + b"a" * 10000 + b" HTTP/1.1\r\n\r\n", b"414"),
])
def test_oversized_heads_are_answered_and_closed(exporter, raw, status):
    _, port = exporter()
    line, closed = _answer(port, raw)
    assert line.split(b" ")[1:2] == [status] and closed, (line, closed)


def test_a_slowloris_is_dropped_after_the_header_timeout(exporter):
    _, port = exporter("--header-timeout", "1s")
    with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
        s.sendall(b"GET /metrics HTTP/1.1\r\nX-Slow: ")
        assert _closed_by_server(s, b"a", 50), "a head trickled over 5 s was still read"
    code, body = _get(f"http://127.0.0.1:{port}/metrics")
    assert code == 200 and _metric(body, 'cgman_exporter_connections_rejected_total{reason="header_timeout"}') == 1


def test_a_tls_client_that_never_says_hello_is_dropped(exporter, tmp_path):
    crt, key = tmp_path / "tls.crt", tmp_path / "tls.key"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=x",
                    "-keyout", str(key), "-out", str(crt)], check=True, capture_output=True)
    (tmp_path / "web.yml").write_text("tls_server_config:\n  cert_file: tls.crt\n  key_file: tls.key\n")
    _, port = exporter("--web-config", str(tmp_path / "web.yml"), "--header-timeout", "1s")
    with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
        assert _closed_by_server(s, b"", 50), "a TLS handshake that never started was waited on over 5 s"


def test_the_listen_backlog_is_somaxconn(exporter):
    _, port = exporter()
    out = subprocess.run(["ss", "-ltnH", f"sport = :{port}"], capture_output=True, text=True, check=True).stdout
    backlog = int(out.split()[2])                  # Send-Q of a listening socket: its backlog
    assert backlog == int(Path("/proc/sys/net/core/somaxconn").read_text())


def test_480_trickling_connections_hold_at_most_max_connections_threads(exporter):
    pid, port = exporter()
    socks = []
    try:
        for _ in range(480):
            s = socket.socket()
            s.settimeout(5)
            try:
                s.connect(("127.0.0.1", port))
                s.sendall(b"GET /metrics HTTP/1.1\r\nX-Slow: a")
            except OSError:
                pass
            socks.append(s)
        code, body = _get(f"http://127.0.0.1:{port}/metrics")     # evicts the longest-waiting trickler
        end = time.monotonic() + 10                  # evicted threads end as they are scheduled
        while _status(pid, "Threads") > 64 + 4 and time.monotonic() < end:
            time.sleep(0.1)
        assert _status(pid, "Threads") <= 64 + 4
        assert code == 200 and _metric(body, "cgman_exporter_connections_open") <= 64
        assert _metric(body, 'cgman_exporter_connections_rejected_total{reason="max_connections"}') >= 480 - 64
    finally:
        for s in socks:
            s.close()


# ---------------------------------------------------------------- in-flight limits, in process
class _HeldCollector:
    """A collector whose scrape waits until released: the scrape is in flight meanwhile."""
    last_containers = read_errors = 0
    ledger_up = 1

    def __init__(self) -> None:
        self.entered = threading.Semaphore(0)
        self.release = threading.Event()

    def open_files(self) -> int:
        return 0

    def collect_chunks(self) -> list[bytes]:
        self.entered.release()
        self.release.wait(20)
        return [b""]


@pytest.fixture
def held_server() -> Iterator[Any]:
    from cgman.exporter.conns import Limits
    from cgman.exporter.server import Exporter, make_server
    made = []

    def start(**limits: Any) -> tuple[int, _HeldCollector, Any]:
        coll = _HeldCollector()
        srv = make_server(Exporter(coll), "127.0.0.1:0", limits=Limits(**limits))
        threading.Thread(target=srv.serve_forever, daemon=True).start()
        made.append((srv, coll))
        return srv.server_address[1], coll, srv.conns
    yield start
    for srv, coll in made:
        coll.release.set()
        srv.shutdown()
        srv.server_close()


def _scrape_in_background(port: int) -> threading.Thread:
    t = threading.Thread(target=lambda: urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=30).read(),
                         daemon=True)
    t.start()
    return t


def test_a_scrape_past_max_requests_gets_503_at_once(held_server):
    port, coll, _ = held_server(max_requests=1)
    held = _scrape_in_background(port)
    assert coll.entered.acquire(timeout=10)
    code, body = _get(f"http://127.0.0.1:{port}/metrics")
    assert code == 503 and "--max-requests" in body
    coll.release.set()
    held.join(10)
    assert "cgman_exporter_requests_rejected_total 1.0" in _get(f"http://127.0.0.1:{port}/metrics")[1]


def test_a_connection_past_max_connections_all_busy_gets_503_without_a_thread(held_server):
    port, coll, conns = held_server(max_connections=2, max_requests=2)
    held = [_scrape_in_background(port), _scrape_in_background(port)]
    assert coll.entered.acquire(timeout=10)        # one in the scrape, the other waiting for it: both busy
    end = time.monotonic() + 10
    while list(conns.waiting_since.values()) != [None, None] and time.monotonic() < end:
        time.sleep(0.01)
    line, closed = _answer(port, b"GET /metrics HTTP/1.1\r\n\r\n")
    assert line == b"HTTP/1.1 503 Service Unavailable" and closed
    coll.release.set()
    for t in held:
        t.join(10)


def test_an_idle_connection_makes_room_for_a_new_one(held_server):
    port, coll, _ = held_server(max_connections=2)
    coll.release.set()
    idle = [socket.create_connection(("127.0.0.1", port), timeout=5) for _ in range(2)]
    idle[0].sendall(b"GET /")                       # the oldest is evicted first, whatever it sent
    assert _get(f"http://127.0.0.1:{port}/metrics")[0] == 200
    assert idle[0].recv(1) == b""
    for s in idle:
        s.close()
