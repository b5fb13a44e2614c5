"""`cgman agent` on the real kernel: apply on start and on change (inotify and polling),
a bad file keeps its last good version, drift is written back, dead containers are
collected exactly once, and a SIGKILL at any point of an apply or a collection is
followed by a restart that converges with a ledger that lost and doubled nothing."""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import sqlite3
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Callable

import pytest

from .conftest import REPO, cli_env, server_line

pytestmark = pytest.mark.kernel

POLICY = """\
version: 1
policies:
  acme:
    tenant: acme
    cpu: {{weight: {weight}}}
    pids: {{max: 500}}
    children:
      web:
        memory: {{max: {mem}}}
        container:
          pids: {{max: 64}}
        launch:
          namespaces: [uts, ipc, pid, mount]
"""

OTHER = """\
version: 1
policies:
  globex:
    tenant: globex
    cpu: {weight: 50}
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def until(fn: Callable[[], object], timeout: float = 15, what: str = "") -> object:
    deadline = time.monotonic() + timeout
    while True:
        v = fn()
        if v:
            return v
        assert time.monotonic() < deadline, f"timed out waiting for {what or fn}"
        time.sleep(0.05)


def proc_state(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, ProcessLookupError):
        return "gone"


class Agent:
    """One `cgman agent` subprocess with its log; stop() ends it by PID. With ``stop_at`` it is
    the agent that stops itself at that point (tests/agent_crashpoint.py)."""

    def __init__(self, root: str, tmp: Path, pdir: Path, *args: str, env: dict[str, str] | None = None,
                 stop_at: str | None = None) -> None:
        self.port = free_port()
        self.log = tmp / f"agent-{self.port}.log"
        self._f = open(self.log, "w")
        e = dict(cli_env(root, tmp), **(env or {}))
        program = ["-m", "cgman", "agent"] if stop_at is None else ["-m", "tests.agent_crashpoint", stop_at]
        self.p = subprocess.Popen(
            [sys.executable, *program, "--policy-dir", str(pdir), "--listen",
             f"127.0.0.1:{self.port}", "--interval", "1s", *args],
            stdout=self._f, stderr=subprocess.STDOUT, env=e, cwd=REPO)

    def metrics(self) -> dict[str, float]:
        try:
            body = urllib.request.urlopen(f"http://127.0.0.1:{self.port}/metrics", timeout=5).read().decode()
        except OSError:
            return {}
        out = {}
        for ln in body.splitlines():
            m = re.match(r"^(cgman_agent_\w+|cgman_tenant_\w+\{[^}]*\}) (\S+)$", ln)
            if m:
                out[m.group(1)] = float(m.group(2))
        return out

    def reconciles(self) -> float:
        return self.metrics().get("cgman_agent_reconciles_total", 0.0)

    def wait_reconciled(self, after: float = 0.0, timeout: float = 20) -> dict[str, float]:
        """Metrics once a reconcile beyond ``after`` has finished."""
        def done() -> dict[str, float] | None:
            assert self.p.poll() is None, f"the agent exited ({self.p.returncode}):\n{self.text()}"
            m = self.metrics()
            return m if m.get("cgman_agent_reconciles_total", 0) > after else None
        return until(done, timeout, "a reconcile")  # type: ignore[return-value]

    def text(self) -> str:
        if not self._f.closed:
            self._f.flush()
        return self.log.read_text()

    def stop(self, sig: int = signal.SIGTERM) -> int:
        if self.p.poll() is None:
            if proc_state(self.p.pid) == "T":
                os.kill(self.p.pid, signal.SIGCONT)
            self.p.send_signal(sig)
            try:
                self.p.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.p.kill()
                self.p.wait()
        self._f.close()
        return self.p.returncode


@pytest.fixture
def agents(host, tmp_path):
    started: list[Agent] = []

    def start(pdir: Path, *args: str, env: dict[str, str] | None = None, stop_at: str | None = None) -> Agent:
        a = Agent(host.root, tmp_path, pdir, *args, env=env, stop_at=stop_at)
        started.append(a)
        return a
    yield start
    for a in started:
        a.stop(signal.SIGKILL)


@pytest.fixture
def pdir(tmp_path) -> Path:
    d = tmp_path / "policies"
    d.mkdir()
    old(d / "acme.yaml", POLICY.format(weight=200, mem="256Mi"))
    return d


def old(path: Path, text: str) -> None:
    """Write a file as if it had been there for a while (the agent waits out a file written
    in the last 0.5 s: it may be half-way through a copy)."""
    path.write_text(text)
    t = time.time() - 5
    os.utime(path, (t, t))


def cpu_file(host, group: str) -> Path:
    """The file that holds the group's CPU weight on this host (v1 shares or v2 weight)."""
    if host.layout.version_of("cpu") == 1:
        return Path(host.info.v1_mounts["cpu"], host.root, group, "cpu.shares")
    return Path(host.info.unified, host.root, group, "cpu.weight")


