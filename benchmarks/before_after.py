#!/usr/bin/env python3
"""Benchmark: one of cgman's benchmarks, run from two checkouts alternately, to show a change
(a restructure, say) costs nothing beyond noise.

Usage (as root; each checkout needs its own ``.venv``, made by ``scripts/setup.sh``):

    git worktree add /tmp/before <commit> && (cd /tmp/before && bash scripts/setup.sh)
    .venv/bin/python benchmarks/before_after.py --before /tmp/before --after . \\
        --bench launch --blocks 4 -- --rounds 10 --only cgman,inprocess

Each block runs ``<tree>/.venv/bin/python <tree>/benchmarks/<bench>.py --json ARGS`` once for
"before" and once for "after", in an order that alternates block by block, so drift on the
machine hits both alike. What is compared, per block, is each cgman measure the benchmark
reports:

  launch, scrape, status   ``results`` / ``rows``: ``median_ms`` of each contender
  apply                    ``summary.rows``: ``first_s`` and ``second_s`` of ``cgman-api`` and ``cgman-cli``

Printed: per measure, the median over blocks of before and after, and after/before. A ratio
within the spread of the blocks is noise; the spread (min-max of the per-block ratios) is printed
next to it so a reader can judge.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
from pathlib import Path


def measures(bench: str, report: dict) -> dict[str, float]:
    """The numbers worth comparing in one benchmark report, by a stable name."""
    if bench == "apply":
        rows = report.get("summary", {}).get("rows", [])
        return {f"{r['tool']} {k}": float(r[k]) for r in rows if r["tool"].startswith("cgman")
                for k in ("first_s", "second_s") if isinstance(r.get(k), (int, float))}
    rows = report.get("results") or report.get("rows") or []
    return {r["contender"]: float(r["median_ms"]) for r in rows if isinstance(r.get("median_ms"), (int, float))}


def run_once(tree: Path, bench: str, args: list[str], timeout_s: float) -> dict[str, float]:
    cmd = [str(tree / ".venv/bin/python"), str(tree / "benchmarks" / f"{bench}.py"), "--json", *args]
    done = subprocess.run(cmd, cwd=tree, capture_output=True, text=True, timeout=timeout_s)
    if done.returncode != 0:
        raise SystemExit(f"before_after: {' '.join(cmd)} exited {done.returncode}: "
                         f"{done.stderr.strip().splitlines()[-1:] or done.stdout[-300:]}")
    return measures(bench, json.loads(done.stdout))


def main() -> int:
    ap = argparse.ArgumentParser(description=(__doc__ or "").split("\n")[0])
    ap.add_argument("--before", required=True, type=Path, help="checkout of the old commit (with .venv)")
    ap.add_argument("--after", required=True, type=Path, help="checkout of the new commit (with .venv)")
    ap.add_argument("--bench", required=True, choices=("launch", "scrape", "apply", "status"))
    ap.add_argument("--blocks", type=int, default=4, help="before/after pairs, alternating order")
    ap.add_argument("--timeout", type=float, default=900, help="seconds per benchmark run")
    ap.add_argument("args", nargs="*", help="passed to the benchmark (after --)")
    a = ap.parse_args()
    runs: dict[str, list[dict[str, float]]] = {"before": [], "after": []}
    for block in range(a.blocks):
        order = ("before", "after") if block % 2 == 0 else ("after", "before")
        for side in order:
            runs[side].append(run_once(getattr(a, side).resolve(), a.bench, a.args, a.timeout))
            print(f"block {block + 1}/{a.blocks}: {side} done", file=sys.stderr)
    names = sorted(set.intersection(*(set(r) for r in runs["before"] + runs["after"])))
    print(f"{a.bench}: {a.blocks} blocks, before={a.before} after={a.after} args={' '.join(a.args)}")
    print(f"{'measure':<28} {'before':>10} {'after':>10} {'after/before':>13} {'block ratios min-max':>22}")
    for n in names:
        b = statistics.median(r[n] for r in runs["before"])
        f = statistics.median(r[n] for r in runs["after"])
        per = [x[n] / y[n] for x, y in zip(runs["after"], runs["before"]) if y[n]]
        spread = f"{min(per):.2f}-{max(per):.2f}" if per else "-"
        print(f"{n:<28} {b:>10.3f} {f:>10.3f} {f / b if b else float('nan'):>13.2f} {spread:>22}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
