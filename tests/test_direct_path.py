"""The direct `cgman run` path made lean (issue 13, item 3): what it no longer imports has a
replacement that behaves the same."""

from __future__ import annotations

import os
import urllib.parse

import pytest

from cgman.accounting.ledger import _uri_quote
from cgman.state.safedir import SafeDir


@pytest.mark.parametrize("path", ["/var/lib/cgman/ledger.db", "/tmp/a?mode=rw#x/l.db", "/tmp/100%/é ü/l.db",
                                  "/tmp/~user/a-b_c.d/l.db", "/tmp/\x01\x7f/l.db", "/tmp/日本/l.db"])
def test_ledger_uri_quote_is_urllibs(path: str) -> None:
    assert _uri_quote(path) == urllib.parse.quote(path)


def _tree(base: str) -> SafeDir:
    d = SafeDir(base, "test dir", "--x")
    d.fd()
    return d


def test_remove_flat_dir_nested_dir_and_links_stay_outside(tmp_path) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "keep").write_text("x")
    d = _tree(str(tmp_path / "run"))
    flat = tmp_path / "run" / "flat"
    flat.mkdir()
    (flat / "record.json").write_text("{}")
    (flat / "collect.lock").write_text("")
    os.symlink(outside, flat / "link")                  # a link in a flat dir goes itself
    d.remove("flat")
    assert not flat.exists() and (outside / "keep").exists()
    nested = tmp_path / "run" / "nested"
    (nested / "a" / "b").mkdir(parents=True)
    (nested / "a" / "b" / "f").write_text("x")
    (nested / "g").write_text("x")
    os.symlink(outside, nested / "a" / "link")
    d.remove("nested")
    assert not nested.exists() and (outside / "keep").exists()
    os.symlink(outside, tmp_path / "run" / "dirlink")   # a link to a dir: the link goes, not the dir
    d.remove("dirlink")
    assert not os.path.lexists(tmp_path / "run" / "dirlink") and (outside / "keep").exists()
    d.remove("missing")                                  # nothing there: nothing to do


# ----------------------------------------------------------- launch parameters precompiled at apply
POLICIES = """version: 1
policies:
  acme:
    tenant: acme
    children:
      web:
        container: {memory: {max: 256Mi}, pids: {max: 64}, cpu: {max: 1.5}}
        launch:
          hostname: "web-{name}"
          namespaces: [uts, ipc, pid, mount, cgroup, net, user]
          network: {mode: loopback}
          capabilities: {drop: [NET_RAW]}
          no_new_privileges: false
          devices: [{path: /dev/null}]
      plain: {}
      priv:
        launch: {privileged: true, allow_privileged: true}
      img:
        launch: {image: "busybox:1"}
"""


def _policies(tmp_path):
    from cgman.policy import load_files
    p = tmp_path / "p.yaml"
    p.write_text(POLICIES)
    return load_files([p])


@pytest.mark.parametrize("group", ["acme", "acme/web", "acme/plain", "acme/priv"])
@pytest.mark.parametrize("kw", [{}, {"hostname": "h1", "env": (("A", "1"),), "init": False, "auto_remove": True},
                                {"network": "loopback"}, {"network": "none"}, {"network": "bridge"}])
def test_precompiled_spec_is_spec_for(tmp_path, group, kw) -> None:
    """What a run builds from the precompiled parameters equals what spec_for builds from the policies."""
    from cgman.containers import spec as C
    ps = _policies(tmp_path)
    t = C.launch_params(ps, group)
    assert t is not None
    got = C.from_params(t, group, "c1", ["sh", "-c", "x"], C.Overrides(**kw))
    assert got == C.spec_for(ps, group, "c1", ["sh", "-c", "x"], C.Overrides(**kw))
    unnamed = C.from_params(t, group, None, ["true"], C.Overrides())
    assert unnamed is not None and unnamed.name.startswith(group.rsplit("/", 1)[-1] + "-")
    assert unnamed.hostname == C.spec_for(ps, group, unnamed.name, ["true"], C.Overrides()).hostname


@pytest.mark.parametrize("kw", [{"cpus": 1.0}, {"memory_bytes": 1 << 20}, {"pids": 5},
                                {"userns": True}, {"rootfs": "/"}, {"layers": ("/",)}])