def weight_value(host, weight: int) -> str:
    """What the kernel file holds for a policy weight (SPEC §2: OCI formula for shares)."""
    from cgman.convert import weight_to_shares
    return str(weight_to_shares(weight)) if host.layout.version_of("cpu") == 1 else str(weight)


def drift(cli, pdir: Path) -> list[dict]:
    p = cli("diff", "--json", str(pdir))
    assert p.returncode in (0, 2), p.stderr
    return json.loads(p.stdout)


# ------------------------------------------------------------------ apply and watch
@pytest.mark.parametrize("mode", [pytest.param("inotify", marks=pytest.mark.cgroup2), "poll"])
def test_applies_at_start_and_on_every_change(host, agents, pdir, cli, mode):
    a = agents(pdir, *(["--poll"] if mode == "poll" else []))
    m = a.wait_reconciled()
    assert f"({mode})" in a.text(), a.text()
    assert cpu_file(host, "acme").read_text().strip() == weight_value(host, 200)
    assert drift(cli, pdir) == []
    assert m["cgman_agent_last_reconcile_success"] == 1 and m["cgman_agent_policy_files_invalid"] == 0

    (pdir / "acme.yaml").write_text(POLICY.format(weight=300, mem="300Mi"))
    until(lambda: cpu_file(host, "acme").read_text().strip() == weight_value(host, 300), 10,
          "the edited weight")
    (pdir / "globex.yaml").write_text(OTHER)                       # a new file
    until(lambda: cpu_file(host, "globex").exists(), 10, "the new file's group")
    until(lambda: drift(cli, pdir) == [], 10, "no drift")
    assert "set acme/" in a.text()
    assert a.stop() == 0, a.text()
    assert "stopped" in a.text()


def test_a_run_finds_the_agents_groups_without_a_policy_file(host, agents, pdir, cli):
    a = agents(pdir)
    a.wait_reconciled()
    p = cli("run", "-p", "acme/web", "--rm", "--", "true")
    assert p.returncode == 0, p.stderr


def test_every_tenant_in_force_is_served_from_zero_before_its_first_container(host, agents, pdir, cli):
    """So that increase() over a dashboard's range counts a tenant's first container too."""
    old(pdir / "globex.yaml", OTHER)
    a = agents(pdir)
    a.wait_reconciled()
    m = a.metrics()
    for t in ("acme", "globex"):
        assert m[f'cgman_tenant_cpu_seconds_total{{tenant="{t}"}}'] == 0
        assert m[f'cgman_tenant_containers_total{{tenant="{t}"}}'] == 0
    assert cli("run", "-p", "acme/web", "--", "sh", "-c", "i=0; while [ $i -lt 20000 ]; do i=$((i+1)); done"
               ).returncode == 0
    m = a.metrics()
    assert m['cgman_tenant_containers_total{tenant="acme"}'] == 1
    assert m['cgman_tenant_cpu_seconds_total{tenant="acme"}'] > 0
    assert m['cgman_tenant_cpu_seconds_total{tenant="globex"}'] == 0


def test_sighup_rereads_a_change_that_polling_cannot_see(host, agents, pdir):
    a = agents(pdir, "--poll", "--interval", "1h")
    a.wait_reconciled()
    f = pdir / "acme.yaml"
    st = f.stat()
    os.kill(a.p.pid, signal.SIGSTOP)                 # no poll can fall between the write and the utime
    until(lambda: proc_state(a.p.pid) == "T", 5, "the agent to stop")
    f.write_text(POLICY.format(weight=400, mem="256Mi"))   # same size, same inode ...
    os.utime(f, ns=(st.st_atime_ns, st.st_mtime_ns))        # ... same mtime: polling sees nothing
    assert f.stat().st_size == st.st_size
    os.kill(a.p.pid, signal.SIGCONT)
    time.sleep(2.5)
    assert cpu_file(host, "acme").read_text().strip() == weight_value(host, 200), "polling saw it?"
    n = a.reconciles()
    os.kill(a.p.pid, signal.SIGHUP)
    a.wait_reconciled(after=n)
    assert cpu_file(host, "acme").read_text().strip() == weight_value(host, 400)


