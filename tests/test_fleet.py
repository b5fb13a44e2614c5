"""A fleet of two nodes on one machine, one Prometheus: the billing dashboard adds nodes up.

Each "node" is a real `cgman agent` with its own cgroup root (`cgman-test-<random>-a`/`-b`),
run dir, state dir (ledger) and port on 127.0.0.1, sharing one policy file as a fleet would.
Debian's /usr/bin/prometheus scrapes both every second (one job; the `instance` label tells
the nodes apart) with grafana/prometheus/rules.yml loaded.

Each node first runs one `true` per tenant it serves (so each per-node tenant series exists,
at a small value, before Prometheus starts: the dashboard's increase() then measures from
there), then the workload: containers that each burn about a CPU-second and write and read
8 MiB, tenant fleet-acme on both nodes, fleet-globex only on a, fleet-initech only on b.

Checked, per tenant: each node's series is in Prometheus under its own `instance` with the
agent's own /metrics value; `sum by (tenant)` over them equals the sum of both agents' /metrics
and of both ledgers, exactly; what the series moved by during the workload, summed over both
nodes, is exactly what both ledgers recorded for it; and every `increase()` target of the
billing dashboard, with the tenant chosen, equals the sum over both nodes of Prometheus's
increase() of their samples (the difference plus increase()'s extrapolation, recomputed here
from the raw samples), so a node left out of a panel's sum fails it. Everything started here
is stopped by PID and both roots are removed in every hierarchy, also on failure.
"""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.parse
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

import pytest

from .conftest import REPO, _hierarchy_dirs, _need_root_cgroups, destroy_root
from .test_grafana import DASHBOARDS, RULES, default_values, panel_queries, substitute
from .test_prometheus import PROMETHEUS, burn, free_port, http_get, query, stop_process, tail, wait_for

pytestmark = [pytest.mark.kernel, pytest.mark.slow]
PY = sys.executable
JOB = "cgman"
BILLING = DASHBOARDS / "tenant-billing.json"
SCRAPE_S = 1.0

POLICY = """\
version: 1
policies:
  acme: {tenant: fleet-acme, container: {memory: {max: 256Mi}, pids: {max: 64}}, launch: {volumes: [{path: /tmp}]}}
  globex: {tenant: fleet-globex, container: {memory: {max: 256Mi}, pids: {max: 64}}, launch: {volumes: [{path: /tmp}]}}
  initech: {tenant: fleet-initech, container: {memory: {max: 256Mi}, pids: {max: 64}},
            launch: {volumes: [{path: /tmp}]}}
"""
# (launch.volumes: the containers write their IO load into the test's dir; the host is read-only to them)
COLS = ("cpu_s", "mem_bs", "read_b", "write_b", "containers")
# node -> containers it runs, by group: fleet-acme on both nodes, the others on one each.
WORKLOAD = {"a": ["acme", "acme", "globex"], "b": ["acme", "initech"]}
BURN_CPU_S = 1.0                # burn() busy-loops until its process_time reaches this

# Per ledger column: the dashboard's metric, its unit in the panels, the price variable.
COLUMNS = {
    "cgman_tenant_cpu_seconds_total": ("cpu_s", 3600, "price_cpu_hour"),
    "cgman_tenant_memory_byte_seconds_total": ("mem_bs", 3600 * 2**30, "price_gib_hour"),
    'cgman_tenant_io_bytes_total{tenant=~"$tenant", direction="read"}': ("read_b", 2**30, "price_io_read_gib"),
    'cgman_tenant_io_bytes_total{tenant=~"$tenant", direction="write"}': ("write_b", 2**30, "price_io_write_gib"),
    "cgman_tenant_containers_total": ("containers", 1, None),
}


