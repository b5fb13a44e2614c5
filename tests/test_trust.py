"""Issue 16: cgman trusts nothing it reads back. Records, run and state dirs, the ledger
file and bridge leases, each attacked as the security review did on this host.

Every scenario here was seen to fail on the code before the fix (see the commit)."""

from __future__ import annotations

import json
import os
import secrets
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from .conftest import REPO, cli_env, destroy_root, write_policy
from .test_launch import POLICY, _links, bridge_policy, record   # the bridge fixture: conftest.py

pytestmark = pytest.mark.kernel


@pytest.fixture
def pol(tmp_path, cli):
    p = write_policy(tmp_path, "p.yaml", POLICY)
    cli("apply", str(p), check=True)
    return p


@pytest.fixture
def sleeper():
    """A process outside cgman (the review's victim); killed by pid afterwards."""
    p = subprocess.Popen(["sleep", "600"])
    yield p
    p.kill()
    p.wait()


def start_ticks(pid: int) -> int:
    data = Path(f"/proc/{pid}/stat").read_bytes()
    return int(data[data.rindex(b")") + 2:].split()[19])


def forge(tmp_path: Path, dirname: str, root: str, group: str = "acme/web", **fields) -> Path:
    """A record as cgman writes it (state running, supervisor gone), with ``fields`` edited."""
    name = dirname
    rec = {"id": secrets.token_hex(16), "name": name, "group": group, "tenant": "acme",
           "cgroup": f"{group}/{name}", "cgroup_root": root, "argv": ["sleep", "600"], "created": time.time(),
           "state": "running", "pid": None, "pid_start": None, "started": time.time()}
    rec.update(fields)
    d = tmp_path / "run" / "containers" / dirname
    d.mkdir(parents=True, exist_ok=True)
    (d / "record.json").write_text(json.dumps(rec))
    return d / "record.json"


def alive(p: subprocess.Popen) -> bool:
    return p.poll() is None


# ------------------------------------------------------------------------------ records
@pytest.fixture
def other_root(host):
    """A second cgman root (the review's "rt1") with a process in acme/web/victim."""
    from cgman.drivers import open_host
    h = open_host(f"cgman-test-{secrets.token_hex(4)}")
    try:
        for g in ("", "acme", "acme/web", "acme/web/victim"):
            h.create(g or ".")
        yield h
    finally:
        destroy_root(h)


def test_an_edited_cgroup_root_never_reaches_another_root(cli, pol, tmp_path, other_root, sleeper):
    other_root.attach("acme/web/victim", sleeper.pid)
    forge(tmp_path, "victim", other_root.root, pid=sleeper.pid, pid_start=start_ticks(sleeper.pid))
    p = cli("ps", "-a", "--json")
    assert p.returncode == 0, p.stderr
    assert "collected container victim" not in p.stderr
    rows = json.loads(p.stdout)
    assert [r["state"] for r in rows] == ["other-root"] and "--cgroup-root" in rows[0]["problem"]
    assert alive(sleeper) and other_root.exists("acme/web/victim"), "another root's group is untouched"
    g = cli("gc", "--json")
    assert g.returncode == 0 and json.loads(g.stdout) == {"collected": []}
    assert cli("stop", "victim").returncode == 1
    assert cli("rm", "--force", "victim").returncode == 1, "another root's record is that root's to remove"
    assert alive(sleeper) and other_root.exists("acme/web/victim")


def test_a_systemd_record_of_another_root_is_that_roots_not_invalid(cli, pol, host, tmp_path):
    """A systemd-driver container of root R (its record names R's root slice) in a run dir shared with
    another root: `ps` shows it as another root's, and `rm --force` refuses it as for the cgroupfs
    driver, rather than calling it invalid and dropping the record of a live container (whose scope
    and keeper nothing would collect then)."""
    from cgman.drivers.systemd.units import scope_placement
    other = f"cgman-test-{secrets.token_hex(4)}"
    slice_root, cgroup = scope_placement(other, "acme/web", "theirs")
    path = forge(tmp_path, "theirs", slice_root, cgroup=cgroup, driver="systemd")
    p = cli("ps", "-a", "--json")
    assert p.returncode == 0, p.stderr
    [row] = json.loads(p.stdout)
    assert row["state"] == "other-root" and f"--cgroup-root {other}" in row["problem"], row
    g = cli("gc", "--json")      # was: exit 1 on an "invalid" record (the agent: a collect error each pass)
    assert g.returncode == 0 and json.loads(g.stdout) == {"collected": []}, g.stderr
    assert cli("rm", "--force", "theirs").returncode == 1, "another root's record is that root's to remove"
    assert path.exists()