# ------------------------------------------------------------------ bad files
def test_a_broken_file_keeps_its_last_good_version_and_the_agent_runs_on(host, agents, pdir, cli):
    a = agents(pdir)
    a.wait_reconciled()
    (pdir / "globex.yaml").write_text(OTHER)
    until(lambda: cpu_file(host, "globex").exists(), 10, "globex")
    (pdir / "acme.yaml").write_text(POLICY.format(weight=300, mem="256Mi").replace("pids: {max: 500}",
                                                                                   "pids: {max: lots}"))
    until(lambda: "keeping its last good version" in a.text(), 10, "the error line")
    m = until(lambda: (m := a.metrics()).get("cgman_agent_policy_files_invalid") == 1 and m, 10)
    log = a.text()
    line = next(ln for ln in log.splitlines() if "keeping its last good version" in ln)
    assert re.search(rf"{re.escape(str(pdir / 'acme.yaml'))}:6:\d+: policies\.acme\.pids\.max", line), line
    assert m["cgman_agent_policy_files_invalid"] == 1 and m["cgman_agent_last_reconcile_success"] == 0
    assert cpu_file(host, "acme").read_text().strip() == weight_value(host, 200), "the bad version leaked"
    assert a.p.poll() is None

    # A drift on the other file is still corrected while acme.yaml is broken.
    cpu_file(host, "globex").write_text("7" if host.layout.version_of("cpu") == 1 else "7\n")
    until(lambda: cpu_file(host, "globex").read_text().strip() == weight_value(host, 50), 10, "drift fixed")

    (pdir / "acme.yaml").write_text(POLICY.format(weight=300, mem="256Mi"))       # fixed
    until(lambda: cpu_file(host, "acme").read_text().strip() == weight_value(host, 300), 10, "fixed file")
    until(lambda: a.metrics().get("cgman_agent_policy_files_invalid") == 0, 10, "no invalid file")


def test_a_group_defined_twice_is_refused_in_the_file_that_added_it(host, agents, pdir):
    old(pdir / "globex.yaml", OTHER)
    a = agents(pdir)
    a.wait_reconciled()
    (pdir / "zzz.yaml").write_text(OTHER.replace("weight: 50", "weight: 75"))
    until(lambda: "already defined" in a.text(), 10)
    m = until(lambda: (m := a.metrics()).get("cgman_agent_policy_files_invalid") == 1 and m, 10)
    line = next(ln for ln in a.text().splitlines() if "already defined" in ln)
    assert f"{pdir / 'zzz.yaml'}:3:3: policies.globex" in line and f"{pdir / 'globex.yaml'}:3" in line, line
    assert cpu_file(host, "globex").read_text().strip() == weight_value(host, 50)
    assert m["cgman_agent_policy_files_invalid"] == 1


def test_a_file_the_kernel_refuses_goes_back_alone_and_other_edits_stay(host, agents, pdir):
    """Review finding: a refusal used to put back every file changed in the same pass."""
    old(pdir / "globex.yaml", OTHER)
    a = agents(pdir)
    a.wait_reconciled()
    # Two files change at once (a git pull, a ConfigMap swap): globex validly, acme with a
    # valid policy that the kernel refuses (no such CPU here).
    bad = POLICY.format(weight=300, mem="256Mi").replace("cpu: {weight: 300}",
                                                           "cpu: {weight: 300, cpus: '4000'}")
    tmp = pdir / ".incoming"
    tmp.mkdir()
    (tmp / "acme.yaml").write_text(bad)
    (tmp / "globex.yaml").write_text(OTHER.replace("weight: 50", "weight: 80"))
    for f in ("acme.yaml", "globex.yaml"):
        os.utime(tmp / f, (time.time() - 5, time.time() - 5))
        os.replace(tmp / f, pdir / f)
    until(lambda: "keeping its last good version" in a.text(), 10, "the refusal")
    line = next(ln for ln in a.text().splitlines() if "keeping its last good version" in ln)
    assert f"{pdir / 'acme.yaml'}: group acme: " in line and "cpuset.cpus" in line, line
    assert "globex" not in line.split(": group acme:")[1], "globex blamed too"
    until(lambda: cpu_file(host, "globex").read_text().strip() == weight_value(host, 80), 10, "globex's edit")
    assert cpu_file(host, "acme").read_text().strip() == weight_value(host, 200), "half of the bad file stuck"
    m = until(lambda: (m := a.metrics()).get("cgman_agent_policy_files_invalid") == 1 and m, 10)
    assert m["cgman_agent_reconcile_errors_total"] >= 1 and m["cgman_agent_last_reconcile_success"] == 0
    assert a.p.poll() is None
    # The refused version is not retried every interval: one error line, not one per second.
    time.sleep(3)
    assert a.text().count("keeping its last good version") == 1
    # Drift on the refused file's groups is still corrected (its last good version is in force).
    cpu_file(host, "acme").write_text("5")
    until(lambda: cpu_file(host, "acme").read_text().strip() == weight_value(host, 200), 10, "drift on acme")


