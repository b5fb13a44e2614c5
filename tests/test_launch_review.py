"""A review's findings against the launch whose child shares the launcher's memory (CLONE_VM |
CLONE_VFORK, cgman/_spawn.c): each test failed on that code and passes since its fix. Races are
forced, not waited for: the launcher is made to lose them every time (a wrapper in the launcher's
own process, tests/launch_race.py), as a loaded host makes it lose them some of the time.
"""

from __future__ import annotations

import json
import subprocess
import sys
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
