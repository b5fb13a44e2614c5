"""The two cgroup layouts (docs/operations.md): which one a root means, what `cgman doctor` says of
it against systemd's delegation rules, and when the agent moves itself into supervisor/. Fixture
trees and a fake systemctl; the real thing runs under systemd in tests/test_systemd_host.py."""

from __future__ import annotations

from pathlib import Path

import pytest

from cgman.agent.delegated import enter_supervisor_leaf, inner_root
from cgman.errors import CgmanError
from cgman.hostcheck.delegation import layout_check

UNIT = "/cgman.slice/cgman-agent.service"


@pytest.mark.parametrize("root, own, want", [
    ("cgman", UNIT, None),                                             # (a): a top-level root
    ("cgman.slice/cgman-agent.service/payload", UNIT, "payload"),      # (b)
    ("cgman.slice/cgman-agent.service/a/b", UNIT + "/", "a/b"),
    ("cgman.slice/cgman-agent.service-x/payload", UNIT, None),         # a sibling, not inside
    ("cgman.slice/cgman-agent.service/payload", "/", None),            # the agent in the root cgroup
    ("cgman.slice/cgman-agent.service/payload", None, None),           # no cgroup2 line
])
def test_inner_root(root, own, want):
    assert inner_root(root, own) == want


@pytest.mark.parametrize("root, message", [
    ("cgman.slice/cgman-agent.service", "is the cgroup this agent runs in: pick a child of it"),
    ("cgman.slice/cgman-agent.service/supervisor/x", "is the agent's own leaf"),
])
def test_a_root_that_would_hold_the_agent_is_refused(root, message):
    with pytest.raises(CgmanError, match=message):
        inner_root(root, UNIT)


def test_the_agent_moves_only_for_layout_b_on_pure_v2(tmp_path):
    """Nothing is read or written for layout (a) or off pure v2 (the fixture has no cgroup files)."""
    proc = tmp_path / "proc" / "self"
    proc.mkdir(parents=True)
    (proc / "cgroup").write_text(f"0::{UNIT}\n")
    procfs = str(tmp_path / "proc")
    assert enter_supervisor_leaf(str(tmp_path / "cg"), "cgman", "v2", procfs) is None
    assert enter_supervisor_leaf(str(tmp_path / "cg"), UNIT[1:] + "/payload", "hybrid", procfs) is None
    assert enter_supervisor_leaf(None, UNIT[1:] + "/payload", "v2", procfs) is None
    assert not (tmp_path / "cg").exists()


def _systemctl(tmp_path: Path, delegate: str) -> str:
    p = tmp_path / "systemctl"
    p.write_text(f"#!/bin/sh\necho {delegate}\n")
    p.chmod(0o755)
    return str(p)


def _unit_cgroup(tmp_path: Path, procs: str) -> str:
    d = tmp_path / "unified" / UNIT.strip("/")
    d.mkdir(parents=True)
    (d / "cgroup.procs").write_text(procs)
    return str(tmp_path / "unified")


def test_layout_a_without_systemd_is_fine(tmp_path):
    c = layout_check(str(tmp_path), "cgman", systemd=False, systemctl=_systemctl(tmp_path, "yes"))
    assert c.ok and c.detail.startswith("(a) top-level root /cgman;")


def test_layout_a_under_systemd_works_but_breaks_its_rules(tmp_path):
    c = layout_check(str(tmp_path), "cgman", systemd=True, systemctl=_systemctl(tmp_path, "yes"))
    assert not c.ok and c.warn and "beside systemd's units" in c.detail
    assert "CGMAN_CGROUP_ROOT=cgman.slice/cgman-agent.service/payload" in c.fix


def test_a_root_inside_a_slice_is_systemds(tmp_path):
    c = layout_check(str(tmp_path), "cgman.slice/payload", systemd=True, systemctl=_systemctl(tmp_path, "yes"))
    assert not c.ok and not c.warn and "slices are never delegated" in c.detail


def test_layout_b_with_the_agent_in_its_leaf_follows_the_rules(tmp_path):
    unified = _unit_cgroup(tmp_path, "")
    c = layout_check(unified, UNIT[1:] + "/payload", systemd=True, systemctl=_systemctl(tmp_path, "yes"))
    assert c.ok and c.detail.startswith(f"(b) root {UNIT}/payload inside cgman-agent.service's delegated cgroup")


def test_layout_b_with_processes_in_the_unit_cgroup_breaks_no_internal_processes(tmp_path):
    unified = _unit_cgroup(tmp_path, "412\n")
    c = layout_check(unified, UNIT[1:] + "/payload", systemd=True, systemctl=_systemctl(tmp_path, "yes"))
    assert not c.ok and not c.warn and "holds processes itself (412)" in c.detail
    assert "moves the unit's processes into" in c.fix


def test_layout_b_in_a_unit_without_delegate(tmp_path):
    unified = _unit_cgroup(tmp_path, "")
    c = layout_check(unified, UNIT[1:] + "/payload", systemd=True, systemctl=_systemctl(tmp_path, "no"))
    assert not c.ok and not c.warn and "(Delegate=no)" in c.detail and "add Delegate=yes" in c.fix


def test_layout_b_while_the_unit_is_stopped_or_off_pure_v2(tmp_path):
    c = layout_check(str(tmp_path), UNIT[1:] + "/payload", systemd=True, systemctl=_systemctl(tmp_path, "yes"))
    assert not c.ok and c.warn and "is not running" in c.detail
    c = layout_check(None, UNIT[1:] + "/payload", systemd=True, systemctl=_systemctl(tmp_path, "yes"))
    assert not c.ok and c.warn and "pure cgroup v2 only" in c.detail


def test_own_cgroup_is_the_cgroup2_line_of_proc_self_cgroup(tmp_path):
    from cgman.agent.delegated import own_cgroup
    (tmp_path / "self").mkdir()
    (tmp_path / "self" / "cgroup").write_text("12:memory:/user.slice\n1:name=systemd:/x.service\n"
                                               "0::/cgman.slice/cgman-agent.service\n")
    assert own_cgroup(str(tmp_path)) == "/cgman.slice/cgman-agent.service"
    (tmp_path / "self" / "cgroup").write_text("12:memory:/user.slice\n")         # v1 only
    assert own_cgroup(str(tmp_path)) is None
    assert own_cgroup(str(tmp_path / "missing")) is None