def test_precompiled_not_used_when_a_run_overrides_the_group(tmp_path, kw) -> None:
    from cgman.containers import spec as C
    t = C.launch_params(_policies(tmp_path), "acme/web")
    assert C.from_params(t, "acme/web", "c1", ["true"], C.Overrides(**kw)) is None
    assert C.from_params(t, "acme/plain", "c1", ["true"], C.Overrides()) is None      # another group's


def test_precompiled_none_where_spec_for_refuses_or_cannot_be_filled(tmp_path) -> None:
    from cgman.containers import spec as C
    ps = _policies(tmp_path)
    assert C.launch_params(ps, "acme/img") is None          # a default image: the run reads the image
    assert C.launch_params(ps, "nope") is None
    with pytest.raises(Exception, match="no command given"):
        C.from_params(C.launch_params(ps, "acme"), "acme", "c", [], C.Overrides())
    with pytest.raises(Exception, match="--network must be none, loopback or bridge"):
        C.from_params(C.launch_params(ps, "acme"), "acme", "c", ["true"], C.Overrides(network="host"))


def _store(tmp_path):
    from cgman.settings import Settings
    from cgman.state.records import Store
    return Store(Settings(run_dir=str(tmp_path / "run"), state_dir=str(tmp_path / "state")))


def test_precompiled_files_saved_loaded_stale_and_pruned(tmp_path) -> None:
    from cgman.containers import spec as C
    from cgman.state import applied
    ps, st = _policies(tmp_path), _store(tmp_path)
    C.save_applied(st, "r", ps)
    d = tmp_path / "run" / "launch-r"
    assert sorted(os.listdir(d)) == ["acme+plain.pickle", "acme+priv.pickle", "acme+web.pickle", "acme.pickle"]
    assert all((d / n).stat().st_mode & 0o777 == 0o600 for n in os.listdir(d))
    params, why = applied.load_launch(st, "r", "acme/web")
    assert params == C.launch_params(ps, "acme/web") and why == ""
    assert applied.load_launch(st, "r", "acme/img") == (None, "none were compiled for it (not applied, or "
                                                             "applied by an older cgman)")
    os.utime(tmp_path / "run" / "applied-r.pickle", ns=(1, 1))     # the applied file changed since
    assert applied.load_launch(st, "r", "acme/web")[1] == "they are older than the applied policies"
    from cgman.model import PolicySet
    C.save_applied(st, "r", PolicySet(tuple(g for g in ps.groups if g.path in ("acme", "acme/plain"))), replace=True)
    assert sorted(os.listdir(d)) == ["acme+plain.pickle", "acme.pickle"]
    assert applied.load_launch(st, "r", "acme/plain")[0] is not None


def test_precompiled_file_not_trusted_if_others_could_write_it(tmp_path) -> None:
    from cgman.containers import spec as C
    from cgman.state import applied
    ps, st = _policies(tmp_path), _store(tmp_path)
    C.save_applied(st, "r", ps)
    f = tmp_path / "run" / "launch-r" / "acme+web.pickle"
    os.chmod(f, 0o620)
    assert applied.load_launch(st, "r", "acme/web")[0] is None
    os.chmod(f, 0o600)
    os.chown(f, 1234, 0)
    assert applied.load_launch(st, "r", "acme/web")[0] is None
    os.chown(f, 0, 0)
    assert applied.load_launch(st, "r", "acme/web")[0] is not None
    os.chmod(tmp_path / "run", 0o777)                              # the run dir itself: refused too
    params, why = applied.load_launch(_store(tmp_path), "r", "acme/web")
    assert params is None and "writable by group or others" in why


def test_applied_group_paths_are_read_once_and_again_after_any_change(tmp_path) -> None:
    """A long-lived process (the run server, the agent) keeps the applied groups until the file
    changes: replaced by another apply, or made untrusted by a chmod (the ctime moves)."""
    from cgman.containers import spec as C
    from cgman.model import PolicySet
    from cgman.state import applied
    ps, st = _policies(tmp_path), _store(tmp_path)
    C.save_applied(st, "r", ps)
    first = applied.group_paths(st, "r")
    assert first == {g.path for g in ps.groups} and applied.group_paths(st, "r") is first
    C.save_applied(st, "r", PolicySet(tuple(g for g in ps.groups if g.path in ("acme", "acme/plain"))), replace=True)
    assert applied.group_paths(st, "r") == {"acme", "acme/plain"}
    os.chmod(tmp_path / "run" / "applied-r.pickle", 0o666)         # others could plant a pickle: not trusted
    assert applied.group_paths(st, "r") == frozenset()


