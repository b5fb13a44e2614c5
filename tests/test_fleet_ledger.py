"""The fleet ledger against a real PostgreSQL (tests/pg.py), without cgroups.

Each test gets a fresh database with the cgman schema; nodes' SQLite ledgers are written
with Ledger.record as a container's waiter would, shipped with the agent's Shipper, and
billed with the real `cgman usage --ledger-url`. The agent and the usage command run as
subprocesses where the test is about what an operator sees (one error line).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest

from cgman.fleet.db import DuplicateNode, FleetUnreachable
from cgman.fleet.shipper import Shipper
from cgman.accounting.ledger import Ledger, ledger_path

from .pg import Cluster, fresh_db, login_role
from .test_usage_cli import ENTRIES, EXAMPLE, T0, entry

REPO = Path(__file__).resolve().parent.parent


def usage(*args: str, state: Path | None = None) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=str(REPO), TZ="UTC", CGMAN_STATE_DIR=str(state or "/nonexistent"))
    return subprocess.run([sys.executable, "-m", "cgman", "usage", *args], capture_output=True, text=True,
                          env=env, cwd=REPO, timeout=60)


def write(state: Path, entries) -> None:
    with Ledger(ledger_path(str(state))) as led:
        for e in entries:
            assert led.record(e)


@pytest.fixture
def db(postgres: Cluster) -> str:
    return fresh_db(postgres)


@pytest.fixture
def agent_url(postgres: Cluster, db: str) -> str:
    return postgres.url("fleet_node", login_role(postgres, "fleet_node", "cgman_agent"), db)


@pytest.fixture
def billing_url(postgres: Cluster, db: str) -> str:
    return postgres.url("fleet_biller", login_role(postgres, "fleet_biller", "cgman_billing"), db)


def ship_all(url: str, node: str, state: Path) -> Shipper:
    s = Shipper(url, node, str(state))
    s.open()
    while s.ship_once():
        pass
    s._measure()
    return s


def test_init_is_versioned_and_idempotent(postgres: Cluster):
    name = fresh_db(postgres, init=False)
    env = dict(os.environ, PYTHONPATH=str(REPO))
    first = subprocess.run([sys.executable, "-m", "cgman", "fleet", "init", "--ledger-url", postgres.url(db=name)],
                           capture_output=True, text=True, env=env, cwd=REPO, timeout=60)
    assert first.returncode == 0 and "applied schema version(s) 1" in first.stdout, first.stderr
    again = subprocess.run([sys.executable, "-m", "cgman", "fleet", "init", "--ledger-url", postgres.url(db=name)],
                           capture_output=True, text=True, env=env, cwd=REPO, timeout=60)
    assert again.returncode == 0 and "already at version 1" in again.stdout, again.stderr
    assert postgres.sql("SELECT version, cgman FROM cgman.schema_version", db=name) == [(1, "0.1.0")]
    assert postgres.sql("SELECT indexdef FROM pg_indexes WHERE indexname = 'ledger_ended'", db=name)


def test_a_schema_newer_than_this_cgman_is_refused(postgres: Cluster, db: str, agent_url: str):
    postgres.sql("INSERT INTO cgman.schema_version (version, cgman) VALUES (99, 'future')", db=db)
    p = usage("--ledger-url", agent_url)
    assert p.returncode == 1 and "schema version 99" in p.stderr and "upgrade cgman" in p.stderr, p.stderr


def test_fleet_bill_equals_the_sum_of_the_nodes_ledgers(tmp_path, postgres, db, agent_url, billing_url):
    a, b, both = tmp_path / "a", tmp_path / "b", tmp_path / "both"
    rows_a = ENTRIES
    rows_b = [replace(e, id=f"b-{e.id}", name=f"b-{e.name}", memory_byte_seconds=e.memory_byte_seconds + 0.1)
              for e in ENTRIES] + [entry("b5", "initech", "initech/x", T0 + 500, cpu_usage_usec=1)]
    write(a, rows_a)
    write(b, rows_b)
    write(both, rows_a + rows_b)      # one SQLite ledger holding both nodes' rows: the expected bill
    assert ship_all(agent_url, "node-a", a).health.shipped == len(rows_a)
    assert ship_all(agent_url, "node-b", b).health.shipped == len(rows_b)
    for by in ("tenant", "group", "container"):
        for fmt in ("csv", "json"):
            args = ["--by", by, "--prices", str(EXAMPLE), "--format", fmt, "--since", "2024-05-01"]
            local, fleet = usage(*args, state=both), usage(*args, "--ledger-url", billing_url)
            assert local.returncode == 0 and fleet.returncode == 0, (local.stderr, fleet.stderr)
            if fmt == "json":
                got = json.loads(fleet.stdout)
                for r in got["rows"]:
                    r.pop("node", None)
                assert got == json.loads(local.stdout)
            elif by != "container":
                assert fleet.stdout == local.stdout
    by_node = json.loads(usage("--by", "node", "--prices", str(EXAMPLE), "--json", "--ledger-url",
                               billing_url).stdout)
    for node, state in (("node-a", a), ("node-b", b)):
        mine = json.loads(usage("--by", "tenant", "--prices", str(EXAMPLE), "--json", state=state).stdout)
        row = next(r for r in by_node["rows"] if r["key"] == node)
        assert row["cost"]["total"] == mine["total"]["cost"]["total"]
        assert row["cpu_seconds"] == mine["total"]["cpu_seconds"]


def test_a_resend_stores_nothing_twice(tmp_path, postgres, db, agent_url):
    write(tmp_path, ENTRIES)
    s = ship_all(agent_url, "node-a", tmp_path)
    assert s._outbox is not None
    s._outbox.ack(0)                       # as if the agent died before moving the mark
    again = ship_all(agent_url, "node-a", tmp_path)
    assert (again.health.shipped, again.health.resent) == (0, len(ENTRIES))
    assert postgres.sql("SELECT count(*) FROM cgman.ledger", db=db) == [(len(ENTRIES),)]


def test_a_refused_row_is_reported_kept_and_retried(tmp_path, postgres, db, agent_url, caplog):
    postgres.sql("ALTER TABLE cgman.ledger ADD CONSTRAINT no_globex CHECK (tenant <> 'globex')", db=db)
    write(tmp_path, ENTRIES)
    s = ship_all(agent_url, "node-a", tmp_path)
    assert (s.health.shipped, s.health.refused, s.health.waiting) == (3, 1, 1)
    assert s.health.oldest_waiting_age_s > 0
    assert any("refused container c3" in r.getMessage() and "no_globex" in r.getMessage() for r in caplog.records)
    s._next_refused = 0
    s.ship_once()                              # retried, refused again: still kept
    s._measure()
    assert s.health.refused == 1
    postgres.sql("ALTER TABLE cgman.ledger DROP CONSTRAINT no_globex", db=db)
    s._next_refused = 0
    s.ship_once()
    s._measure()
    assert (s.health.shipped, s.health.refused, s.health.waiting) == (4, 0, 0)
    assert postgres.sql("SELECT count(*) FROM cgman.ledger", db=db) == [(4,)]


def test_rows_wait_while_the_database_is_down(tmp_path, postgres, db, agent_url):
    write(tmp_path, ENTRIES[:2])
    s = ship_all(agent_url, "node-a", tmp_path)
    postgres.stop()
    try:
        write(tmp_path, ENTRIES[2:])
        s._drop()
        with pytest.raises(FleetUnreachable):
            s.ship_once()
        s._measure()
        assert s.health.waiting == 2 and s.health.up == 0
    finally:
        postgres.start()
    while s.ship_once():
        pass
    s._measure()
    assert (s.health.shipped, s.health.waiting) == (4, 0)
    assert postgres.sql("SELECT count(*) FROM cgman.ledger", db=db) == [(4,)]


def test_two_nodes_with_one_name_are_refused(tmp_path, agent_url):
    ship_all(agent_url, "twin", tmp_path / "one")
    with pytest.raises(DuplicateNode, match="node name 'twin' is already taken"):
        Shipper(agent_url, "twin", str(tmp_path / "two")).open()
    ship_all(agent_url, "twin", tmp_path / "one")          # the same node again is fine


def test_roles_agents_only_insert_billing_only_reads(tmp_path, postgres, db, agent_url, billing_url):
    import psycopg
    write(tmp_path, ENTRIES[:1])
    ship_all(agent_url, "node-a", tmp_path)
    for stmt in ("SELECT * FROM cgman.ledger", "UPDATE cgman.ledger SET cpu_usage_usec = 0",
                 "DELETE FROM cgman.ledger"):
        with pytest.raises(psycopg.errors.InsufficientPrivilege), psycopg.connect(agent_url) as c:
            c.execute(stmt)
    with pytest.raises(psycopg.errors.InsufficientPrivilege), psycopg.connect(billing_url) as c:
        c.execute("DELETE FROM cgman.ledger")
    with psycopg.connect(billing_url) as c:
        assert c.execute("SELECT count(*) FROM cgman.ledger").fetchone() == (1,)


@pytest.mark.parametrize("how, want", [
    ("password", "authentication failed"),
    ("database", 'database "nope" does not exist'),
    ("syntax", "--ledger-url:"),
    ("schema", "no cgman schema"),
])
def test_a_wrong_url_or_password_is_one_line(tmp_path, postgres, db, how, want):
    url = {"password": postgres.url("fleet_node", "wrong", db), "database": postgres.url(db="nope"),
           "syntax": "postgresql://[::1", "schema": postgres.url(db=fresh_db(postgres, init=False))}[how]
    env = dict(os.environ, PYTHONPATH=str(REPO), CGMAN_STATE_DIR=str(tmp_path / "state"),
               CGMAN_RUN_DIR=str(tmp_path / "run"), CGMAN_POLICY_DIR=str(tmp_path),
               CGMAN_CGROUP_ROOT="cgman-test-never-made", CGMAN_LEDGER_URL=url)
    for argv in (["agent", "--listen", "127.0.0.1:0"], ["usage", "--ledger-url", url]):
        p = subprocess.run([sys.executable, "-m", "cgman", *argv], capture_output=True, text=True, env=env,
                           cwd=REPO, timeout=60)
        lines = p.stderr.strip().splitlines()
        assert p.returncode == 1 and len(lines) == 1 and want in lines[0], (argv, p.stderr)
        assert "wrong" not in lines[0] and postgres.password not in lines[0]       # no password in logs


def test_by_node_needs_the_fleet_ledger(tmp_path):
    write(tmp_path, ENTRIES[:1])
    p = usage("--by", "node", state=tmp_path)
    assert p.returncode == 2 and "one node" in p.stderr and "--ledger-url" in p.stderr, p.stderr


def test_a_second_ledger_in_one_process_keeps_the_first_ones_locks(tmp_path):
    """SQLite's locks are POSIX locks, which any close() of the file in the process drops: the
    exporter preparing its Ledger must not strip the shipper's, or another process deletes the
    WAL under the shipper's open connection and the shipper never sees a new row again."""
    path = ledger_path(str(tmp_path))
    keep = Ledger(path)
    assert keep.record(ENTRIES[0])
    with Ledger(path, readonly=True) as other:
        assert len(other.entries()) == 1
    code = ("import sys; from cgman.accounting.ledger import Ledger; from tests.test_usage_cli import ENTRIES\n"
            f"with Ledger({path!r}) as led: led.record(ENTRIES[1])")
    subprocess.run([sys.executable, "-c", code], check=True, cwd=REPO, env=dict(os.environ, PYTHONPATH=str(REPO)))
    try:
        assert os.path.exists(path + "-wal"), "the WAL was deleted under an open connection"
        assert [e.id for e in keep.entries()] == ["c1", "c2"]
    finally:
        keep.close()
