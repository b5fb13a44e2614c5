"""Policy files and price sheets as hostile input (issue 16): bounded in bytes, in groups, in
YAML alias expansion and in nesting; regular files only; one error line, never a traceback.

The CLI runs as a subprocess with a timeout, so a regression that hangs (a FIFO) or explodes
(an alias bomb) fails the test instead of the run; no root, no cgroups.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from cgman.agent.policies import PolicyDir
from cgman.errors import PolicyError
from cgman.inputs import Limits, read_input
from cgman.policy import load_files, parse_text

REPO = Path(__file__).resolve().parent.parent
HEAD = "version: 1\npolicies:\n"
# Prints the child's peak RSS (KiB) on the last stderr line: RUSAGE_CHILDREN of this
# wrapper holds only the one command, whatever else the test run has spawned.
MEASURE = ("import resource, subprocess, sys; p = subprocess.run(sys.argv[1:]); "
           "print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss, file=sys.stderr); "
           "sys.exit(p.returncode)")


def cgman(*args: str, timeout: float = 60, **env: str) -> tuple[int, str, list[str], int]:
    """(exit code, stdout, stderr lines without the RSS line, peak RSS in KiB)."""
    e = dict(os.environ, PYTHONPATH=str(REPO), CGMAN_STATE_DIR="/nonexistent-cgman-state", **env)
    p = subprocess.run([sys.executable, "-c", MEASURE, sys.executable, "-m", "cgman", *args],
                       capture_output=True, text=True, env=e, cwd=REPO, timeout=timeout)
    lines = p.stderr.splitlines()
    return p.returncode, p.stdout, lines[:-1], int(lines[-1])


def one_line(rc: int, out: str, err: list[str]) -> str:
    assert rc == 1, (out, err)
    assert len(err) == 1 and err[0].startswith("cgman: error: "), err
    return err[0]


def bomb(levels: int = 10, width: int = 9) -> str:
    """Billion laughs as policies: each level's group has ``width`` children aliasing the last."""
    lines = [HEAD.rstrip("\n"), "  g0: &a0 {cpu: {weight: 100}, memory: {max: 1Gi}}"]
    for i in range(1, levels):
        kids = ", ".join(f"c{j}: *a{i - 1}" for j in range(width))
        lines.append(f"  g{i}: &a{i} {{children: {{{kids}}}}}")
    return "\n".join(lines) + "\n"


# ------------------------------------------------------------------ YAML aliases
def test_an_alias_bomb_is_refused_at_once_with_bounded_memory(tmp_path):
    f = tmp_path / "bomb.yaml"
    f.write_text(bomb())                      # ~1.3 KB that would expand to 9^9 groups
    assert f.stat().st_size < 2000
    rc, out, err, rss_kib = cgman("validate", str(f), timeout=60)
    line = one_line(rc, out, err)
    assert f"{f}:" in line and ("more than 10000 groups" in line or "excessive aliasing" in line)
    assert rss_kib < 200 * 1024, f"peak RSS {rss_kib} KiB"


def test_aliases_beyond_the_budget_are_refused_like_yaml_v3():
    groups = "".join(f"  g{i}: *base\n" for i in range(1, 11))
    text = HEAD + "  g0: &base {cpu: {weight: 100}, memory: {max: 1Gi, high: 512Mi}}\n" + groups
    assert len(parse_text(text)) == 11                        # ordinary reuse is fine
    with pytest.raises(PolicyError, match=r"^<input>:\d+:\d+: policies\.g\d+.*: YAML aliases expand to more "
                                          r"than 20 nodes: excessive aliasing$"):
        parse_text(text, limits=Limits(max_alias_nodes=20))


