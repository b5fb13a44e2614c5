"""`--compat cadvisor` against a real Prometheus: the container panels of community dashboards.

The real `cgman exporter --compat cadvisor` serves one live container; Debian's Prometheus
scrapes it as job "cadvisor" (dashboard 179 selects that job) every second. Each PromQL
query below is a container_* panel target copied from the dashboards' published JSON:

- Grafana 893 "Docker and system monitoring" (docker-monitoring.json, its container_cpu /
  container_memory targets; $interval set to 1m);
- Grafana 179 "Docker Prometheus Monitoring" (gnetId 179, its container_* targets).

Every query that cgman has a source for must return data for the live container; the ones
without a source (the host's root cgroup id="/", container network) are listed in
NO_SOURCE, checked to stay empty (so the README's list stays true), and named in README.md.
The exposition passes `promtool check metrics`.
"""

from __future__ import annotations

import subprocess
import time
from pathlib import Path
from typing import Iterator

import pytest

from .conftest import REPO, cli_env, write_policy
from .test_grafana import promtool
from .test_prometheus import LIVE, PY, free_port, http_get, query, running_prometheus, stop_process, wait_for
from .test_prometheus import cgman as cgman_fixture

cgman = cgman_fixture          # the same `cgman ARGS` fixture as test_prometheus.py

pytestmark = [pytest.mark.kernel, pytest.mark.slow]
JOB = "cadvisor"

POLICY = """
version: 1
policies:
  shop:
    tenant: compat-shop
    children:
      web:
        container:
          cpu: {max: 0.5}
          memory: {max: 256Mi}
          pids: {max: 64}
"""

DASHBOARD_893 = [
    'sum(rate(container_cpu_system_seconds_total[1m]))',
    'sum(rate(container_cpu_system_seconds_total{name=~".+"}[1m]))',
    'container_memory_rss{name=~".+"}',
    'sum(container_memory_rss{name=~".+"})',
    'container_memory_usage_bytes{name=~".+"}',
    'sum(container_memory_rss)',
    'sum(rate(container_cpu_usage_seconds_total{name=~".+"}[1m])) by (name) * 100',
    'sum(container_memory_rss{name=~".+"}) by (name)',
    'sum(container_memory_cache{name=~".+"}) by (name)',
]
DASHBOARD_179 = [
    f'count(rate(container_last_seen{{job="{JOB}", name!=""}}[5m]))',
    'sum(rate(container_cpu_usage_seconds_total{image!=""}[1m])) by (id,name)',
    'container_memory_max_usage_bytes{image!=""}',
]
# Panels of the same dashboards that cgman has no source for (README.md says why).
NO_SOURCE = [
    'sum(rate(container_cpu_system_seconds_total{id="/"}[1m]))',                          # 893: the host
    'container_memory_rss{id="/"}',                                                        # 893: the host
    'sum(rate(container_network_receive_bytes_total{id="/"}[1m])) by (id)',               # 179: the host
    'sort_desc(sum by (name) (rate(container_network_receive_bytes_total{image!=""}[1m] ) ))',   # 179
    'sort_desc(sum by (name) (rate(container_network_transmit_bytes_total{image!=""}[1m] ) ))',  # 179
]


@pytest.fixture
def compat_exporter(host, root_name: str, tmp_path: Path) -> Iterator[str]:
    """The real `cgman exporter --compat cadvisor` on a free port; yields its host:port."""
    port = free_port()
    log = tmp_path / "exporter.log"
    with open(log, "wb") as out:
        p = subprocess.Popen([PY, "-m", "cgman", "exporter", "--compat", "cadvisor", "--listen", f"127.0.0.1:{port}"],
                             env=cli_env(root_name, tmp_path), stdout=out, stderr=subprocess.STDOUT, cwd=REPO)
    try:
        wait_for("cgman exporter serving /metrics", lambda: http_get(f"http://127.0.0.1:{port}/metrics"), 60, p, log)
        yield f"127.0.0.1:{port}"
    finally:
        stop_process(p)


@pytest.fixture
def prometheus(compat_exporter: str, tmp_path: Path) -> Iterator[str]:
    """/usr/bin/prometheus scraping the exporter every second as job "cadvisor"; yields its URL."""
    yield from running_prometheus(tmp_path, JOB, compat_exporter, [])


def test_dashboards_893_and_179_get_data_from_compat_series(prometheus, compat_exporter, cgman, tmp_path):  # noqa: F811
    pol = write_policy(tmp_path, "shop.yaml", POLICY)
    cgman("apply", str(pol))
    started = False
    try:
        p = cgman("run", "-f", str(pol), "-p", "shop/web", "-d", "--name", "live", "--", PY, "-c", LIVE)
        started = True
        assert p.stdout.strip() == "live", p.stdout + p.stderr

        # Rates need two samples of the container's series: poll until every mapped panel has data.
        todo = DASHBOARD_893 + DASHBOARD_179
        deadline = time.monotonic() + 45
        while (missing := [q for q in todo if not query(prometheus, q)]) and time.monotonic() < deadline:
            time.sleep(1)
        assert not missing, "dashboard queries without data:\n" + "\n".join(missing)
        for q in NO_SOURCE:
            assert query(prometheus, q) == [], f"{q}: has a source now: move it to the mapped list and README"

        # The live container, named as cAdvisor names one; its CPU rate is under its 0.5 quota.
        (cpu,) = query(prometheus, 'sum(rate(container_cpu_usage_seconds_total{image!=""}[1m])) by (id,name)')
        assert cpu["metric"]["name"] == "live" and cpu["metric"]["id"].endswith("/shop/web/live"), cpu
        assert 0 < float(cpu["value"][1]) <= 0.6, cpu

        body = http_get(f"http://{compat_exporter}/metrics")
        assert b'container_cpu_usage_seconds_total{cpu="total",' in body and b"cgman_cpu_usage_seconds_total" in body
        lint = subprocess.run([promtool(), "check", "metrics"], input=body, capture_output=True, timeout=60)
        assert lint.returncode == 0 and not (lint.stdout + lint.stderr).strip(), \
            (lint.stdout + lint.stderr).decode(errors="replace")
    finally:
        if started:
            cgman("stop", "live", "-t", "0s", check=False)
            cgman("rm", "--force", "live", check=False)
