#!/usr/bin/env python3
"""Benchmark: launching ``/bin/true`` in fresh namespaces (+ a fresh cgroup) with several tools.

Usage (as root):

    .venv/bin/python benchmarks/launch.py [--rounds 50] [--only runc,cgman,...] [--json]

What is measured: the wall time of each launch as a whole process (or chain of processes), from
just before the first spawn to just after the last exit, with ``time.perf_counter`` around
``subprocess.run`` driven from this (venv) Python. Contenders, each launching ``/bin/true``:

  unshare    ``unshare --uts --ipc --pid --net --mount --cgroup --fork --mount-proc`` (no cgroup, no limits)
  bwrap      ``bwrap --unshare-all --dev-bind / / --proc /proc`` (no cgroup, no limits)
  libcgroup  the operator's chain: cgcreate + cgset (memory, pids) + cgexec unshare ... + cgdelete
             (one cgdelete per controller: cgdelete 2.0.2 removes only the first of a list on this host)
  runc       ``runc run`` of an OCI bundle (static busybox rootfs, memory + pids limits, own cgroup)
  crun       ``crun run`` of the same bundle (crun 1.8 refuses hybrid hosts: reported and skipped)
  cgman      ``cgman run --policy bench --rm --network loopback`` (skipped if ``cgman run --help`` fails)
  agent      the same ``cgman run`` while ``cgman agent`` runs: the installed ``cgman``, a C front
             (cgman/_client.c), hands it to the agent
  agent-raw  the agent's side alone: a request on its socket from this process, until EXITED
             (its breakdown: socket round trip until ACCEPTED, then launch + wait + ledger commit)
  client     floor of the C front: ``cgman run`` to a socket where a thread of this process answers
             at once (ACCEPTED, EXITED 0): its exec, request and wait, with no launch behind it
  cgman-priv the same with ``--privileged`` (capabilities, seccomp, devices, read-only cgroupfs all off)
  inprocess  the library: ``cgman.containers.launch.launch()`` in this process, until the workload exec'd
             (with the secure defaults: 11 capabilities, no_new_privs, seccomp, device filter, masked paths)
  inprocess-priv  the same, privileged: what the defaults cost is inprocess / inprocess-priv
             (both as a launcher service runs them: a network namespace kept ready by a thread,
             containers/netns_ahead.py, as the agent's spare supervisor makes its own;
             ``--no-netns-ahead``: each launch clones its own, as the direct path does)
  lifecycle  the same plus wait() and finish() (final usage read, cgroup and record removed)
  python, imports  floors for any Python CLI: interpreter start, and start + `cgman run`'s imports

Every limit is the same: memory 256 MiB, pids 64. Rounds are interleaved (each round runs every
contender once, in an order rotated by one each round) so drift hits every contender alike; one
extra first round is dropped as warm-up (the first cgroup.procs write after idle is slow). Each
contender also gets one untimed probe launch first; one that fails is skipped with its error.

The cgman package is byte-compiled first (as an installed one is), so that no contender
compiles Python source on every start.

Safety: every cgroup created is named ``cgman-bench-<random tag>-...``; all of them are removed
(deepest first, in every v1 hierarchy and the cgroup2 mount) at the end, also on failure;
SIGTERM/SIGINT stop the run after the launch in flight, then clean up.
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import shutil
import signal
import socket
import statistics
import struct
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from cgclean import rmdir_tree  # noqa: E402

PREFIX = "cgman-bench-"
NETNS_AHEAD = [True]             # --no-netns-ahead
VENV_BIN = Path(sys.executable).parent
MEMORY_MAX_BYTES = 256 * 1024 * 1024
PIDS_MAX = 64
UNSHARE = ["unshare", "--uts", "--ipc", "--pid", "--net", "--mount", "--cgroup", "--fork", "--mount-proc"]
ORDER = ["unshare", "bwrap", "libcgroup", "runc", "crun", "cgman", "agent", "agent-raw", "cgman-priv", "inprocess",
         "inprocess-priv", "inprocess-b2b", "inprocess-priv-b2b", "lifecycle", "systemd", "systemd-lifecycle", "systemd-run",
         "python", "client", "imports"]
NOTES = {
    "unshare": "no cgroup, no limits",
    "bwrap": "no cgroup, no limits (+ user ns)",
    "libcgroup": "cgcreate, cgset, cgexec unshare, cgdelete x3; cgroup with limits",
    "runc": "OCI bundle, busybox rootfs, new cgroup with limits",
    "crun": "OCI bundle, busybox rootfs, new cgroup with limits",
    "cgman": "cgman run --rm, loopback net, new cgroup with limits",
    "agent": "cgman run --rm as above, served by a running cgman agent",
    "agent-raw": "the agent's side: socket request from this process until EXITED",
    "client": "floor: the C front, answered at once by a thread of this process",
    "cgman-priv": "the same with --privileged (no caps drop, seccomp, devices, masks)",
    "inprocess": "library launch() until the workload has exec'd (cgroup, limits, namespaces)",
    "inprocess-b2b": "the same, back to back after the interleaved rounds (no idle gap)",
    "inprocess-priv": "library launch, privileged: the defaults' cost is inprocess minus this",
    "inprocess-priv-b2b": "the same, back to back, alternating with inprocess-b2b",
    "lifecycle": "library launch + wait + finish (usage read, cgroup removed)",
    "systemd": "library launch, systemd driver: a transient scope over D-Bus (systemd hosts only)",
    "systemd-lifecycle": "the same + wait + finish (payload billed, keeper ended, scope stopped)",
    "systemd-run": "systemd's own: systemd-run --scope --slice= /bin/true, whole process, no limits",
    "python": "floor: the venv's python -c pass",
    "imports": "floor: python + the modules `cgman run` imports",
}
Launcher = Callable[[int], float]          # round number -> milliseconds
_stop: list[int] = []                      # signals received; the run stops after the current launch
PARTS: dict[str, list[float]] = {}         # breakdown samples (ms): what one launch spends where
_agents: list[subprocess.Popen] = []       # agents started here, stopped by PID at the end
_agent_env: dict[str, str] = {}
_slices: list[str] = []                    # the systemd driver's root slices made here, stopped at the end


def _request_stop(signum: int, _frame: object) -> None:
    """Finish the launch in flight (killing it mid-setup can strand its cgroup), then clean up."""
    if _stop:
        raise KeyboardInterrupt
    _stop.append(signum)


class Skip(Exception):
    """A contender that cannot run here; the message says why."""


def run(argv: list[str], env: dict[str, str] | None = None) -> None:
    """Run a command, discard stdout; raise RuntimeError with its last stderr line on failure."""
    p = subprocess.run(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env, text=True)
    if p.returncode != 0:
        # strip typer/rich box drawing so the reason is the text, not the frame
        lines = [t for t in (ln.strip(" \u2502\u256d\u256e\u2570\u256f\u2500") for ln in p.stderr.splitlines())
                 if any(c.isalnum() for c in t)]
        raise RuntimeError(lines[-1] if lines else f"{argv[0]} exited with {p.returncode}")


def timed(argv: list[str], env: dict[str, str] | None = None) -> float:
    t0 = time.perf_counter()
    run(argv, env)
    return (time.perf_counter() - t0) * 1000


def need(*tools: str) -> None:
    packages = {"bwrap": "bubblewrap", "unshare": "util-linux", "runc": "runc", "crun": "crun"}
    for t in tools:
        if not shutil.which(t):
            raise Skip(f"{t} not installed (apt-get install -y {packages.get(t, 'cgroup-tools')})")


def probe(launch: Launcher) -> Launcher:
    """One untimed launch (round -1); turn its failure into Skip(error)."""
    try:
        launch(-1)
    except RuntimeError as e:
        raise Skip(str(e)) from e
    return launch


def suffix(i: int) -> str:
    return str(i) if i >= 0 else "probe"


# ------------------------------------------------------------------------------ contenders
def make_unshare(tag: str, tmp: Path) -> Launcher:
    need("unshare")
    return probe(lambda i: timed(UNSHARE + ["/bin/true"]))


def make_bwrap(tag: str, tmp: Path) -> Launcher:
    need("bwrap")
    return probe(lambda i: timed(["bwrap", "--unshare-all", "--dev-bind", "/", "/",
                                  "--proc", "/proc", "/bin/true"]))


def make_libcgroup(tag: str, tmp: Path) -> Launcher:
    need("cgcreate", "cgset", "cgexec", "cgdelete")

    def launch(i: int) -> float:
        name = f"{PREFIX}{tag}-cg-{suffix(i)}"
        spec = f"cpu,memory,pids:/{name}"
        t0 = time.perf_counter()
        run(["cgcreate", "-g", spec])
        try:
            run(["cgset", "-r", f"memory.limit_in_bytes={MEMORY_MAX_BYTES}", "-r", f"pids.max={PIDS_MAX}", name])
            run(["cgexec", "-g", spec] + UNSHARE + ["/bin/true"])
        finally:        # one cgdelete per controller: cgdelete 2.0.2 removes only a list's first one here
            for controller in ("cpu", "memory", "pids"):
                run(["cgdelete", "-g", f"{controller}:/{name}"])
        return (time.perf_counter() - t0) * 1000
    return probe(launch)


def make_oci(runtime: str, tag: str, tmp: Path) -> Launcher:
    need(runtime)
    bundle, state = tmp / f"{runtime}-bundle", tmp / f"{runtime}-state"
    (bundle / "rootfs" / "bin").mkdir(parents=True)
    busybox = shutil.which("busybox")
    if not busybox or b"ld-linux" in Path(busybox).read_bytes()[:4096]:
        raise Skip("needs a static busybox (apt-get install -y busybox-static)")
    shutil.copy(busybox, bundle / "rootfs" / "bin" / "busybox")
    os.symlink("busybox", bundle / "rootfs" / "bin" / "true")
    subprocess.run([runtime, "spec"], cwd=bundle, check=True, capture_output=True)
    config = json.loads((bundle / "config.json").read_text())
    config["process"].update(args=["/bin/true"], terminal=False)
    linux = config["linux"]
    if not any(ns["type"] == "cgroup" for ns in linux["namespaces"]):
        linux["namespaces"].append({"type": "cgroup"})     # same namespaces as the other contenders
    linux.setdefault("resources", {}).update(memory={"limit": MEMORY_MAX_BYTES}, pids={"limit": PIDS_MAX})

    def launch(i: int) -> float:
        cid = f"{PREFIX}{tag}-{runtime}-{suffix(i)}"
        linux["cgroupsPath"] = f"/{cid}"
        (bundle / "config.json").write_text(json.dumps(config))
        return timed([runtime, "--root", str(state), "run", "--bundle", str(bundle), cid])
    return probe(launch)


def make_cgman(tag: str, tmp: Path, privileged: bool = False) -> Launcher:
    cli = str(VENV_BIN / "cgman")
    kind = "cgmanp" if privileged else "cgman"
    env = dict(os.environ, CGMAN_CGROUP_ROOT=f"{PREFIX}{tag}-{kind}",
               CGMAN_RUN_DIR=str(tmp / f"{kind}-run"), CGMAN_STATE_DIR=str(tmp / f"{kind}-state"))
    try:
        run([cli, "run", "--help"], env)
    except (RuntimeError, OSError) as e:
        raise Skip(f"`cgman run --help` failed ({e}): `cgman run` not written yet?") from e
    policy = tmp / f"{kind}.yaml"           # `cgman run -p bench` finds what `cgman apply` applied
    policy.write_text("version: 1\npolicies:\n  bench:\n    container:\n"
                      f"      memory: {{max: 256Mi}}\n      pids: {{max: {PIDS_MAX}}}\n"
                      "    launch: {allow_privileged: true}\n")
    try:
        run([cli, "apply", str(policy)], env)
    except RuntimeError as e:
        raise Skip(f"cgman apply failed: {e}") from e
    flags = ["--privileged"] if privileged else []
    return probe(lambda i: timed([cli, "run", "--policy", "bench", "--name", f"b{suffix(i)}",
                                  "--rm", "--network", "loopback", *flags, "--", "/bin/true"], env))


def start_agent(tag: str, tmp: Path) -> dict[str, str]:
    """A `cgman agent` for its own root (one, shared by agent and agent-raw); returns the
    environment its clients use, plus its socket under "sock"."""
    if _agent_env:
        return _agent_env
    cli = str(VENV_BIN / "cgman")
    env = dict(os.environ, CGMAN_CGROUP_ROOT=f"{PREFIX}{tag}-agent", CGMAN_RUN_DIR=str(tmp / "agent-run"),
               CGMAN_STATE_DIR=str(tmp / "agent-state"))
    pdir = tmp / "agent-policies"
    pdir.mkdir()
    (pdir / "bench.yaml").write_text("version: 1\npolicies:\n  bench:\n    container:\n"
                                     f"      memory: {{max: 256Mi}}\n      pids: {{max: {PIDS_MAX}}}\n")
    old = time.time() - 5
    os.utime(pdir / "bench.yaml", (old, old))     # the agent waits out files younger than 0.5 s
    log = open(tmp / "agent.log", "w")
    _agents.append(subprocess.Popen([cli, "agent", "--policy-dir", str(pdir), "--listen", "127.0.0.1:0"],
                                    env=env, stdout=log, stderr=subprocess.STDOUT))
    sock = Path(env["CGMAN_RUN_DIR"]) / f"agent-{PREFIX}{tag}-agent.sock"
    deadline = time.monotonic() + 30
    while not (sock.exists() and "applied 1 file" in (tmp / "agent.log").read_text()):
        if time.monotonic() > deadline or _agents[-1].poll() is not None:
            raise Skip(f"the agent did not start serving: {(tmp / 'agent.log').read_text()[-300:]}")
        time.sleep(0.05)
    env["sock"] = str(sock)
    _agent_env.update(env)
    return env


def make_agent(tag: str, tmp: Path) -> Launcher:
    env = start_agent(tag, tmp)
    cli = str(VENV_BIN / "cgman")
    client_env = {k: v for k, v in env.items() if k != "sock"}
    return probe(lambda i: timed([cli, "run", "--policy", "bench", "--name", f"a{suffix(i)}", "--rm",
                                  "--network", "loopback", "--", "/bin/true"], client_env))


def make_agent_raw(tag: str, tmp: Path) -> Launcher:
    """One request on the agent's socket from this process: the time until ACCEPTED is the
    socket round trip (connect, fork of a supervisor, request read), the rest is the launch,
    the wait and the ledger commit in that supervisor."""
    from cgman.cli import wire
    env = start_agent(tag, tmp)
    environ = [f"{k}={v}".encode() for k, v in env.items() if k != "sock"]
    devnull = os.open(os.devnull, os.O_RDWR)

    def launch(i: int) -> float:
        argv = [b"cgman", b"run", b"--policy", b"bench", b"--name", f"r{suffix(i)}".encode(), b"--rm",
                b"--network", b"loopback", b"--", b"/bin/true"]
        t0 = time.perf_counter()
        with socket.socket(socket.AF_UNIX) as s:
            s.connect(env["sock"])
            s.sendmsg([wire.encode_request(argv, environ, os.getcwdb())],
                      [(socket.SOL_SOCKET, socket.SCM_RIGHTS, struct.pack("3i", devnull, devnull, devnull))])
            kind, _ = wire.read_frame(s) or (b"", 0)
            t1 = time.perf_counter()
            kind2, code = wire.read_frame(s) or (b"", 0)
        t2 = time.perf_counter()
        if kind != wire.ACCEPTED or kind2 != wire.EXITED or code != 0:
            raise RuntimeError(f"served run failed: {kind!r} {kind2!r} {code}")
        if i > 0:
            PARTS.setdefault("socket round trip (until ACCEPTED)", []).append((t1 - t0) * 1000)
            PARTS.setdefault("served launch + wait + ledger (ACCEPTED..EXITED)", []).append((t2 - t1) * 1000)
        return (t2 - t0) * 1000
    return probe(launch)


FACTORIES: dict[str, Callable[[str, Path], Launcher]] = {
    "unshare": make_unshare, "bwrap": make_bwrap, "libcgroup": make_libcgroup,
    "runc": lambda tag, tmp: make_oci("runc", tag, tmp),
    "crun": lambda tag, tmp: make_oci("crun", tag, tmp),
    "cgman": make_cgman,
    "agent": make_agent,
    "agent-raw": make_agent_raw,
    "cgman-priv": lambda tag, tmp: make_cgman(tag, tmp, privileged=True),
}


def make_library(tag: str, tmp: Path, full_cycle: bool, privileged: bool = False,
                 driver: str = "cgroupfs") -> Launcher:
    """The library API in this process: launch() returns once the workload has exec'd inside its
    cgroup and namespaces (``inprocess``); ``lifecycle`` adds wait() and finish() (final usage
    read, cgroup removed, record deleted). ``driver`` systemd: the group is a slice and each
    container a transient scope (``systemd``, ``systemd-lifecycle``; systemd hosts only)."""
    from cgman.drivers import open_host
    from cgman.model import MemoryLimits, NetworkSpec, PidsLimits, Resources
    from cgman.policy import load_files
    from cgman.containers.launch import ContainerSpec, launch
    from cgman.settings import Settings
    from cgman.state.records import Store
    from cgman.security.resolve import Security
    sec = Security(privileged=True) if privileged else Security()
    if NETNS_AHEAD[0]:
        from cgman.containers import netns_ahead
        netns_ahead.keep_ready()
    kind = f"{'c' if full_cycle else ''}{'p' if privileged else ''}{'s' if driver == 'systemd' else ''}"
    root = f"{PREFIX}{tag}-lib{kind}"
    host = open_host(root)
    policy = tmp / f"lib-{kind}.yaml"
    policy.write_text("version: 1\npolicies:\n  bench: {}\n")
    _apply(load_files([policy]), host, root, driver)
    store = Store(Settings(run_dir=str(tmp / f"lib-run-{kind}"), state_dir=str(tmp / f"lib-state-{kind}"),
                           cgroup_root=root, cgroup_driver=driver))
    res = Resources(memory=MemoryLimits(max_bytes=MEMORY_MAX_BYTES), pids=PidsLimits(max=PIDS_MAX))

    def one(i: int) -> float:
        spec = ContainerSpec(name=f"l{suffix(i)}", group="bench", tenant="bench", argv=("/bin/true",),
                             resources=res, network=NetworkSpec(mode="loopback"), auto_remove=True,
                             security=sec)
        t = time.perf_counter()
        c = launch(host, store, spec)
        if full_cycle:
            t1 = time.perf_counter()
            c.wait()
            t2 = time.perf_counter()
            c.finish()
            t3 = time.perf_counter()
            if i > 0:
                for part, ms in (("library launch", t1 - t), ("library wait", t2 - t1),
                                 ("library finish (usage read, cleanup, ledger)", t3 - t2)):
                    PARTS.setdefault(part, []).append(ms * 1000)
            return (t3 - t) * 1000
        ms = (time.perf_counter() - t) * 1000
        c.wait()
        c.finish()             # untimed: the launch is done once the workload runs
        return ms
    return probe(one)


def _apply(policies: object, host: object, root: str, driver: str) -> None:
    if driver == "cgroupfs":
        from cgman.reconcile.apply import apply
        apply(policies, host)
        return
    if open("/proc/1/comm").read().strip() != "systemd" or host.info.mode != "v2":
        raise Skip("the systemd driver needs systemd as PID 1 on a pure cgroup v2 host (run this in the "
                   "systemd VM: CG2VM_INIT=systemd, see ../shared/cgroup2-vm/README.md)")
    from cgman.drivers.systemd.bus import SystemdBus
    from cgman.drivers.systemd.reconcile import apply_units
    from cgman.drivers.systemd.units import slice_name
    from cgman.errors import CgmanError
    try:
        with SystemdBus() as bus:
            _slices.append(slice_name(root))
            apply_units(policies, root, bus)
    except CgmanError as e:
        raise Skip(str(e)) from e


FACTORIES["inprocess"] = lambda tag, tmp: make_library(tag, tmp, False)
FACTORIES["systemd"] = lambda tag, tmp: make_library(tag, tmp, False, driver="systemd")
FACTORIES["systemd-lifecycle"] = lambda tag, tmp: make_library(tag, tmp, True, driver="systemd")


def make_systemd_run(tag: str, tmp: Path) -> Launcher:
    if open("/proc/1/comm").read().strip() != "systemd":
        raise Skip("needs systemd as PID 1 (the systemd VM)")
    need("systemd-run")
    unit = f"{PREFIX}{tag}-run.slice".replace("-", "_")
    _slices.append(unit)
    return probe(lambda i: timed(["systemd-run", "--scope", "--quiet", f"--slice={unit}", "/bin/true"]))


FACTORIES["systemd-run"] = make_systemd_run
FACTORIES["inprocess-priv"] = lambda tag, tmp: make_library(tag, tmp, False, privileged=True)
FACTORIES["lifecycle"] = lambda tag, tmp: make_library(tag, tmp, True)
FACTORIES["python"] = lambda tag, tmp: probe(lambda i: timed([sys.executable, "-c", "pass"]))
def make_client(tag: str, tmp: Path) -> Launcher:
    """The C front alone: a thread here takes each request and answers ACCEPTED and EXITED 0."""
    import threading
    from cgman.cli import wire
    from cgman.state.agentsock import socket_path
    root = f"{PREFIX}{tag}-front"
    listener = socket.socket(socket.AF_UNIX)
    listener.bind(socket_path(str(tmp), root))
    listener.listen(8)

    def answer() -> None:
        while True:
            conn, _ = listener.accept()
            with conn:
                _, anc, _, _ = conn.recvmsg(1 << 20, socket.CMSG_SPACE(4 * 4))
                for _level, _kind, payload in anc:
                    for fd in struct.unpack(f"{len(payload) // 4}i", payload):
                        os.close(fd)
                conn.sendall(wire.FRAME.pack(wire.ACCEPTED, 1) + wire.FRAME.pack(wire.EXITED, 0))
    threading.Thread(target=answer, daemon=True).start()
    env = dict(os.environ, CGMAN_RUN_DIR=str(tmp), CGMAN_CGROUP_ROOT=root)
    return probe(lambda i: timed([str(VENV_BIN / "cgman"), "run", "-p", "bench", "--rm", "--", "/bin/true"], env=env))


FACTORIES["client"] = make_client
FACTORIES["imports"] = lambda tag, tmp: probe(lambda i: timed([
    sys.executable, "-c", "import cgman.cli.options, cgman.cli.runcmd, cgman.containers.lifecycle, cgman.drivers, "
    "cgman.state.applied"]))


# ------------------------------------------------------------------------------ cleanup
def ours(tag: str) -> list[str]:
    """Top-level cgroup dirs of this run (cgman-bench-<tag>-*) in every cgroup and cgroup2 mount."""
    assert tag and "/" not in tag
    with open("/proc/self/mountinfo", encoding="utf-8") as f:
        mounts = [ln.split()[4] for ln in f if ln.partition(" - ")[2].split()[0] in ("cgroup", "cgroup2")]
    return [os.path.join(m, n) for m in mounts if os.path.isdir(m)
            for n in os.listdir(m) if n.startswith(f"{PREFIX}{tag}-")]


def cleanup(tag: str) -> tuple[set[str], list[str]]:
    """Remove every cgroup of this run, deepest first; return (paths removed, failures)."""
    removed: set[str] = set()
    failed: list[str] = []
    for unit in _slices:          # the systemd driver's: systemd removes their cgroups
        subprocess.run(["systemctl", "stop", unit], check=False, capture_output=True)
    for top in ours(tag):
        gone, bad = rmdir_tree(top)
        removed.update(d[len(os.path.dirname(top)) + 1:] for d in gone)
        failed += bad
    return removed, failed


# ------------------------------------------------------------------------------ main
def measure(selected: list[str], rounds: int, tag: str, tmp: Path) -> tuple[dict, dict]:
    """Interleaved rounds; returns ({contender: [ms...]}, {contender: why skipped})."""
    skipped: dict[str, str] = {}
    launchers: dict[str, Launcher] = {}
    for key in (k for k in ORDER if k in selected and k in FACTORIES and not _stop):
        try:
            launchers[key] = FACTORIES[key](tag, tmp)
        except Skip as e:
            skipped[key] = str(e)
    samples: dict[str, list[float]] = {k: [] for k in launchers}
    for r in range(rounds + 1):                       # round 0 is the dropped warm-up
        keys = [k for k in launchers if k not in skipped]
        for k in keys[r % len(keys):] + keys[:r % len(keys)] if keys and not _stop else []:
            try:
                ms = launchers[k](r)
            except RuntimeError as e:
                skipped[k] = f"failed in round {r}: {e}"
                continue
            if r > 0:
                samples[k].append(ms)
    if "inprocess" in launchers and "inprocess" not in skipped and not _stop:
        # Back to back, as a launcher service would: the kernel's cgroup.procs writes stay fast
        # (the first after an idle gap waits for an RCU grace period, ~8 ms here).
        pairs = [k for k in ("inprocess", "inprocess-priv") if k in launchers and k not in skipped]
        for k in pairs:
            samples[f"{k}-b2b"] = []
        for i in range(rounds):                      # alternating, so drift hits both alike
            for k in pairs:
                samples[f"{k}-b2b"].append(launchers[k](1000 + i))
    return samples, skipped


def version(cmd: str) -> str:
    try:
        p = subprocess.run([cmd, "--version"], capture_output=True, text=True, timeout=10)
        return (p.stdout or p.stderr).splitlines()[0].strip()
    except (OSError, IndexError, subprocess.TimeoutExpired):
        return "not installed"


def report(samples: dict, skipped: dict, rounds: int, as_json: bool) -> None:
    medians = {k: statistics.median(v) for k, v in samples.items() if v and k not in skipped}
    rows = [{"contender": k, "median_ms": round(medians[k], 2), "n": len(samples[k]), "note": NOTES[k],
             "p90_ms": round(statistics.quantiles(samples[k], n=10, method="inclusive")[8]
                             if len(samples[k]) > 1 else samples[k][0], 2),
             **{f"vs_{b}": round(medians[k] / medians[b], 2) if b in medians else None for b in ("runc", "cgman")}}
            for k in ORDER if k in medians]
    versions = {c: version(c) for c in ("runc", "crun", "bwrap", "unshare")}
    pure_v2 = os.path.exists("/sys/fs/cgroup/cgroup.controllers")     # cgroup2 mounted at the usual place
    if as_json:
        print(json.dumps({"rounds": rounds, "warmup_rounds_dropped": 1, "kernel": os.uname().release,
                          "breakdown_ms": {k: round(statistics.median(v), 2) for k, v in PARTS.items()},
                          "pure_cgroup2": pure_v2, "versions": versions, "results": rows,
                          "library_netns_ahead": NETNS_AHEAD[0],
                          "skipped": skipped}, indent=2))
        return
    print(f"launch /bin/true, {rounds} interleaved rounds (+1 warm-up dropped), kernel "
          f"{os.uname().release}, {'cgroup v2' if pure_v2 else 'hybrid/v1 cgroups'}; library contenders "
          f"{'with a network namespace kept ready' if NETNS_AHEAD[0] else 'cloning their network namespace'}")
    print(f"{'contender':<18} {'median ms':>9} {'p90 ms':>8} {'x runc':>7} {'x cgman':>7}  note")
    for row in rows:
        ratios = [f"{row[k]:.2f}" if row[k] is not None else "-" for k in ("vs_runc", "vs_cgman")]
        print(f"{row['contender']:<18} {row['median_ms']:>9.2f} {row['p90_ms']:>8.2f} "
              f"{ratios[0]:>7} {ratios[1]:>7}  {row['note']}")
    for a, b in (("inprocess", "inprocess-priv"), ("inprocess-b2b", "inprocess-priv-b2b"), ("cgman", "cgman-priv")):
        if a in medians and b in medians:
            print(f"secure defaults: {a} - {b} = {medians[a] - medians[b]:+.2f} ms "
                  f"(x{medians[a] / medians[b]:.2f})")
    for a, b in (("systemd", "inprocess"), ("systemd-lifecycle", "lifecycle")):
        if a in medians and b in medians:
            print(f"systemd driver: {a} / {b} = x{medians[a] / medians[b]:.2f} (a transient scope over D-Bus "
                  f"against a cgroupfs leaf)")
    if PARTS:
        print("breakdown (medians):")
        floors = [("the C front alone (exec, request, answer)", "client")]
        for label, key in floors:
            if key in medians:
                print(f"  {label:<52} {medians[key]:8.2f} ms")
        for label, values in PARTS.items():
            print(f"  {label:<52} {statistics.median(values):8.2f} ms")
    for k, why in skipped.items():
        print(f"{k}: skipped: {why}")
    print("versions: " + "; ".join(f"{c}: {v}" for c, v in versions.items()))
    if not pure_v2:
        print("note: to run runc/crun on pure cgroup v2, from the repository root: bash "
              "../shared/cgroup2-vm/run-in-cgroup2-vm.sh .venv/bin/python benchmarks/launch.py --only runc,crun")


def compile_package() -> None:
    """Byte-compile cgman as scripts/setup.sh does when it installs it: a checkout run with
    PYTHONDONTWRITEBYTECODE=1 has no .pyc files, and every `cgman run` would then compile
    its ~100 modules from source (~40 ms more); and the code of its dataclasses' methods
    (cgman/_dcache.py: ~11 ms more without it)."""
    import compileall
    import cgman
    compileall.compile_dir(os.path.dirname(cgman.__file__), quiet=1)
    try:
        from cgman import _dcache
    except ImportError:            # an older checkout (benchmarks/before_after.py) has none
        return
    _dcache.warm()


def main() -> int:
    ap = argparse.ArgumentParser(description=(__doc__ or "").split("\n")[0])
    ap.add_argument("--rounds", type=int, default=50, help="measured rounds (one more is run and dropped)")
    ap.add_argument("--only", default="", help=f"comma-separated subset of: {','.join(ORDER)}")
    ap.add_argument("--json", action="store_true", help="print JSON instead of a table")
    ap.add_argument("--no-netns-ahead", dest="netns_ahead", action="store_false",
                    help="library contenders: clone each network namespace at launch (no thread making it ahead)")
    args = ap.parse_args()
    NETNS_AHEAD[0] = args.netns_ahead
    selected = [k for k in args.only.split(",") if k] or ORDER
    if unknown := set(selected) - set(ORDER):
        ap.error(f"unknown contender(s) {sorted(unknown)}; choose from {ORDER}")
    if os.geteuid() != 0:
        ap.error("must run as root")
    signal.signal(signal.SIGTERM, _request_stop)
    signal.signal(signal.SIGINT, _request_stop)
    compile_package()
    tag = secrets.token_hex(3)
    if ours(tag):
        raise SystemExit(f"cgroups named {PREFIX}{tag}-* already exist; refusing to touch them")
    tmp = Path(tempfile.mkdtemp(prefix=PREFIX))
    try:
        samples, skipped = measure(selected, args.rounds, tag, tmp)
    finally:
        for agent in _agents:          # by PID; its run server exits with it
            agent.terminate()
            try:
                agent.wait(30)
            except subprocess.TimeoutExpired:
                agent.kill()
                agent.wait()
        removed, failed = cleanup(tag)
        shutil.rmtree(tmp, ignore_errors=True)
        if failed:
            print("WARNING: could not remove: " + "; ".join(failed), file=sys.stderr)
    # cgman's policy groups are expected; anything else was left behind by a tool (and removed now)
    stray = sorted(removed - {f"{PREFIX}{tag}-{r}{g}" for r in ("cgman", "cgmanp", "lib", "libc", "libp", "agent")
                              for g in ("", "/bench")})
    if stray:
        print(f"note: the tools left {len(stray)} cgroup(s) behind (removed): {', '.join(stray[:5])}",
              file=sys.stderr)
    if _stop:
        print(f"interrupted by signal {_stop[0]}; cleaned up", file=sys.stderr)
        return 128 + _stop[0]
    report(samples, skipped, args.rounds, args.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())
