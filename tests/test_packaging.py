"""The systemd units in packaging/systemd, checked statically (nothing is installed or started):
`systemd-analyze verify`, the settings the operator doc promises, and that ExecStart= only uses
options `cgman` really has."""

from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from .conftest import REPO, server_line

UNITS = REPO / "packaging" / "systemd"
SERVICE = UNITS / "cgman-agent.service"
SLICE = UNITS / "cgman.slice"
BINARY = "/usr/local/bin/cgman"


def _settings(path: Path) -> dict[str, list[str]]:
    """KEY -> values over all sections (unit files may repeat a key)."""
    out: dict[str, list[str]] = {}
    for line in path.read_text().splitlines():
        line = line.strip()
        if line and not line.startswith(("#", ";", "[")):
            key, _, value = line.partition("=")
            out.setdefault(key.strip(), []).append(value.strip())
    return out


def test_systemd_analyze_verify(tmp_path):
    """verify fails on an ExecStart= binary that does not exist, so the copy runs the repo's cgman;
    unknown keys are only warnings there, so the output must be empty too."""
    exe = shutil.which("systemd-analyze")
    if exe is None:
        pytest.skip("systemd-analyze is not installed")
    cgman = REPO / ".venv" / "bin" / "cgman"
    real = str(cgman) if cgman.exists() else shutil.which("cgman") or sys.executable
    for unit in (SERVICE, SLICE):
        (tmp_path / unit.name).write_text(unit.read_text().replace(BINARY, real))
    p = subprocess.run([exe, "verify", "--man=no", str(tmp_path / SERVICE.name), str(tmp_path / SLICE.name)],
                       capture_output=True, text=True, timeout=60)
    assert p.returncode == 0 and not (p.stdout + p.stderr).strip(), p.stdout + p.stderr


def test_verify_would_catch_a_typo(tmp_path):
    """The check above is only worth something if verify reports what we look for."""
    exe = shutil.which("systemd-analyze")
    if exe is None:
        pytest.skip("systemd-analyze is not installed")
    bad = tmp_path / "cgman-agent.service"
    bad.write_text(SERVICE.read_text().replace(BINARY, sys.executable).replace("Delegate=yes", "Delgate=yes"))
    p = subprocess.run([exe, "verify", "--man=no", str(bad)], capture_output=True, text=True, timeout=60)
    assert "Unknown key" in p.stdout + p.stderr


def test_service_settings():
    s = _settings(SERVICE)
    one = {k: v[-1] for k, v in s.items()}
    assert one["Delegate"] == "yes" and one["Slice"] == SLICE.name
    assert one["Type"] == "exec" and one["Restart"] == "always"
    # stopping the agent ends the agent only (served runs' supervisors and their containers go on,
    # as with docker.service); container records must survive it
    assert one["KillMode"] == "process" and one["RuntimeDirectoryPreserve"] == "yes"
    assert (one["RuntimeDirectory"], one["StateDirectory"], one["ConfigurationDirectory"]) == ("cgman",) * 3
    # these would make /sys/fs/cgroup read-only, or block namespaces, capabilities or the host's network
    for key in ("ProtectControlGroups", "ProtectKernelTunables", "RestrictNamespaces", "CapabilityBoundingSet",
                "PrivateNetwork", "ProtectSystem", "DynamicUser", "User"):
        assert key not in s, key
    # Delegate=yes runs these in a .control child of the delegated cgroup
    for key in ("ExecReload", "ExecStop", "ExecStartPost", "ExecStopPost"):
        assert key not in s, key


def _help_options(*args: str) -> set[str]:
    p = subprocess.run([sys.executable, "-m", "cgman", *args, "--help"], capture_output=True, text=True,
                       timeout=60, cwd=REPO, env=dict(os.environ, COLUMNS="200"))
    assert p.returncode == 0, p.stderr
    return set(re.findall(r"(?<![\w-])(--[a-z][a-z-]*)", p.stdout))


def test_execstart_uses_real_options():
    """Every option in ExecStart= is one `cgman --help` or `cgman agent --help` lists, with a value
    the agent accepts. (Written against the help text so it holds for the fast path too.)"""
    argv = shlex.split(_settings(SERVICE)["ExecStart"][-1])
    assert argv[0] == BINARY
    i = argv.index("agent")
    globals_, opts = argv[1:i], argv[i + 1:]
    assert set(globals_[::2]) <= _help_options() - {"--help"}
    agent = _help_options("agent")
    assert set(o for o in opts if o.startswith("--")) <= agent, agent
    values = dict(zip(opts[::2], opts[1::2], strict=True))
    assert values["--policy-dir"] == "/etc/cgman/policies" and values["--listen"] == "127.0.0.1:9753"
    from cgman.cli.serve import interval_s
    assert interval_s(values["--interval"]) == 30
    # the directories systemd creates are the ones cgman is told to use
    dirs = dict(zip(globals_[::2], globals_[1::2], strict=True))
    assert dirs == {"--run-dir": "/run/cgman", "--state-dir": "/var/lib/cgman"}
    # and the typer-free path that actually runs the agent reads the same line the same way
    assert server_line(argv[1:], "agent") == {"run_dir": "/run/cgman", "state_dir": "/var/lib/cgman", "interval": 30.0,
                                        "policy_dir": "/etc/cgman/policies", "listen": "127.0.0.1:9753"}


def test_slice_is_a_plain_slice():
    s = _settings(SLICE)
    assert "Delegate" not in s          # systemd refuses delegation on slices
    assert s["Description"]


def test_the_operator_doc_names_files_that_exist():
    doc = (REPO / "docs" / "operations.md").read_text()
    for rel in set(re.findall(r"(packaging/[\w./-]+\w)", doc)):
        assert (REPO / rel).exists(), rel
    assert "Delegate=yes" in doc and "journalctl -u cgman-agent" in doc
