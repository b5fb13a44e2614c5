"""Pure logic of the launch runtime: records, the applied snapshot, address leases, mount steps."""

from __future__ import annotations

import os

import pytest

from cgman.errors import Busy, CgmanError, LaunchError, NotFound
from cgman.model import PolicySet
from cgman.policy import parse_text
from cgman.state import applied
from cgman.containers import rootfs
from cgman.containers.network import allocate
from cgman.settings import Settings
from cgman.state.records import Record, Store, alive, proc_start_ticks


def _rec(name: str = "c1") -> Record:
    return Record(id="ab" * 16, name=name, group="g", tenant="t", cgroup=f"g/{name}", cgroup_root="r",
                  argv=["true"], created=1.0)


def test_a_failed_launch_unwinds_its_steps_in_reverse_past_an_undo_that_fails(caplog):
    from cgman.containers.launch import _Undo
    done: list[str] = []

    def broken() -> None:
        raise CgmanError("cannot remove it")
    undo = _Undo()
    undo.push("the first step", lambda: done.append("first"))
    undo.push("the broken step", broken)
    undo.push("the last step", lambda: done.append("last"))
    undo.unwind()
    assert done == ["last", "first"]
    assert "undoing a failed launch: the broken step: cannot remove it" in caplog.text
    undo.unwind()                     # each undo runs once
    assert done == ["last", "first"]


def test_a_name_is_claimed_once(tmp_path):
    st = Store(Settings(run_dir=str(tmp_path / "run"), state_dir=str(tmp_path / "state"), cgroup_root="r"))
    st.reserve(_rec())
    with pytest.raises(Busy, match="a container named 'c1' already exists"):
        st.reserve(_rec())
    assert st.load("c1") == _rec()
    assert st.names() == ["c1"]


@pytest.mark.parametrize("name", ["", "-x", "a/b", "..", ".hidden", "x" * 65, "a b"])
def test_bad_names_are_refused(tmp_path, name):
    st = Store(Settings(run_dir=str(tmp_path / "run"), state_dir=str(tmp_path / "state"), cgroup_root="r"))
    with pytest.raises(CgmanError, match="bad container name"):
        st.reserve(_rec(name))


def test_a_corrupt_record_is_a_clear_error_and_is_skipped_by_listing(tmp_path):
    st = Store(Settings(run_dir=str(tmp_path / "run"), state_dir=str(tmp_path / "state"), cgroup_root="r"))
    st.reserve(_rec())
    (tmp_path / "run" / "containers" / "c1" / "record.json").write_text("{not json")
    with pytest.raises(CgmanError, match=r"unreadable container record .*`cgman rm --force c1`"):
        st.load("c1")
    assert st.records() == []
    with pytest.raises(NotFound, match="no container named 'zz'"):
        st.load("zz")


def test_process_identity_survives_pid_reuse():
    me = proc_start_ticks(os.getpid())
    assert me is not None and alive(os.getpid(), me)
    assert not alive(os.getpid(), me + 1), "same pid, other start time: another process"
    assert not alive(None, me) and proc_start_ticks(2 ** 22 + 7) is None


def _ps(text: str) -> PolicySet:
    return PolicySet(tuple(parse_text(text, "mem.yaml")), ("mem.yaml",))


def test_applied_snapshot_merges_applies_and_prune_replaces(tmp_path):
    st = Store(Settings(run_dir=str(tmp_path / "run"), state_dir=str(tmp_path / "state"), cgroup_root="r"))
    assert applied.load(st, "root") is None
    applied.save(st, "root", _ps("version: 1\npolicies:\n  a: {}\n"))
    applied.save(st, "root", _ps("version: 1\npolicies:\n  b: {children: {c: {}}}\n"))
    assert [g.path for g in applied.load(st, "root").groups] == ["a", "b", "b/c"]
    applied.save(st, "root", _ps("version: 1\npolicies:\n  d: {}\n"), replace=True)
    assert [g.path for g in applied.load(st, "root").groups] == ["d"]
    assert applied.load(st, "other-root") is None, "per cgroup root"