@pytest.mark.parametrize("args, msg", [
    (["--policy-dir", "/nonexistent/cgman-policies"], "--policy-dir /nonexistent/cgman-policies: not a directory"),
    (["--interval", "0s"], "must be more than 0"),
    (["--interval", "soon"], "expected a duration like"),
    (["--listen", "nohost"], "expected HOST:PORT"),
    (["--web-config", "/nonexistent/web.yml"], "--web-config /nonexistent/web.yml"),
])
def test_bad_options_fail_at_once_with_one_line(host, pdir, cli, args, msg):
    p = cli("agent", "--policy-dir", str(pdir), "--listen", f"127.0.0.1:{free_port()}", *args, timeout=30)
    assert p.returncode != 0
    assert msg in p.stderr, p.stderr
    assert not cpu_file(host, "acme").parent.exists(), "applied although the options were bad"
    assert "Traceback" not in p.stderr


def test_a_taken_port_fails_before_anything_is_applied(host, pdir, cli):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        p = cli("agent", "--policy-dir", str(pdir), "--listen", f"127.0.0.1:{s.getsockname()[1]}", timeout=30)
    assert p.returncode == 1 and "cannot listen on" in p.stderr, p.stderr
    assert not cpu_file(host, "acme").parent.exists(), "applied although it could not serve"


# ------------------------------------------------------------------ drift
@pytest.mark.cgroup2
def test_drift_is_written_back_and_logged(host, agents, pdir):
    a = agents(pdir)
    a.wait_reconciled()
    f = cpu_file(host, "acme")
    f.write_text("3" if host.layout.version_of("cpu") == 1 else "3\n")
    until(lambda: f.read_text().strip() == weight_value(host, 200), 10, "the drift to be corrected")
    until(lambda: "drift corrected" in a.text(), 5)
    line = next(ln for ln in a.text().splitlines() if "drift corrected" in ln)
    assert f"acme/{f.name} was 3, set back to {weight_value(host, 200)}" in line, line
    assert a.metrics()["cgman_agent_drift_corrections_total"] == 1
    assert a.metrics()["cgman_agent_changes_applied_total"] >= 3


def test_prune_removes_dropped_groups_but_keeps_those_with_containers(host, agents, pdir, cli, tmp_path):
    old(pdir / "globex.yaml", OTHER)
    a = agents(pdir, "--prune")
    a.wait_reconciled()
    assert cli("run", "-p", "acme/web", "-d", "--name", "keepme", "--", "sleep", "600").returncode == 0
    try:
        n = a.reconciles()
        (pdir / "globex.yaml").unlink()
        (pdir / "acme.yaml").write_text(POLICY.format(weight=200, mem="256Mi").split("    children:")[0])
        a.wait_reconciled(after=n)
        until(lambda: not cpu_file(host, "globex").parent.exists(), 10, "globex pruned")
        until(lambda: "pruned globex" in a.text(), 5, "the prune logged")
        assert cpu_file(host, "acme/web/keepme").parent.exists(), "a running container's group was pruned"
    finally:
        cli("rm", "--force", "keepme")


# ------------------------------------------------------------------ containers and the ledger
def ledger_rows(tmp_path: Path) -> list[tuple[str, str, float]]:
    db = sqlite3.connect(f"file:{tmp_path / 'state' / 'ledger.db'}?mode=ro", uri=True)
    try:
        return db.execute("SELECT id, name, cpu_usage_usec FROM containers ORDER BY name").fetchall()
    finally:
        db.close()


def orphans(cli, tmp_path: Path, *names: str) -> list[dict]:
    """Detached containers whose supervisors are then SIGKILLed (their workloads die with them).

    All start before any supervisor dies: a `cgman run` collects the dead it finds."""
    recs = []
    for name in names:
        assert cli("run", "-p", "acme/web", "-d", "--name", name, "--", "sh", "-c",
                   "i=0; while [ $i -lt 20000 ]; do i=$((i+1)); done; sleep 600").returncode == 0
        recs.append(json.loads((tmp_path / "run" / "containers" / name / "record.json").read_text()))
    time.sleep(0.3)
    for rec in recs:
        os.kill(rec["supervisor_pid"], signal.SIGKILL)
    for rec in recs:
        until(lambda r=rec: proc_state(r["pid"]) in ("Z", "gone"), 10, f"{rec['name']}'s workload to die")
    return recs


