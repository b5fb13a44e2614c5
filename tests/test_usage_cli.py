"""`cgman usage` end to end: a real ledger in tmp_path, the CLI as a subprocess.

No root and no cgroups: the ledger is written with Ledger.record, as a container's waiter would.
"""

from __future__ import annotations

import csv
import io
import json
import os
import sqlite3
import subprocess
import sys
import time
from decimal import Decimal, localcontext
from itertools import pairwise
from pathlib import Path

import pytest

from cgman.accounting.ledger import Entry, Ledger, ledger_path

REPO = Path(__file__).resolve().parent.parent
EXAMPLE = REPO / "prices" / "example.yaml"
GiB = 1 << 30
T0 = 1_714_521_600.0          # 2024-05-01T00:00:00Z


def entry(id: str, tenant: str, grp: str, ended: float, **kw) -> Entry:
    base = dict(id=id, name=f"n-{id}", tenant=tenant, grp=grp, cgroup_root="cgman", started=ended - 3600,
                ended=ended, exit_code=0, exit_reason=None, cpu_usage_usec=1_800_000_000, cpu_user_usec=None,
                cpu_system_usec=None, memory_byte_seconds=float(GiB * 3600), memory_peak_bytes=None,
                io_read_bytes=GiB, io_write_bytes=GiB // 2, cpu_limit_cpus=2.0, memory_limit_bytes=2 * GiB,
                host_cpus=8.0, host_memory_bytes=64 * GiB)
    base.update(kw)
    return Entry(**base)  # type: ignore[arg-type]


ENTRIES = [entry("c1", "acme", "acme/web", T0 + 100),
           entry("c2", "acme", "acme/batch", T0 + 200, cpu_limit_cpus=None),
           entry("c3", "globex", "globex/lab", T0 + 300, memory_limit_bytes=None),
           entry("c4", "acme", "acme/web", T0 + 86400)]


@pytest.fixture
def state(tmp_path: Path) -> Path:
    with Ledger(ledger_path(str(tmp_path))) as led:
        for e in ENTRIES:
            assert led.record(e)
    return tmp_path


def cgman(state_dir: Path, *args: str, timeout: float = 60, **env: str) -> subprocess.CompletedProcess:
    e = dict(os.environ, CGMAN_STATE_DIR=str(state_dir), PYTHONPATH=str(REPO), CGMAN_LEDGER_TIMEOUT="0.5",
             TZ="UTC", **env)
    return subprocess.run([sys.executable, "-m", "cgman", "usage", *args], capture_output=True, text=True,
                          env=e, cwd=REPO, timeout=timeout)


def ok(p: subprocess.CompletedProcess) -> str:
    assert p.returncode == 0, p.stderr
    assert p.stderr == ""
    return p.stdout


def one_error_line(p: subprocess.CompletedProcess, rc: int = 1) -> str:
    assert p.returncode == rc, (p.stdout, p.stderr)
    assert p.stdout == ""
    lines = p.stderr.splitlines()
    assert len(lines) == 1, p.stderr
    assert lines[0].startswith("cgman: error: ")
    return lines[0]


# ------------------------------------------------------------------ formats
def test_table_per_tenant_with_a_total(state):
    out = ok(cgman(state))
    lines = out.splitlines()
    head = next(i for i, line in enumerate(lines) if line.startswith("TENANT"))
    assert lines[head].split() == ["TENANT", "RUNS", "CPU", "MEMORY", "READ", "WRITE"]
    rows = [line.split() for line in lines[head + 1:]]
    assert [r[0] for r in rows] == ["acme", "globex", "TOTAL"]
    assert [r[1] for r in rows] == ["3", "1", "4"]
    assert rows[2][2] == "2h00m" and rows[1][2] == "30m00s"       # 4 x 0.5 cpu-hour; 1 x 0.5
    assert rows[2][3:5] == ["4.00", "GiB-h"] and rows[2][5] == "4.0Gi"
    assert len({len(line) for line in lines[head:]}) == 1             # aligned columns


def test_table_with_prices_has_a_cost_column_per_priced_resource(state):
    out = ok(cgman(state, "--prices", str(EXAMPLE)))
    assert "prices  " in out and "in EUR" in out
    head = next(line for line in out.splitlines() if line.startswith("TENANT"))
    assert head.split()[-12:] == ["CPU", "EUR", "MEMORY", "EUR", "READ", "EUR", "WRITE", "EUR", "FEE", "EUR",
                                  "TOTAL", "EUR"]
    total = out.splitlines()[-1].split()
    assert total[0] == "TOTAL" and total[-1] == f"{expected_total():.4f}"


