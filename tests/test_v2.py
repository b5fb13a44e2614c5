"""Pure cgroup v2 paths: subtree_control delegation, io.max / io weights on a real
disk, the v2 memory files, and memory.max below usage. Run in the cgroup2 VM
(`-m cgroup2`) or on any pure-v2 host; deselected on hybrid/v1 hosts by
scripts/test.sh because these files do not exist there."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest

from cgman.plan import Write
from cgman.policy import load_files
from cgman.reconcile.apply import apply

from .conftest import write_policy
from .test_enforcement import spawn_in, start_memory_hog

pytestmark = [pytest.mark.kernel, pytest.mark.cgroup2, pytest.mark.v2host]


def _read(host, cg: str, f: str) -> str:
    return host.read(Write(cg, "cgroup" if f.startswith("cgroup.") else f.split(".")[0], f, "")).strip()


def _scratch_disk() -> str:
    """The VM's throw-away /dev/vda (never a disk that holds data)."""
    serial = "/sys/block/vda/serial"
    if not os.path.exists(serial) or open(serial).read().strip() != "cg2vm-scratch":
        pytest.fail("io tests need the cgroup2 VM's scratch disk /dev/vda (serial cg2vm-scratch)")
    return open("/sys/block/vda/dev").read().strip()


def test_controllers_enabled_top_down_and_processes_only_in_leaves(host, cli, tmp_path):
    pol = write_policy(tmp_path, "p.yaml", """
version: 1
policies:
  acme:
    memory: {max: 1Gi}
    children:
      web: {cpu: {weight: 200}, pids: {max: 20}}
""")
    cli("apply", str(pol), check=True)
    for cg in (".", "acme"):
        enabled = set(_read(host, cg, "cgroup.subtree_control").split())
        assert {"cpu", "memory", "io", "pids"} <= enabled, (cg, enabled)
    assert _read(host, "acme/web", "cpu.weight") == "200"
    r = cli("attach", "acme", "--", "true")
    assert r.returncode == 1 and "leaf" in r.stderr
    # a group that hosts containers has controllers enabled for them: no processes of its own
    pol.write_text(pol.read_text().replace("pids: {max: 20}}", "pids: {max: 20}, container: {pids: {max: 5}}}"))
    cli("apply", str(pol), check=True)
    r = cli("attach", "acme/web", "--", "true")
    assert r.returncode == 1 and "container" in r.stderr and "leaf" in r.stderr, r.stderr


def test_dry_run_and_diff_of_a_controller_not_enabled_yet(host, cli, tmp_path):
    pol = write_policy(tmp_path, "c.yaml", "version: 1\npolicies:\n  a:\n    children: {b: {}}\n")
    cli("apply", str(pol), check=True)
    assert "cpuset" not in _read(host, ".", "cgroup.subtree_control").split()
    pol.write_text("version: 1\npolicies:\n  a:\n    children:\n      b: {cpu: {cpus: '0'}}\n")
    r = cli("apply", "--dry-run", str(pol))
    assert r.returncode == 0 and "would set a/b/cpuset.cpus = 0" in r.stdout, r.stderr
    d = cli("diff", str(pol))
    assert d.returncode == 2 and "controller not enabled" in d.stdout
    cli("apply", str(pol), check=True)
    assert _read(host, "a/b", "cpuset.cpus") == "0"


def test_v2_memory_files_hold_the_policy(host, tmp_path):
    apply(load_files([write_policy(tmp_path, "m.yaml", """
version: 1
policies:
  m:
    memory: {max: 256Mi, high: 200Mi, low: 16Mi, min: 8Mi, swap: 0}
""")]), host)
    assert _read(host, "m", "memory.max") == str(256 << 20)
    assert _read(host, "m", "memory.high") == str(200 << 20)
    assert _read(host, "m", "memory.low") == str(16 << 20)
    assert _read(host, "m", "memory.min") == str(8 << 20)
    assert _read(host, "m", "memory.swap.max") == "0"


def test_memory_max_below_usage_oom_kills_on_v2(host, tmp_path):
    """v2 reclaims, then OOM-kills, where v1 refuses with EBUSY (see test_hybrid_and_v1)."""
    pol = write_policy(tmp_path, "m.yaml", "version: 1\npolicies:\n  m:\n    memory: {max: 256Mi, swap: 0}\n")
    apply(load_files([pol]), host)
    p = start_memory_hog(host, "m", 64)
    try:
        pol.write_text("version: 1\npolicies:\n  m:\n    memory: {max: 16Mi, swap: 0}\n")
        apply(load_files([pol]), host)
        assert p.wait(timeout=60) == -signal.SIGKILL
        events = dict(line.split() for line in _read(host, "m", "memory.events").splitlines())
        assert int(events["oom_kill"]) >= 1
    finally:
        if p.poll() is None:
            p.kill()
            p.wait()


def _dd_rate(host, cg: str, nbytes: int) -> float:
    start = time.monotonic()
    p = spawn_in(host, cg, ["dd", "if=/dev/vda", "of=/dev/null", "bs=64k", f"count={nbytes // 65536}",
                            "iflag=direct", "status=none"])
    assert p.wait(timeout=300) == 0
    return nbytes / (time.monotonic() - start)


def test_io_max_throttles_reads_on_a_real_disk(host, tmp_path):
    dev = _scratch_disk()
    pol = write_policy(tmp_path, "io.yaml", "version: 1\npolicies:\n  free: {}\n  slow:\n    io:\n"
                       f"      devices:\n        - {{device: '{dev}', rbps: 1Mi, wiops: 100}}\n")
    apply(load_files([pol]), host)
    line = [ln for ln in _read(host, "slow", "io.max").splitlines() if ln.startswith(dev)]
    assert line and "rbps=1048576" in line[0] and "wiops=100" in line[0], line
    free = _dd_rate(host, "free", 4 << 20)
    assert free > 3 * (1 << 20), f"unthrottled reads too slow ({free:.0f} B/s) to show a 1Mi cap"
    slow = _dd_rate(host, "slow", 3 << 20)
    assert slow < 1.6 * (1 << 20), f"reads ran at {slow:.0f} B/s under rbps=1Mi"
    assert "nothing to do" in subprocess.run(
        [sys.executable, "-m", "cgman", "apply", str(pol)], capture_output=True, text=True,
        env=dict(os.environ, CGMAN_CGROUP_ROOT=host.root)).stdout


def test_io_weights_with_bfq(host, tmp_path):
    dev = _scratch_disk()
    with open("/sys/block/vda/queue/scheduler", "w") as f:   # the VM's scratch disk only
        f.write("bfq")
    host.__dict__.pop("features", None)                         # re-probe: BFQ now active
    pol = write_policy(tmp_path, "w.yaml", "version: 1\npolicies:\n  w:\n    io:\n      weight: 1000\n"
                       f"      devices:\n        - {{device: '{dev}', weight: 50}}\n")
    res = apply(load_files([pol]), host)
    bfq = _read(host, "w", "io.bfq.weight").splitlines()
    assert "default 181" in bfq and f"{dev} 50" in bfq, bfq      # bfq(1000) = 100 + 900*900/9900
    assert not [x for x in res.plan.warnings if "not enforceable" in x]
    if dev not in host.features.iocost_devices:      # per-device io.weight needs blk-iocost
        assert any("blk-iocost is not enabled" in x for x in res.plan.warnings)
    assert "default 1000" in _read(host, "w", "io.weight").splitlines()
    assert apply(load_files([pol]), host).changes == []
