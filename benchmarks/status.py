#!/usr/bin/env python3
"""Benchmark: `cgman status` over N groups, in this process (the library call) and as the CLI.

Usage (as root):

    .venv/bin/python benchmarks/status.py [--groups 50] [--rounds 40] [--json]

    # this checkout against another (each with its own .venv; copy this file into the other
    # checkout's benchmarks/ if it predates it):
    .venv/bin/python benchmarks/before_after.py --before /tmp/before --after . --bench status \\
        --blocks 6 -- --groups 50

Setup: a fresh cgman root ``cgman-bench-<tag>-status`` with ``--groups`` groups g0..gN-1 (made
by ``cgman apply`` of a policy, in this process), no processes in them.

Contenders, in one run, alternating round by round so drift hits both alike:

  status-api   ``cgman.reconcile.status.status(host, ".")``: every group's limits, procs and
               usage read from the kernel (what the CLI prints, without start-up or printing)
  status-cli   ``python -m cgman --cgroup-root ROOT status --json``, start to exit

Reported: median and p90 ms of each (``--json``: ``results`` rows of contender/median_ms, the
shape benchmarks/before_after.py compares).

Safety: only cgroups under ``cgman-bench-<tag>-status`` are created, and that root is removed
in every hierarchy at the end, also on failure.
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from scrape_fleet import PREFIX, remove_roots  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))


def _make_groups(root: str, n: int, tmp: str) -> object:
    from cgman.drivers import open_host
    from cgman.policy import load_files
    from cgman.reconcile.apply import apply
    policy = Path(tmp, "p.yaml")
    policy.write_text("version: 1\npolicies:\n" + "".join(f"  g{i}: {{pids: {{max: 64}}}}\n" for i in range(n)))
    host = open_host(root)
    apply(load_files([policy]), host)
    return host


def _measure(host: object, root: str, rounds: int) -> dict[str, list[float]]:
    from cgman.reconcile.status import status
    env = dict(os.environ, PYTHONPATH=str(REPO))
    cli = [sys.executable, "-m", "cgman", "--cgroup-root", root, "status", "--json"]
    ms: dict[str, list[float]] = {"status-api": [], "status-cli": []}
    status(host, ".")                                   # warm-up: imports, the kept mount fds
    subprocess.run(cli, env=env, cwd=REPO, capture_output=True, check=True)
    for r in range(rounds):
        for name in (("status-api", "status-cli") if r % 2 == 0 else ("status-cli", "status-api")):
            t = time.perf_counter()
            if name == "status-api":
                status(host, ".")
            else:
                subprocess.run(cli, env=env, cwd=REPO, capture_output=True, check=True)
            ms[name].append((time.perf_counter() - t) * 1e3)
    return ms


def main() -> int:
    ap = argparse.ArgumentParser(description=(__doc__ or "").split("\n")[0])
    ap.add_argument("--groups", type=int, default=50, help="groups under the root")
    ap.add_argument("--rounds", type=int, default=40, help="measured rounds, each running both contenders once")
    ap.add_argument("--json", action="store_true", help="print JSON instead of a table")
    args = ap.parse_args()
    if os.geteuid() != 0:
        ap.error("must run as root")
    root = f"{PREFIX}{secrets.token_hex(3)}-status"
    try:
        with tempfile.TemporaryDirectory() as tmp:
            host = _make_groups(root, args.groups, tmp)
            ms = _measure(host, root, args.rounds)
    finally:
        left = remove_roots(root)
        if left:
            print(f"could not remove {left}", file=sys.stderr)
    rows = [{"contender": k, "median_ms": statistics.median(v), "p90_ms": sorted(v)[int(0.9 * (len(v) - 1))]}
            for k, v in ms.items()]
    if args.json:
        print(json.dumps({"groups": args.groups, "rounds": args.rounds, "results": rows}))
    else:
        for r in rows:
            print(f"{r['contender']:<12} median {r['median_ms']:8.2f} ms   p90 {r['p90_ms']:8.2f} ms")
    return 0


if __name__ == "__main__":
    sys.exit(main())
