"""Confinement of every path beneath the cgman root, for reads as for writes (fixture tree:
cgroupfs itself cannot hold symlinks, so the symlink case is exercised on tmpfs)."""

from __future__ import annotations

import errno
import os

import pytest

from cgman.drivers.cgfs import CgroupTree, split_path
from cgman.drivers import cgroup_root
from cgman.errors import CgroupIOError, NotFound, UnsafePath

from .conftest import in_fork


@pytest.mark.parametrize("bad", ["..", "a/..", "../x", "a//b", "/abs", ".hidden", "a/./b", "a b", "x\n"])
def test_split_path_refuses_escapes(bad):
    with pytest.raises(UnsafePath):
        split_path(bad)


@pytest.mark.parametrize("good,parts", [(".", []), ("", []), ("acme", ["acme"]),
                                        ("acme/web-1.x", ["acme", "web-1.x"]),
                                        ("system.slice/cgman.service", ["system.slice", "cgman.service"])])
def test_split_path_accepts_names(good, parts):
    assert split_path(good) == parts


def test_root_must_be_a_named_group(monkeypatch):
    monkeypatch.setenv("CGMAN_CGROUP_ROOT", "from-env")      # the CLI reads it (test_cli_fast.py); not the library
    assert cgroup_root() == "cgman"
    assert cgroup_root("explicit") == "explicit"
    with pytest.raises(UnsafePath):
        cgroup_root("../etc")
    with pytest.raises(UnsafePath):
        CgroupTree("/sys/fs/cgroup", ".")


def test_symlinks_inside_the_tree_are_not_followed(tmp_path):
    mount = tmp_path / "mnt"
    (mount / "root" / "g").mkdir(parents=True)
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "pids.max").write_text("secret")
    os.symlink(outside, mount / "root" / "link")
    os.symlink(outside / "pids.max", mount / "root" / "g" / "pids.max")
    t = CgroupTree(str(mount), "root")
    with pytest.raises(UnsafePath, match="symlink"):
        t.read("link", "pids.max")
    with pytest.raises(CgroupIOError):
        t.read("g", "pids.max")              # the file itself is a symlink: O_NOFOLLOW
    with pytest.raises(CgroupIOError):
        t.write("g", "pids.max", "5")
    assert (outside / "pids.max").read_text() == "secret"
    os.symlink(outside, mount / "evil")
    with pytest.raises(UnsafePath):
        CgroupTree(str(mount), "evil").read(".", "pids.max")


def test_writes_never_create_files(tmp_path):
    (tmp_path / "root").mkdir()
    t = CgroupTree(str(tmp_path), "root")
    with pytest.raises(CgroupIOError, match="no such file"):
        t.write(".", "memory.max", "1")
    assert not (tmp_path / "root" / "memory.max").exists()
    with pytest.raises(NotFound):
        t.read("missing", "x")
    assert t.children() == [] and t.exists() and not t.exists("missing")


def _tree_with_files(tmp_path):
    g = tmp_path / "mnt" / "top" / "root" / "g"
    g.mkdir(parents=True)
    (g / "pids.current").write_text("3\n")
    (g / "cpu.stat").write_text("usage_usec 5\n")
    (tmp_path / "mnt" / "top" / "cpuset.cpus").write_text("0-1\n")
    (tmp_path / "mnt" / "cgroup.controllers").write_text("cpu memory\n")
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "pids.current").write_text("999\n")
    return CgroupTree(str(tmp_path / "mnt"), "top/root"), g, outside


