"""cgman under a real systemd (PID 1, pure cgroup v2): the shipped units installed and started by
systemctl, as an operator would. Every check compares the kernel's files with systemd's view
(`systemctl show -p ...`).

These tests install units into /etc/systemd/system and mount tmpfs over /etc/cgman,
/var/lib/cgman and /run/cgman, so they run only in a throw-away machine: the systemd VM of
scripts/test.sh (`CG2VM_INIT=systemd`, which sets CGMAN_SYSTEMD_VM=1). Anywhere else they skip.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path
from typing import Callable, Iterator

import pytest

from .conftest import REPO, destroy_root

pytestmark = [pytest.mark.systemd, pytest.mark.kernel]

UNITS = REPO / "packaging" / "systemd"
SERVICE = "cgman-agent.service"
SLICE = "cgman.slice"
ETC = Path("/etc/systemd/system")
SHIPPED_BINARY = "/usr/local/bin/cgman"
CGROUP2 = Path("/sys/fs/cgroup")
LISTEN = "127.0.0.1:9753"            # the shipped unit's
OPERATOR_DIRS = ("/etc/cgman", "/var/lib/cgman", "/run/cgman")

POLICY = """\
version: 1
policies:
  acme:
    tenant: acme
    cpu: {{weight: 300}}
    memory: {{max: {mem}}}
    pids: {{max: 400}}
    children:
      web:
        cpu: {{max: 0.5}}
        memory: {{max: 96Mi, high: 80Mi}}
        container:
          memory: {{max: 64Mi}}
          pids: {{max: 64}}
        launch:
          namespaces: [uts, ipc, pid, mount]
"""
MEM_BYTES = {"256Mi": 256 << 20, "320Mi": 320 << 20}


def _in_systemd_vm() -> bool:
    try:
        pid1 = Path("/proc/1/comm").read_text().strip()
    except OSError:
        return False
    return os.environ.get("CGMAN_SYSTEMD_VM") == "1" and pid1 == "systemd" and os.geteuid() == 0 \
        and (CGROUP2 / "cgroup.controllers").exists()


def until(fn: Callable[[], object], timeout: float = 60, what: str = "") -> object:
    """Poll ``fn`` until it returns something true (the VM is ~10x slower than the host)."""
    deadline = time.monotonic() + timeout
    while True:
        out = fn()
        if out:
            return out
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(0.2)


def systemctl(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    p = subprocess.run(["systemctl", *args], capture_output=True, text=True, timeout=120)
    if check and p.returncode != 0:
        journal = subprocess.run(["journalctl", "-u", SERVICE, "--no-pager", "-n", "40"], capture_output=True,
                                 text=True).stdout
        raise AssertionError(f"systemctl {' '.join(args)}: {p.returncode}\n{p.stdout}{p.stderr}\n{journal}")
    return p


def show(unit: str, *props: str) -> dict[str, str]:
    """systemd's view of ``unit``: `systemctl show -p P ...` as a dict."""
    out = systemctl("show", unit, *(f"-p{p}" for p in props)).stdout
    return dict(line.split("=", 1) for line in out.splitlines() if "=" in line)


def kernel(cgroup: str, file: str) -> str:
    """A file of the cgroup2 tree, ``cgroup`` relative to the mount ("" is the root)."""
    return (CGROUP2 / cgroup.strip("/") / file).read_text().strip()


def cgroup_of(pid: int) -> str:
    return next(line[3:] for line in Path(f"/proc/{pid}/cgroup").read_text().splitlines() if line.startswith("0::"))


def http_get(path: str) -> str:
    with urllib.request.urlopen(f"http://{LISTEN}{path}", timeout=10) as r:
        return r.read().decode()


def reconciles() -> float:
    """cgman_agent_reconciles_total from /metrics, or -1 while nothing answers."""
    try:
        text = http_get("/metrics")
    except OSError:
        return -1
    m = re.search(r"^cgman_agent_reconciles_total (\S+)$", text, re.M)
    return float(m.group(1)) if m else -1