@dataclass
class Node:
    """One simulated node: an agent on its own root, run dir, state dir and port."""

    name: str
    root: str
    dir: Path
    port: int = field(default_factory=free_port)
    proc: subprocess.Popen[bytes] | None = None

    @property
    def addr(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def log(self) -> Path:
        return self.dir / "agent.log"

    def env(self) -> dict[str, str]:
        return dict(os.environ, PYTHONPATH=str(REPO), CGMAN_CGROUP_ROOT=self.root,
                    CGMAN_RUN_DIR=str(self.dir / "run"), CGMAN_STATE_DIR=str(self.dir / "state"),
                    CGMAN_POLICY_DIR=str(self.dir / "policies"), CGMAN_SAMPLE_INTERVAL="0.5")

    def start(self) -> None:
        (self.dir / "policies").mkdir(parents=True)
        (self.dir / "policies" / "fleet.yaml").write_text(POLICY)
        with open(self.log, "wb") as out:
            self.proc = subprocess.Popen([PY, "-m", "cgman", "agent", "--listen", self.addr, "--interval", "5s"],
                                         env=self.env(), stdout=out, stderr=subprocess.STDOUT, cwd=REPO)
        wait_for(f"node {self.name}: the agent applied the policy",
                 lambda: self.metrics().get(("cgman_agent_last_reconcile_success", ""), 0) == 1,
                 60, self.proc, self.log)

    def cgman(self, *args: str) -> None:
        p = subprocess.run([PY, "-m", "cgman", *args], capture_output=True, text=True, env=self.env(),
                           timeout=180, cwd=REPO)
        assert p.returncode == 0, f"node {self.name}: cgman {' '.join(args[:4])}… failed ({p.returncode}):\n" \
                                  f"{p.stdout}\n{p.stderr}"

    def metrics(self) -> dict[tuple[str, str], float]:
        """The agent's /metrics as {(name, labels): value}."""
        out = {}
        for ln in http_get(f"http://{self.addr}/metrics").decode().splitlines():
            if ln and not ln.startswith("#"):
                series, _, value = ln.rpartition(" ")
                name, _, labels = series.partition("{")
                out[(name, labels.rstrip("}"))] = float(value)
        return out

    def tenant_usage(self) -> dict[str, dict[str, float]]:
        """The agent's tenant counters in ledger units: {tenant: {cpu_s, mem_bs, read_b, write_b, containers}}."""
        out: dict[str, dict[str, float]] = {}
        for (name, labels), v in self.metrics().items():
            if not name.startswith("cgman_tenant_"):
                continue
            lab = dict(kv.split("=", 1) for kv in labels.split(","))
            t = lab["tenant"].strip('"')
            out.setdefault(t, {})[column(name, lab.get("direction", "").strip('"') or None)] = v
        return out

    def ledger(self) -> dict[str, dict[str, float]]:
        """Sums of this node's ledger rows per tenant."""
        db = sqlite3.connect(f"file:{self.dir / 'state' / 'ledger.db'}?mode=ro", uri=True)
        try:
            rows = db.execute("SELECT tenant, count(*), sum(cpu_usage_usec), sum(memory_byte_seconds), "
                              "sum(io_read_bytes), sum(io_write_bytes) FROM containers "
                              "WHERE cgroup_root = ? GROUP BY tenant", (self.root,)).fetchall()
        finally:
            db.close()
        return {t: {"containers": n, "cpu_s": cpu / 1e6, "mem_bs": mem, "read_b": r, "write_b": w}
                for t, n, cpu, mem, r, w in rows}

    def stop(self) -> int | None:
        if self.proc is None:
            return None
        stop_process(self.proc, grace=20)
        return self.proc.returncode


@pytest.fixture
def nodes(root_name: str, tmp_path: Path) -> Iterator[dict[str, Node]]:
    """Two nodes, a and b, on roots <root_name>-a and -b; both removed afterwards in every hierarchy."""
    _need_root_cgroups()
    from cgman.drivers import open_host
    made = {n: Node(n, f"{root_name}-{n}", tmp_path / f"node-{n}") for n in "ab"}
    hosts = [open_host(node.root) for node in made.values()]
    try:
        for node in made.values():
            node.start()
        yield made
    finally:
        for node in made.values():
            node.stop()
        for h in hosts:
            destroy_root(h)
        left = [d for h in hosts for d in _hierarchy_dirs(h, h.root) if os.path.exists(d)]
        assert not left, f"test left cgroups behind: {left}"


@contextmanager
def prometheus(targets: list[str], tmp_path: Path) -> Iterator[str]:
    """/usr/bin/prometheus scraping ``targets`` as one job every second, with the shipped rules."""
    if not os.access(PROMETHEUS, os.X_OK):
        pytest.fail(f"{PROMETHEUS} not found: install Debian's prometheus package (scripts/setup.sh does)")
    cfg = tmp_path / "prometheus.yml"
    cfg.write_text(json.dumps({           # JSON is YAML
        "global": {"scrape_interval": f"{SCRAPE_S:g}s", "scrape_timeout": "1s", "evaluation_interval": "1s"},
        "rule_files": [str(RULES)],
        "scrape_configs": [{"job_name": JOB, "static_configs": [{"targets": targets}]}],
    }))
    url = f"http://127.0.0.1:{free_port()}"
    log = tmp_path / "prometheus.log"
    with open(log, "wb") as out:
        p = subprocess.Popen([PROMETHEUS, f"--config.file={cfg}", f"--storage.tsdb.path={tmp_path / 'tsdb'}",
                              f"--web.listen-address={url[7:]}", "--log.level=warn"],
                             stdout=out, stderr=subprocess.STDOUT, cwd=tmp_path)
    try:
        wait_for("prometheus ready", lambda: http_get(f"{url}/-/ready", timeout=2), 60, p, log)
        wait_for("prometheus scraping both nodes",
                 lambda: len(query(url, f'up{{job="{JOB}"}} == 1')) == len(targets), 60, p, log)
        yield url
    finally:
        stop_process(p)
        assert p.returncode == 0, f"prometheus exited {p.returncode}:\n{tail(log)}"


def run_workload(node: Node, tmp_path: Path, errors: list[str]) -> None:
    try:
        for i, group in enumerate(WORKLOAD[node.name]):
            node.cgman("run", "-p", group, "--rm", "--name", f"burn-{group}-{i}", "--",
                       PY, "-c", burn(str(tmp_path / f"{node.name}-{i}.dat")))
    except Exception as e:      # the other node's thread goes on; the test fails after joining
        errors.append(f"node {node.name}: {e}")


def column(name: str, direction: str | None) -> str:
    """The ledger column a tenant series counts."""
    return {"cgman_tenant_cpu_seconds_total": "cpu_s", "cgman_tenant_memory_byte_seconds_total": "mem_bs",
            "cgman_tenant_containers_total": "containers"}.get(name) or \
        {"read": "read_b", "write": "write_b"}[direction or ""]


def prom_increase(samples: list[tuple[int, float]], start_ms: int, end_ms: int) -> float:
    """Prometheus's increase() of one series' (ms, value) samples over [start, end]: their
    difference stretched towards the range's ends, never past the counter's zero point
    (extrapolatedRate in promql/functions.go, Prometheus 2.x; counters here never reset)."""
    (t0, v0), (t1, v1) = samples[0], samples[-1]
    if len(samples) < 2:
        return 0.0
    result = v1 - v0
    sampled = (t1 - t0) / 1000
    to_start, to_end = (t0 - start_ms) / 1000, (end_ms - t1) / 1000
    average = sampled / (len(samples) - 1)
    if result > 0 and v0 >= 0:
        to_start = min(to_start, sampled * (v0 / result))
    threshold = average * 1.1
    interval = sampled + (to_start if to_start < threshold else average / 2) + \
        (to_end if to_end < threshold else average / 2)
    return result * (interval / sampled)


def query_at(url: str, expr: str, at: float) -> list[dict[str, Any]]:
    """Instant query evaluated at ``at`` (Unix seconds)."""
    q = urllib.parse.urlencode({"query": expr, "time": f"{at:.3f}"})
    try:
        body = json.loads(http_get(f"{url}/api/v1/query?{q}"))
    except urllib.error.HTTPError as e:
        raise AssertionError(f"{expr}: {e.read().decode(errors='replace')}") from None
    return body["data"]["result"]


def expected(expr: str, usage: dict[str, float], prices: dict[str, str]) -> float:
    """What a billing panel's expression must give from ledger sums: one column in its unit,
    or (when it names every column) the cost at the dashboard's default prices."""
    terms = [(col, unit, price) for metric, (col, unit, price) in COLUMNS.items() if metric in expr]
    if len(terms) == 1:
        col, unit, _ = terms[0]
        return usage[col] / unit
    assert len(terms) == 4, f"a billing panel naming {len(terms)} columns: {expr}"
    return sum(usage[col] / unit * float(prices[price]) for col, unit, price in terms if price)


def test_two_agents_one_prometheus_billing_sums_tenants_across_nodes(nodes, tmp_path):
    a, b = nodes["a"], nodes["b"]
    # No primer containers: each agent serves every tenant of its policies from 0, before the
    # tenant's first container, so increase() counts the workload from its first container on.
    baseline = {n: node.tenant_usage() for n, node in nodes.items()}

    prom_started = time.time()
    with prometheus([a.addr, b.addr], tmp_path) as prom:
        series = f'cgman_tenant_containers_total{{job="{JOB}"}}'
        wait_for("two scrapes of each node's tenant series (3 tenants x 2 nodes) before the workload",
                 lambda: len(query(prom, f"count_over_time({series}[1m]) >= 2")) == 6, 30)

        errors: list[str] = []
        threads = [threading.Thread(target=run_workload, args=(n, tmp_path, errors)) for n in (a, b)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert not errors, "\n".join(errors)
        done = time.time()

        # Every container has exited: each agent's counters are final and match its ledger.
        final = {n: node.tenant_usage() for n, node in nodes.items()}
        for n, node in nodes.items():
            led = node.ledger()
            # every tenant of the policy, those that never ran here at exactly 0
            assert set(final[n]) == {"fleet-acme", "fleet-globex", "fleet-initech"}, f"node {n}"
            for t in final[n]:
                want = led.get(t, {k: 0 for k in final[n][t]})
                assert final[n][t] == pytest.approx(want, rel=1e-9), f"node {n} tenant {t}"

        wait_for("a scrape of both nodes after the workload",
                 lambda: min(float(s["value"][1]) for s in query(prom, f'timestamp(up{{job="{JOB}"}})')) > done, 30)

        # 1. Each node's series, under its own instance, holding that agent's value.
        for n, node in nodes.items():
            got = {s["metric"]["tenant"]: float(s["value"][1]) for s in
                   query(prom, f'cgman_tenant_cpu_seconds_total{{instance="{node.addr}"}}')}
            assert got == {t: u["cpu_s"] for t, u in final[n].items()}, f"node {n} ({node.addr})"
        assert {s["metric"]["instance"] for s in query(prom, 'cgman_tenant_cpu_seconds_total{tenant="fleet-acme"}')} \
            == {a.addr, b.addr}

        # 2. Summed across nodes by tenant: both agents' /metrics, both ledgers. Exactly.
        ledgers = {n: node.ledger() for n, node in nodes.items()}
        tenants = sorted(set(final["a"]) | set(final["b"]))
        assert tenants == ["fleet-acme", "fleet-globex", "fleet-initech"]
        summed = {s["metric"]["tenant"]: float(s["value"][1])
                  for s in query(prom, "sum by (tenant) (cgman_tenant_cpu_seconds_total)")}
        assert summed == pytest.approx({t: sum(final[n].get(t, {}).get("cpu_s", 0) for n in nodes)
                                        for t in tenants}, rel=1e-12, abs=1e-9)

        # The workload per node and tenant: the agents' counters moved by what the ledgers
        # recorded, and each container burned its CPU-second.
        for n in nodes:
            for t, led in ledgers[n].items():
                delta = {k: final[n][t][k] - baseline[n].get(t, {}).get(k, 0) for k in led}
                assert delta == pytest.approx(led, rel=1e-9, abs=1e-6), f"node {n} tenant {t}"
                assert BURN_CPU_S * led["containers"] <= led["cpu_s"] <= (BURN_CPU_S + 1.5) * led["containers"]
                assert led["read_b"] >= 8 << 20 and led["write_b"] >= 8 << 20, (n, t, led)

        # 3. Every increase() target of the billing dashboard, one tenant at a time, at one
        # instant T over a range from before Prometheus started. Prometheus's increase() of
        # each node's samples is their difference (exactly the workload, both ledgers say),
        # stretched by its extrapolation: the panel must be the sum over both nodes of that.
        t_eval = round(time.time(), 3)
        range_s = int(t_eval - prom_started) + 60
        moved = {t: {k: 0.0 for k in COLS} for t in tenants}         # last - first, both nodes
        increase = {t: {k: 0.0 for k in COLS} for t in tenants}      # as increase() computes it
        for s in query_at(prom, f'{{__name__=~"cgman_tenant_.*", job="{JOB}"}}[{range_s}s]', t_eval):
            m, samples = s["metric"], [(round(float(ts) * 1000), float(v)) for ts, v in s["values"]]
            col = column(m["__name__"], m.get("direction"))
            assert [v for _, v in samples] == sorted(v for _, v in samples), f"not monotonic: {m}"
            moved[m["tenant"]][col] += samples[-1][1] - samples[0][1]
            increase[m["tenant"]][col] += prom_increase(samples, round((t_eval - range_s) * 1000),
                                                        round(t_eval * 1000))
        targets = [q for q in panel_queries(BILLING) if "increase(" in q.expr]
        assert len(targets) >= 10, "the billing dashboard lost its range panels?"
        for t in tenants:
            want = {k: sum(ledgers[n].get(t, {}).get(k, 0) for n in nodes) for k in COLS}
            assert moved[t] == pytest.approx(want, rel=1e-9, abs=1e-6), f"tenant {t}: Prometheus vs both ledgers"
            vals = default_values(BILLING, tenant=t, __range=f"{range_s}s")
            for q in targets:
                expr = substitute(q.expr, vals)
                result = query_at(prom, expr, t_eval)
                assert len(result) == 1 and "instance" not in result[0]["metric"], f"{q.where()}: {result}"
                got, exp = float(result[0]["value"][1]), expected(q.expr, increase[t], vals)
                assert got == pytest.approx(exp, rel=1e-9), \
                    f"{q.where()} for {t}: {got} from Prometheus, {exp} from both nodes' samples\n    {expr}"
                # What a reader of the dashboard sees against the bill: off by the extrapolation only.
                assert expected(q.expr, want, vals) == pytest.approx(got, rel=0.25), q.where()

    rcs = {n: node.stop() for n, node in nodes.items()}
    assert rcs == {"a": 0, "b": 0}, f"agents' exit status on SIGTERM: {rcs}\n{tail(a.log)}\n{tail(b.log)}"
