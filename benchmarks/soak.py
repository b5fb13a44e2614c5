#!/usr/bin/env python3
"""Soak: one `cgman agent` through container churn, policy edits and 1 s scrapes (issue #5).

Usage (as root; not part of CI):

    .venv/bin/python benchmarks/soak.py [--duration 3600] [--rate 2] [--interval 10s] [--no-baseline] [--json]

A stability measurement, not a performance comparison: it asks whether the agent's memory,
CPU, open files and scrape time stay flat while thousands of containers come and go, and
whether any container's usage goes missing on the way. Setup: a fresh cgroup root
``cgman-bench-<random>`` with its own run, state and policy dirs in a temp dir, four groups
g0..g3 (tenants t0..t3), and ``cgman agent --policy-dir ... --listen 127.0.0.1:PORT``.

For --duration seconds:
  * churn: every 1/--rate s one ``cgman run -p gN --rm -- CMD`` (a new process, as an operator
    would), alternately ``true`` and a ~50 ms shell busy loop; one in four detached (``-d``:
    its supervisor records it). At most 16 at once: a tick that would exceed that is skipped
    and counted (the machine has 2 cores and other work).
  * every 60 s g0's policy file is rewritten (os.replace, as config management does), alternating
    cpu weight 100/200 and memory.max 512Mi/384Mi; the agent applies it on the inotify event.
  * every 1 s GET /metrics: time it, and check that no tenant counter ever decreases.
  * every 10 s sample the agent's RSS (VmRSS), CPU seconds (utime+stime), open fds (/proc/PID/fd)
    and threads. If Debian's prometheus-node-exporter is installed it runs beside the agent,
    scraped and sampled the same way, as a reference of what "flat" looks like for a mature
    long-running exporter on this machine under the same churn (--no-baseline skips it).

At the end (after the last containers exit): ledger rows for the root == containers started,
each tenant's cgman_tenant_cpu_seconds_total == the sum of its ledger rows' CPU (exact, in
microseconds), no counter decreased, no scrape failed, no reconcile failed, every edit applied.

Report: per process, the mean of the first and last 10 % of the samples (RSS MiB, CPU %, fds,
threads), the slope per hour (least squares over the samples after the first 10 %, which
is warm-up: imports, caches, SQLite pages), and scrape p50/p99 in the same windows. Verdict
"flat" when, last window vs first: RSS grew by at most max(2 MiB, 5 %), fds by at most 2 at idle
(before the churn vs after it drained, so no container's files are open), CPU % by at most
1.25x + 1 point, scrape p50 by at most 1.5x + 2 ms. A short run's slope per hour is an
extrapolation of minutes: read it as a hint, the window comparison is the verdict.

Safety: only cgroups under ``cgman-bench-<random>`` are created. At the end, also on error or
Ctrl-C (first SIGINT/SIGTERM/SIGHUP: stop churning and clean up; the cleanup itself cannot be
interrupted), launches in flight are waited for (then SIGTERMed by PID), leftover containers
removed with ``cgman rm --force``, the agent and node_exporter stopped by PID, anything left
in the root's cgroups killed by PID, the root removed in every hierarchy, the temp dir deleted.
Exit status: 0 if the verdict is flat and no usage was lost, 1 otherwise, 2 if it could not run.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import re
import secrets
import shutil
import signal
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path
from typing import Any

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from scrape_fleet import (PREFIX, Servers, Skip, _tops, handle_signals, hold_signals,  # noqa: E402
                          remove_roots, stop_requested)

REPO = Path(__file__).resolve().parent.parent
NODE_EXPORTER = "/usr/bin/prometheus-node-exporter"
GROUPS = 4
MAX_IN_FLIGHT = 16
BUSY = "i=0; while [ $i -lt 20000 ]; do i=$((i+1)); done"
CLK_TCK = os.sysconf("SC_CLK_TCK")
TENANT_LINE = re.compile(r'^(cgman_tenant_\w+)\{(?:direction="(\w+)",)?tenant="([^"]*)"\} (\S+)$')
AGENT_LINE = re.compile(r"^(cgman_agent_\w+|cgman_exporter_open_files) (\S+)$")


def policy(edit: int) -> str:
    """The policy dir's one file; ``edit`` picks g0's settings (they alternate)."""
    weight, mem = (100, "512Mi") if edit % 2 == 0 else (200, "384Mi")
    lines = ["version: 1", "policies:",
             f"  g0: {{tenant: t0, cpu: {{weight: {weight}}}, memory: {{max: {mem}}},",
             "       container: {memory: {max: 64Mi}, pids: {max: 16}}}"]
    lines += [f"  g{i}: {{tenant: t{i}, container: {{memory: {{max: 64Mi}}, pids: {{max: 16}}}}}}"
              for i in range(1, GROUPS)]
    return "\n".join(lines) + "\n"


# ------------------------------------------------------------------------------ process samples
@dataclass(frozen=True)
class Sample:
    t: float             # monotonic seconds since the churn started
    rss_bytes: int
    cpu_s: float
    fds: int
    threads: int


def sample(pid: int, t: float) -> Sample | None:
    """RSS, CPU seconds, open fds and threads of ``pid`` from /proc; None if it is gone."""
    try:
        with open(f"/proc/{pid}/status") as f:
            st = {k: v.split() for k, _, v in (ln.partition(":") for ln in f)}
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        fds = len(os.listdir(f"/proc/{pid}/fd"))
    except (FileNotFoundError, ProcessLookupError):
        return None
    cpu = (int(fields[11]) + int(fields[12])) / CLK_TCK      # utime, stime (fields 14 and 15)
    return Sample(t, int(st["VmRSS"][0]) * 1024, cpu, fds, int(st["Threads"][0]))


@dataclass
class Watched:
    """A long-running server under observation: its samples and scrape times."""
    key: str
    pid: int
    port: int
    samples: list[Sample] = field(default_factory=list)
    scrapes: list[tuple[float, float]] = field(default_factory=list)     # (t, ms)
    scrape_failures: list[str] = field(default_factory=list)

    def scrape(self, t: float) -> str | None:
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=30)
        try:
            t0 = time.perf_counter()
            conn.request("GET", "/metrics", headers={"Accept-Encoding": "identity"})
            r = conn.getresponse()
            body = r.read()
            ms = (time.perf_counter() - t0) * 1000
            if r.status != 200:
                raise OSError(f"HTTP {r.status}")
        except OSError as e:
            self.scrape_failures.append(f"t={t:.0f}s: {e}")
            return None
        finally:
            conn.close()
        self.scrapes.append((t, ms))
        return body.decode()


# ------------------------------------------------------------------------------ the run
class Soak:
    def __init__(self, args: argparse.Namespace, tmp: Path) -> None:
        self.args = args
        self.tmp = tmp
        self.root = f"{PREFIX}{secrets.token_hex(4)}"
        self.run_dir, self.state_dir, self.policy_dir = tmp / "run", tmp / "state", tmp / "policies"
        self.glob = ["--cgroup-root", self.root, "--run-dir", str(self.run_dir), "--state-dir", str(self.state_dir)]
        self.servers = Servers(tmp)
        self.watched: list[Watched] = []
        self.in_flight: list[tuple[subprocess.Popen[bytes], str]] = []
        self.started = self.failed = self.skipped = self.edits = 0
        self.failures: list[str] = []
        self.decreases: list[str] = []
        self.last_tenant: dict[tuple[str, str, str], float] = {}
        self.agent_metrics: dict[str, float] = {}
        self.idle_fds: list[int] = []        # agent fds with no container live: before and after
        self.t0 = 0.0

    def cgman(self, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "cgman", *self.glob, *args], cwd=REPO, capture_output=True,
                              text=True, timeout=120, env=dict(os.environ, CGMAN_POLICY_DIR=str(self.policy_dir)))

    def write_policy(self) -> None:
        tmp = self.policy_dir / ".soak.yaml.tmp"      # not *.yaml: the agent ignores it
        tmp.write_text(policy(self.edits))
        os.replace(tmp, self.policy_dir / "soak.yaml")

    def start(self) -> None:
        self.policy_dir.mkdir()
        self.write_policy()
        # Deployed before the agent starts: older than the agent's 0.5 s quiet period, so its first
        # reconcile applies it (a fresh file would be deferred, and that reconcile succeed empty).
        old = time.time() - 5
        os.utime(self.policy_dir / "soak.yaml", (old, old))
        argv = [sys.executable, "-m", "cgman", *self.glob, "agent", "--policy-dir", str(self.policy_dir),
                "--interval", self.args.interval]
        pid, port = self.servers.start("agent", lambda port: argv + ["--listen", f"127.0.0.1:{port}"], cwd=REPO)
        agent = Watched("cgman agent", pid, port)
        deadline = time.monotonic() + 60
        while self.agent_metrics.get("cgman_agent_last_reconcile_success") != 1:
            if time.monotonic() > deadline:
                raise Skip(f"the agent did not apply the policy within 60 s{self.servers.log_tail('agent')}")
            self.read_metrics(agent.scrape(0) or "")
            time.sleep(0.2)
        agent.scrapes.clear()
        self.watched.append(agent)
        if not self.args.no_baseline and os.access(NODE_EXPORTER, os.X_OK):
            pid, port = self.servers.start("node_exporter",
                                           lambda port: [NODE_EXPORTER, f"--web.listen-address=127.0.0.1:{port}"])
            self.watched.append(Watched("node_exporter", pid, port))
        # One container first, so the ledger exists and the agent has it open (its file, -wal and
        # -shm) before the idle fd count: the count after the churn is then comparable.
        p = self.cgman("run", "-p", "g0", "--rm", "--name", "s-primer", "--", "true")
        if p.returncode != 0:
            raise Skip(f"cgman run failed ({p.returncode}): {p.stderr.strip()[-300:]}")
        self.started += 1
        agent.scrape(0)
        agent.scrapes.clear()
        time.sleep(1)
        if (s := sample(agent.pid, 0)) is not None:
            self.idle_fds.append(s.fds)

    def read_metrics(self, body: str) -> None:
        """Keep the agent's own gauges; note any tenant counter that went down."""
        for ln in body.splitlines():
            if m := AGENT_LINE.match(ln):
                self.agent_metrics[m.group(1)] = float(m.group(2))
            elif m := TENANT_LINE.match(ln):
                key, v = (m.group(1), m.group(2) or "", m.group(3)), float(m.group(4))
                if v < self.last_tenant.get(key, 0.0):
                    self.decreases.append(f"{key}: {self.last_tenant[key]} -> {v}")
                self.last_tenant[key] = v

    def launch(self, i: int) -> None:
        self.reap()
        if len(self.in_flight) >= MAX_IN_FLIGHT:
            self.skipped += 1
            return
        # Every group sees both commands, in the foreground and detached: the group is i mod 4,
        # the command flips every 4 launches, and one group in turn (for 16 launches) detaches.
        detach = (i // 16 + i) % 4 == 3
        cmd = ["true"] if (i // 4) % 2 == 0 else ["sh", "-c", BUSY]
        argv = [sys.executable, "-m", "cgman", *self.glob, "run", "-p", f"g{i % GROUPS}", "--rm",
                "--name", f"s{i:07d}", *(["-d"] if detach else []), "--", *cmd]
        p = subprocess.Popen(argv, cwd=REPO, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                             stderr=subprocess.PIPE, start_new_session=True)   # Ctrl-C reaches only us
        self.in_flight.append((p, f"s{i:07d}"))

    def reap(self, wait_s: float = 0) -> None:
        deadline = time.monotonic() + wait_s
        while True:
            still = []
            for p, name in self.in_flight:
                if p.poll() is None:
                    still.append((p, name))
                    continue
                err = p.stderr.read().decode(errors="replace").strip() if p.stderr else ""
                if p.stderr:
                    p.stderr.close()
                if p.returncode == 0:
                    self.started += 1
                else:
                    self.failed += 1
                    if len(self.failures) < 5:
                        self.failures.append(f"{name}: exit {p.returncode}: {err[-300:]}")
            self.in_flight = still
            if not still or time.monotonic() >= deadline:
                return
            time.sleep(0.05)

    def churn(self) -> None:
        a = self.args
        self.t0 = now = time.monotonic()
        end = now + a.duration
        nxt = {"launch": now, "scrape": now, "sample": now, "edit": now + a.edit_every, "progress": now + 60}
        i = 0
        while (now := time.monotonic()) < end and not stop_requested():
            t = now - self.t0
            if now >= nxt["launch"]:
                self.launch(i)
                i += 1
                nxt["launch"] += 1 / a.rate
                if nxt["launch"] < now - 5:          # far behind (a stall): do not burst to catch up
                    nxt["launch"] = now
            if now >= nxt["scrape"]:
                for w in self.watched:
                    body = w.scrape(t)
                    if w.key == "cgman agent" and body is not None:
                        self.read_metrics(body)
                nxt["scrape"] += 1
            if now >= nxt["sample"]:
                for w in self.watched:
                    if (s := sample(w.pid, t)) is not None:
                        w.samples.append(s)
                    elif w.key == "cgman agent":
                        raise SystemExit(f"the agent exited{self.servers.log_tail('agent')}")
                nxt["sample"] += a.sample_every
            if now >= nxt["edit"]:
                self.edits += 1
                self.write_policy()
                nxt["edit"] += a.edit_every
            if now >= nxt["progress"]:
                print(f"  {t:5.0f}s: {self.started} containers, {self.failed} failed, {self.edits} edits, "
                      f"agent RSS {self.watched[0].samples[-1].rss_bytes / 2**20:.1f} MiB", file=sys.stderr, flush=True)
                nxt["progress"] += 60
            time.sleep(max(0.0, min(nxt["launch"], nxt["scrape"], nxt["sample"]) - time.monotonic()))
        self.reap()

    def drain(self) -> dict[str, Any]:
        """Wait for the last containers; the agent's final word; the ledger's. Returns the checks."""
        self.reap(wait_s=60)
        ledger = self.state_dir / "ledger.db"
        deadline = time.monotonic() + 60
        while True:          # detached ones are recorded by their supervisors, a moment later
            rows = self.ledger_rows(ledger)
            ps = json.loads(self.cgman("ps", "--json").stdout or "[]")
            if (rows >= self.started and not ps) or time.monotonic() > deadline:
                break
            time.sleep(0.5)
        agent = self.watched[0]               # its /metrics reads the ledger on every scrape
        body = agent.scrape(time.monotonic() - self.t0) or ""
        self.read_metrics(body)
        if (s := sample(agent.pid, time.monotonic() - self.t0)) is not None:
            self.idle_fds.append(s.fds)
        counter = {}              # as served: an exact decimal of microseconds
        for ln in body.splitlines():
            if (m := TENANT_LINE.match(ln)) and m.group(1) == "cgman_tenant_cpu_seconds_total":
                counter[m.group(3)] = int(Decimal(m.group(4)) * 1_000_000)
        db = sqlite3.connect(f"file:{ledger}?mode=ro", uri=True)
        try:
            per_tenant = dict(db.execute("SELECT tenant, sum(cpu_usage_usec) FROM containers WHERE cgroup_root = ? "
                                         "GROUP BY tenant", (self.root,)).fetchall())
        finally:
            db.close()
        am = self.agent_metrics
        return {
            "containers started": (self.started, rows, rows == self.started),
            "tenant CPU counter == ledger (usec)": (counter, per_tenant, counter == per_tenant),
            "launches failed": (self.failed, 0, self.failed == 0),
            "tenant counter decreases": (len(self.decreases), 0, not self.decreases),
            "scrapes failed": (len(agent.scrape_failures), 0, not agent.scrape_failures),
            "reconcile errors": (am.get("cgman_agent_reconcile_errors_total"), 0,
                                 am.get("cgman_agent_reconcile_errors_total") == 0),
            "policy files invalid": (am.get("cgman_agent_policy_files_invalid"), 0,
                                     am.get("cgman_agent_policy_files_invalid") == 0),
            "reconciles >= edits + 1": (am.get("cgman_agent_reconciles_total"), self.edits + 1,
                                        (am.get("cgman_agent_reconciles_total") or 0) >= self.edits + 1),
            "settings written >= edits": (am.get("cgman_agent_changes_applied_total"), self.edits,
                                          (am.get("cgman_agent_changes_applied_total") or 0) >= self.edits),
            "drift corrections (nobody edits by hand)": (am.get("cgman_agent_drift_corrections_total"), 0,
                                                         am.get("cgman_agent_drift_corrections_total") == 0),
        }

    def ledger_rows(self, ledger: Path) -> int:
        if not ledger.exists():
            return 0
        db = sqlite3.connect(f"file:{ledger}?mode=ro", uri=True)
        try:
            return int(db.execute("SELECT count(*) FROM containers WHERE cgroup_root = ?", (self.root,)).fetchone()[0])
        except sqlite3.Error:
            return 0
        finally:
            db.close()

    def cleanup(self) -> list[str]:
        """Everything this run started, by PID, and the root in every hierarchy. Never raises."""
        problems: list[str] = []
        self.reap(wait_s=30)
        for p, name in self.in_flight:
            p.terminate()
            try:
                p.wait(10)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
            problems.append(f"{name}: launch still running at cleanup, terminated")
        try:
            for c in json.loads(self.cgman("ps", "--json").stdout or "[]"):
                self.cgman("rm", "--force", c["name"])
        except (OSError, ValueError, KeyError, subprocess.SubprocessError) as e:
            problems.append(f"cgman ps/rm: {e}")
        problems += self.servers.stop()
        for _ in range(50):                     # anything still in our root: by PID
            pids: set[int] = set()
            for top in _tops(self.root):
                for d, _, files in os.walk(top):
                    if "cgroup.procs" in files:
                        try:
                            pids.update(int(x) for x in Path(d, "cgroup.procs").read_text().split())
                        except OSError:
                            pass
            if not pids:
                break
            for pid in pids:
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
            time.sleep(0.1)
        problems += remove_roots(self.root)
        if left := _tops(self.root):
            problems.append(f"cgroups left behind: {left}")
        return problems


# ------------------------------------------------------------------------------ report
def window(xs: list[Any], first: bool) -> list[Any]:
    n = max(1, len(xs) // 10)
    return xs[:n] if first else xs[-n:]


def slope_per_hour(pts: list[tuple[float, float]]) -> float:
    """Least-squares slope of (seconds, value), per hour."""
    if len(pts) < 3:
        return float("nan")
    mt, mv = statistics.fmean(t for t, _ in pts), statistics.fmean(v for _, v in pts)
    den = sum((t - mt) ** 2 for t, _ in pts)
    return 3600 * sum((t - mt) * (v - mv) for t, v in pts) / den if den else float("nan")


def cpu_pct(ss: list[Sample]) -> list[tuple[float, float]]:
    return [(b.t, 100 * (b.cpu_s - a.cpu_s) / (b.t - a.t)) for a, b in zip(ss, ss[1:], strict=False) if b.t > a.t]


def figures(w: Watched) -> dict[str, dict[str, float]]:
    ss = w.samples
    warm = len(ss) // 10
    series = {"RSS MiB": [(s.t, s.rss_bytes / 2**20) for s in ss], "CPU %": cpu_pct(ss),
              "fds": [(s.t, float(s.fds)) for s in ss], "threads": [(s.t, float(s.threads)) for s in ss],
              "scrape p50 ms": [], "scrape p99 ms": []}
    out = {}
    for k, pts in series.items():
        if not pts:
            continue
        out[k] = {"first": statistics.fmean(v for _, v in window(pts, True)),
                  "last": statistics.fmean(v for _, v in window(pts, False)),
                  "per_hour": slope_per_hour(pts[warm:])}
    for k, q in (("scrape p50 ms", 50), ("scrape p99 ms", 99)):
        vals = {}
        for side in ("first", "last"):
            ms = sorted(m for _, m in window(w.scrapes, side == "first"))
            vals[side] = ms[min(len(ms) - 1, len(ms) * q // 100)] if ms else float("nan")
        out[k] = {**vals, "per_hour": float("nan")}
    return out


def verdict(fig: dict[str, dict[str, float]], idle_fds: list[int]) -> dict[str, tuple[str, bool]]:
    r, c, s = fig["RSS MiB"], fig["CPU %"], fig["scrape p50 ms"]
    rss_allow = max(2.0, 0.05 * r["first"])
    out = {"RSS": (f"+{r['last'] - r['first']:.2f} MiB (allowed {rss_allow:.2f})", r["last"] - r["first"] <= rss_allow),
           "CPU": (f"{c['first']:.2f} -> {c['last']:.2f} % (allowed {1.25 * c['first'] + 1:.2f})",
                   c["last"] <= 1.25 * c["first"] + 1),
           "scrape p50": (f"{s['first']:.1f} -> {s['last']:.1f} ms (allowed {1.5 * s['first'] + 2:.1f})",
                          s["last"] <= 1.5 * s["first"] + 2)}
    if len(idle_fds) == 2:
        out["idle fds"] = (f"{idle_fds[0]} before the churn -> {idle_fds[1]} after it (allowed +2)",
                           idle_fds[1] - idle_fds[0] <= 2)
    return out


def report(soak: Soak, checks: dict[str, Any], elapsed: float, as_json: bool) -> bool:
    figs = {w.key: figures(w) for w in soak.watched if len(w.samples) >= 3}
    flat = verdict(figs["cgman agent"], soak.idle_fds) if "cgman agent" in figs else {}
    ok = all(v[2] for v in checks.values()) and bool(flat) and all(v[1] for v in flat.values())
    if as_json:
        print(json.dumps({"elapsed_s": elapsed, "rate": soak.args.rate, "started": soak.started,
                          "skipped": soak.skipped, "edits": soak.edits, "figures": figs,
                          "checks": {k: {"got": v[0], "want": v[1], "ok": v[2]} for k, v in checks.items()},
                          "verdict": {k: {"detail": v[0], "ok": v[1]} for k, v in flat.items()},
                          "failures": soak.failures, "decreases": soak.decreases[:10], "ok": ok}, indent=1))
        return ok
    if stop_requested():
        print(f"\nsoak: interrupted by signal {stop_requested()} after {elapsed:.0f} of {soak.args.duration:.0f} s")
    print(f"\nsoak: {elapsed:.0f} s, {soak.started} containers started ({soak.started / elapsed:.2f}/s), "
          f"{soak.failed} failed, {soak.skipped} ticks skipped (>{MAX_IN_FLIGHT} in flight), {soak.edits} policy "
          f"edits, agent --interval {soak.args.interval}, /metrics scraped every 1 s")
    print("A stability measurement: the agent against its own earlier self; node_exporter (if shown) is a\n"
          "reference for what a flat long-running exporter looks like here, not a contender.\n")
    print(f"{'process':<15}{'figure':<15}{'first 10%':>11}{'last 10%':>11}{'slope/h':>11}")
    for key, fig in figs.items():
        for k, v in fig.items():
            print(f"{key:<15}{k:<15}{v['first']:>11.2f}{v['last']:>11.2f}{v['per_hour']:>11.2f}")
    print("(slope/h: least squares after the first 10 % (warm-up); from a short run it extrapolates minutes)\n")
    print("usage accounting:")
    for k, (got, want, good) in checks.items():
        print(f"  {'ok  ' if good else 'FAIL'} {k}: {got}" + ("" if good else f" (want {want})"))
    print("resources, last 10 % vs first 10 %:")
    if not flat:
        print(f"  no verdict: {len(soak.watched[0].samples)} samples of the agent (3 or more needed; "
              f"one every {soak.args.sample_every:g} s)")
    for k, (detail, good) in flat.items():
        print(f"  {'flat' if good else 'GREW'} {k}: {detail}")
    for f in soak.failures:
        print(f"  launch failure: {f}")
    for d in soak.decreases[:5]:
        print(f"  counter decreased: {d}")
    print(f"\nverdict: {'FLAT, no usage lost' if ok else 'NOT OK (see above)'}")
    return ok


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--duration", type=float, default=3600, help="seconds of churn (default 3600)")
    ap.add_argument("--rate", type=float, default=2.0, help="containers started per second (default 2)")
    ap.add_argument("--interval", default="10s", help="the agent's --interval (default 10s)")
    ap.add_argument("--edit-every", type=float, default=60, help="seconds between policy edits (default 60)")
    ap.add_argument("--sample-every", type=float, default=10, help="seconds between RSS/CPU/fd samples")
    ap.add_argument("--no-baseline", action="store_true", help="do not run node_exporter beside the agent")
    ap.add_argument("--json", action="store_true", help="print the figures as JSON")
    args = ap.parse_args()
    if os.geteuid() != 0:
        print("soak.py needs root (cgroups)", file=sys.stderr)
        return 2
    if not 0 < args.rate <= 10:
        ap.error("--rate must be in (0, 10]: this launches a process per container")
    tmp = Path(tempfile.mkdtemp(prefix="cgman-soak-"))
    soak = Soak(args, tmp)
    ok, code = False, 2
    print(f"soak: root {soak.root}, {args.duration:.0f} s at {args.rate}/s, temp dir {tmp}", file=sys.stderr)
    try:
        with handle_signals():
            soak.start()
            soak.churn()
        with hold_signals():
            elapsed = time.monotonic() - soak.t0
            checks = soak.drain()
            ok = report(soak, checks, elapsed, args.json)
            code = 0 if ok else 1
    except Skip as e:
        print(f"soak: cannot run: {e}", file=sys.stderr)
    finally:
        with hold_signals():
            problems = soak.cleanup()
            for p in problems:
                print(f"cleanup: {p}", file=sys.stderr)
            shutil.rmtree(tmp, ignore_errors=True)
            if problems:
                code = max(code, 1)
    return code


if __name__ == "__main__":
    sys.exit(main())
