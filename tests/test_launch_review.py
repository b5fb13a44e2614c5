"""A review's findings against the launch whose child shares the launcher's memory (CLONE_VM |
CLONE_VFORK, cgman/_spawn.c): each test failed on that code and passes since its fix. Races are
forced, not waited for: the launcher is made to lose them every time (a wrapper in the launcher's
own process, tests/launch_race.py), as a loaded host makes it lose them some of the time.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from .conftest import REPO, cli_env, write_policy

pytestmark = pytest.mark.kernel

POLICY = """
version: 1
policies:
  rev:
    children:
      quick:
        container: {pids: {max: 16}}
        launch: {network: {mode: loopback}}
"""


@pytest.fixture
def pol(tmp_path, cli, host):     # host: removes this test's cgroup root afterwards
    p = write_policy(tmp_path, "rev.yaml", POLICY)
    cli("apply", str(p), check=True)
    return p


def raced(root_name: str, tmp_path: Path, race: str, *args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    """`cgman ARGS` with the launcher losing ``race`` (see tests/launch_race.py)."""
    return subprocess.run([sys.executable, str(REPO / "tests" / "launch_race.py"), race, *args],
                          capture_output=True, text=True, env=cli_env(root_name, tmp_path), timeout=timeout,
                          cwd=REPO)


def test_a_workload_that_exits_before_its_record_is_written_keeps_a_valid_record(cli, pol, root_name, tmp_path):
    """The child has exec'd when the clone returns, so `true` may be a zombie before the launcher
    reads its start time: the record got a pid without one (pid_start null), which every later
    command refused ("the record is left alone"): `ps -a` showed it invalid, `exec`, `rm` and `gc` failed."""
    p = raced(root_name, tmp_path, "exited-before-record", "run", "-f", str(pol), "-p", "rev/quick",
              "--name", "quick", "--", "true")
    assert p.returncode == 0, p.stderr
    rec = json.loads((tmp_path / "run" / "containers" / "quick" / "record.json").read_text())
    assert rec["pid"] is not None and rec["pid_start"] is not None, rec
    p = cli("exec", "quick", "--", "true")
    assert p.returncode == 1 and "is not running (state: exited)" in p.stderr, p.stderr
    p = cli("ps", "-a")
    assert p.returncode == 0 and "quick" in p.stdout and "invalid" not in p.stdout, p.stdout + p.stderr
    assert cli("rm", "quick").returncode == 0 and cli("gc").returncode == 0


LAUNCHER = r'''
import os, sys, time
from cgman.drivers import open_host
from cgman.containers.process import start_process
root, leaf, mark, hold = sys.argv[1:5]
p = start_process(open_host(root), leaf, [b"/bin/sh", b"-c", b"echo ran > " + mark.encode()], [b"PATH=/bin"],
                  hold=hold == "1")
if p.release_fd >= 0:
    os.write(p.release_fd, b"x")     # released: only the child's own pace is left
print("released", flush=True)
time.sleep(60)
'''


def _procs_gone(host, leaf: str, timeout_s: float) -> bool:
    deadline = time.monotonic() + timeout_s
    while host.procs(leaf, recursive=True):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True


@pytest.mark.cgroup2
@pytest.mark.parametrize("hold", [False, True])
def test_a_child_whose_launcher_died_before_it_ran_does_not_start_the_workload(host, root_name, tmp_path, hold):
    """PR_SET_PDEATHSIG was set by the child's first instruction and nothing checked that the
    parent was still there: a child born frozen (CLONE_INTO_CGROUP into a frozen cgroup2 leaf)
    whose launcher was SIGKILLed meanwhile ran the workload once thawed, with nobody to wait on
    it or account for it. Held, the release byte already in the pipe let it through as well; not
    held (the launcher suspended in the vfork), any death before that first instruction did."""
    if host.v2 is None:
        pytest.skip("needs a cgroup2 hierarchy to freeze the leaf the child is born in")
    leaf, mark = "g/x", tmp_path / "ran"
    for g in (".", "g", leaf):
        host.create(g)
    host.v2.freeze(leaf, 10)
    launcher = subprocess.Popen([sys.executable, "-c", LAUNCHER, root_name, leaf, str(mark), "1" if hold else "0"],
                                stdout=subprocess.PIPE, text=True, env=dict(os.environ, PYTHONPATH=str(REPO)))
    try:
        deadline = time.monotonic() + 60
        while not host.v2.procs(leaf) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert host.v2.procs(leaf), "the child was not born in its frozen leaf"
        if hold:
            assert launcher.stdout is not None and launcher.stdout.readline() == "released\n"
    finally:
        launcher.kill()
        launcher.wait()
        host.v2.thaw(leaf, 10)
    try:
        assert _procs_gone(host, leaf, 30)
        assert not mark.exists(), "the workload ran after its launcher had died"
    finally:
        for pid in host.procs(leaf, recursive=True):
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:       # it ended between the listing and the kill
                pass


# ------------------------------------------------ kept walks (a review of cgfs.KeptWalks)
@pytest.fixture
def nested_root(root_name):
    """A nested cgman root, OUTER/inner, OUTER named as every test root is; OUTER removed after.
    v1 cpuset: OUTER gets the host's cpus and mems, so that inner can inherit them."""
    from cgman.drivers import open_host
    from .conftest import destroy_root
    root = f"{root_name}/inner"
    outer_host = open_host(root_name)
    cpuset = "/sys/fs/cgroup/cpuset"
    if os.path.isdir(cpuset):
        os.mkdir(f"{cpuset}/{root_name}")
        for f in ("cpuset.cpus", "cpuset.mems"):
            Path(cpuset, root_name, f).write_text(Path(cpuset, f).read_text())
    try:
        yield root
    finally:
        destroy_root(outer_host)


def test_a_launch_under_a_nested_root_joins_its_leaf_in_every_hierarchy(nested_root, tmp_path):
    """Found by a review: kept walks keyed by a mount descriptor's number, which a probe of the
    root's parent frees for the next tree, sent this launch's leaf into another hierarchy."""
    from cgman.containers.launch import ContainerSpec, launch
    from cgman.drivers import open_host
    from cgman.model import NetworkSpec
    from cgman.policy import load_files
    from cgman.reconcile.apply import apply
    from cgman.settings import Settings
    from cgman.state.records import Store
    p = write_policy(tmp_path, "p.yaml", "version: 1\npolicies:\n  acme:\n    children:\n      web: {}\n")
    apply(load_files([p]), open_host(nested_root))
    host = open_host(nested_root)               # fresh: nothing probed, no mount descriptor open
    store = Store(Settings(run_dir=str(tmp_path / "run"), state_dir=str(tmp_path / "state"),
                           cgroup_root=nested_root))
    c = launch(host, store, ContainerSpec(name="c1", group="acme/web", tenant="acme", argv=("sleep", "30"),
                                          network=NetworkSpec(mode="loopback"), auto_remove=True))
    try:
        for d in host.drivers:
            for t in d.hierarchies():
                assert str(c.pid) in Path(t.path("acme/web/c1"), "cgroup.procs").read_text().split(), t.mount
    finally:
        c.stop(0)
        c.finish()
