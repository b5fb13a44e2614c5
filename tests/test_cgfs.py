"""Confinement of every path beneath the cgman root (fixture tree: cgroupfs itself
cannot hold symlinks, so the symlink case is exercised on tmpfs)."""

from __future__ import annotations

import os

import pytest

from cgman.drivers.cgfs import CgroupTree, split_path
from cgman.drivers import cgroup_root
from cgman.errors import CgroupIOError, NotFound, UnsafePath


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
