"""The Grafana dashboards against a real Prometheus scraping the real `cgman exporter`.

A policy with one tenant, a running container (so per-container series exist) and two that
burned CPU, memory and IO and exited (so the tenant counters include exited usage); Prometheus
(Debian's /usr/bin/prometheus) scrapes the exporter every second with grafana/prometheus/rules.yml
loaded. Then every panel target and every variable of every dashboard is evaluated through
/api/v1/query and must return data, and the exporter's /metrics passes `promtool check metrics`.
Everything started here (Prometheus, the exporter, containers) is stopped by PID in a finally.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any, Callable, Iterator

import pytest

from .conftest import REPO, cli_env, write_policy
from .test_grafana import (RULES, dashboard_files, default_values, panel_queries, promtool,
                           substitute, variable_queries)

pytestmark = [pytest.mark.kernel, pytest.mark.slow]
PY = sys.executable
PROMETHEUS = "/usr/bin/prometheus"
JOB = "cgman"
TENANT = "grafana-shop"

POLICY = f"""
version: 1
policies:
  shop:
    tenant: {TENANT}
    children:
      web:
        container:
          cpu: {{max: 0.5}}
          memory: {{max: 256Mi}}
          pids: {{max: 64}}
        launch: {{volumes: [{{path: /tmp}}]}}     # its IO goes to the test's dir (the host is read-only)
      batch:
        container:
          memory: {{max: 512Mi}}
        launch: {{volumes: [{{path: /tmp}}]}}
"""

# Holds 48 MiB and burns CPU against its 0.5-CPU quota (throttled), writing a little now and then.
LIVE = ("import os, time\n"
        "b = bytearray(48 << 20); b[::4096] = b'x' * len(b[::4096])\n"
        "while True:\n"
        "    t = time.monotonic()\n"
        "    while time.monotonic() - t < 0.5: pass\n"
        "    time.sleep(0.2)\n")


def burn(path: str) -> str:
    """About a CPU-second, 64 MiB touched and held, 8 MiB written and read back past the page cache."""
    return ("import os, time\n"
            "b = bytearray(64 << 20); b[::4096] = b'x' * len(b[::4096])\n"
            "while time.process_time() < 1.0: pass\n"
            "time.sleep(1.0)\n"
            f"p = {path!r}\n"
            "fd = os.open(p, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)\n"
            "for _ in range(8): os.write(fd, os.urandom(1 << 20))\n"
            "os.fsync(fd); os.close(fd)\n"
            "fd = os.open(p, os.O_RDONLY); os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)\n"
            "while os.read(fd, 1 << 20): pass\n"
            "os.close(fd); os.unlink(p)\n")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def http_get(url: str, timeout: float = 10) -> bytes:
    with urllib.request.urlopen(url, timeout=timeout) as r:
        return r.read()


def wait_for(what: str, check: Callable[[], Any], timeout: float, proc: subprocess.Popen | None = None,
             log: Path | None = None) -> Any:
    """Poll check() until it returns something truthy; fail naming `what` at the deadline."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise AssertionError(f"{what}: process exited ({proc.returncode}):\n{tail(log)}")
        try:
            last = check()
            if last:
                return last
        except (OSError, ValueError) as e:        # not listening yet, or a half-written answer
            last = e
        time.sleep(0.2)
    raise AssertionError(f"{what}: not within {timeout:.0f}s (last: {last!r})\n{tail(log)}")


def tail(log: Path | None, n: int = 3000) -> str:
    if log is None or not log.exists():
        return ""
    return log.read_text(errors="replace")[-n:]


def stop_process(p: subprocess.Popen, grace: float = 10) -> None:
    """SIGTERM this one process, SIGKILL it if it lingers."""
    if p.poll() is None:
        p.send_signal(signal.SIGTERM)
        try:
            p.wait(grace)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait(5)


@pytest.fixture
def cgman(root_name: str, tmp_path: Path) -> Callable[..., subprocess.CompletedProcess]:
    """`python -m cgman ARGS` with this test's root; memory sampled often so byte-seconds move."""
    env = dict(cli_env(root_name, tmp_path), CGMAN_SAMPLE_INTERVAL="0.5")

    def go(*args: str, check: bool = True, timeout: float = 180) -> subprocess.CompletedProcess:
        p = subprocess.run([PY, "-m", "cgman", *args], capture_output=True, text=True, env=env,
                           timeout=timeout, cwd=REPO)
        if check and p.returncode != 0:
            raise AssertionError(f"cgman {' '.join(args)} failed ({p.returncode}):\n{p.stdout}\n{p.stderr}")
        return p
    return go


@pytest.fixture
def exporter(host, root_name: str, tmp_path: Path) -> Iterator[str]:
    """The real `cgman exporter` on a free port; yields its host:port."""
    port = free_port()
    log = tmp_path / "exporter.log"
    with open(log, "wb") as out:
        p = subprocess.Popen([PY, "-m", "cgman", "exporter", "--listen", f"127.0.0.1:{port}"],
                             env=cli_env(root_name, tmp_path), stdout=out, stderr=subprocess.STDOUT, cwd=REPO)
    try:
        wait_for("cgman exporter serving /metrics", lambda: http_get(f"http://127.0.0.1:{port}/metrics"),
                 60, p, log)
        yield f"127.0.0.1:{port}"
    finally:
        stop_process(p)


@pytest.fixture
def prometheus(exporter: str, tmp_path: Path) -> Iterator[str]:
    """/usr/bin/prometheus scraping the exporter every second, with the shipped rules; yields its URL."""
    yield from running_prometheus(tmp_path, JOB, exporter, [str(RULES)])