class Agent:
    """The shipped cgman-agent.service, installed into the VM's /etc and driven by systemctl."""

    def __init__(self, root: str, tmp: Path) -> None:
        self.root, self.tmp = root, tmp
        self.policies = Path("/etc/cgman/policies")
        self.env = dict(os.environ, CGMAN_CGROUP_ROOT=root, CGMAN_RUN_DIR="/run/cgman",
                        CGMAN_STATE_DIR="/var/lib/cgman", CGMAN_BRIDGE_DIR=str(tmp / "bridges"),
                        PYTHONPATH=str(REPO))
        self.env.pop("CGMAN_POLICY_DIR", None)

    def install(self, drop_in: str = "", agent_env: str = "") -> None:
        """The shipped units, ExecStart pointed at the venv, plus ``drop_in`` lines for [Service]."""
        for name in (SLICE, SERVICE):
            (ETC / name).write_text((UNITS / name).read_text())
        shipped = next(v for k, v in _unit_settings(UNITS / SERVICE) if k == "ExecStart")
        exe = REPO / ".venv" / "bin" / "cgman"
        assert shipped.startswith(SHIPPED_BINARY + " ") and exe.exists(), shipped
        d = ETC / f"{SERVICE}.d"
        d.mkdir(exist_ok=True)
        (d / "venv.conf").write_text(f"[Service]\nExecStart=\nExecStart={exe}{shipped[len(SHIPPED_BINARY):]}\n"
                                     + drop_in)
        self.policies.mkdir(parents=True, exist_ok=True)
        Path("/etc/cgman/agent.env").write_text(f"CGMAN_CGROUP_ROOT={self.root}\n"
                                                f"CGMAN_BRIDGE_DIR={self.tmp / 'bridges'}\n" + agent_env)
        systemctl("daemon-reload")

    def start(self, verb: str = "start") -> dict[str, str]:
        """systemctl start|restart; waits for a reconcile of this instance; systemd's view of it."""
        systemctl(verb, SERVICE)
        view = show(SERVICE, "ActiveState", "SubState", "MainPID", "InvocationID", "ControlGroup")
        assert view["ActiveState"] == "active", view
        until(lambda: reconciles() >= 1, what="the agent's first reconcile")
        return view

    def cli(self, *args: str, check: bool = True) -> subprocess.CompletedProcess:
        p = subprocess.run([sys.executable, "-m", "cgman", *args], capture_output=True, text=True, env=self.env,
                           timeout=300, cwd=REPO)
        if check and p.returncode != 0:
            raise AssertionError(f"cgman {' '.join(args)}: {p.returncode}\n{p.stdout}{p.stderr}")
        return p

    def run_detached(self, name: str, *cmd: str) -> int:
        """`cgman run -d` from this shell (the test's own unit); the container's init pid."""
        self.cli("run", "-d", "-p", "acme/web", "--name", name, "--", *cmd)
        return int(json.loads(self.cli("inspect", name).stdout)["pid"])


def _unit_settings(path: Path) -> list[tuple[str, str]]:
    out = []
    for line in path.read_text().splitlines():
        line = line.strip()
        if line and not line.startswith(("#", ";", "[")) and "=" in line:
            k, _, v = line.partition("=")
            out.append((k.strip(), v.strip()))
    return out


@pytest.fixture
def agent(host, tmp_path) -> Iterator[Agent]:
    """The units installed over throw-away operator dirs; stopped, removed and unmounted afterwards."""
    if not _in_systemd_vm():
        pytest.skip("needs the systemd VM (scripts/test.sh: CG2VM_INIT=systemd, CGMAN_SYSTEMD_VM=1)")
    mounted = []
    a = Agent(host.root, tmp_path)
    try:
        for d in OPERATOR_DIRS:
            os.makedirs(d, exist_ok=True)
            subprocess.run(["mount", "-t", "tmpfs", "-o", "mode=0755", "tmpfs", d], check=True)
            mounted.append(d)
        a.policies.mkdir()
        yield a
    finally:
        systemctl("stop", SERVICE, check=False)
        systemctl("reset-failed", SERVICE, check=False)
        destroy_root(host)                       # containers, then their supervisors finish and exit
        for name in (SERVICE, SLICE):
            (ETC / name).unlink(missing_ok=True)
        for f in (ETC / f"{SERVICE}.d").glob("*"):
            f.unlink()
        if (ETC / f"{SERVICE}.d").exists():
            (ETC / f"{SERVICE}.d").rmdir()
        systemctl("daemon-reload", check=False)
        for d in reversed(mounted):
            for _ in range(50):
                if subprocess.run(["umount", d], capture_output=True).returncode == 0:
                    break
                time.sleep(0.1)
            else:
                subprocess.run(["umount", "-l", d], check=True)


