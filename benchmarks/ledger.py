#!/usr/bin/env python3
"""Benchmark: the fleet ledger at scale: ship rate, and `cgman usage` over 1,000,000 rows.

Usage (as root; Debian's postgresql package installed):

    .venv/bin/python benchmarks/ledger.py [--rows 1000000] [--months 12] [--json]

A node's SQLite ledger gets ``--rows`` synthetic rows (Ledger's own schema and triggers),
their end times spread evenly over ``--months`` months (3 tenants, 30 groups). A throw-away
PostgreSQL cluster (tests/pg.py: Unix socket in a temp dir, removed at the end) gets the
cgman schema. Then, each timed once with time.perf_counter:

  ship        the agent's Shipper sending the whole outbox (batches of 1000), in rows/s
  sqlite-month / pg-month   `cgman usage --prices prices/example.yaml --since M --until M+1`
              (the whole CLI as a subprocess, interpreter start included) for the busiest month
  sqlite-all / pg-all       the same with no period: every row billed

Target (issue 14): a monthly bill over a 1,000,000-row ledger in <= 2 s on each. The period
rule (since <= ended < until) is served by an index on ``ended`` in both databases.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

T0 = 1_704_067_200.0            # 2024-01-01T00:00:00Z
MONTH_S = 30 * 86400


def fill(state: str, rows: int, months: int) -> None:
    from cgman.accounting.ledger import Ledger, ledger_path
    from cgman.accounting.ledger import _COLUMNS as cols  # the ledger's own column order
    span = months * MONTH_S
    with Ledger(ledger_path(state)) as led:
        db = led.connect()
        db.execute("BEGIN")
        q = f"INSERT INTO containers ({', '.join(cols)}) VALUES ({', '.join('?' * len(cols))})"
        batch = []
        for i in range(rows):
            ended = T0 + span * (i + 0.5) / rows
            t = i % 3
            batch.append((f"{i:032x}", f"c{i}", f"tenant-{t}", f"tenant-{t}/g{i % 30}", "cgman", ended - 600 - i % 500,
                          ended, 0, None, 1_000_000 + i % 7919, None, None, 2.5e9 + (i % 1013) * 0.1, None,
                          i % 100_000, i % 50_000, 1.0 if i % 2 else None, (256 << 20) if i % 3 else None,
                          8.0, 64 << 30, ended + 1))
            if len(batch) == 20000:
                db.executemany(q, batch)
                batch.clear()
        db.executemany(q, batch)
        db.execute("COMMIT")


def usage(env: dict[str, str], *args: str) -> float:
    t = time.perf_counter()
    p = subprocess.run([sys.executable, "-m", "cgman", "usage", "--prices", str(REPO / "prices" / "example.yaml"),
                        "--format", "csv", *args], env=env, cwd=REPO, capture_output=True, text=True)
    took = time.perf_counter() - t
    if p.returncode:
        raise SystemExit(f"cgman usage {' '.join(args)} failed: {p.stderr.strip()}")
    return took


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=int, default=1_000_000)
    ap.add_argument("--months", type=int, default=12)
    ap.add_argument("--json", action="store_true")
    a = ap.parse_args()
    from tests.pg import fresh_db, login_role, start_cluster
    out: dict[str, float] = {"rows": a.rows}
    with tempfile.TemporaryDirectory(prefix="cgman-bench-ledger-") as tmp:
        t = time.perf_counter()
        fill(tmp, a.rows, a.months)
        out["fill_s"] = time.perf_counter() - t
        cluster = start_cluster()
        c = next(cluster)
        try:
            db = fresh_db(c)
            url = c.url("bench_agent", login_role(c, "bench_agent", "cgman_agent"), db)
            from cgman.fleet.shipper import Shipper
            s = Shipper(url, "bench", tmp)
            t = time.perf_counter()
            s.open()
            while s.ship_once():
                pass
            out["ship_s"] = time.perf_counter() - t
            out["ship_rows_per_s"] = s.health.shipped / out["ship_s"]
            s.close()
            c.sql("ANALYZE cgman.ledger", db=db)
            bill_url = c.url("bench_billing", login_role(c, "bench_billing", "cgman_billing"), db)
            env = dict(os.environ, PYTHONPATH=str(REPO), CGMAN_STATE_DIR=tmp, TZ="UTC")
            month = ["--since", str(T0 + MONTH_S), "--until", str(T0 + 2 * MONTH_S)]
            out["month_rows"] = a.rows // a.months
            out["sqlite_month_s"] = usage(env, *month)
            out["pg_month_s"] = usage(env, *month, "--ledger-url", bill_url)
            out["sqlite_all_s"] = usage(env)
            out["pg_all_s"] = usage(env, "--ledger-url", bill_url)
        finally:
            for _ in cluster:
                pass
    if a.json:
        print(json.dumps(out, indent=2))
    else:
        for k, v in out.items():
            print(f"{k:18} {v:,.2f}" if isinstance(v, float) else f"{k:18} {v:,}")


if __name__ == "__main__":
    main()
