#!/usr/bin/env python3
"""Benchmark: the two layouts and the two cgroup drivers under systemd (docs/operations.md).

Run it only in the throw-away systemd VM (it installs units and starts the agent):

    CGMAN_SYSTEMD_VM=1 CG2VM_INIT=systemd ../shared/cgroup2-vm/run-in-cgroup2-vm.sh \\
        .venv/bin/python benchmarks/systemd.py [--groups 40] [--rounds 3]

1. `cgman apply` as a whole process, cold then again (nothing to do), with the cgroupfs driver
   (a top-level root) and with `--cgroup-driver systemd` (slices over D-Bus), in interleaved rounds.
2. The shipped agent unit: `systemctl start` until its first reconcile is served on /metrics, with
   the root top-level (layout (a)) and inside the unit (layout (b)).
A container's launch under each driver: benchmarks/launch.py's systemd contenders.
Medians are printed; the VM's CPU is ~10x slower than a real one, so compare ratios.
"""

from __future__ import annotations

import argparse
import os
import secrets
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))


def policy(groups: int) -> str:
    tenants = max(1, groups // 4)
    lines = ["version: 1", "policies:"]
    for t in range(tenants):
        lines += [f"  t{t}:", "    cpu: {weight: 200}", "    memory: {max: 1Gi}", "    children:"]
        for c in range(groups // tenants - 1):
            lines += [f"      g{c}:", "        cpu: {max: 0.5}", "        memory: {max: 256Mi}",
                      "        pids: {max: 100}"]
    return "\n".join(lines) + "\n"


def timed(cmd: list[str], env: dict[str, str]) -> float:
    t = time.perf_counter()
    subprocess.run(cmd, check=True, env=env, capture_output=True, cwd=REPO)
    return time.perf_counter() - t


def bench_drivers(groups: int, rounds: int, tmp: Path) -> None:
    from tests.conftest import destroy_root
    from cgman.drivers import open_host
    from cgman.drivers.systemd.units import slice_name
    (tmp / "p.yaml").write_text(policy(groups))
    got: dict[str, list[float]] = {}
    for _ in range(rounds):
        for driver in ("cgroupfs", "systemd"):
            root = f"cgman-bench-{secrets.token_hex(3)}"
            env = dict(os.environ, CGMAN_CGROUP_ROOT=root, CGMAN_STATE_DIR=str(tmp / "state"),
                       CGMAN_RUN_DIR=str(tmp / "run"))
            cmd = [sys.executable, "-m", "cgman", "apply", "--cgroup-driver", driver, str(tmp / "p.yaml")]
            try:
                got.setdefault(f"{driver} cold", []).append(timed(cmd, env))
                got.setdefault(f"{driver} again", []).append(timed(cmd, env))
            finally:
                if driver == "systemd":
                    subprocess.run(["systemctl", "stop", slice_name(root)], check=False)
                else:
                    destroy_root(open_host(root))
    for k, v in got.items():
        print(f"apply {groups} groups, {k:<16} median {statistics.median(v) * 1000:8.0f} ms  ({len(v)} rounds)")


def bench_agent(rounds: int) -> None:
    from tests.test_systemd_host import Agent, reconciles, systemctl  # the same install as the tests
    for layout, root in (("(a) top-level", "cgman-bench-a"), ("(b) in the unit", "cgman.slice/cgman-agent.service/p")):
        times = []
        for _ in range(rounds):
            with tempfile.TemporaryDirectory() as d:
                a = Agent(root, Path(d))
                a.install()
                (Path("/etc/cgman/policies") / "p.yaml").write_text(policy(8))
                t = time.perf_counter()
                systemctl("start", "cgman-agent.service")
                while reconciles() < 1:
                    time.sleep(0.02)
                times.append(time.perf_counter() - t)
                systemctl("stop", "cgman-agent.service")
                if not root.startswith("cgman.slice"):
                    from tests.conftest import destroy_root
                    from cgman.drivers import open_host
                    destroy_root(open_host(root))
        print(f"agent start to first reconcile, layout {layout:<16} median {statistics.median(times) * 1000:6.0f} ms")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--groups", type=int, default=40)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--only", choices=("apply", "agent"), help="one part only")
    args = ap.parse_args()
    if os.environ.get("CGMAN_SYSTEMD_VM") != "1" or Path("/proc/1/comm").read_text().strip() != "systemd":
        sys.exit("benchmarks/systemd.py: run it in the systemd VM (see its header); it installs units")
    for d in ("/etc/cgman", "/var/lib/cgman", "/run/cgman"):
        os.makedirs(d, exist_ok=True)
        subprocess.run(["mount", "-t", "tmpfs", "tmpfs", d], check=True)
    os.makedirs("/etc/cgman/policies")
    if args.only in (None, "apply"):
        with tempfile.TemporaryDirectory() as d:
            bench_drivers(args.groups, args.rounds, Path(d))
    if args.only in (None, "agent"):
        bench_agent(args.rounds)


if __name__ == "__main__":
    main()