def write_policy(a: Agent, mem: str = "256Mi") -> None:
    """Deploy by rename, as docs/operations.md says."""
    tmp = a.policies / ".acme.yaml.tmp"
    tmp.write_text(POLICY.format(mem=mem))
    tmp.rename(a.policies / "acme.yaml")


def assert_policy_in_kernel(root: str, mem: str = "256Mi") -> None:
    assert kernel(f"{root}/acme", "cpu.weight") == "300"
    assert kernel(f"{root}/acme", "memory.max") == str(MEM_BYTES[mem])
    assert kernel(f"{root}/acme", "pids.max") == "400"
    assert kernel(f"{root}/acme/web", "cpu.max") == "50000 100000"
    assert kernel(f"{root}/acme/web", "memory.max") == str(96 << 20)
    assert kernel(f"{root}/acme/web", "memory.high") == str(80 << 20)


def limit_files(root: str) -> dict[str, str]:
    """Every limit and subtree_control file under the cgman root, to prove 'unchanged'."""
    out = {}
    for dirpath, _, files in os.walk(CGROUP2 / root):
        for f in files:
            if f in ("cgroup.subtree_control", "cgroup.freeze") or f.endswith((".max", ".high", ".low", ".min",
                                                                                 ".weight", ".cpus", ".mems")):
                try:
                    out[os.path.join(dirpath, f)] = Path(dirpath, f).read_text()
                except OSError:
                    pass
    return out


def _ppid(pid: int) -> int:
    with open(f"/proc/{pid}/stat", "rb") as f:
        return int(f.read().rsplit(b")", 1)[1].split()[1])


# ------------------------------------------------------------------- the shipped unit, layout (a)
def test_systemctl_start_runs_the_agent_in_its_unit_applies_policies_and_serves_metrics(agent):
    write_policy(agent)
    agent.install()
    view = agent.start()
    unit = show(SERVICE, "Slice", "Delegate", "DelegateControllers", "KillMode", "ControlGroup", "SubState")
    assert unit["Slice"] == SLICE and unit["Delegate"] == "yes" and unit["KillMode"] == "process"
    assert unit["ControlGroup"] == f"/{SLICE}/{SERVICE}" and unit["SubState"] == "running"
    main = int(view["MainPID"])
    assert cgroup_of(main) == unit["ControlGroup"], "the kernel puts the main process where systemd says"
    procs = [int(p) for p in (CGROUP2 / unit["ControlGroup"].strip("/") / "cgroup.procs").read_text().split()]
    server = [p for p in procs if p != main and _ppid(p) == main]
    assert main in procs and len(server) == 1 and all(_ppid(p) in (main, server[0]) for p in procs if p != main), \
        "the unit holds the agent, its run server (cli/served.py) and the server's spare supervisor, nothing else"
    # Delegate=yes enabled systemd's controllers from the root cgroup down: what the top-level root needs
    delegated = set(unit["DelegateControllers"].split())
    assert {"cpu", "io", "memory", "pids"} <= delegated <= set(kernel("", "cgroup.subtree_control").split())
    assert_policy_in_kernel(agent.root)

    init = agent.run_detached("c1", "sleep", "600")
    leaf = f"/{agent.root}/acme/web/c1"
    assert cgroup_of(init) == leaf and kernel(leaf, "memory.max") == str(64 << 20)
    until(lambda: 'container="c1"' in http_get("/metrics"), what="c1's metrics")
    metrics = http_get("/metrics")
    assert re.search(r'^cgman_container_info\{.*container="c1".*\} 1', metrics, re.M)
    assert re.search(r'^cgman_limit_memory_bytes\{.*container="c1".*\} 67108864', metrics, re.M)
    assert http_get("/healthz").strip() == "ok"