def test_an_applied_snapshot_others_can_write_is_not_trusted(tmp_path):
    st = Store(Settings(run_dir=str(tmp_path / "run"), state_dir=str(tmp_path / "state"), cgroup_root="r"))
    applied.save(st, "root", _ps("version: 1\npolicies:\n  a: {}\n"))
    path = tmp_path / "run" / "applied-root.pickle"
    os.chmod(path, 0o666)
    assert applied.load(st, "root") is None
    os.chmod(path, 0o600)
    path.write_bytes(b"garbage")
    assert applied.load(st, "root") is None


def test_addresses_are_the_lowest_free_after_the_bridges():
    data = {"subnet": "10.1.0.0/29", "leases": {"10.1.0.2": "x", "10.1.0.4": "y"}}
    assert allocate(data, "10.1.0.0/29", "z") == ("10.1.0.3", "10.1.0.1", 29)
    assert allocate({"leases": {}}, "10.1.0.0/29", "z") == ("10.1.0.2", "10.1.0.1", 29)


def test_an_exhausted_subnet_says_what_to_do():
    data = {"subnet": "10.1.0.0/30", "leases": {"10.1.0.2": "x"}}
    with pytest.raises(LaunchError, match=r"subnet 10.1.0.0/30 is exhausted.*cgman gc"):
        allocate(data, "10.1.0.0/30", "z")


def test_one_bridge_cannot_serve_two_subnets():
    with pytest.raises(LaunchError, match="already in use with subnet 10.1.0.0/29"):
        allocate({"subnet": "10.1.0.0/29", "leases": {"10.1.0.2": "x"}}, "10.2.0.0/29", "z")


def test_overlay_takes_the_top_layer_first():
    o = rootfs.Overlay(("/img/base", "/img/web"), "/s/up", "/s/work", "/s/merged")
    assert o.options(False) == "lowerdir=/img/web:/img/base,upperdir=/s/up,workdir=/s/work"
    assert o.options(True).endswith(",userxattr")
    with pytest.raises(ValueError, match="contains ':' or ','"):
        rootfs.Overlay(("/img/a:b",), "/u", "/w", "/m").options(False)


def test_mount_steps_for_a_root():
    ops = rootfs.mount_ops(root="/r", overlay=None, pid_ns=True, net_ns=True, ipc_ns=True, userns=False)
    kinds = [o[0] for o in ops]
    assert ops[0] == (rootfs.OP_MOUNT, None, b"/", None, rootfs.MS_REC | rootfs.MS_PRIVATE)
    assert ops[1] == (rootfs.OP_MOUNT, b"/r", b"/r", None, rootfs.MS_BIND | rootfs.MS_REC)
    assert kinds[-1] == rootfs.OP_PIVOT
    proc = [o for o in ops if o[0] == rootfs.OP_MOUNT and o[3] == b"proc"]
    assert proc and proc[0][2] == b"/r/proc", "proc is mounted before pivot_root (user namespaces need it)"
    assert any(o[3] == b"sysfs" for o in ops if o[0] == rootfs.OP_MOUNT)
    no_net = rootfs.mount_ops(root="/r", overlay=None, pid_ns=True, net_ns=False, ipc_ns=False, userns=False)
    assert not any(o[3] in (b"sysfs", b"tmpfs") and o[2].endswith((b"/sys", b"/shm"))
                   for o in no_net if o[0] == rootfs.OP_MOUNT)


def test_mount_steps_without_a_root_only_remount_proc_for_a_new_pid_namespace():
    ops = rootfs.mount_ops(root=None, overlay=None, pid_ns=True, net_ns=True, ipc_ns=True, userns=False)
    assert [o[2] for o in ops] == [b"/", b"/proc"]
    ops = rootfs.mount_ops(root=None, overlay=None, pid_ns=False, net_ns=True, ipc_ns=True, userns=False)
    assert [o[2] for o in ops] == [b"/"]