def running_prometheus(tmp_path: Path, job: str, target: str, rule_files: list[str]) -> Iterator[str]:
    """A real Prometheus on loopback scraping ``target`` as ``job`` every second; yields its URL
    once it has scraped once, and stops it (by PID) afterwards."""
    if not os.access(PROMETHEUS, os.X_OK):
        pytest.fail(f"{PROMETHEUS} not found: install Debian's prometheus package (scripts/setup.sh does)")
    cfg = tmp_path / "prometheus.yml"
    cfg.write_text(json.dumps({           # JSON is YAML
        "global": {"scrape_interval": "1s", "scrape_timeout": "1s", "evaluation_interval": "1s"},
        "rule_files": rule_files,
        "scrape_configs": [{"job_name": job, "static_configs": [{"targets": [target]}]}],
    }))
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    log = tmp_path / "prometheus.log"
    with open(log, "wb") as out:
        p = subprocess.Popen([PROMETHEUS, f"--config.file={cfg}", f"--storage.tsdb.path={tmp_path / 'tsdb'}",
                              f"--web.listen-address=127.0.0.1:{port}", "--log.level=warn"],
                             stdout=out, stderr=subprocess.STDOUT, cwd=tmp_path)
    try:
        wait_for("prometheus ready", lambda: http_get(f"{url}/-/ready", timeout=2), 60, p, log)
        # Target discovery hands over new targets at most every 5 s: wait for the first scrape, so
        # the counters have samples from before the workload (their increase is the workload's).
        wait_for("prometheus scraping the exporter", lambda: query(url, f'up{{job="{job}"}} == 1'), 60, p, log)
        yield url
    finally:
        stop_process(p)


def query(url: str, expr: str) -> list[dict[str, Any]]:
    """Instant query; the result vector (a scalar becomes one sample)."""
    q = urllib.parse.urlencode({"query": expr})
    try:
        body = json.loads(http_get(f"{url}/api/v1/query?{q}"))
    except urllib.error.HTTPError as e:       # 400 for a bad expression: say which
        raise AssertionError(f"{expr}: {e.read().decode(errors='replace')}") from None
    data = body["data"]
    if data["resultType"] in ("scalar", "string"):
        return [{"metric": {}, "value": data["result"]}]
    return data["result"]


def test_every_dashboard_query_returns_data_from_the_real_exporter(prometheus, exporter, cgman, tmp_path):
    pol = write_policy(tmp_path, "shop.yaml", POLICY)
    cgman("apply", str(pol))
    started: list[str] = []
    try:
        p = cgman("run", "-f", str(pol), "-p", "shop/web", "-d", "--name", "live", "--", PY, "-c", LIVE)
        started.append("live")
        assert p.stdout.strip() == "live", p.stdout + p.stderr
        for name in ("burn1", "burn2"):
            started.append(name)
            cgman("run", "-f", str(pol), "-p", "shop/batch", "--name", name, "--",
                  PY, "-c", burn(str(tmp_path / f"{name}.dat")))

        done = time.time()

        # A scrape that began after the last run returned (so after its ledger row was committed),
        # and scrapes before, during and after the workload: a history the rates can use.
        wait_for("a scrape after the containers exited",
                 lambda: float(query(prometheus, f'timestamp(up{{job="{JOB}"}})')[0]["value"][1]) > done, 30)
        wait_for("five scrapes", lambda: query(prometheus, f'count_over_time(up{{job="{JOB}"}}[1h]) >= 5'), 30)
        (n,) = query(prometheus, f'cgman_tenant_containers_total{{tenant="{TENANT}"}}')
        assert n["value"][1] == "3", n
        (up,) = query(prometheus, f'up{{job="{JOB}"}}')
        assert up["value"][1] == "1", up

        # The exited containers' usage stays in the tenant's counters: about a CPU-second each,
        # and 8 MiB each written and read.
        (cpu,) = query(prometheus, f'cgman_tenant_cpu_seconds_total{{tenant="{TENANT}"}}')
        assert float(cpu["value"][1]) >= 1.5, cpu
        io = {s["metric"]["direction"]: float(s["value"][1])
              for s in query(prometheus, f'cgman_tenant_io_bytes_total{{tenant="{TENANT}"}}')}
        assert io.keys() == {"read", "write"} and min(io.values()) >= 16 << 20, io

        chosen = {"tenant": TENANT, "group": "shop/web", "container": "live"}
        todo = []
        for path in dashboard_files():
            vals = default_values(path, **chosen)
            for q in panel_queries(path) + variable_queries(path):
                todo.append((q, substitute(q.expr, vals)))
        assert len(todo) > 30, "dashboards lost their panels?"

        # Rates need two samples after a series appears, recording rules an evaluation: poll.
        def empty() -> list[str]:
            return [f"{q.where()}:\n    {expr}" for q, expr in todo if not query(prometheus, expr)]
        deadline = time.monotonic() + 60
        while (missing := empty()) and time.monotonic() < deadline:
            time.sleep(1)
        assert not missing, "queries without data:\n" + "\n".join(missing)

        # The exporter's exposition passes Prometheus's own linter, with a live container in it.
        body = http_get(f"http://{exporter}/metrics")
        assert b'cgman_cpu_usage_seconds_total{container="live"' in body
        lint = subprocess.run([promtool(), "check", "metrics"], input=body, capture_output=True, timeout=60)
        assert lint.returncode == 0 and not (lint.stdout + lint.stderr).strip(), \
            (lint.stdout + lint.stderr).decode(errors="replace")
    finally:
        if "live" in started:
            cgman("stop", "live", "-t", "0s", check=False)
        for name in started:
            cgman("rm", "--force", name, check=False)