def expected_total() -> Decimal:
    """The example sheet by hand: cpu usage 0.031/cpu-h, memory max 0.004/GiB-h, io 0.01/0.02 per GiB, 0.0001/run."""
    cpu = Decimal("0.031") * Decimal("0.5") * 4
    # max(allocation, usage) per container: 2 GiB-h (limit) for c1, c2, c4; 64 GiB-h (host) for c3
    mem = Decimal("0.004") * (2 + 2 + 64 + 2)
    io = Decimal("0.01") * 4 + Decimal("0.02") * Decimal("0.5") * 4
    return cpu + mem + io + Decimal("0.0001") * 4


def test_csv_has_raw_numbers_and_a_total_row(state):
    out = ok(cgman(state, "--by", "group", "--format", "csv", "--prices", str(EXAMPLE)))
    rows = list(csv.DictReader(io.StringIO(out)))
    assert [r["group"] for r in rows] == ["acme/batch", "acme/web", "globex/lab", "TOTAL"]
    total = rows[-1]
    assert total["containers"] == "4"
    assert total["cpu_seconds"] == "7200" and total["io_read_bytes"] == str(4 * GiB)
    assert total["memory_byte_seconds"] == str(4 * GiB * 3600) and total["memory_gib_hours"] == "4"
    assert Decimal(total["cost_total"]) == expected_total()
    assert sum(Decimal(r["cost_total"]) for r in rows[:-1]) == Decimal(total["cost_total"])
    assert Decimal(rows[0]["billed_cpu_seconds"]) == 1800                # cpu is billed by usage


def test_csv_without_prices_has_no_cost_columns(state):
    header = ok(cgman(state, "--format", "csv")).splitlines()[0]
    assert header == ("tenant,containers,cpu_seconds,memory_byte_seconds,memory_gib_hours,"
                      "io_read_bytes,io_write_bytes")


def test_json(state):
    out = ok(cgman(state, "--format", "json", "--prices", str(EXAMPLE), "--by", "container"))
    doc = json.loads(out)
    assert set(doc) == {"by", "since", "until", "currency", "prices", "rows", "total"}
    assert (doc["by"], doc["since"], doc["until"], doc["currency"]) == ("container", None, None, "EUR")
    assert [r["key"] for r in doc["rows"]] == ["c1", "c2", "c3", "c4"]
    c3 = doc["rows"][2]
    assert (c3["name"], c3["tenant"], c3["group"]) == ("n-c3", "globex", "globex/lab")
    assert c3["ended"] == "2024-05-01T00:05:00+00:00"
    assert c3["cpu_seconds"] == 1800 and c3["memory_gib_hours"] == 1 and c3["io_read_bytes"] == GiB
    assert c3["billed"]["memory_byte_seconds"] == 64 * GiB * 3600
    assert isinstance(c3["cost"]["memory"], str) and Decimal(c3["cost"]["memory"]) == Decimal("0.256")
    assert Decimal(doc["total"]["cost"]["total"]) == expected_total()
    with localcontext(prec=50):
        assert sum(Decimal(r["cost"]["total"]) for r in doc["rows"]) == Decimal(doc["total"]["cost"]["total"])


def test_json_alias(state):
    assert ok(cgman(state, "--json")) == ok(cgman(state, "--format", "json"))
    assert json.loads(ok(cgman(state, "--json")))["currency"] is None


def test_state_dir_option_after_the_command(state, tmp_path_factory):
    elsewhere = tmp_path_factory.mktemp("empty")
    out = ok(cgman(elsewhere, "--state-dir", str(state), "--json"))
    assert json.loads(out)["total"]["containers"] == 4


# ------------------------------------------------------------------ periods
@pytest.mark.parametrize("args, want", [
    (["--since", str(T0 + 200)], ["c2", "c3", "c4"]),                      # ended == since: in
    (["--until", str(T0 + 200)], ["c1"]),                                  # ended == until: out
    (["--since", "2024-05-01", "--until", "2024-05-02"], ["c1", "c2", "c3"]),
    (["--since", "2024-05-02T00:00:00Z"], ["c4"]),
    (["--since", "2024-05-01T02:00:00+02:00", "--until", "2024-05-01T00:03:20"], ["c1"]),
    (["--since", "1d"], []),
    (["--until", "now"], ["c1", "c2", "c3", "c4"]),
])
def test_since_until(state, args, want):
    doc = json.loads(ok(cgman(state, "--by", "container", "--json", *args)))
    assert [r["key"] for r in doc["rows"]] == want
    assert doc["total"]["containers"] == len(want)