def test_an_edited_pid_is_never_signalled_nor_its_group_removed(cli, pol, host, tmp_path, sleeper):
    """A pid outside the container's leaf: stop sends it nothing (review: it got SIGTERM)."""
    host.create("acme/web/ghost")
    forge(tmp_path, "ghost", host.root, pid=sleeper.pid, pid_start=start_ticks(sleeper.pid))
    p = cli("stop", "ghost", "-t", "1s")
    assert p.returncode == 0, p.stderr
    assert alive(sleeper), "a process outside the container got no signal"
    assert host.exists("acme/web"), "the policy group stays"
    assert record(tmp_path, "ghost")["state"] == "exited"


def test_a_record_naming_a_policy_group_is_invalid_and_left_alone(cli, pol, host, tmp_path, sleeper):
    """Review: with name=web group=acme, `cgman stop` removed the policy group acme/web."""
    forge(tmp_path, "web", host.root, group="acme", pid=sleeper.pid, pid_start=start_ticks(sleeper.pid))
    p = cli("stop", "web", "-t", "1s")
    assert p.returncode == 1 and "cgroup: acme/web is a policy group" in p.stderr
    assert len(p.stderr.strip().splitlines()) == 1
    assert alive(sleeper) and host.exists("acme/web")
    rows = json.loads(cli("ps", "-a", "--json", check=True).stdout)
    assert [(r["name"], r["state"]) for r in rows] == [("web", "invalid")]
    assert cli("rm", "--force", "web").returncode == 0, "an invalid record is dropped, nothing else"
    assert alive(sleeper) and host.exists("acme/web")


@pytest.mark.parametrize("field, value, says", [
    ("cgroup", "acme/other", "cgroup: 'acme/other' is not group/name"),
    ("name", "someone-else", "name: 'someone-else' is not its directory's name"),
    ("group", "acme/../..", "group: not a group path"),
    ("cgroup_root", "../etc", "cgroup_root: '../etc' is not a cgroup root name"),
    ("pid", "1", "pid: '1' is not an integer"),
    ("id", "../../x", "id: not 32 lowercase hex digits"),
    ("driver", "runc", "driver: 'runc' is not one of cgroupfs, systemd"),
])
def test_an_edited_field_is_reported_with_file_and_field(cli, pol, host, tmp_path, field, value, says):
    path = forge(tmp_path, "edited", host.root, **{field: value})
    p = cli("gc")
    assert p.returncode == 1 and f"{path}: {says}" in p.stderr and len(p.stderr.strip().splitlines()) == 1
    assert path.exists(), "left alone"