def test_restart_and_daemon_reload_change_no_limit_and_stop_no_container(agent):
    write_policy(agent)
    agent.install()
    before = agent.start()
    init = agent.run_detached("c1", "sleep", "600")
    leaf = f"/{agent.root}/acme/web/c1"
    limits = limit_files(agent.root)
    assert len(limits) > 10 and any(k.endswith("/c1/memory.max") for k in limits)

    for _ in range(3):
        systemctl("daemon-reload")
    assert show(SERVICE, "MainPID")["MainPID"] == before["MainPID"], "daemon-reload restarts nothing"
    assert limit_files(agent.root) == limits, "daemon-reload rewrote a limit"

    after = agent.start("restart")
    assert after["InvocationID"] != before["InvocationID"] and after["MainPID"] != before["MainPID"]
    assert cgroup_of(int(after["MainPID"])) == after["ControlGroup"]
    assert limit_files(agent.root) == limits, "a restart rewrote a limit"
    assert os.path.exists(f"/proc/{init}") and cgroup_of(init) == leaf, "the container kept running in its leaf"
    ps = {c["name"]: c for c in json.loads(agent.cli("ps", "--json").stdout)}
    assert ps["c1"]["state"] == "running"
    until(lambda: 'container="c1"' in http_get("/metrics"), what="the new agent to adopt c1")


def test_a_daemon_reload_storm_during_an_apply_changes_nothing(agent):
    write_policy(agent)
    agent.install()
    agent.start()
    applied = threading.Event()
    reloads: list[int] = []

    def storm() -> None:             # daemon-reloads back to back, and 2 more once the edit landed
        after = 0
        while after < 2:
            after += applied.is_set()
            reloads.append(systemctl("daemon-reload", check=False).returncode)

    t = threading.Thread(target=storm)
    t.start()
    try:
        write_policy(agent, mem="320Mi")       # the agent applies the edit while systemd reloads
        until(lambda: kernel(f"{agent.root}/acme", "memory.max") == str(MEM_BYTES["320Mi"]), what="the edit")
    finally:
        applied.set()
        t.join()
    assert len(reloads) >= 3 and set(reloads) == {0}, reloads
    assert_policy_in_kernel(agent.root, mem="320Mi")
    assert show(SERVICE, "ActiveState")["ActiveState"] == "active"
    diff = agent.cli("diff", str(agent.policies / "acme.yaml"), check=False)
    assert diff.returncode == 0, diff.stdout + diff.stderr


def test_systemctl_stop_leaves_containers_running_and_billed(agent):
    write_policy(agent)
    agent.install()
    agent.start()
    init = agent.run_detached("c1", sys.executable, "-c", "import time\nt = time.time()\n"
                              "while time.time() - t < 0.5: pass\ntime.sleep(600)")
    systemctl("stop", SERVICE)
    view = show(SERVICE, "ActiveState", "MainPID")
    assert view["ActiveState"] == "inactive" and view["MainPID"] == "0"
    # KillMode=process: the agent and its run server are gone; what the unit's cgroup may still hold
    # is the supervisor of the run the agent served (the container's parent), waiting to bill it
    left = {int(p) for p in kernel(f"{SLICE}/{SERVICE}", "cgroup.procs").split()} \
        if (CGROUP2 / SLICE / SERVICE).exists() else set()
    assert left <= {_ppid(init)}, f"only the served run's supervisor stays: {left}"
    leaf = f"/{agent.root}/acme/web/c1"
    assert os.path.exists(f"/proc/{init}") and cgroup_of(init) == leaf
    assert kernel(leaf, "cgroup.procs"), "the container runs on without the agent"
    assert_policy_in_kernel(agent.root)

    agent.cli("stop", "c1", "-t", "1s")

    def billed() -> list[dict]:
        rows = json.loads(agent.cli("usage", "--by", "container", "--json").stdout)["rows"]
        return [r for r in rows if r.get("name") == "c1"]
    mine: list = until(billed, what="c1's ledger row")      # type: ignore[assignment]
    assert len(mine) == 1 and mine[0]["tenant"] == "acme", mine
    assert mine[0]["cpu_seconds"] >= 0.3, "the busy half second is billed"
    assert not (CGROUP2 / leaf.strip("/")).exists()