@pytest.mark.cgroup2
def test_adopts_running_containers_and_collects_the_dead_exactly_once(host, agents, pdir, cli, tmp_path):
    a = agents(pdir)
    a.wait_reconciled()
    assert cli("run", "-p", "acme/web", "-d", "--name", "alive", "--", "sleep", "600").returncode == 0
    try:
        rec, = orphans(cli, tmp_path, "dead1")
        until(lambda: a.metrics().get("cgman_agent_containers_collected_total") == 1, 10, "collection")
        assert "collected dead1" in a.text()
        rows = ledger_rows(tmp_path)
        assert [r[1] for r in rows] == ["dead1"] and rows[0][0] == rec["id"] and rows[0][2] > 0

        # A restart adopts the live container and collects nothing twice.
        assert a.stop(signal.SIGKILL) == -signal.SIGKILL
        b = agents(pdir)
        b.wait_reconciled()
        until(lambda: "adopted 1 running container(s): alive" in b.text(), 10, "adoption")
        m = b.wait_reconciled(after=2)
        assert m["cgman_agent_containers_running"] == 1 and m["cgman_agent_containers_collected_total"] == 0
        assert m['cgman_tenant_containers_total{tenant="acme"}'] == 2, "alive (live) + dead1 (ledger)"
        assert [r[1] for r in ledger_rows(tmp_path)] == ["dead1"]
    finally:
        cli("rm", "--force", "alive")


# ------------------------------------------------------------------ crash safety
def stopped_at(a: Agent, point: str) -> None:
    try:
        until(lambda: proc_state(a.p.pid) == "T" or a.p.poll() is not None, 20, f"the agent to stop at {point}")
    except AssertionError as e:
        raise AssertionError(f"{e}; its log:\n{a.text()}") from None
    assert a.p.poll() is None, a.text()
    assert f"stopping at {point}" in a.text()


@pytest.mark.parametrize("point", ["before-apply", pytest.param("write:1", marks=pytest.mark.cgroup2),
                                   "write:3", "after-apply"])
def test_sigkill_during_an_apply_then_restart_converges(host, agents, pdir, cli, point):
    a = agents(pdir)
    a.wait_reconciled()
    a.stop()
    old(pdir / "acme.yaml", POLICY.format(weight=300, mem="300Mi"))       # written while it was down
    old(pdir / "globex.yaml", OTHER)
    before = drift(cli, pdir)
    assert len(before) >= 3, before            # two changed settings and a missing group

    crashing = agents(pdir, stop_at=point)
    stopped_at(crashing, point)
    mid = drift(cli, pdir)
    os.kill(crashing.p.pid, signal.SIGKILL)                     # by PID, mid-way
    assert crashing.stop() == -signal.SIGKILL
    if point == "before-apply":
        assert mid == before, "wrote before the stop point"
    elif point.startswith("write:"):
        assert 0 < len(mid) < len(before), f"not cut mid-way: {mid}"
    else:
        assert mid == []

    b = agents(pdir)
    m = b.wait_reconciled()
    assert drift(cli, pdir) == [], "did not converge after the crash"
    assert m["cgman_agent_last_reconcile_success"] == 1
    assert cpu_file(host, "acme").read_text().strip() == weight_value(host, 300)


@pytest.mark.parametrize("point", ["collect:1", "collect:2"])
def test_sigkill_during_collection_then_restart_bills_each_container_once(host, agents, pdir, cli,
                                                                          tmp_path, point):
    a = agents(pdir)
    a.wait_reconciled()
    a.stop()                                   # no agent while the supervisors die
    recs = orphans(cli, tmp_path, "o0", "o1", "o2")

    crashing = agents(pdir, stop_at=point)
    stopped_at(crashing, point)
    n = int(point.split(":")[1])
    assert len(ledger_rows(tmp_path)) == n
    os.kill(crashing.p.pid, signal.SIGKILL)
    crashing.stop()

    b = agents(pdir)
    until(lambda: b.metrics().get("cgman_agent_containers_collected_total") == 3 - n, 15, "the rest")
    rows = ledger_rows(tmp_path)
    assert sorted(r[0] for r in rows) == sorted(r["id"] for r in recs), "missing or doubled"
    assert all(r[2] > 0 for r in rows)
    m = b.metrics()
    assert m['cgman_tenant_containers_total{tenant="acme"}'] == 3
    for r in recs:
        assert not cpu_file(host, f"acme/web/{r['name']}").parent.exists()