@pytest.mark.parametrize("text, where", [
    (HEAD + "  g: &a {children: {x: *a}}\n", "3:6: policies.g.children.x"),
    (HEAD + "  g:\n    launch: &l\n      rootfs: {layers: *l}\n", "4:13: policies.g.launch.rootfs.layers"),
])
def test_a_recursive_alias_is_one_line_not_a_recursion_error(tmp_path, text, where):
    f = tmp_path / "rec.yaml"
    f.write_text(text)
    with pytest.raises(PolicyError) as ei:
        load_files([f])
    assert str(ei.value).startswith(f"{f}:{where}: recursive YAML alias")
    line = one_line(*cgman("validate", str(f))[:3])
    assert "recursive YAML alias" in line


def test_groups_nested_past_the_depth_limit_are_one_line(tmp_path):
    f = tmp_path / "deep.yaml"
    n = 495                                    # deep enough for RecursionError, within libyaml's 1000
    f.write_text("version: 1\npolicies: " + "{a: {children: " * n + "{}" + "}}" * n + "\n")
    line = one_line(*cgman("validate", str(f))[:3])
    assert "groups nest deeper than 32 levels" in line and len(line) < 500


# ------------------------------------------------------------------ sizes and file kinds
def test_a_50_mb_policy_file_is_refused_before_it_is_read(tmp_path):
    f = tmp_path / "big.yaml"
    with f.open("w") as fh:
        fh.write(HEAD)
        line = "".join(f"  g{i}: {{cpu: {{weight: 100}}}}\n" for i in range(1000))
        while fh.tell() < 50 << 20:
            fh.write(line)
    rc, out, err, rss_kib = cgman("validate", str(f), timeout=60)
    assert "is too large" in one_line(rc, out, err) and "CGMAN_MAX_INPUT_BYTES" in err[0]
    assert rss_kib < 200 * 1024


def test_the_limits_come_from_the_environment(tmp_path):
    f = tmp_path / "p.yaml"
    f.write_text(HEAD + "  a: {}\n  b: {}\n  c: {}\n")
    assert cgman("validate", str(f))[0] == 0
    line = one_line(*cgman("validate", str(f), CGMAN_MAX_INPUT_BYTES="20")[:3])
    assert line == (f"cgman: error: {f}: file is too large (45 bytes; the limit is 20 bytes): "
                    f"split it, or raise CGMAN_MAX_INPUT_BYTES")
    line = one_line(*cgman("validate", str(f), CGMAN_MAX_GROUPS="2")[:3])
    assert line == (f"cgman: error: {f}:5:3: policies.c: more than 2 groups: split the policies, "
                    f"or raise CGMAN_MAX_GROUPS")
    assert "CGMAN_MAX_GROUPS='many'" in one_line(*cgman("validate", str(f), CGMAN_MAX_GROUPS="many")[:3])


def test_the_group_cap_counts_every_file_of_an_apply(tmp_path):
    for name in ("a", "b"):
        (tmp_path / f"{name}.yaml").write_text(HEAD + "".join(f"  {name}{i}: {{}}\n" for i in range(3)))
    assert len(load_files([tmp_path], Limits(max_groups=6)).groups) == 6
    with pytest.raises(PolicyError, match=r"b\.yaml:5:3: policies\.b2: more than 5 groups"):
        load_files([tmp_path], Limits(max_groups=5))


def test_a_file_that_grows_past_its_stat_size_is_cut_at_the_limit():
    # procfs reports size 0 and then delivers more: the read stops at limit + 1 bytes.
    with pytest.raises(PolicyError, match=r"^/proc/self/status: file is too large \(more; the limit is 10"):
        read_input("/proc/self/status", 10)
    assert read_input("/proc/self/status", 1 << 20).startswith(b"Name:")


