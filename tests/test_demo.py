"""The README's demo command runs start to finish on this host and leaves nothing behind."""

from __future__ import annotations

import os
import re
import socket
import subprocess

import pytest

from .conftest import REPO, _hierarchy_dirs

pytestmark = pytest.mark.kernel


def test_the_demo_tells_the_whole_story_and_cleans_up(host, tmp_path):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = dict(os.environ, CGMAN_DEMO_ROOT=host.root, CGMAN_DEMO_RUN_DIR=str(tmp_path / "run"),
               CGMAN_DEMO_STATE_DIR=str(tmp_path / "state"), CGMAN_DEMO_PORT=str(port),
               CGMAN_BRIDGE_DIR=str(tmp_path / "bridges"))     # the host's /run/cgman-bridges stays untouched
    p = subprocess.run(["bash", "scripts/demo.sh"], cwd=REPO, env=env, capture_output=True, text=True,
                       timeout=600)
    out = p.stdout + p.stderr
    assert p.returncode == 0, out[-4000:]
    # the agent: applied, an edit applied, drift written back, a broken file kept at its last good version
    assert re.search(r"applied 4 file\(s\): 7 groups created", out), out[-4000:]
    assert re.search(r"set acme/cpu\.(shares|weight) = \d+ \(was \d+\)", out)
    assert re.search(r"drift corrected: acme/cpu\.(shares|weight) was 2, set back to \d+", out)
    assert re.search(r"acme\.yaml:10:17: policies\.acme\.pids\.max: .*keeping its last good version", out)
    # a group frozen and thawed, containers on a bridge, a bill
    a, b = map(int, re.search(r"counter while frozen: (\d+) -> (\d+)", out).groups())
    assert a == b
    assert "client got" in out and "bytes from web1" in out
    assert re.search(r'cgman_tenant_containers_total\{tenant="acme"\} 2', out)
    assert re.search(r"^TOTAL\s+2\s", out, re.M), "no bill"
    assert "demo done" in out
    assert not [d for d in _hierarchy_dirs(host, host.root) if os.path.exists(d)], "cgroups left"
    assert not (tmp_path / "run").exists() and not (tmp_path / "state").exists()
    assert "cgman0" not in subprocess.run(["ip", "-br", "link"], capture_output=True, text=True).stdout
