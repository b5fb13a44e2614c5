"""`cgman doctor`'s delegation checks: pure parsing, fixture trees (a fake /proc, a fake cgroup2
mount, a fake systemctl), and the real host."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from cgman.hostcheck.delegation import delegation_checks, parse_proc_cgroup, unit_delegate, unit_of, writable_by

from .conftest import _need_root_cgroups

HYBRID = """12:pids:/system.slice/cgman-agent.service
9:name=systemd:/cgman.slice/cgman-agent.service
4:memory:/
0::/cgman.slice/cgman-agent.service
"""


def test_parse_proc_cgroup():
    got = parse_proc_cgroup(HYBRID + "3:cpu,cpuacct:/a:b\n\n")
    assert got == {"pids": "/system.slice/cgman-agent.service", "name=systemd": "/cgman.slice/cgman-agent.service",
                   "memory": "/", "": "/cgman.slice/cgman-agent.service", "cpu,cpuacct": "/a:b"}


@pytest.mark.parametrize("path, unit", [
    ("/", None),
    ("", None),
    ("/cgman/acme/web1", None),
    ("/system.slice/cgman-agent.service", ("cgman-agent.service", "/system.slice/cgman-agent.service")),
    ("/cgman.slice/cgman-agent.service/supervisor", ("cgman-agent.service", "/cgman.slice/cgman-agent.service")),
    ("/user.slice/user-1000.slice/session-3.scope", ("session-3.scope", "/user.slice/user-1000.slice/session-3.scope")),
    ("/user.slice/user-1000.slice/user@1000.service/app.slice/foo.service",
     ("foo.service", "/user.slice/user-1000.slice/user@1000.service/app.slice/foo.service")),
])
def test_unit_of(path, unit):
    assert unit_of(path) == unit


def _stat(uid: int, gid: int, mode: int) -> os.stat_result:
    return os.stat_result((mode, 0, 0, 1, uid, gid, 0, 0, 0, 0))


@pytest.mark.parametrize("uid, gid, mode, euid, gids, ok", [
    (0, 0, 0o644, 0, [], True),            # root writes anything
    (1000, 0, 0o644, 1000, [], True),      # owner
    (1000, 0, 0o444, 1000, [], False),     # owner without w: the owner class decides, not others
    (0, 50, 0o664, 1000, [50], True),      # group
    (0, 50, 0o644, 1000, [50], False),
    (0, 0, 0o666, 1000, [], True),         # others
    (0, 0, 0o644, 1000, [], False),
    (1000, 0, 0o466, 1000, [0], False),    # owner class wins even when group/others could write
])
def test_writable_by(uid, gid, mode, euid, gids, ok):
    assert writable_by(_stat(uid, gid, mode), euid, gids) is ok


def _systemctl(tmp_path: Path, body: str) -> str:
    p = tmp_path / "systemctl"
    p.write_text("#!/bin/sh\n" + body + "\n")
    p.chmod(0o755)
    return str(p)


@pytest.mark.parametrize("body, want", [
    ('[ "$5" = cgman-agent.service ] && echo yes', True),
    ("echo no", False),
])
def test_unit_delegate_asks_systemctl(tmp_path, body, want):
    assert unit_delegate("cgman-agent.service", _systemctl(tmp_path, body)) == (want, "")


@pytest.mark.parametrize("body, why", [
    ("echo 'Failed to connect to bus: Host is down' >&2; exit 1", "systemctl show failed: Failed to connect to bus"),
    ("exit 3", "systemctl show failed: exit status 3"),
    ("echo maybe", "systemctl show failed: maybe"),
    ("sleep 5", "timed out"),
])
def test_unit_delegate_unknown(tmp_path, body, why):
    value, reason = unit_delegate("x.service", _systemctl(tmp_path, body), timeout_s=0.5)
    assert value is None and why in reason


def test_unit_delegate_without_systemctl(tmp_path):
    assert unit_delegate("x.service", str(tmp_path / "nope")) == (None, f"{tmp_path / 'nope'} not found")
    bad = tmp_path / "broken"
    bad.write_text("#!/nonexistent/interpreter\n")
    bad.chmod(0o755)
    value, reason = unit_delegate("x.service", str(bad))
    assert value is None and reason.startswith(f"cannot run {bad}")


# ---------------------------------------------------------------------------------------- fixture trees
def _proc(tmp_path: Path, text: str) -> str:
    d = tmp_path / "proc" / "self"
    d.mkdir(parents=True, exist_ok=True)
    (d / "cgroup").write_text(text)
    return str(tmp_path / "proc")


def _cgroup(path: Path, owner: int = 0, mode: int = 0o644, files=("cgroup.procs", "cgroup.subtree_control",
                                                                  "cgroup.threads")) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    os.chown(path, owner, 0)
    for f in files:
        (path / f).write_text("")
        (path / f).chmod(mode)
        os.chown(path / f, owner, 0)
    return path


def _checks(tmp_path: Path, proc_text: str, root: str = "cgman", *, v2: bool = True, unified: bool = True,
            euid: int = 0, systemctl: str = "echo yes", env=None) -> dict:
    u = tmp_path / "unified"
    u.mkdir(exist_ok=True)
    got = delegation_checks(str(u) if unified else None, root, v2_controllers=v2, procfs=_proc(tmp_path, proc_text),
                            euid=euid, gids=[], environ=env or {}, systemctl=_systemctl(tmp_path, systemctl))
    return {c.name: c for c in got}


def test_a_shell_outside_any_unit_with_a_top_level_root(tmp_path):
    c = _checks(tmp_path, "0::/\n", systemctl="exit 99")   # no unit: systemctl is not asked
    assert list(c) == ["systemd unit", "cgroup v2 delegation", "cgman root placement"]
    assert all(x.ok and not x.warn and not x.fix for x in c.values())
    assert c["systemd unit"].detail == "cgroup /: not inside a systemd service or scope"
    assert f"uid 0 may create and manage {tmp_path}/unified (the nearest existing parent" in \
        c["cgroup v2 delegation"].detail
    assert c["cgman root placement"].detail.startswith("/cgman lies outside any subtree delegated")


def test_invocation_id_is_reported(tmp_path):
    c = _checks(tmp_path, "0::/\n", env={"INVOCATION_ID": "abc"})
    assert "INVOCATION_ID is set" in c["systemd unit"].detail


def test_the_agent_unit_with_delegate_and_a_top_level_root(tmp_path):
    c = _checks(tmp_path, HYBRID)
    assert c["systemd unit"].ok and "in cgman-agent.service, Delegate=yes" in c["systemd unit"].detail
    assert c["cgman root placement"].ok


def test_a_root_inside_the_unit_while_the_agent_sits_in_it(tmp_path):
    """Layout (b) without a leaf for the agent: the no-internal-processes rule bites on v2."""
    c = _checks(tmp_path, "0::/cgman.slice/cgman-agent.service\n", "cgman.slice/cgman-agent.service/payload")
    p = c["cgman root placement"]
    assert not p.ok and p.warn and "no internal processes" in p.detail and "layout (a)" in p.fix
    # on hybrid hosts the cgroup2 tree carries no resource controllers: no conflict
    c = _checks(tmp_path, "0::/cgman.slice/cgman-agent.service\n", "cgman.slice/cgman-agent.service/payload",
                v2=False)
    assert c["cgman root placement"].ok and "delegated to cgman-agent.service" in c["cgman root placement"].detail


def test_a_root_inside_the_unit_with_the_agent_in_a_leaf(tmp_path):
    c = _checks(tmp_path, "0::/cgman.slice/cgman-agent.service/supervisor\n",
                "cgman.slice/cgman-agent.service/payload")
    p = c["cgman root placement"]
    assert p.ok and p.detail == ("/cgman.slice/cgman-agent.service/payload lies inside "
                                 "/cgman.slice/cgman-agent.service, delegated to cgman-agent.service: "
                                 "cgman is its only writer")


def test_a_service_without_delegate(tmp_path):
    c = _checks(tmp_path, "0::/system.slice/foo.service\n", "system.slice/foo.service/x", v2=False,
                systemctl="echo no")
    u = c["systemd unit"]
    assert not u.ok and u.warn and "Delegate=no" in u.detail and "add Delegate=yes to [Service] of foo.service" in u.fix
    p = c["cgman root placement"]
    assert not p.ok and p.warn and "systemd owns it" in p.detail and "Delegate=yes" in p.fix


def test_a_login_session_scope_is_fine(tmp_path):
    c = _checks(tmp_path, "0::/user.slice/user-0.slice/session-3.scope\n", systemctl="echo no")
    assert c["systemd unit"].ok and "session-3.scope (Delegate=no" in c["systemd unit"].detail


def test_systemctl_that_cannot_tell_is_a_warning(tmp_path):
    c = _checks(tmp_path, HYBRID, systemctl="echo 'System has not been booted with systemd' >&2; exit 1")
    u = c["systemd unit"]
    assert not u.ok and u.warn and "Delegate= is unknown (systemctl show failed: System has not" in u.detail
    assert "systemctl show -p Delegate cgman-agent.service" in u.fix


def test_non_root_owning_the_delegated_root(tmp_path):
    _cgroup(tmp_path / "unified" / "cgman", owner=1000)
    c = _checks(tmp_path, "0::/user.slice/user-1000.slice/user@1000.service/cgman.service\n", euid=1000,
                root="cgman")
    d = c["cgroup v2 delegation"]
    assert d.ok and d.detail == (f"uid 1000 owns {tmp_path}/unified/cgman (the cgman root) and its "
                                 "cgroup.procs, cgroup.subtree_control, cgroup.threads")
    # but the top-level root is outside what was delegated: migrating into it needs more
    p = c["cgman root placement"]
    assert not p.ok and p.warn and "common ancestor" in p.detail and "run as root" in p.fix


def test_non_root_without_the_delegated_files(tmp_path):
    top = _cgroup(tmp_path / "unified" / "cgman", owner=1000)
    os.chown(top / "cgroup.subtree_control", 0, 0)
    (top / "cgroup.threads").unlink()              # old kernels have none: not required
    c = _checks(tmp_path, "0::/\n", euid=1000)
    d = c["cgroup v2 delegation"]
    assert not d.ok and not d.warn
    assert d.detail == f"uid 1000 cannot write {top}/cgroup.subtree_control (the cgman root)"
    assert d.fix.startswith(f"run as root, or delegate it: chown 1000 {top} {top}/cgroup.procs")


def test_non_root_and_a_root_not_created_yet(tmp_path):
    parent = tmp_path / "unified" / "tenants"
    _cgroup(parent, owner=0, files=("cgroup.subtree_control",))
    os.symlink("cgroup.procs", parent / "cgroup.procs")      # a loop: stat fails with ELOOP
    c = _checks(tmp_path, "0::/\n", root="tenants/cgman", euid=1000)
    d = c["cgroup v2 delegation"]
    assert not d.ok and "(the nearest existing parent of the cgman root)" in d.detail
    assert f"{parent} (missing)" not in d.detail and f"{parent}, " in d.detail
    assert f"{parent}/cgroup.procs (Too many levels of symbolic links)" in d.detail
    assert f"{parent}/cgroup.subtree_control" in d.detail and "cgroup.threads" not in d.detail


def test_non_root_and_a_missing_delegation_file(tmp_path):
    _cgroup(tmp_path / "unified" / "cgman", owner=1000, files=("cgroup.subtree_control",))
    d = _checks(tmp_path, "0::/\n", euid=1000)["cgroup v2 delegation"]
    assert not d.ok and f"{tmp_path}/unified/cgman/cgroup.procs (missing)" in d.detail


def test_pure_v1_uses_the_systemd_hierarchy(tmp_path):
    c = _checks(tmp_path, "9:name=systemd:/system.slice/cgman-agent.service\n4:memory:/\n", unified=False)
    assert list(c) == ["systemd unit", "cgman root placement"]
    assert "cgroup /system.slice/cgman-agent.service: in cgman-agent.service" in c["systemd unit"].detail


def test_unreadable_proc(tmp_path):
    got = delegation_checks(None, "cgman", v2_controllers=False, procfs=str(tmp_path / "none"), euid=0, gids=[],
                            environ={})
    assert len(got) == 1 and not got[0].ok and got[0].warn and got[0].fix
    assert got[0].detail == f"cannot read {tmp_path}/none/self/cgroup: No such file or directory"


def test_proc_without_a_tracking_hierarchy(tmp_path):
    got = delegation_checks(None, "cgman", v2_controllers=False, procfs=_proc(tmp_path, "4:memory:/x\n"), euid=0,
                            gids=[], environ={})
    assert len(got) == 1 and not got[0].ok and got[0].warn and "names no cgroup2" in got[0].detail


# -------------------------------------------------------------------------------------------- real host
def test_doctor_reports_delegation_on_this_host(cli, root_name):
    _need_root_cgroups()
    r = cli("doctor", "--json")
    checks = {c["name"]: c for c in json.loads(r.stdout)}
    cg = parse_proc_cgroup(Path("/proc/self/cgroup").read_text())   # the child inherits ours
    mine = cg.get("name=systemd") or cg[""]
    unit = checks["systemd unit"]
    assert unit["detail"].startswith(f"cgroup {mine}: ")
    if unit_of(mine) is None:
        assert unit["ok"] and "not inside a systemd service or scope" in unit["detail"]
    from cgman.drivers import open_host
    unified = open_host(root_name).info.unified
    if unified is not None:
        access = checks["cgroup v2 delegation"]
        assert access["ok"] and access["detail"].startswith(f"uid 0 may create and manage {unified}")
    else:
        assert "cgroup v2 delegation" not in checks
    place = checks["cgman root placement"]
    assert place["detail"].startswith(f"/{root_name} lies ")
    assert place["ok"] or place["warn"]
    layout = checks["cgroup layout"]        # a top-level test root: layout (a), named as such
    assert layout["detail"].startswith(f"(a) top-level root /{root_name}")
    assert all(c["fix"] for c in checks.values() if not c["ok"])
