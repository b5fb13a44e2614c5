"""`cgman status`, `freeze` and `thaw` of groups under `CGMAN_CGROUP_DRIVER=systemd` (the systemd VM
only): the groups are slices, so status walks the root slice and names slices and scopes as cgman
named them, and a group is frozen through systemd (FreezeUnit), which owns the slice's cgroup.freeze."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from cgman.containers.launch import launch
from cgman.drivers.systemd.units import slice_name

from .conftest import REPO
from .test_systemd_host import kernel, show
from .test_systemd_scopes import POLICY, _applied, spec  # noqa: F401  (the fixture's helpers)

pytestmark = [pytest.mark.systemd, pytest.mark.kernel]


@pytest.fixture
def scoped(tmp_path):
    yield from _applied("systemd", tmp_path)


def cli(scoped, *args: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, CGMAN_CGROUP_ROOT=scoped.root, CGMAN_RUN_DIR=scoped.store.run,
               CGMAN_STATE_DIR=scoped.store.state, CGMAN_CGROUP_DRIVER="systemd", PYTHONPATH=str(REPO))
    return subprocess.run([sys.executable, "-m", "cgman", *args], capture_output=True, text=True, env=env,
                          timeout=300, cwd=REPO)


def test_status_shows_the_slices_and_scopes_and_a_group_freezes_through_systemd(scoped):
    c = launch(scoped.host, scoped.store, spec("c1", ["sleep", "300"]))
    try:
        p = cli(scoped, "status", "--json")
        assert p.returncode == 0, p.stderr
        rows = {r["group"]: r for r in json.loads(p.stdout)["groups"]}
        assert list(rows) == [".", "acme", "acme/web", "acme/web/c1"]
        assert rows["acme/web/c1"]["procs"] >= 1 and rows["acme/web/c1"]["depth"] == 3
        assert rows["acme"]["limits"]["memory_max_bytes"] == 512 << 20

        web = show(slice_name(scoped.root, "acme/web"), "ControlGroup")["ControlGroup"]
        p = cli(scoped, "freeze", "acme/web")
        assert p.returncode == 0 and p.stdout.strip() == "frozen acme/web", p.stderr
        assert show(slice_name(scoped.root, "acme/web"), "FreezerState")["FreezerState"] == "frozen"
        assert kernel(web, "cgroup.freeze") == "1", "systemd wrote it"
        assert "frozen 1" in kernel(f"{c.rec.cgroup_root}/{c.rec.cgroup}", "cgroup.events"), "the container stops"
        p = cli(scoped, "thaw", "acme/web")
        assert p.returncode == 0 and show(slice_name(scoped.root, "acme/web"), "FreezerState")["FreezerState"] == \
            "running"
        assert "frozen 0" in kernel(f"{c.rec.cgroup_root}/{c.rec.cgroup}", "cgroup.events")
        p = cli(scoped, "freeze", "acme/nope")
        assert p.returncode == 1 and "no group 'acme/nope': systemd has no slice" in p.stderr, p.stderr
    finally:
        c.stop(grace_s=30)
        c.finish()