# ------------------------------------------------------------------ CLI: the typer-free path
@pytest.mark.parametrize("argv, want", [
    (["agent"], {}),
    (["--cgroup-root", "r", "agent", "--policy-dir", "/p", "--interval", "1h", "--prune", "--poll",
      "--listen=:1", "--no-gzip"],
     {"cgroup_root": "r", "policy_dir": "/p", "interval": 3600.0, "prune": True, "poll": True, "listen": ":1",
      "gzip": False}),
    (["agent", "--interval", "500ms", "-l", "127.0.0.1:2"], {"interval": 0.5, "listen": "127.0.0.1:2"}),
    (["agent", "--compat=cadvisor"], {"compat": "cadvisor"}),
])
def test_fast_parser_reads_what_typer_would(argv, want):
    assert server_line(argv, "agent") == want


@pytest.mark.parametrize("argv", [["agent", "--help"], ["agent", "--bogus"], ["agent", "--interval"],
                                  ["agent", "--interval", "0s"], ["agent", "--interval", "soon"],
                                  ["agent", "--read-threads", "2"], ["agent", "--compat", "cAdvisor"],
                                  ["exporter"]])
def test_fast_parser_leaves_the_rest_to_typer(argv):
    assert server_line(argv, "agent") is None


def test_the_agent_serves_without_typer_in_memory_and_promtool_finds_nothing(host, agents, pdir):
    a = agents(pdir, env={"PYTHONPROFILEIMPORTTIME": "1"})       # every import, to the log
    a.wait_reconciled()
    imported = {ln.rsplit("|", 1)[1].strip() for ln in a.text().splitlines() if ln.startswith("import time:")}
    assert "cgman.agent.service" in imported and "prometheus_client" in imported, "no import log?"
    assert not {m for m in imported if m.split(".")[0] in ("typer", "click", "rich")}
    body = urllib.request.urlopen(f"http://127.0.0.1:{a.port}/metrics", timeout=5).read()
    p = subprocess.run(["promtool", "check", "metrics"], input=body, capture_output=True, timeout=60)
    assert p.returncode == 0 and not p.stdout.strip() and not p.stderr.strip(), p.stdout + p.stderr
    assert b"cgman_agent_reconciles_total" in body and b"process_resident_memory_bytes" in body


# ------------------------------------------------------------------ review findings: PolicyDir alone
def _pd(d: Path, memory: Path | None = None):
    from cgman.agent.policies import PolicyDir
    return PolicyDir(str(d), memory=str(memory) if memory else None)


def _in_force(pd) -> dict[str, str]:
    return {g.path: Path(g.location.file).name for g in pd.policies().groups}


def test_a_duplicate_clears_up_when_the_first_definer_goes(tmp_path):
    old(tmp_path / "a.yaml", OTHER.replace("globex", "x"))
    old(tmp_path / "b.yaml", OTHER.replace("globex", "x") + "  y: {tenant: y}\n")
    pd = _pd(tmp_path)
    pd.scan()
    assert _in_force(pd) == {"x": "a.yaml"} and pd.invalid() == 1
    (tmp_path / "a.yaml").unlink()
    pd.scan()
    assert _in_force(pd) == {"x": "b.yaml", "y": "b.yaml"} and pd.invalid() == 0


def test_an_incumbent_keeps_its_group_across_a_restart(tmp_path):
    mem = tmp_path / "state" / "agent.pickle"
    d = tmp_path / "p"
    d.mkdir()
    old(d / "m.yaml", OTHER.replace("globex", "x") + "  other: {tenant: o}\n")
    pd = _pd(d, mem)
    pd.scan()
    pd.accepted()
    old(d / "a.yaml", OTHER.replace("globex", "x"))            # a newcomer claims x
    pd.scan()
    assert _in_force(pd) == {"x": "m.yaml", "other": "m.yaml"}
    pd2 = _pd(d, mem)                                           # the agent restarts
    pd2.scan()
    assert _in_force(pd2) == {"x": "m.yaml", "other": "m.yaml"}, "a restart flipped the owner"
    assert pd2.invalid() == 1


def test_a_broken_file_keeps_its_last_good_version_across_a_restart(tmp_path):
    mem = tmp_path / "state" / "agent.pickle"
    d = tmp_path / "p"
    d.mkdir()
    old(d / "acme.yaml", POLICY.format(weight=200, mem="256Mi"))
    pd = _pd(d, mem)
    pd.scan()
    pd.accepted()
    old(d / "acme.yaml", POLICY.format(weight=200, mem="lots"))
    pd2 = _pd(d, mem)
    res = pd2.scan()
    assert set(_in_force(pd2)) == {"acme", "acme/web"} and pd2.invalid() == 1
    assert res.errors and "policies.acme.children.web.memory.max" in res.errors[0]