@pytest.mark.parametrize("fields, says", [
    # A systemd-driver record whose cgroup points at a cgroup systemd owns (another unit's).
    ({"cgroup_root": "system.slice", "cgroup": "ssh.service"},
     "cgroup: 'ssh.service' is not its systemd scope's payload"),
    # ... or at another container's scope, or at the scope itself instead of its payload.
    ({"cgroup": "{slice}/{scope2}/payload"}, "is not its systemd scope's payload"),
    ({"cgroup": "{slice}/{scope}"}, "is not its systemd scope's payload"),
    # The right cgroup under another root slice.
    ({"cgroup_root": "init.scope"}, "cgroup_root: 'init.scope' is not the root slice's cgroup"),
])
def test_a_systemd_record_pointing_outside_its_scope_is_reported(cli, pol, host, tmp_path, fields, says):
    from cgman.drivers.systemd.units import scope_name, scope_placement, slice_dir
    root, good = scope_placement(host.root, "acme/web", "edited")
    names = {"slice": slice_dir(host.root, "acme/web"), "scope": scope_name(host.root, "acme/web", "edited"),
             "scope2": scope_name(host.root, "acme/web", "other")}
    edits = {"driver": "systemd", "cgroup_root": root, "cgroup": good}
    edits.update({k: v.format(**names) for k, v in fields.items()})
    path = forge(tmp_path, "edited", host.root, **edits)
    p = cli("gc")
    assert p.returncode == 1 and f"{path}: " in p.stderr and says in p.stderr
    assert len(p.stderr.strip().splitlines()) == 1, p.stderr
    assert path.exists(), "left alone"
    ok = forge(tmp_path, "edited", host.root, driver="systemd", cgroup_root=root, cgroup=good, state="exited")
    assert cli("ps", "-a").returncode == 0 and ok.exists(), "the record as cgman writes it is valid"


def test_a_bridge_path_in_a_record_deletes_nothing(cli, pol, host, tmp_path):
    """Review: network.bridge '../../victimdir/important' made gc delete victimdir/important.json."""
    victim = tmp_path / "victimdir" / "important.json"
    victim.parent.mkdir()
    victim.write_text("{}")
    (tmp_path / "run" / "network").mkdir(parents=True)   # as any earlier bridge container left it (old layout)
    forge(tmp_path, "netx", host.root, state="exited", cleanup_pending=True,
          network={"mode": "bridge", "bridge": "../../victimdir/important", "address": "10.88.0.2"})
    p = cli("gc")
    assert victim.exists() and victim.read_text() == "{}", "nothing outside the run dir was removed"
    assert p.returncode == 1 and "network: bridge '../../victimdir/important' is not an interface name" in p.stderr


# ------------------------------------------------------------------------------ directories
def _hostile_dir(tmp_path: Path, name: str, links: dict[str, str]) -> tuple[Path, Path]:
    """A dir owned by nobody (uid 65534) with ``links`` planted in it, and where they point."""
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir(exist_ok=True)
    d = tmp_path / name
    d.mkdir()
    for link, target in links.items():
        (d / link).symlink_to(elsewhere / target)
    os.chown(d, 65534, 65534)
    return d, elsewhere


def test_a_run_dir_of_another_user_is_refused(cli, pol, host, tmp_path):
    rd, elsewhere = _hostile_dir(tmp_path, "rd", {"containers": "", "gc.lock": "created-by-root"})
    for cmd in (["gc"], ["ps", "-a"], ["run", "-f", str(pol), "-p", "acme/web", "--", "true"]):
        p = cli("--run-dir", str(rd), *cmd)
        assert p.returncode == 1, p.stderr
        assert f"the run dir {rd} is owned by uid 65534" in p.stderr
        assert f"chown root:root {rd} && chmod 0700 {rd}" in p.stderr
    assert list(elsewhere.iterdir()) == [], "nothing was created where the links point"


def test_a_state_dir_of_another_user_is_refused(cli, pol, host, tmp_path):
    sd, elsewhere = _hostile_dir(tmp_path, "sd", {"ledger.db": "x.db", "containers": ""})
    p = cli("--state-dir", str(sd), "run", "-f", str(pol), "-p", "acme/web", "--", "true")
    assert list(elsewhere.iterdir()) == [], "root created nothing where the links point"
    assert p.returncode == 1 and f"the state dir {sd} is owned by uid 65534" in p.stderr
    assert host.children("acme/web") == [], "nothing ran"


def test_a_link_planted_in_our_own_run_dir_is_not_followed(cli, pol, host, tmp_path):
    run = tmp_path / "run"
    assert run.is_dir() and run.stat().st_mode & 0o777 == 0o700, "apply made it"
    (tmp_path / "elsewhere").mkdir()
    (run / "gc.lock").symlink_to(tmp_path / "elsewhere" / "created-by-root")
    p = cli("gc")
    assert p.returncode == 1 and f"refusing {run}/gc.lock: it is a symlink" in p.stderr
    assert list((tmp_path / "elsewhere").iterdir()) == []


