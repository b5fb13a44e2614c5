#!/usr/bin/env python3
"""Benchmark: the two layouts and the two cgroup drivers under systemd (docs/operations.md).

Run it only in the throw-away systemd VM (it installs units and starts the agent):

    CGMAN_SYSTEMD_VM=1 CG2VM_INIT=systemd ../shared/cgroup2-vm/run-in-cgroup2-vm.sh \\
        .venv/bin/python benchmarks/systemd.py [--groups 40] [--rounds 3]

1. `cgman apply` as a whole process, cold then again (nothing to do), with the cgroupfs driver
   (a top-level root) and with `--cgroup-driver systemd` (slices over D-Bus), in interleaved rounds.
2. The shipped agent unit: `systemctl start` until its first reconcile is served on /metrics, with
   the root top-level (layout (a)) and inside the unit (layout (b)).
3. A container's launch under each driver (`--only launch`): the library's launch() of `/bin/true`
   until it exec'd, and launch + wait + finish (the final usage into the ledger), with the
   cgroupfs driver (a leaf under a top-level root) and the systemd driver (a transient scope over
   D-Bus, its keeper, the payload leaf); `systemd-run --scope --slice=` of `/bin/true` as systemd's
   own reference. Interleaved in the same rounds; ratios against the cgroupfs driver.
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


LAUNCH_POLICY = "version: 1\npolicies:\n  acme:\n    memory: {max: 512Mi}\n    children:\n      web: {}\n"


def _launcher(driver: str, tmp: Path):
    """(launch one container and return (launch s, whole cycle s), clean up) under ``driver``."""
    from cgman.containers.launch import ContainerSpec, launch
    from cgman.drivers import open_host
    from cgman.model import MemoryLimits, NetworkSpec, PidsLimits, Resources
    from cgman.settings import Settings
    from cgman.state.records import Store
    sys.path.insert(0, str(REPO))
    from tests.test_systemd_scopes import _apply
    root = f"cgman-bench-{secrets.token_hex(3)}"
    (tmp / f"{driver}.yaml").write_text(LAUNCH_POLICY)
    _apply(driver, root, tmp / f"{driver}.yaml")
    store = Store(Settings(cgroup_root=root, run_dir=str(tmp / driver / "run"), state_dir=str(tmp / driver / "state"),
                           cgroup_driver=driver, sample_interval_s=0))
    host = open_host(root)
    res = Resources(memory=MemoryLimits(max_bytes=64 << 20), pids=PidsLimits(max=64))
    n = [0]

    def one() -> tuple[float, float]:
        n[0] += 1
        t = time.perf_counter()
        c = launch(host, store, ContainerSpec(name=f"b{n[0]}", group="acme/web", tenant="acme", argv=("/bin/true",),
                                              resources=res, network=NetworkSpec(mode="none"), auto_remove=True))
        launched = time.perf_counter() - t
        c.wait()
        c.finish()
        return launched, time.perf_counter() - t

    def done() -> None:
        from cgman.drivers.systemd.units import slice_name
        from tests.conftest import destroy_root
        if driver == "systemd":
            subprocess.run(["systemctl", "stop", slice_name(root)], check=False)
        else:
            destroy_root(open_host(root))
    return one, done


def bench_launch(rounds: int, tmp: Path) -> None:
    got: dict[str, list[float]] = {}
    launchers = {d: _launcher(d, tmp) for d in ("cgroupfs", "systemd")}
    try:
        for _ in range(rounds + 1):                     # the first round warms up, and is dropped
            for driver, (one, _) in launchers.items():
                launched, whole = one()
                got.setdefault(f"{driver} launch", []).append(launched)
                got.setdefault(f"{driver} launch+wait+finish", []).append(whole)
            t = time.perf_counter()
            subprocess.run(["systemd-run", "--scope", "--quiet", "--slice=cgman-bench.slice", "/bin/true"], check=True)
            got.setdefault("systemd-run --scope /bin/true (whole process)", []).append(time.perf_counter() - t)
    finally:
        for _, done in launchers.values():
            done()
        subprocess.run(["systemctl", "stop", "cgman-bench.slice"], check=False)
    med = {k: statistics.median(v[1:]) for k, v in got.items()}
    for k, v in med.items():
        base = med.get(k.replace("systemd ", "cgroupfs ")) if k.startswith("systemd ") else None
        ratio = f"  {v / base:5.2f}x cgroupfs" if base else ""
        print(f"{k:<48} median {v * 1000:8.1f} ms{ratio}  ({rounds} rounds)")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--groups", type=int, default=40)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--only", choices=("apply", "agent", "launch"), help="one part only")
    args = ap.parse_args()
    if os.environ.get("CGMAN_SYSTEMD_VM") != "1" or Path("/proc/1/comm").read_text().strip() != "systemd":
        sys.exit("benchmarks/systemd.py: run it in the systemd VM (see its header); it installs units")
    for d in ("/etc/cgman", "/var/lib/cgman", "/run/cgman"):
        os.makedirs(d, exist_ok=True)
        subprocess.run(["mount", "-t", "tmpfs", "tmpfs", d], check=True)
    os.makedirs("/etc/cgman/policies")
    with tempfile.TemporaryDirectory() as d:
        if args.only in (None, "apply"):
            bench_drivers(args.groups, args.rounds, Path(d))
        if args.only in (None, "launch"):
            bench_launch(args.rounds * 10, Path(d))
    if args.only in (None, "agent"):
        bench_agent(args.rounds)


if __name__ == "__main__":
    main()