@pytest.mark.parametrize("command, kind", [
    (c, k) for c in ("validate", "usage --prices") for k in ("devzero", "fifo", "link-to-devzero")
] + [("usage --prices", "dir")])          # validate reads a directory's *.yaml files
def test_devices_fifos_and_directories_are_refused_without_blocking(tmp_path, kind, command):
    path = tmp_path / "input.yaml"
    if kind == "devzero":
        path = Path("/dev/zero")
    elif kind == "fifo":
        os.mkfifo(path)                        # no writer: a blocking open would wait for ever
    elif kind == "dir":
        path.mkdir()
    else:
        os.symlink("/dev/zero", path)
    want = {"devzero": "a character device", "fifo": "a FIFO", "dir": "a directory",
            "link-to-devzero": "a character device"}[kind]
    rc, out, err, _ = cgman(*command.split(), str(path), timeout=30)
    line = one_line(rc, out, err)
    assert line.startswith(f"cgman: error: {path}: ") and f"is {want}; give a regular file" in line


def test_a_symlink_to_a_regular_file_is_followed(tmp_path):
    real = tmp_path / "real"
    real.write_text(HEAD + "  a: {}\n")
    d = tmp_path / "d"
    d.mkdir()
    os.symlink(real, d / "a.yaml")             # as a ConfigMap mounts its files
    assert [g.path for g in load_files([d]).groups] == ["a"]


# ------------------------------------------------------------------ messages
def test_a_long_value_is_cut_short_in_the_error_line(tmp_path):
    f = tmp_path / "long.yaml"
    f.write_text(HEAD + "  g:\n    launch:\n      hostname: " + "h" * 3_000_000 + "\n")
    line = one_line(*cgman("validate", str(f))[:3])
    assert "'" + "h" * 80 + "'… (3000000 characters) is not valid" in line
    assert len(line) < 400


def test_a_long_key_is_cut_short_too():
    with pytest.raises(PolicyError) as ei:
        parse_text(HEAD + "  g:\n    ? " + "k" * 100_000 + "\n    : 1\n")     # explicit: no 1024 limit
    assert len(str(ei.value)) < 1000 and "… (100011 characters): unknown key" in str(ei.value)


# ------------------------------------------------------------------ the agent
def test_the_agent_reports_a_bomb_like_any_bad_file_and_keeps_the_others(tmp_path):
    (tmp_path / "good.yaml").write_text(HEAD + "  ok: {}\n")
    (tmp_path / "bomb.yaml").write_text(bomb())
    (tmp_path / "rec.yaml").write_text(HEAD + "  r: &a {children: {x: *a}}\n")
    (tmp_path / "big.yaml").write_text(HEAD + "  b: {}\n" + "#" * 2000)
    old = time.time() - 10
    for f in tmp_path.iterdir():
        os.utime(f, (old, old))
    pd = PolicyDir(str(tmp_path), limits=Limits(max_input_bytes=1500))
    errors = pd.scan().errors
    assert len(errors) == 3, errors
    assert any("bomb.yaml" in e and ("groups" in e or "aliasing" in e) for e in errors)
    assert any(e.startswith(f"{tmp_path}/rec.yaml:3:6: policies.r.children.x: recursive YAML alias")
               for e in errors)
    assert any(e.startswith(f"{tmp_path}/big.yaml: file is too large") for e in errors)
    assert not any("Error" in e or "cannot parse" in e for e in errors)       # no Python exception names
    assert [g.path for g in pd.policies().groups] == ["ok"]


def test_the_agent_caps_the_groups_in_force_across_files(tmp_path):
    for name in ("a", "b"):
        (tmp_path / f"{name}.yaml").write_text(HEAD + "".join(f"  {name}{i}: {{}}\n" for i in range(3)))
    old = time.time() - 10
    for f in tmp_path.iterdir():
        os.utime(f, (old, old))
    pd = PolicyDir(str(tmp_path), limits=Limits(max_groups=4))
    errors = pd.scan().errors
    assert errors == [f"{tmp_path}/b.yaml: its 3 groups would bring the directory past 4 groups: "
                      f"split the policies, or raise CGMAN_MAX_GROUPS"]
    assert [g.path for g in pd.policies().groups] == ["a0", "a1", "a2"]