def test_reads_take_the_confined_walk_too(tmp_path):
    t, g, outside = _tree_with_files(tmp_path)
    assert t.read_files("g", ["pids.current", "io.stat", "cpu.stat"]) == ["3\n", None, "usage_usec 5\n"]
    fds = t.open_for_reading("g", ["pids.current", "io.stat"])
    try:
        assert fds[1] == -1 and os.pread(fds[0], 100, 0) == b"3\n"
        assert os.get_inheritable(fds[0]) is False
    finally:
        os.close(fds[0])
    with pytest.raises(NotFound):
        t.open_for_reading("gone", ["pids.current"])
    os.symlink(outside, g.parent / "link")
    os.symlink(outside / "pids.current", g / "pids.link")
    with pytest.raises(UnsafePath):
        t.read_files("link", ["pids.current"])
    with pytest.raises(UnsafePath):
        t.open_for_reading("link", ["pids.current"])
    assert t.read_files("g", ["pids.link"]) == [None]             # the file itself is a symlink
    with pytest.raises(CgroupIOError):
        t.open_for_reading("g", ["pids.link"])


def test_above_the_root_and_at_the_mount_only_reads_confined(tmp_path):
    from cgman.drivers.cgfs import read_in_hierarchy
    t, g, outside = _tree_with_files(tmp_path)
    assert t.read_above("cpuset.cpus") == "0-1\n"
    assert read_in_hierarchy(str(tmp_path / "mnt"), ".", "cgroup.controllers") == "cpu memory\n"
    assert read_in_hierarchy(str(tmp_path / "mnt"), "top/root/g", "pids.current") == "3\n"
    os.symlink(outside, tmp_path / "mnt" / "evil")
    with pytest.raises(UnsafePath):
        read_in_hierarchy(str(tmp_path / "mnt"), "evil", "pids.current")
    with pytest.raises(UnsafePath):
        read_in_hierarchy(str(tmp_path / "mnt"), "../outside", "pids.current")
    with pytest.raises(UnsafePath):
        CgroupTree(str(tmp_path / "mnt"), "evil/root").read_above("pids.current")
    with pytest.raises(CgroupIOError):
        read_in_hierarchy(str(tmp_path / "mnt"), ".", "missing")
    fds_before = len(os.listdir("/proc/self/fd"))
    t.close()
    assert len(os.listdir("/proc/self/fd")) == fds_before - 1       # the kept mount descriptor
    assert t.read("g", "pids.current") == "3\n"                     # opened again when needed


def test_every_read_opens_its_file_in_one_place(tmp_path, monkeypatch):
    """read, read_files, open_for_reading, read_above and read_in_hierarchy all open the file
    through cgfs._open_at (O_NOFOLLOW), the one opener of a file to read; and a file that is a
    symlink is refused by each of them."""
    from cgman.drivers import cgfs
    t, g, outside = _tree_with_files(tmp_path)
    opened: list[str] = []
    real = cgfs._open_at
    monkeypatch.setattr(cgfs, "_open_at", lambda dirfd, file: opened.append(file) or real(dirfd, file))
    mnt = str(tmp_path / "mnt")
    readers = {
        "read": lambda f: t.read("g", f),
        "read_files": lambda f: t.read_files("g", [f])[0],
        "open_for_reading": lambda f: os.close(t.open_for_reading("g", [f])[0]),
        "read_above": lambda f: t.read_above(f),
        "read_in_hierarchy": lambda f: cgfs.read_in_hierarchy(mnt, "top", f),
    }
    (tmp_path / "mnt" / "top" / "pids.current").write_text("4\n")
    for name, reader in readers.items():
        opened.clear()
        reader("pids.current")
        assert opened == ["pids.current"], name
    os.symlink(outside / "pids.current", g / "pids.link")
    os.symlink(outside / "pids.current", tmp_path / "mnt" / "top" / "pids.link")
    for name, reader in readers.items():
        try:
            got = reader("pids.link")
        except CgroupIOError as e:
            assert e.errno == errno.ELOOP, name
        else:
            assert name == "read_files" and got is None, name
    src = open(cgfs.__file__).read()
    assert src.count("_READ_FLAGS, dir_fd=") == 1, "a file to read is opened somewhere else in cgfs.py"


def _fds() -> set[str]:
    return set(os.listdir("/proc/self/fd"))