def test_a_huge_cpu_range_is_an_error_not_a_crash(tmp_path):
    old(tmp_path / "a.yaml", OTHER.replace("cpu: {weight: 50}", "cpu: {cpus: '0-1000000000'}"))
    pd = _pd(tmp_path)
    res = pd.scan()
    assert pd.invalid() == 1 and "below 8192" in res.errors[0] and "a.yaml:5:" in res.errors[0]


def test_an_unreadable_file_is_reported_once(tmp_path, monkeypatch):
    from cgman.agent import policies
    os.symlink("/proc/1/mem", tmp_path / "mem.yaml")        # EACCES or EIO, even for root
    # procfs stamps an inode's mtime when it is first looked up, so on a fresh machine
    # /proc/1/mem looks "being written" for 0.5 s; the quiet period has its own test.
    monkeypatch.setattr(policies, "QUIET_S", float("-inf"))
    pd = _pd(tmp_path)
    errors = [pd.scan().errors for _ in range(3)]
    assert len(errors[0]) == 1 and "cannot read" in errors[0][0]
    assert errors[1:] == [[], []]


def test_a_file_being_written_waits_for_quiet(tmp_path):
    (tmp_path / "a.yaml").write_text(OTHER)                  # mtime: now
    pd = _pd(tmp_path)
    res = pd.scan()
    assert res.deferred and _in_force(pd) == {}
    os.utime(tmp_path / "a.yaml", (time.time() - 1, time.time() - 1))
    assert not pd.scan().deferred and _in_force(pd) == {"globex": "a.yaml"}


def test_healthz_reports_a_stalled_loop():
    from types import SimpleNamespace

    from cgman.agent.service import Agent
    ag = Agent(SimpleNamespace(root="r"), SimpleNamespace(state="/nonexistent"), "/nonexistent", interval_s=1)
    ag.health.last_reconcile = time.time()
    assert ag.stalled() is None
    ag.health.last_reconcile = time.time() - 60
    assert "no reconcile for 60s" in (ag.stalled() or "")


# ------------------------------------------------------------------ review findings: a real agent
def test_a_restart_with_a_broken_file_neither_prunes_nor_forgets_it(host, agents, pdir, cli):
    a = agents(pdir, "--prune")
    a.wait_reconciled()
    (pdir / "acme.yaml").write_text(POLICY.format(weight=200, mem="256Mi").replace("500", "lots"))
    until(lambda: "keeping its last good version" in a.text(), 10)
    a.stop()
    b = agents(pdir, "--prune")
    b.wait_reconciled()
    until(lambda: "keeping its last good version (2 groups)" in b.text(), 10, "the restart to keep it")
    time.sleep(1.5)
    assert cpu_file(host, "acme/web").parent.exists(), "pruned after a restart"
    assert "not pruning while 1 policy file(s) are not in force" in b.text()
    assert cli("run", "-p", "acme/web", "--rm", "--", "true").returncode == 0


def test_a_busy_prune_does_not_hide_new_groups(host, agents, pdir, cli):
    old(pdir / "legacy.yaml", OTHER.replace("globex", "legacy") + "    children:\n      web:\n"
        "        container: {pids: {max: 64}}\n        launch: {namespaces: [pid, mount]}\n")
    a = agents(pdir, "--prune")
    a.wait_reconciled()
    busy = subprocess.Popen(["sleep", "600"])
    try:
        Path(host.info.v1_mounts.get("pids", "") if host.layout.version_of("pids") == 1
             else host.info.unified, host.root, "legacy", "cgroup.procs").write_text(str(busy.pid))
        (pdir / "legacy.yaml").unlink()
        (pdir / "new.yaml").write_text(OTHER.replace("globex", "newg"))
        until(lambda: 'cgman_tenant_containers_total{tenant="newg"}' in a.metrics(), 10, "the new tenant")
        until(lambda: "prune: cannot prune legacy" in a.text(), 10, "the busy prune")
        assert cpu_file(host, "newg").parent.exists() and cpu_file(host, "legacy").parent.exists()
        n = a.metrics()["cgman_agent_reconciles_total"]
        a.wait_reconciled(after=n + 1)                  # reconciles with the busy prune go on
        assert 'cgman_tenant_containers_total{tenant="newg"}' in a.metrics(), "the new tenant went"
        p = cli("run", "-p", "newg", "--rm", "--", "true")
        assert "no group 'newg'" not in p.stderr, p.stderr
    finally:
        busy.kill()
        busy.wait()


