"""Two real agents ship to a real PostgreSQL during container churn, through failures.

Nodes a and b are `cgman agent --ledger-url … --node node-a|node-b` on their own cgroup
roots, run and state dirs (tests/test_fleet.py's layout). Containers (`cgman run -p GROUP
--rm -- true`, each a ledger row) churn on both; in the middle the database is stopped
(rows wait, the agents' metrics say so) and started again; then agent a is stopped while
rows queue, restarted as tests/agent_crashpoint.py so that it stops itself inside its
first batch's transaction and is SIGKILLed there by PID, then again after that batch's
commit and before its high-water mark moves, then restarted plainly. Finally the fleet
bill from PostgreSQL equals, exactly, the bill of one SQLite ledger holding both nodes'
rows, for each --by, and --by node equals each node's own bill; every row is stored
once. Everything started is stopped by PID; the roots are removed, also on failure.
"""

from __future__ import annotations

import json
from decimal import Decimal
import os
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

import pytest

from cgman.accounting.ledger import Ledger, ledger_path

from .conftest import REPO, _hierarchy_dirs, _need_root_cgroups, destroy_root
from .pg import Cluster, fresh_db, login_role
from .test_prometheus import free_port, http_get, stop_process, wait_for

pytestmark = [pytest.mark.kernel, pytest.mark.slow]
PY = sys.executable
POLICY = "version: 1\npolicies:\n  acme: {tenant: ship-acme}\n  globex: {tenant: ship-globex}\n"
EXAMPLE = REPO / "prices" / "example.yaml"


@dataclass
class Node:
    name: str
    root: str
    dir: Path
    url: str
    port: int = field(default_factory=free_port)
    proc: subprocess.Popen[bytes] | None = None

    def env(self, **extra: str) -> dict[str, str]:
        return dict(os.environ, PYTHONPATH=str(REPO), CGMAN_CGROUP_ROOT=self.root, CGMAN_RUN_DIR=str(self.dir / "run"),
                    CGMAN_STATE_DIR=str(self.dir / "state"), CGMAN_POLICY_DIR=str(self.dir / "policies"),
                    CGMAN_LEDGER_URL=self.url, **extra)

    @property
    def log(self) -> Path:
        return self.dir / "agent.log"

    def start(self, stop_at: str = "") -> None:
        (self.dir / "policies").mkdir(parents=True, exist_ok=True)
        f = self.dir / "policies" / "p.yaml"
        f.write_text(POLICY)
        os.utime(f, (time.time() - 10, time.time() - 10))    # settled: the agent applies it at start
        program = ["-m", "tests.agent_crashpoint", stop_at] if stop_at else ["-m", "cgman", "agent"]
        with open(self.log, "ab") as out:
            self.proc = subprocess.Popen([PY, *program, "--node", f"node-{self.name}",
                                          "--listen", f"127.0.0.1:{self.port}"], env=self.env(),
                                         stdout=out, stderr=subprocess.STDOUT, cwd=REPO)
        if not stop_at:
            wait_for(f"node {self.name} up", lambda: self.metric("cgman_agent_last_reconcile_success") == 1,
                     60, self.proc, self.log)

    def metric(self, name: str) -> float | None:
        for ln in http_get(f"http://127.0.0.1:{self.port}/metrics").decode().splitlines():
            if ln.startswith(name + " "):
                return float(ln.split()[1])
        return None

    def churn(self, n: int, errors: list[str]) -> None:
        try:
            for i in range(n):
                p = subprocess.run([PY, "-m", "cgman", "run", "-p", "acme" if i % 3 else "globex", "--rm", "--",
                                    "/bin/sh", "-c", f"i=0; while [ $i -lt {2000 * (i + 1)} ]; do i=$((i+1)); done"],
                                   env=self.env(), capture_output=True, text=True, timeout=120, cwd=REPO)
                assert p.returncode == 0, p.stderr
        except Exception as e:        # the other node goes on; the test fails after joining
            errors.append(f"node {self.name}: {e}")

    def killed_at(self, point: str) -> None:
        """Start with the fault hook, wait until the agent stopped itself there, SIGKILL it by PID."""
        self.start(stop_at=point)
        assert self.proc is not None
        pid = self.proc.pid
        wait_for(f"node {self.name} stopped at {point}", lambda: _stopped(pid), 60, self.proc, self.log)
        os.kill(pid, signal.SIGKILL)
        self.proc.wait(10)

    def stop(self) -> None:
        if self.proc is not None:
            if self.proc.poll() is None:
                os.kill(self.proc.pid, signal.SIGCONT)
            stop_process(self.proc, grace=20)

    def rows(self) -> list:
        with Ledger(ledger_path(str(self.dir / "state")), readonly=True) as led:
            return led.entries()


def _stopped(pid: int) -> bool:
    with open(f"/proc/{pid}/stat") as f:
        return f.read().rpartition(")")[2].split()[0] == "T"