def test_a_group_writable_run_dir_is_refused(cli, tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    run.chmod(0o777)
    p = cli("ps")
    assert p.returncode == 1 and "is writable by group or others (mode 0777)" in p.stderr


def test_dirs_are_created_0700_and_the_ledger_0600(run_true):
    tmp_path = run_true
    assert (tmp_path / "run").stat().st_mode & 0o777 == 0o700
    assert (tmp_path / "state").stat().st_mode & 0o077 in (0o011, 0), "others may pass, never list or write"
    for f in (tmp_path / "state").iterdir():
        if f.name.startswith("ledger.db"):
            assert f.stat().st_mode & 0o777 == 0o600, f"{f.name} is private (was 0644)"


@pytest.fixture
def run_true(cli, pol, host, tmp_path):
    p = cli("run", "-f", str(pol), "-p", "acme/web", "--", "true")
    assert p.returncode == 0, p.stderr
    assert (tmp_path / "state" / "ledger.db").exists()
    return tmp_path


# ------------------------------------------------------------------------------ bridges
def test_two_run_dirs_on_one_bridge_share_its_leases(cli, host, tmp_path, root_name, bridge):  # noqa: F811
    pol = bridge_policy(cli, tmp_path, bridge, "10.213.13.0/29")
    env2 = dict(cli_env(root_name, tmp_path), CGMAN_RUN_DIR=str(tmp_path / "run2"))

    def cli2(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "cgman", *args], capture_output=True, text=True,
                              env=env2, timeout=120, cwd=REPO)
    assert cli("run", "-f", str(pol), "-p", "net", "-d", "--name", "a", "--", "sleep", "600").returncode == 0
    try:
        r = cli2("run", "-f", str(pol), "-p", "net", "-d", "--name", "b", "--", "sleep", "600")
        assert r.returncode == 0, r.stderr
        b = json.loads((tmp_path / "run2" / "containers" / "b" / "record.json").read_text())
        assert record(tmp_path, "a")["network"]["address"] == "10.213.13.2"
        assert b["network"]["address"] == "10.213.13.3", "the second instance got another address"
        assert cli("rm", "--force", "a").returncode == 0
        assert f"{bridge}:" in _links(), "the bridge stays while the other instance's container runs"
        leases = json.loads((tmp_path / "bridges" / f"{bridge}.json").read_text())["leases"]
        assert leases == {"10.213.13.3": {"id": b["id"], "run": str(tmp_path / "run2")}}
    finally:
        cli("rm", "--force", "a")
        cli2("rm", "--force", "b")
    assert f"{bridge}:" not in _links(), "gone with the last lease"
    assert not (tmp_path / "bridges" / f"{bridge}.json").exists()


def test_a_stale_lease_of_a_dead_container_is_reclaimed(cli, host, tmp_path, bridge):  # noqa: F811
    pol = bridge_policy(cli, tmp_path, bridge, "10.213.15.0/30")      # room for one container
    (tmp_path / "bridges").mkdir(mode=0o700)
    (tmp_path / "bridges" / f"{bridge}.json").write_text(json.dumps(
        {"subnet": "10.213.15.0/30", "created_bridge": True,
         "leases": {"10.213.15.2": {"id": secrets.token_hex(16), "run": "/run/gone"}}}))
    p = cli("run", "-f", str(pol), "-p", "net", "--", "true")
    assert p.returncode == 0, p.stderr
    assert f"{bridge}:" not in _links()


def test_signal_owned_spares_a_process_outside_the_leaf(sleeper, host):
    from cgman.state.recordcheck import owned_pid, signal_owned
    start = start_ticks(sleeper.pid)
    assert not owned_pid(sleeper.pid, start, host.root, "acme/web/x")
    assert not signal_owned(sleeper.pid, start, host.root, "acme/web/x", signal.SIGKILL)
    assert alive(sleeper)