def test_kept_walks_start_from_what_this_thread_walked_and_leave_nothing_open(tmp_path):
    """Inside KeptWalks a walk starts from the directories kept: a group renamed away is still
    reached through them (the proof they are used), by this thread only; the walk's refusals
    are unchanged; at close every descriptor is closed (nested: at the outer close)."""
    import threading
    from cgman.drivers.cgfs import KeptWalks
    mount = tmp_path / "mnt"
    (mount / "root" / "grp" / "leaf").mkdir(parents=True)
    (mount / "root" / "grp" / "leaf" / "memory.max").write_text("max\n")
    (mount / "root" / "trap").symlink_to(tmp_path)
    t = CgroupTree(str(mount), "root")
    t._cached_mount_fd()                                    # kept by the tree itself, not by KeptWalks
    before = _fds()
    with KeptWalks():
        with KeptWalks():                                   # nested: the outer one keeps them
            assert t.read("grp/leaf", "memory.max") == "max\n"
        os.rename(mount / "root" / "grp", mount / "root" / "moved")
        assert t.read("grp/leaf", "memory.max") == "max\n"  # through the kept directories
        other: list[object] = []
        th = threading.Thread(target=lambda: other.append(t.exists("grp/leaf")))
        th.start()
        th.join()
        assert other == [False]                             # another thread walks afresh
        with pytest.raises(NotFound):
            t.read("gone", "memory.max")
        with pytest.raises(UnsafePath):
            t.read("trap", "memory.max")
    assert _fds() == before
    with pytest.raises(NotFound):                           # and the walk is a fresh one again
        t.read("grp/leaf", "memory.max")


def test_kept_walks_are_per_mount_path_not_per_descriptor_number(tmp_path):
    """A tree that closes its mount descriptor frees its number for the next tree's: kept walks
    keyed by that number led the second tree into the first one's hierarchy (a review found it)."""
    from cgman.drivers.cgfs import KeptWalks
    for name in ("a", "b"):
        (tmp_path / name / "root" / "grp").mkdir(parents=True)
        (tmp_path / name / "root" / "grp" / "tasks").write_text(f"hierarchy {name}\n")
    with KeptWalks():
        a = CgroupTree(str(tmp_path / "a"), "root")
        assert a.read("grp", "tasks") == "hierarchy a\n"
        number = a._cached_mount_fd()
        a.close()
        b = CgroupTree(str(tmp_path / "b"), "root")
        assert b._cached_mount_fd() == number          # the number is reused, as the kernel does
        assert b.read("grp", "tasks") == "hierarchy b\n"
        b.close()


def test_a_directory_removed_through_the_tree_is_not_walked_from_again(tmp_path):
    from cgman.drivers.cgfs import KeptWalks
    mount = tmp_path / "mnt"
    (mount / "root" / "grp" / "leaf").mkdir(parents=True)
    t = CgroupTree(str(mount), "root")
    with KeptWalks():
        assert t.exists("grp/leaf")
        t.rmdir("grp/leaf")
        assert not t.exists("grp/leaf")
        (mount / "root" / "grp" / "leaf").mkdir()
        (mount / "root" / "grp" / "leaf" / "pids.max").write_text("new\n")
        assert t.read("grp/leaf", "pids.max") == "new\n"
    t.close()


def test_a_forked_child_does_not_walk_from_its_parents_kept_directories(tmp_path):
    """After fork the child's main thread has the parent's thread id: without the fork hook it
    would walk from the parent's kept (here: renamed away) directory."""
    from cgman.drivers.cgfs import KeptWalks
    mount = tmp_path / "mnt"
    (mount / "root" / "grp").mkdir(parents=True)
    (mount / "root" / "grp" / "f").write_text("old grp\n")
    t = CgroupTree(str(mount), "root")
    with KeptWalks():
        assert t.read("grp", "f") == "old grp\n"
        os.rename(mount / "root" / "grp", mount / "root" / "moved")

        def child() -> bytes:
            try:
                return t.read("grp", "f").encode()
            except NotFound:
                return b"not found"
        said = in_fork(child)
    t.close()
    assert said == b"not found"
