"""Shared fixtures. Real-kernel tests run under a fresh root `cgman-test-<random>`
that is removed afterwards in every hierarchy, also when the test fails."""

from __future__ import annotations

import os
import secrets
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable, Iterator

import pytest

from .pg import postgres  # noqa: F401  (session fixture: a throw-away PostgreSQL for the fleet ledger)

REPO = Path(__file__).resolve().parent.parent


def _need_root_cgroups() -> None:
    if os.geteuid() != 0:
        pytest.fail("real-kernel tests need root: run the suite as root (see README)")


def _hierarchy_dirs(host, root: str) -> list[str]:
    dirs = []
    for d in host.drivers:
        for t in d.hierarchies():
            dirs.append(os.path.join(t.mount, root))
    return dirs


def destroy_root(host) -> None:
    """Kill by PID everything under the root, thaw, and rmdir bottom-up everywhere."""
    root = host.root
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        pids = set()
        for top in _hierarchy_dirs(host, root):
            for dirpath, _, files in os.walk(top):
                if "cgroup.procs" in files:
                    try:
                        pids.update(int(x) for x in Path(dirpath, "cgroup.procs").read_text().split())
                    except OSError:
                        pass
        if not pids:
            break
        for top in _hierarchy_dirs(host, root):
            for dirpath, _, files in os.walk(top):
                for f, v in (("freezer.state", "THAWED"), ("cgroup.freeze", "0")):
                    if f in files:
                        try:
                            Path(dirpath, f).write_text(v)
                        except OSError:
                            pass
        for pid in pids:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        time.sleep(0.02)
    for top in _hierarchy_dirs(host, root):
        for dirpath, _, _ in sorted(os.walk(top), key=lambda w: -w[0].count("/")):
            for _ in range(50):
                try:
                    os.rmdir(dirpath)
                    break
                except FileNotFoundError:
                    break
                except OSError:
                    time.sleep(0.02)


@pytest.fixture
def root_name() -> str:
    return f"cgman-test-{secrets.token_hex(4)}"


@pytest.fixture
def host(root_name: str) -> Iterator[object]:
    """A Host bound to a fresh cgman root on the real kernel; removed afterwards."""
    _need_root_cgroups()
    from cgman.drivers import open_host
    h = open_host(root_name)
    try:
        yield h
    finally:
        destroy_root(h)
        left = [d for d in _hierarchy_dirs(h, root_name) if os.path.exists(d)]
        assert not left, f"test left cgroups behind: {left}"


def cli_env(root_name: str, tmp_path: Path) -> dict[str, str]:
    """Environment for `python -m cgman`: this test's cgroup root, run dir, state dir and
    bridge lease dir (host-wide by default: /run/cgman-bridges)."""
    return dict(os.environ, CGMAN_CGROUP_ROOT=root_name, PYTHONPATH=str(REPO),
                CGMAN_RUN_DIR=str(tmp_path / "run"), CGMAN_STATE_DIR=str(tmp_path / "state"),
                CGMAN_BRIDGE_DIR=str(tmp_path / "bridges"))


@pytest.fixture
def cli(root_name: str, tmp_path: Path):
    """Run `python -m cgman ARGS` with this test's cgroup root; returns CompletedProcess."""
    def run(*args: str, check: bool = False, timeout: float = 180) -> subprocess.CompletedProcess:
        env = cli_env(root_name, tmp_path)
        p = subprocess.run([sys.executable, "-m", "cgman", *args], capture_output=True, text=True,
                           env=env, timeout=timeout, cwd=REPO)
        if check and p.returncode != 0:
            raise AssertionError(f"cgman {' '.join(args)} failed ({p.returncode}):\n{p.stdout}\n{p.stderr}")
        return p
    return run


def write_policy(tmp_path: Path, name: str, text: str) -> Path:
    p = tmp_path / name
    p.write_text(text)
    return p


@pytest.fixture
def tree_snapshot():
    """Every directory and limit file value under a root, to prove 'unchanged'."""
    def snap(host) -> dict[str, str]:
        out = {}
        for top in _hierarchy_dirs(host, host.root):
            for dirpath, _, files in os.walk(top):
                out[dirpath] = ""
                for f in files:
                    if f.endswith(("limit_in_bytes", ".max", "shares", "quota_us", "period_us", ".weight",
                                   "cpus", "mems", "_device", "freezer.state", "cgroup.freeze",
                                   "subtree_control", ".high", ".low", ".min", "weight_device")):
                        try:
                            out[os.path.join(dirpath, f)] = Path(dirpath, f).read_text()
                        except OSError:
                            pass
        return out
    return snap


def server_line(argv: list[str], command: str = "exporter") -> dict | None:
    """What the typer-free path makes of `cgman exporter|agent ...`: the checked options, or
    None where it leaves the line to typer (--help, a typo, a value typer refuses)."""
    from cgman.cli.common import BadOption
    from cgman.cli.options import parse
    from cgman.cli.serve import server_options
    opts = parse(argv, command)
    try:
        return None if opts is None else server_options(opts)
    except BadOption:
        return None


@pytest.fixture
def bridge():
    """A bridge name of this test's own; whatever the test leaves is removed."""
    name = f"cgt{secrets.token_hex(3)}"
    yield name
    left = subprocess.run(["ip", "-o", "link", "show"], capture_output=True, text=True).stdout
    for line in left.splitlines():
        ifname = line.split(":")[1].strip().split("@")[0]
        if ifname == name or f"master {name} " in line:
            subprocess.run(["ip", "link", "del", ifname], capture_output=True)


def in_fork(child: "Callable[[], bytes]") -> bytes:
    """What ``child()`` returns when run in a forked child of this process (at most 4 KiB)."""
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:
        try:
            os.write(w, child()[:4096])
        finally:
            os._exit(0)
    os.close(w)
    try:
        return os.read(r, 4096)
    finally:
        os.close(r)
        os.waitpid(pid, 0)
