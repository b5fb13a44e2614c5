"""The limit tests of the v2 VM (tests/test_enforcement.py), under both cgroup drivers, in the systemd
VM: a group applied by `cgman apply --cgroup-driver cgroupfs` (a top-level root beside systemd's
slices) and by `--cgroup-driver systemd` (slices whose limits are unit properties) holds the same
limits, and the processes in it feel them. With the systemd driver a process joins its group as
systemd means it to, in a transient scope of the group's slice (`systemd-run --scope --slice=`),
and systemd's view (`systemctl show -p`) agrees with the kernel's files.

Marked `systemd`: scripts/test.sh runs them in the systemd VM beside test_systemd_driver.py."""

from __future__ import annotations

import os
import secrets
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Iterator

import pytest

from cgman.drivers import open_host
from cgman.drivers.systemd.units import slice_name

from .conftest import REPO, destroy_root
from .test_systemd_host import _in_systemd_vm, kernel, show, systemctl

pytestmark = [pytest.mark.systemd, pytest.mark.kernel]
PY = sys.executable
POLICY = """\
version: 1
policies:
  m:
    memory: {max: 32Mi, swap: 0}
  p:
    pids: {max: 4}
  c:
    cpu: {weight: 250, max: 0.2, period: 100ms}
"""


class Placed:
    """Groups applied through one driver: where each one's cgroup is, and a process started in it."""

    def __init__(self, driver: str, root: str, tmp: Path) -> None:
        self.driver, self.root, self.tmp = driver, root, tmp
        self.env = dict(os.environ, CGMAN_CGROUP_ROOT=root, CGMAN_RUN_DIR=str(tmp / "run"),
                        CGMAN_STATE_DIR=str(tmp / "state"), PYTHONPATH=str(REPO))

    def apply(self, text: str = POLICY) -> None:
        (self.tmp / "p.yaml").write_text(text)
        p = subprocess.run([PY, "-m", "cgman", "apply", "--cgroup-driver", self.driver, str(self.tmp / "p.yaml")],
                           capture_output=True, text=True, env=self.env, timeout=300, cwd=REPO)
        assert p.returncode == 0, p.stdout + p.stderr

    def unit(self, group: str) -> str:
        return slice_name(self.root, group)

    def cgroup(self, group: str) -> str:
        """The group's cgroup, relative to the cgroup2 mount."""
        if self.driver == "systemd":
            return show(self.unit(group), "ControlGroup")["ControlGroup"].strip("/")
        return f"{self.root}/{group}"

    def spawn(self, group: str, argv: list[str], **kw) -> subprocess.Popen:
        if self.driver == "systemd":        # systemd-run execs argv in the new scope: the same process
            return subprocess.Popen(["systemd-run", "--scope", "--quiet", f"--slice={self.unit(group)}",
                                     "--", *argv], **kw)
        host = open_host(self.root)
        return subprocess.Popen(argv, preexec_fn=lambda: host.attach(group, os.getpid()), **kw)

    def usage(self, group: str):
        """cgman's own reading of the group's cgroup (drivers/reads.py), whichever driver made it."""
        parent, _, leaf = self.cgroup(group).rpartition("/")
        return open_host(parent).usage(leaf)


@pytest.fixture(scope="module", params=["cgroupfs", "systemd"])
def placed(request, tmp_path_factory) -> Iterator[Placed]:
    """POLICY applied once per driver (a whole-process apply takes ~10 s in the VM)."""
    if not _in_systemd_vm():
        pytest.skip("needs the systemd VM (scripts/test.sh: CG2VM_INIT=systemd, CGMAN_SYSTEMD_VM=1)")
    root = f"cgman-test-{secrets.token_hex(4)}"
    p = Placed(request.param, root, tmp_path_factory.mktemp(request.param))
    try:
        p.apply()
        yield p
    finally:
        if p.driver == "systemd":
            systemctl("stop", slice_name(root), check=False)     # every slice and scope below it
        else:
            destroy_root(open_host(root))


def test_over_memory_max_the_process_is_oom_killed(placed):
    assert kernel(placed.cgroup("m"), "memory.max") == str(32 << 20)
    if placed.driver == "systemd":
        assert show(placed.unit("m"), "MemoryMax")["MemoryMax"] == str(32 << 20)
    p = placed.spawn("m", [PY, "-c", "b = bytearray(200 << 20); b[::4096] = b'x' * len(b[::4096])"])
    assert p.wait(timeout=120) == -signal.SIGKILL
    assert int(dict(line.split() for line in kernel(placed.cgroup("m"), "memory.events").splitlines())
               ["oom_kill"]) >= 1, "the kernel killed it for the group's limit"


def test_over_tasks_max_fork_fails(placed):
    assert kernel(placed.cgroup("p"), "pids.max") == "4"
    if placed.driver == "systemd":
        assert show(placed.unit("p"), "TasksMax")["TasksMax"] == "4"
    code = ("import os, time\nn = 0\nkids = []\n"
            "try:\n    while n < 50:\n        pid = os.fork()\n        if pid == 0:\n"
            "            time.sleep(5); os._exit(0)\n        kids.append(pid); n += 1\n"
            "except OSError as e:\n    print('fork failed', e.errno, n)\n"
            "for k in kids: os.kill(k, 9)\n")
    out, _ = placed.spawn("p", [PY, "-c", code], stdout=subprocess.PIPE, text=True).communicate(timeout=60)
    assert out.startswith("fork failed 11 3"), out       # EAGAIN after 3 children + itself


def test_cpu_weight_and_quota_are_in_force_and_the_usage_is_read(placed):
    cg = placed.cgroup("c")
    assert (kernel(cg, "cpu.weight"), kernel(cg, "cpu.max")) == ("250", "20000 100000")
    if placed.driver == "systemd":
        assert show(placed.unit("c"), "CPUWeight", "CPUQuotaPerSecUSec") == {"CPUWeight": "250",
                                                                           "CPUQuotaPerSecUSec": "200ms"}
    code = ("import time\nw = time.monotonic()\nwhile time.monotonic() - w < 2: pass\n")
    start = time.monotonic()
    placed.spawn("c", [PY, "-c", code]).wait(timeout=120)
    wall = time.monotonic() - start
    used = placed.usage("c")
    assert used.cpu_usage_usec is not None and 0.02 < used.cpu_usage_usec / 1e6 / wall < 0.35, \
        f"the group used {used.cpu_usage_usec}us in {wall:.1f}s under a 0.2 CPU cap"
    if placed.driver == "systemd":               # systemd's account of the slice is the kernel's
        nsec = int(show(placed.unit("c"), "CPUUsageNSec")["CPUUsageNSec"])
        assert abs(nsec // 1000 - used.cpu_usage_usec) <= max(20_000, used.cpu_usage_usec // 20)