def test_relative_times_count_back_from_now(tmp_path):
    now = time.time()
    with Ledger(ledger_path(str(tmp_path))) as led:
        led.record(entry("old", "acme", "acme/web", now - 3 * 86400))
        led.record(entry("new", "acme", "acme/web", now - 3600))
    doc = json.loads(ok(cgman(tmp_path, "--by", "container", "--json", "--since", "2d")))
    assert [r["key"] for r in doc["rows"]] == ["new"]
    doc = json.loads(ok(cgman(tmp_path, "--by", "container", "--json", "--until", "24h")))
    assert [r["key"] for r in doc["rows"]] == ["old"]


def test_consecutive_periods_bill_each_container_once(state):
    cuts = ["2024-04-01", str(T0 + 150), str(T0 + 300), "2024-05-03"]
    keys = []
    for a, b in pairwise(cuts):
        keys += [r["key"] for r in json.loads(ok(cgman(state, "--by", "container", "--json",
                                                       "--since", a, "--until", b)))["rows"]]
    assert keys == ["c1", "c2", "c3", "c4"]


# ------------------------------------------------------------------ bad input
def test_a_malformed_price_sheet_bills_nothing(state, tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("version: 1\nprices:\n  cpu: {price: -0.031, per: cpu-hour}\n")
    line = one_error_line(cgman(state, "--prices", str(bad)))
    assert line == f"cgman: error: {bad}:3:16: prices.cpu.price: price must be a finite number >= 0, got -0.031"


@pytest.mark.parametrize("text, fmt", [("version: 1\nprices: [\n", "table"),
                                       ("version: 1\nprices:\n  gpu: {price: 1}\n", "csv"),
                                       ("prices: {}\n", "json"),
                                       ("version: 1\nprices:\n  io_read: {price: 1, mode: max}\n", "table")])
def test_every_bad_sheet_is_one_line_and_no_output(state, tmp_path, text, fmt):
    bad = tmp_path / "bad.yaml"
    bad.write_text(text)
    assert one_error_line(cgman(state, "--prices", str(bad), "--format", fmt)).startswith(f"cgman: error: {bad}:")


def test_a_missing_price_sheet(state, tmp_path):
    assert "cannot read price sheet" in one_error_line(cgman(state, "--prices", str(tmp_path / "no.yaml")))


@pytest.mark.parametrize("args, option, fragment", [
    (["--by", "host"], "--by", "use tenant, group, container or node"),
    (["--format", "xml"], "--format", "use table, csv or json"),
    (["--json", "--format", "csv"], "--json", "give one"),
    (["--since", "yesterday"], "--since", "epoch seconds"),
    (["--until", "2024-02-30"], "--until", "ISO 8601"),
    (["--since", "2024-05-02", "--until", "2024-05-01"], "--since", "must be before --until"),
])
def test_bad_options_are_usage_errors(state, args, option, fragment):
    p = cgman(state, *args)
    assert p.returncode == 2 and p.stdout == ""
    flat = " ".join(p.stderr.replace("│", " ").split())
    assert f"Invalid value for {option}" in flat and fragment in flat


def test_a_corrupt_ledger_is_reported_and_left_alone(tmp_path):
    path = Path(ledger_path(str(tmp_path)))
    garbage = os.urandom(8192)
    path.write_bytes(garbage)
    line = one_error_line(cgman(tmp_path, "--prices", str(EXAMPLE)))
    assert f"ledger {path} is corrupt" in line and "move it aside" in line
    assert path.read_bytes() == garbage
    assert sorted(os.listdir(tmp_path)) == ["ledger.db"]


def test_a_locked_ledger_fails_fast(state):
    path = ledger_path(str(state))
    holder = sqlite3.connect(path, isolation_level=None)
    try:
        holder.execute("PRAGMA locking_mode=EXCLUSIVE")
        holder.execute("BEGIN IMMEDIATE")
        holder.execute("INSERT INTO meta VALUES ('held-by', 'test')")
        t = time.monotonic()
        line = one_error_line(cgman(state, timeout=20))
        elapsed = time.monotonic() - t
    finally:
        holder.execute("ROLLBACK")
        holder.close()
    assert f"ledger {path} is locked" in line and "0.5s" in line
    assert elapsed < 10
    assert json.loads(ok(cgman(state, "--json")))["total"]["containers"] == 4     # and fine once released


def test_a_missing_ledger(tmp_path):
    line = one_error_line(cgman(tmp_path / "nothing-here"))
    assert "no container has finished under this state dir" in line
    assert not (tmp_path / "nothing-here").exists()


def test_usage_never_writes_the_ledger(state):
    path = Path(ledger_path(str(state)))
    before = path.read_bytes()
    ok(cgman(state, "--prices", str(EXAMPLE)))
    assert path.read_bytes() == before
