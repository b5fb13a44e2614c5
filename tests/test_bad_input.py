"""Every bad-input class: non-zero exit, one line naming file:line:column and key,
and the cgroup tree unchanged (real kernel)."""

from __future__ import annotations

import json
import os
import re

import pytest

from cgman.plan import Write

from .conftest import write_policy

pytestmark = pytest.mark.kernel

GOOD = "version: 1\npolicies:\n  base:\n    pids: {max: 100}\n"

CASES = {
    "yaml_syntax": ("version: 1\npolicies:\n  acme:\n    cpu: {weight: 300\n", r":5:1: YAML syntax error"),
    "unknown_key": ("version: 1\npolicies:\n  acme:\n    cpu: {wieght: 300}\n",
                    r":4:11: policies\.acme\.cpu\.wieght: unknown key"),
    "bad_unit": ("version: 1\npolicies:\n  acme:\n    memory: {max: 2GB}\n",
                 r":4:19: policies\.acme\.memory\.max: bad unit 'GB'"),
    "out_of_range": ("version: 1\npolicies:\n  acme:\n    cpu: {weight: 20000}\n",
                     r":4:19: policies\.acme\.cpu\.weight: 20000 is out of range 1\.\.10000"),
    "weight_and_shares": ("version: 1\npolicies:\n  acme:\n    cpu: {weight: 100, shares: 1024}\n",
                          r":4:24: policies\.acme\.cpu\.shares: set cpu\.weight or cpu\.shares, not both"),
    "swap_without_max": ("version: 1\npolicies:\n  acme:\n    memory: {swap: 1Gi}\n",
                         r":4:14: policies\.acme\.memory\.swap: memory\.swap needs memory\.max"),
    "slash_in_name": ("version: 1\npolicies:\n  acme/web: {}\n",
                      r":3:3: policies\.acme/web: group names cannot contain '/'"),
    "dotdot_name": ("version: 1\npolicies:\n  acme:\n    children:\n      '..': {}\n",
                    r":5:7: policies\.acme\.children\.\.\.: group names cannot contain '/' or be"),
    "duplicate_group": ("version: 1\npolicies:\n  acme: {}\n  acme: {}\n",
                        r":4:3: policies\.acme: duplicate key \(first defined at line 3\)"),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_bad_policy_exits_nonzero_names_location_and_changes_nothing(case, host, cli, tmp_path,
                                                                    tree_snapshot):
    text, pattern = CASES[case]
    good = write_policy(tmp_path, "00-good.yaml", GOOD)
    cli("apply", str(good), check=True)
    before = tree_snapshot(host)
    bad = write_policy(tmp_path, "10-bad.yaml", text)
    for cmd in (["validate"], ["plan", "--target", "v2"], ["apply"], ["apply", "--dry-run"]):
        r = cli(*cmd, str(good), str(bad))
        assert r.returncode == 1, (cmd, r.stdout, r.stderr)
        lines = r.stderr.strip().splitlines()
        assert len(lines) == 1, r.stderr
        assert lines[0].startswith(f"cgman: error: {bad}:"), lines[0]
        assert re.search(pattern, lines[0]), lines[0]
    assert tree_snapshot(host) == before


def test_duplicate_group_across_files(host, cli, tmp_path, tree_snapshot):
    a = write_policy(tmp_path, "a.yaml", "version: 1\npolicies:\n  acme: {}\n")
    b = write_policy(tmp_path, "b.yaml", "version: 1\npolicies:\n  other: {}\n  acme: {}\n")
    r = cli("apply", str(a), str(b))
    assert r.returncode == 1
    assert f"{b}:4:3: policies.acme: group 'acme' is already defined at {a}:3:3" in r.stderr
    assert not host.exists(".")


def test_a_file_failing_half_way_through_a_multi_file_apply_rolls_everything_back(
        host, cli, tmp_path, tree_snapshot):
    """Valid YAML that the kernel rejects mid-apply: earlier files' changes are undone."""
    base = write_policy(tmp_path, "00-base.yaml", GOOD)
    cli("apply", str(base), check=True)
    before = tree_snapshot(host)
    ncpu = os.cpu_count() or 1
    changed = write_policy(tmp_path, "00-base.yaml",
                           "version: 1\npolicies:\n  base:\n    pids: {max: 200}\n  fresh:\n    pids: {max: 5}\n")
    bad = write_policy(tmp_path, "10-bad.yaml",
                       f"version: 1\npolicies:\n  pinned:\n    cpu: {{cpus: '{ncpu + 60}'}}\n")
    r = cli("apply", str(changed), str(bad))
    assert r.returncode == 1
    msg = r.stderr.strip()
    assert len(msg.splitlines()) == 1
    assert str(bad) in msg and "cpuset.cpus" in msg and f"'{ncpu + 60}'" in msg
    assert "rolled back" in msg and "nothing was applied" in msg
    assert tree_snapshot(host) == before           # base restored to 100, fresh/pinned removed
    assert host.read(Write("base", "pids", "pids.max", "")).strip() == "100"
    assert not host.exists("fresh") and not host.exists("pinned")


def test_unknown_target_and_unsafe_names_are_refused(host, cli, tmp_path):
    cli("apply", str(write_policy(tmp_path, "g.yaml", GOOD)), check=True)
    for target, msg in (("nope", "no group or container named 'nope'"),
                        ("../../etc", "refusing cgroup name"),
                        ("base/../..", "refusing cgroup name")):
        for cmd in ("freeze", "thaw", "kill", "rm", "status"):
            r = cli(cmd, target)
            assert r.returncode == 1 and msg in r.stderr, (cmd, target, r.stderr)
    r = cli("--cgroup-root", "../escape", "status")
    assert r.returncode == 1 and "refusing cgroup name" in r.stderr


def test_bad_cli_values_are_usage_errors(host, cli, tmp_path):
    cli("apply", str(write_policy(tmp_path, "g.yaml", GOOD)), check=True)
    r = cli("freeze", "base", "--timeout", "soon")
    assert r.returncode == 2 and "bad duration" in r.stderr
    r = cli("kill", "base", "--signal", "NOPE")
    assert r.returncode == 2 and "unknown signal" in r.stderr
    r = cli("kill", "base", "--signal", "99")
    assert r.returncode == 2 and "out of range" in r.stderr
    for empty in ("", "/"):
        r = cli("rm", "--force", empty)
        assert r.returncode == 2 and "empty target" in r.stderr
    assert host.exists("base")
    r = cli("plan", "--target", "v3", str(tmp_path / "g.yaml"))
    assert r.returncode == 2 and "auto, v1, v2 or hybrid" in r.stderr
    r = cli("validate", str(tmp_path / "missing.yaml"))
    assert r.returncode == 1 and "missing.yaml: cannot read: No such file" in r.stderr


def test_verbose_shows_a_traceback(host, cli, tmp_path):
    bad = write_policy(tmp_path, "b.yaml", CASES["unknown_key"][0])
    r = cli("-v", "validate", str(bad))
    assert r.returncode == 1 and "Traceback" in r.stderr and "PolicyError" in r.stderr
    assert "Traceback" not in cli("validate", str(bad)).stderr


def test_validate_json_lists_groups(cli, tmp_path):
    p = write_policy(tmp_path, "v.yaml", "version: 1\npolicies:\n  a:\n    children: {b: {tenant: x}}\n")
    out = json.loads(cli("validate", "--json", str(p), check=True).stdout)
    assert [(g["path"], g["tenant"]) for g in out["groups"]] == [("a", "a"), ("a/b", "x")]