def test_a_failed_read_of_the_applied_groups_is_not_kept(tmp_path, monkeypatch) -> None:
    """A read that fails for a moment (no fds left, say) must not stand for 'no policy groups'
    until the file changes: that would turn off the check that no record names one."""
    from cgman.containers import spec as C
    from cgman.state import applied
    ps, st = _policies(tmp_path), _store(tmp_path)
    C.save_applied(st, "r", ps)
    real = applied.load
    monkeypatch.setattr(applied, "load", lambda *a: None)
    assert applied.group_paths(st, "r") == frozenset()
    monkeypatch.setattr(applied, "load", real)
    assert applied.group_paths(st, "r") == {g.path for g in ps.groups}


@pytest.mark.kernel
@pytest.mark.cgroup2
def test_run_says_which_spec_it_used(host, cli, tmp_path) -> None:
    """-v names the path: the group's precompiled parameters, or the applied policies and why."""
    p = tmp_path / "p.yaml"
    p.write_text("version: 1\npolicies:\n  g:\n    container: {pids: {max: 16}}\n")
    cli("apply", str(p), check=True)
    r = cli("-v", "run", "-p", "g", "--rm", "--", "/bin/sh", "-c", "cat /sys/fs/cgroup/pids/pids.max 2>/dev/null ||"
            " cat /sys/fs/cgroup/pids.max", check=True)
    assert "launch parameters of g as compiled when it was applied" in r.stderr and r.stdout.strip() == "16"
    r = cli("-v", "run", "-p", "g", "--rm", "--pids", "8", "--", "true", check=True)
    assert "reading the applied policies (no precompiled launch parameters of g: this run overrides them)" in r.stderr
    os.utime(tmp_path / "run" / f"applied-{host.root}.pickle", ns=(1, 1))
    r = cli("-v", "run", "-p", "g", "--rm", "--", "true", check=True)
    assert "g: they are older than the applied policies" in r.stderr
    r = cli("run", "-p", "nope", "--rm", "--", "true")
    assert r.returncode != 0 and "no group 'nope' applied under cgroup root" in r.stderr


# Each of these costs 1-4 ms of every direct `cgman run` and is not needed on its way:
# typing (string annotations only), logging (lazylog.py), inspect and what it loads
# (_dcache.py defers it for dataclasses), decimal (durations only), and the policy parser.
NOT_ON_THE_DIRECT_PATH = {"typing", "logging", "inspect", "ast", "dis", "tokenize", "decimal", "threading",
                          "yaml", "typer", "click", "cgman.policy", "cgman.schema"}


@pytest.mark.kernel
@pytest.mark.cgroup2
def test_a_direct_run_imports_none_of_what_it_does_not_need(host, tmp_path) -> None:
    import subprocess
    import sys
    from pathlib import Path

    from tests.conftest import cli_env
    env = cli_env(host.root, tmp_path)
    cgman = str(Path(sys.executable).parent / "cgman")
    p = tmp_path / "p.yaml"
    p.write_text("version: 1\npolicies:\n  g:\n    container: {pids: {max: 16}}\n")
    subprocess.run([cgman, "apply", str(p)], env=env, check=True, capture_output=True, timeout=60)
    python_cli = cgman + "-cli"               # what the C front execs for a run no agent serves
    r = subprocess.run([sys.executable, "-X", "importtime", python_cli, "run", "-p", "g", "--rm", "--network",
                        "loopback", "--", "/bin/sh", "-c", "exit 3"],
                       env=env, capture_output=True, text=True, timeout=60)
    assert r.returncode == 3, r.stderr[-2000:]
    imported = {ln.split("|")[2].strip() for ln in r.stderr.splitlines() if ln.startswith("import time:")}
    assert "cgman.containers.launch" in imported and "cgman.accounting.ledger" in imported
    assert imported & NOT_ON_THE_DIRECT_PATH == set()