def test_a_stream_of_other_files_does_not_stall_the_agent(host, agents, pdir):
    a = agents(pdir)
    a.wait_reconciled()
    stop = time.monotonic() + 6
    hb = pdir / "heartbeat.txt"
    cpu_file(host, "acme").write_text("7")
    n = a.reconciles()
    while time.monotonic() < stop and a.reconciles() < n + 3:
        hb.write_text(str(time.time()))
        time.sleep(0.05)
    assert a.reconciles() >= n + 3, "no reconcile while another file was being written"
    assert cpu_file(host, "acme").read_text().strip() == weight_value(host, 200)
    t = time.monotonic()
    a.p.send_signal(signal.SIGTERM)
    for _ in range(20):
        hb.write_text(str(time.time()))
        time.sleep(0.05)
    assert a.p.wait(timeout=10) == 0 and time.monotonic() - t < 5


def test_a_slow_copy_is_not_applied_half_way(host, agents, pdir):
    a = agents(pdir)
    a.wait_reconciled()
    limit = Path(host.info.v1_mounts["memory"], host.root, "acme/web", "memory.limit_in_bytes") \
        if host.layout.version_of("memory") == 1 else Path(host.info.unified, host.root, "acme/web", "memory.max")
    before = limit.read_text()
    text = POLICY.format(weight=200, mem="10Gi")
    cut = text.index("10Gi") + 1                  # "max: 1" is valid YAML: a 1-byte limit
    seen = set()
    with open(pdir / "acme.yaml", "w") as f:      # in place, a few bytes at a time, like a slow scp
        f.write(text[:cut])
        f.flush()
        for ch in text[cut:]:
            time.sleep(0.1)
            f.write(ch)
            f.flush()
            seen.add(limit.read_text())
    until(lambda: limit.read_text().strip() in ("10737418240",), 10, "the whole file")
    assert seen == {before}, f"a partial version was applied: {seen}"


def test_a_symlinked_policy_dir_that_is_swapped_is_watched_again(host, agents, tmp_path):
    v1, v2 = tmp_path / "v1", tmp_path / "v2"
    v1.mkdir()
    v2.mkdir()
    old(v1 / "acme.yaml", POLICY.format(weight=200, mem="256Mi"))
    old(v2 / "acme.yaml", POLICY.format(weight=300, mem="256Mi"))
    link = tmp_path / "current"
    link.symlink_to(v1)
    a = agents(link, "--interval", "1h")              # no timer to fall back on
    a.wait_reconciled()
    tmp = tmp_path / "next"
    tmp.symlink_to(v2)
    os.replace(tmp, link)
    until(lambda: cpu_file(host, "acme").read_text().strip() == weight_value(host, 300), 10, "the new target")
    old(v2 / "acme.yaml", POLICY.format(weight=400, mem="256Mi"))     # and then it watches v2
    until(lambda: cpu_file(host, "acme").read_text().strip() == weight_value(host, 400), 10, "v2's edit")


def test_gc_carries_on_past_a_container_it_cannot_collect(host, tmp_path):
    """One record that cannot be collected now (here: its host cannot be opened) must not
    keep the others from being collected; it is reported, and left for the next gc. A record
    of another cgroup root is that root's to collect: skipped, not reported."""
    from cgman.errors import NotFound
    from cgman.containers.manage import gc
    from cgman.settings import Settings
    from cgman.state.records import Record, Store
    st = Store(Settings(run_dir=str(tmp_path / "run"), state_dir=str(tmp_path / "state"), cgroup_root=host.root))
    for name, root in (("a-bad", host.root), ("b-good", host.root), ("c-other", "elsewhere")):
        st.reserve(Record(id=name.encode().hex().ljust(32, "0"), name=name, group="g", tenant="t",
                          cgroup=f"g/{name}", cgroup_root=root, argv=["true"], created=time.time() - 5,
                          state="running", started=time.time() - 5))       # no supervisor: dead

    fail = {"next": True}

    def hosts(root: str):
        assert root == host.root, "never another root's host"
        if fail["next"]:                 # the first container of each pass
            fail["next"] = False
            raise NotFound("no such cgroup root (test)")
        return host
    failed: list[tuple[str, str]] = []
    got = gc(st, hosts, on_error=lambda name, e: failed.append((name, str(e))))
    assert got == ["b-good"] and failed == [("a-bad", "no such cgroup root (test)")]
    assert st.load("a-bad").state == "running", "left for the next gc"
    assert json.loads((tmp_path / "run" / "containers" / "c-other" / "record.json").read_text())["state"] == "running"
    fail["next"] = True
    with pytest.raises(NotFound, match="no such cgroup root"):   # without on_error: raised after the pass
        gc(st, hosts)