def test_doctor_passes_under_systemd(agent):
    write_policy(agent)
    agent.install()
    agent.start()
    p = agent.cli("doctor", "--json", check=False)
    checks = {c["name"]: c for c in json.loads(p.stdout)}
    failed = [c for c in checks.values() if not c["ok"] and not c["warn"]]
    assert p.returncode == 0 and not failed, failed
    me = cgroup_of(os.getpid())
    unit = me.rstrip("/").rsplit("/", 1)[-1]
    assert show(unit, "Delegate")["Delegate"] == "yes"
    assert checks["systemd unit"]["ok"] and f"in {unit}, Delegate=yes" in checks["systemd unit"]["detail"]
    for c in ("cpu", "io", "memory", "pids"):
        assert checks[f"controller {c}"]["ok"], checks[f"controller {c}"]
    layout = checks["cgroup layout"]          # the default top-level root works, but says what systemd asks
    assert layout["warn"] and layout["detail"].startswith(f"(a) top-level root /{agent.root} beside systemd's")
    assert "layout (b)" in layout["fix"]


# --------------------------------------------------------- layout (b): the root inside the agent's unit
def test_layout_b_the_agent_moves_into_supervisor_and_manages_its_siblings(agent):
    unit_cg = f"{SLICE}/{SERVICE}"
    agent.root = agent.env["CGMAN_CGROUP_ROOT"] = f"{unit_cg}/payload"
    write_policy(agent)
    agent.install(drop_in="KillMode=control-group\n")     # docs/operations.md: layout (b) stops with its unit
    view = agent.start()
    assert view["ControlGroup"] == f"/{unit_cg}", "systemd still sees the unit's own cgroup"
    main = int(view["MainPID"])
    assert cgroup_of(main) == f"/{unit_cg}/supervisor"
    assert kernel(unit_cg, "cgroup.procs") == "", "no internal processes: the unit's cgroup holds none itself"
    assert sorted(p.name for p in (CGROUP2 / unit_cg).iterdir() if p.is_dir()) == ["payload", "supervisor"]
    assert {"cpu", "io", "memory", "pids"} <= set(kernel(unit_cg, "cgroup.subtree_control").split())
    assert_policy_in_kernel(agent.root)

    init = agent.run_detached("c1", "sleep", "600")      # from a shell outside the unit: root may
    assert cgroup_of(init) == f"/{agent.root}/acme/web/c1"
    limits = limit_files(unit_cg)
    for _ in range(2):
        systemctl("daemon-reload")
    assert limit_files(unit_cg) == limits, "daemon-reload rewrote a limit inside the delegated subtree"
    assert cgroup_of(main) == f"/{unit_cg}/supervisor" and os.path.exists(f"/proc/{init}")
    doctor = {c["name"]: c for c in json.loads(agent.cli("doctor", "--json", check=False).stdout)}
    assert doctor["cgroup layout"]["ok"], doctor["cgroup layout"]
    assert "(b)" in doctor["cgroup layout"]["detail"]

    # The containers are part of the unit now: stopping it (KillMode=control-group) ends them.
    after = agent.start("restart")
    assert cgroup_of(int(after["MainPID"])) == f"/{unit_cg}/supervisor"
    assert not os.path.exists(f"/proc/{init}"), "systemd stopped the unit's whole cgroup, containers included"
    until(lambda: kernel(f"{agent.root}/acme", "cpu.weight") == "300", what="the policies applied again")
    assert_policy_in_kernel(agent.root)