@pytest.fixture
def fleet(root_name: str, tmp_path: Path, postgres: Cluster) -> Iterator[tuple[dict[str, Node], Cluster, str, str]]:
    _need_root_cgroups()
    from cgman.drivers import open_host
    db = fresh_db(postgres)
    url = postgres.url("ship_agent", login_role(postgres, "ship_agent", "cgman_agent"), db)
    nodes = {n: Node(n, f"{root_name}-{n}", tmp_path / f"node-{n}", url) for n in "ab"}
    hosts = [open_host(node.root) for node in nodes.values()]
    try:
        for node in nodes.values():
            node.start()
        yield nodes, postgres, db, postgres.url("ship_billing", login_role(postgres, "ship_billing",
                                                                           "cgman_billing"), db)
    finally:
        if not postgres.running():
            postgres.start()
        for node in nodes.values():
            node.stop()
        for h in hosts:
            destroy_root(h)
        left = [d for h in hosts for d in _hierarchy_dirs(h, h.root) if os.path.exists(d)]
        assert not left, f"test left cgroups behind: {left}"


def churn(nodes: dict[str, Node], n: int) -> None:
    errors: list[str] = []
    threads = [threading.Thread(target=node.churn, args=(n, errors)) for node in nodes.values()]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors


def settled(nodes: dict[str, Node]) -> None:
    for node in nodes.values():
        wait_for(f"node {node.name} shipped everything", lambda n=node: n.metric("cgman_agent_ledger_rows_waiting")
                 == 0 and n.metric("cgman_agent_ledger_up") == 1, 60, node.proc, node.log)


def usage(args: list[str], **env: str) -> str:
    p = subprocess.run([PY, "-m", "cgman", "usage", *args], capture_output=True, text=True, cwd=REPO, timeout=60,
                       env=dict(os.environ, PYTHONPATH=str(REPO), TZ="UTC", **env))
    assert p.returncode == 0, p.stderr
    return p.stdout


def test_two_agents_ship_through_an_outage_and_a_crash(fleet, tmp_path):
    nodes, pg, db, billing = fleet
    churn(nodes, 3)
    pg.stop()
    try:
        churn(nodes, 3)
        for node in nodes.values():
            wait_for(f"node {node.name} reports waiting rows",
                     lambda n=node: n.metric("cgman_agent_ledger_up") == 0
                     and (n.metric("cgman_agent_ledger_rows_waiting") or 0) >= 3, 30, node.proc, node.log)
    finally:
        pg.start()
    settled(nodes)

    a = nodes["a"]
    a.stop()
    churn({"a": a}, 3)                         # rows queue while a's agent is down
    a.killed_at("ship-mid:1")                  # inside the batch's transaction: nothing stored
    a.killed_at("ship-acked:1")                # stored, the mark not moved: a resend follows
    a.start()
    settled(nodes)
    assert (a.metric("cgman_agent_ledger_rows_resent_total") or 0) >= 3

    rows = {n: node.rows() for n, node in nodes.items()}
    both = tmp_path / "both"
    with Ledger(ledger_path(str(both))) as led:
        for e in rows["a"] + rows["b"]:
            assert led.record(e)
    assert pg.sql("SELECT count(*), count(DISTINCT (node, id)) FROM cgman.ledger", db=db) == \
        [(len(rows["a"]) + len(rows["b"]),) * 2]
    for by in ("tenant", "group", "container"):
        args = ["--by", by, "--prices", str(EXAMPLE), "--json"]
        fleet_bill = json.loads(usage([*args, "--ledger-url", billing]))
        for r in fleet_bill["rows"]:
            r.pop("node", None)
        assert fleet_bill == json.loads(usage(args, CGMAN_STATE_DIR=str(both))), by
    by_node = json.loads(usage(["--by", "node", "--prices", str(EXAMPLE), "--json", "--ledger-url", billing]))
    for n, node in nodes.items():
        own = json.loads(usage(["--prices", str(EXAMPLE), "--json"], CGMAN_STATE_DIR=str(node.dir / "state")))
        row = next(r for r in by_node["rows"] if r["key"] == f"node-{n}")
        keys = ("containers", "cpu_seconds", "memory_byte_seconds", "io_read_bytes", "io_write_bytes")
        assert {k: row[k] for k in keys} == {k: own["total"][k] for k in keys}
        # Money is quantized once per bill row (billing.py): one node row vs the sum of that
        # node's tenant rows may differ in the 20th place, never by a cent.
        cents = [Decimal(x["cost"]["total"]).quantize(Decimal("0.01")) for x in (row, own["total"])]
        assert cents[0] == cents[1] and abs(Decimal(row["cost"]["total"]) - Decimal(own["total"]["cost"]["total"])) \
            < Decimal("1e-15")
