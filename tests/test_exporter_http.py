"""`cgman exporter` as a process: HTTP, TLS and basic auth from a web config, health
metrics, `promtool check metrics`, and its bad-input errors. No cgroups are needed:
an empty run dir is a valid (empty) host."""

from __future__ import annotations

import base64
import os
import shutil
import socket
import ssl
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from .conftest import REPO, server_line


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _env(tmp_path: Path) -> dict[str, str]:
    return dict(os.environ, PYTHONPATH=str(REPO), CGMAN_RUN_DIR=str(tmp_path / "run"),
                CGMAN_STATE_DIR=str(tmp_path / "state"))


def _start(tmp_path: Path, *args: str) -> tuple[subprocess.Popen, int]:
    port = _free_port()
    p = subprocess.Popen([sys.executable, "-m", "cgman", "exporter", "--listen", f"127.0.0.1:{port}", *args],
                         env=_env(tmp_path), stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=REPO)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return p, port
        except OSError:
            if p.poll() is not None:
                raise AssertionError(p.stderr.read().decode()) from None
            time.sleep(0.05)
    p.kill()
    raise AssertionError("the exporter did not listen")


@pytest.fixture
def exporter(tmp_path):
    procs: list[subprocess.Popen] = []

    def start(*args: str) -> int:
        p, port = _start(tmp_path, *args)
        procs.append(p)
        return port
    yield start
    for p in procs:
        p.terminate()
        try:
            p.wait(10)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()


def _get(url: str, headers: dict[str, str] | None = None, ctx: ssl.SSLContext | None = None) -> tuple[int, str]:
    req = urllib.request.Request(url, headers=headers or {})
    try:
        with urllib.request.urlopen(req, timeout=10, context=ctx) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode()


def test_serves_health_and_promtool_finds_nothing_wrong(exporter):
    port = exporter()
    code, body = _get(f"http://127.0.0.1:{port}/metrics")
    assert code == 200
    assert "cgman_exporter_scrapes_total 1.0" in body and "cgman_exporter_ledger_up 1.0" in body
    assert "process_resident_memory_bytes" in body and "_created" not in body
    assert _get(f"http://127.0.0.1:{port}/metrics")[1].count("cgman_exporter_scrapes_total 2.0") == 1
    assert _get(f"http://127.0.0.1:{port}/nope")[0] == 404
    assert _get(f"http://127.0.0.1:{port}/")[0] == 200
    promtool = shutil.which("promtool")
    if promtool is None:
        pytest.fail("promtool is missing: scripts/setup.sh installs Debian's prometheus package")
    p = subprocess.run([promtool, "check", "metrics"], input=body, capture_output=True, text=True)
    assert p.returncode == 0 and not p.stdout.strip() and not p.stderr.strip(), p.stdout + p.stderr


def test_gzip_only_when_asked(exporter):
    port = exporter()
    req = urllib.request.Request(f"http://127.0.0.1:{port}/metrics", headers={"Accept-Encoding": "gzip"})
    with urllib.request.urlopen(req, timeout=10) as r:
        assert r.headers["Content-Encoding"] == "gzip"
        import gzip
        assert b"cgman_exporter_scrapes_total" in gzip.decompress(r.read())
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as r:
        assert r.headers["Content-Encoding"] is None
    port = exporter("--no-gzip")
    with urllib.request.urlopen(req.__class__(f"http://127.0.0.1:{port}/metrics",
                                              headers={"Accept-Encoding": "gzip"}), timeout=10) as r:
        assert r.headers["Content-Encoding"] is None


@pytest.fixture
def tls_files(tmp_path):
    crt, key = tmp_path / "tls.crt", tmp_path / "tls.key"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=localhost",
                    "-addext", "subjectAltName=IP:127.0.0.1", "-keyout", str(key), "-out", str(crt)],
                   check=True, capture_output=True)
    return crt, key


def test_tls_and_basic_auth_from_a_web_config(exporter, tmp_path, tls_files):
    import bcrypt
    crt, key = tls_files
    h = bcrypt.hashpw(b"s3cret", bcrypt.gensalt(4)).decode()
    cfg = tmp_path / "web.yml"
    cfg.write_text(f"tls_server_config:\n  cert_file: tls.crt\n  key_file: tls.key\n"
                   f"basic_auth_users:\n  prom: '{h}'\n")
    port = exporter("--web-config", str(cfg))
    ctx = ssl.create_default_context(cafile=str(crt))
    url = f"https://127.0.0.1:{port}/metrics"

    def auth(user: str, pw: str) -> dict[str, str]:
        return {"Authorization": "Basic " + base64.b64encode(f"{user}:{pw}".encode()).decode()}
    stalled = socket.create_connection(("127.0.0.1", port))    # never says hello: must not block others
    assert _get(url, ctx=ctx)[0] == 401
    assert _get(url, auth("prom", "wrong"), ctx)[0] == 401
    assert _get(url, auth("nobody", "s3cret"), ctx)[0] == 401
    code, body = _get(url, auth("prom", "s3cret"), ctx)
    assert code == 200 and "cgman_exporter_scrapes_total" in body
    stalled.close()
    with pytest.raises((urllib.error.URLError, ConnectionError)):
        urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5)      # plain HTTP: refused


