"""Host-specific real-kernel paths: the unified hierarchy's freeze/kill on a hybrid
host, v1's EBUSY on a memory limit below usage, and the v1 cpuset inheritance."""

from __future__ import annotations

import os
import signal
import subprocess
import time

import pytest

from cgman.drivers.v2 import V2Driver
from cgman.errors import FreezeTimeout
from cgman.plan import Write
from cgman.policy import load_files
from cgman.reconcile.apply import ApplyError, apply

from .conftest import write_policy
from .test_enforcement import spawn_in, start_memory_hog

pytestmark = [pytest.mark.kernel, pytest.mark.v1host]


def test_unified_v2_freeze_and_kill_on_this_host(host):
    """cgroup.freeze (confirmed via cgroup.events) and cgroup.kill on a real cgroup2 mount."""
    if host.info.unified is None:
        pytest.fail("this host has no cgroup2 mount; the suite expects hybrid or v2")
    v2 = V2Driver(host.info.unified, host.root)
    v2.create(".")
    v2.create("u")
    p = subprocess.Popen(["sleep", "300"], preexec_fn=lambda: v2.attach("u", os.getpid()))
    try:
        v2.freeze("u", 5)
        assert v2.events("u")["frozen"] == 1
        assert v2.is_frozen("u") is True
        state = open(f"/proc/{p.pid}/stat").read().split(")")[1].split()[0]
        assert state in ("S", "D", "T")
        v2.thaw("u", 5)
        assert v2.events("u")["frozen"] == 0
        assert v2.kill("u") is True
        assert p.wait(timeout=10) == -signal.SIGKILL
        for _ in range(100):
            if v2.events("u")["populated"] == 0:
                break
            time.sleep(0.01)
        assert v2.events("u")["populated"] == 0
    finally:
        if p.poll() is None:
            p.kill()
            p.wait()


def test_freeze_timeout_thaws_again(host, monkeypatch):
    """If the kernel never confirms, the group is thawed and the error says so."""
    v2 = V2Driver(host.info.unified, host.root)
    v2.create(".")
    v2.create("t")
    monkeypatch.setattr(v2, "events", lambda path: {"frozen": 0, "populated": 0})
    with pytest.raises(FreezeTimeout, match="thawed again"):
        v2.freeze("t", 0.05)
    assert v2.t.read("t", "cgroup.freeze").strip() == "0"


def test_v1_memory_limit_below_usage_names_the_usage(host, tmp_path):
    if host.layout.version_of("memory") != 1:
        pytest.fail("host has no v1 memory controller (this test is for hybrid/v1 hosts)")
    pol = write_policy(tmp_path, "m.yaml", "version: 1\npolicies:\n  m:\n    memory: {max: 256Mi}\n")
    apply(load_files([pol]), host)
    p = start_memory_hog(host, "m", 64)
    try:
        pol.write_text("version: 1\npolicies:\n  m:\n    memory: {max: 1Mi, swap: 0}\n")
        with pytest.raises(ApplyError) as ei:
            apply(load_files([pol]), host)
        msg = str(ei.value)
        assert "cannot set limit" in msg and "current usage" in msg and "rolled back" in msg
        assert host.read(Write("m", "memory", "memory.limit_in_bytes", "")).strip() == str(256 << 20)
        assert p.poll() is None, "the process must survive a refused limit"
    finally:
        p.kill()
        p.wait()


def test_v1_cpuset_children_inherit_so_tasks_can_join(host, tmp_path):
    if "cpuset" not in host.info.v1_mounts:
        pytest.fail("host has no v1 cpuset hierarchy")
    apply(load_files([write_policy(tmp_path, "c.yaml",
                                   "version: 1\npolicies:\n  c:\n    children: {d: {}}\n")]), host)
    for g in ("c", "c/d"):
        assert host.read(Write(g, "cpuset", "cpuset.cpus", "")).strip()
        assert host.read(Write(g, "cpuset", "cpuset.mems", "")).strip()
    p = spawn_in(host, "c/d", ["sleep", "300"])
    try:
        assert p.pid in host.procs("c/d")
    finally:
        p.kill()
        p.wait()


def test_memsw_is_raised_before_the_limit_when_growing(host, tmp_path):
    if not host.features.memsw:
        pytest.fail("host has no v1 swap accounting")
    pol = write_policy(tmp_path, "m.yaml", "version: 1\npolicies:\n  m:\n    memory: {max: 64Mi, swap: 0}\n")
    apply(load_files([pol]), host)
    pol.write_text("version: 1\npolicies:\n  m:\n    memory: {max: 512Mi, swap: 64Mi}\n")
    res = apply(load_files([pol]), host)        # would fail with EINVAL in the wrong order
    files = [c.write.file for c in res.changes]
    assert files.index("memory.memsw.limit_in_bytes") < files.index("memory.limit_in_bytes")
    pol.write_text("version: 1\npolicies:\n  m:\n    memory: {max: 32Mi, swap: 0}\n")
    res = apply(load_files([pol]), host)        # shrinking: limit first
    files = [c.write.file for c in res.changes]
    assert files.index("memory.limit_in_bytes") < files.index("memory.memsw.limit_in_bytes")
    assert host.read(Write("m", "memory", "memory.memsw.limit_in_bytes", "")).strip() == str(32 << 20)


def test_v1_nested_cpusets_parent_narrowed_before_children_exist(host, cli, tmp_path):
    """Groups are created right before their own writes, so a child inherits its
    parent's narrowed cpus; a child outside its parent's set is a one-line error."""
    pol = write_policy(tmp_path, "c.yaml", "version: 1\npolicies:\n  p:\n    cpu: {cpus: '0'}\n"
                       "    children:\n      c: {pids: {max: 5}}\n")
    cli("apply", str(pol), check=True)
    assert host.read(Write("p/c", "cpuset", "cpuset.cpus", "")).strip() == "0"
    assert "nothing to do" in cli("apply", str(pol), check=True).stdout
    if (os.cpu_count() or 1) < 2:
        return
    bad = write_policy(tmp_path, "d.yaml", "version: 1\npolicies:\n  p:\n    cpu: {cpus: '0'}\n"
                       "    children:\n      c: {cpu: {cpus: '1'}}\n")
    r = cli("apply", str(bad))
    assert r.returncode == 1 and "not within the parent's cpuset.cpus (0)" in r.stderr, r.stderr
    assert "d.yaml: group p/c" in r.stderr and "nothing was applied" in r.stderr