@pytest.mark.parametrize("content, want", [
    ("tls_server_config:\n  cert_file: x.crt\n", "needs both cert_file and key_file"),
    ("basic_auth_users:\n  prom: plaintext\n", "basic_auth_users.prom: expected a bcrypt hash"),
    ("colour: blue\n", "unknown key 'colour'"),
    ("basic_auth_users: [\n", "not valid YAML"),
    ("tls_server_config:\n  cert_file: missing.crt\n  key_file: missing.key\n", "TLS: cannot load"),
])
def test_a_bad_web_config_is_one_line_naming_the_file(tmp_path, content, want):
    cfg = tmp_path / "web.yml"
    cfg.write_text(content)
    p = subprocess.run([sys.executable, "-m", "cgman", "exporter", "--listen", f"127.0.0.1:{_free_port()}",
                        "--web-config", str(cfg)], env=_env(tmp_path), capture_output=True, text=True,
                       timeout=60, cwd=REPO)
    assert p.returncode == 1, p.stderr
    lines = p.stderr.strip().splitlines()
    assert len(lines) == 1 and want in lines[0] and ("web.yml" in lines[0] or "missing.crt" in lines[0]), lines


def test_bad_listen_and_a_taken_port(tmp_path, exporter):
    for bad in ("nonsense", "127.0.0.1:99999", "127.0.0.1:"):
        p = subprocess.run([sys.executable, "-m", "cgman", "exporter", "--listen", bad], env=_env(tmp_path),
                           capture_output=True, text=True, timeout=60, cwd=REPO)
        assert p.returncode == 1 and "--listen" in p.stderr and len(p.stderr.strip().splitlines()) == 1, p.stderr
    port = exporter()
    p = subprocess.run([sys.executable, "-m", "cgman", "exporter", "--listen", f"127.0.0.1:{port}"],
                       env=_env(tmp_path), capture_output=True, text=True, timeout=60, cwd=REPO)
    assert p.returncode == 1 and f"cannot listen on 127.0.0.1:{port}" in p.stderr, p.stderr


def test_sigterm_stops_it_cleanly(tmp_path):
    p, port = _start(tmp_path)
    p.terminate()
    assert p.wait(10) == 0
    assert "serving http://127.0.0.1" in p.stderr.read().decode()


# ---------------------------------------------------------------- the typer-free parser
@pytest.mark.parametrize("argv, want", [
    (["exporter"], {}),
    (["exporter", "--listen", ":9753", "--gzip"], {"listen": ":9753", "gzip": True}),
    (["--run-dir", "/r", "exporter", "--listen=1.2.3.4:1", "--no-pressure", "--read-threads", "4"],
     {"run_dir": "/r", "listen": "1.2.3.4:1", "pressure": False, "read_threads": 4}),
    (["exporter", "--max-connections", "8", "--max-requests=2", "--header-timeout", "500ms", "--idle-timeout", "1m"],
     {"max_connections": 8, "max_requests": 2, "header_timeout": 0.5, "idle_timeout": 60.0}),
    (["exporter", "--compat", "cadvisor"], {"compat": "cadvisor"}),
])
def test_fast_parser_reads_what_typer_would(argv, want):
    assert server_line(argv) == want


@pytest.mark.parametrize("argv", [["exporter", "--help"], ["exporter", "--bogus"], ["exporter", "--listen"],
                                  ["exporter", "--read-threads", "x"], ["exporter", "--read-threads", "99"],
                                  ["exporter", "--max-connections", "0"], ["exporter", "--header-timeout", "x"],
                                  ["exporter", "--compat", "docker"], ["exporter", "--compat"], ["ps"]])
def test_fast_parser_leaves_the_rest_to_typer(argv):
    assert server_line(argv) is None


def test_doctor_checks_the_ledger_and_pressure(tmp_path):
    import json
    env = _env(tmp_path)
    p = subprocess.run([sys.executable, "-m", "cgman", "doctor", "--json"], env=env, capture_output=True,
                       text=True, timeout=60, cwd=REPO)
    checks = {c["name"]: c for c in json.loads(p.stdout)}
    assert checks["usage ledger"]["ok"] and "will be created" in checks["usage ledger"]["detail"]
    assert "pressure (PSI)" in checks
    (tmp_path / "state").mkdir()
    (tmp_path / "state" / "ledger.db").write_bytes(b"garbage" * 1000)
    p = subprocess.run([sys.executable, "-m", "cgman", "doctor", "--json"], env=env, capture_output=True,
                       text=True, timeout=60, cwd=REPO)
    checks = {c["name"]: c for c in json.loads(p.stdout)}
    assert p.returncode == 1
    assert not checks["usage ledger"]["ok"] and "corrupt" in checks["usage ledger"]["detail"]


def test_basic_auth_with_an_overlong_password_is_a_plain_401(exporter, tmp_path):
    import bcrypt
    h = bcrypt.hashpw(b"s3cret", bcrypt.gensalt(4)).decode()
    cfg = tmp_path / "web.yml"
    cfg.write_text(f"basic_auth_users:\n  prom: '{h}'\n")
    port = exporter("--web-config", str(cfg))
    for user in ("prom", "nobody"):          # the same answer whether or not the user exists
        hdr = {"Authorization": "Basic " + base64.b64encode(f"{user}:{'x' * 100}".encode()).decode()}
        assert _get(f"http://127.0.0.1:{port}/metrics", hdr)[0] == 401
