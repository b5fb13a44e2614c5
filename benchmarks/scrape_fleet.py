"""What benchmarks/scrape.py sets up and tears down: the live containers, the exporter
processes, HTTP scrapes, and signal handling that lets a Ctrl-C still clean up."""

from __future__ import annotations

import ctypes
import http.client
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator

from cgclean import rmdir_tree

PREFIX = "cgman-bench-"
GROUPS = 4                      # containers are spread over groups g0..g3, tenants tenant0..tenant3
MEMORY_MAX_BYTES = 64 * 2**20
PIDS_MAX = 16
CPU_MAX_CPUS = 0.5
SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
_stop: list[int] = []           # signals received


class Skip(Exception):
    """A contender that cannot run here; the message says why."""


# ------------------------------------------------------------------------------ signals
def stop_requested() -> int:
    """The first stop signal received, or 0."""
    return _stop[0] if _stop else 0


def _request_stop(signum: int, _frame: object) -> None:
    """First signal: stop after the step in flight (a launch killed halfway is undone by
    launch() itself, but a scrape or setup step is short). Second: interrupt it."""
    if _stop:
        raise KeyboardInterrupt
    _stop.append(signum)
    print(f"\nsignal {signum}: stopping after the step in flight, then cleaning up (again to interrupt)",
          file=sys.stderr, flush=True)


def _note_only(signum: int, _frame: object) -> None:
    if not _stop:
        _stop.append(signum)
    print(f"\nsignal {signum}: cleaning up first", file=sys.stderr, flush=True)


@contextmanager
def _handlers(handler: Callable[[int, object], None]) -> Iterator[None]:
    old = {s: signal.signal(s, handler) for s in SIGNALS}
    try:
        yield
    finally:
        for s, h in old.items():
            signal.signal(s, h)


def handle_signals() -> Any:
    """While measuring: a signal stops the run at the next step."""
    return _handlers(_request_stop)


def hold_signals() -> Any:
    """While cleaning up: nothing may interrupt it (that would strand cgroups); signals are noted."""
    return _handlers(_note_only)


# ------------------------------------------------------------------------------ containers
class Fleet:
    """N sleeping containers under a fresh cgman root, launched and finished by the library
    in this process (this process is their supervisor: they die with it)."""

    def __init__(self, root: str, tmp: Path) -> None:
        from cgman.drivers import open_host
        from cgman.settings import Settings
        from cgman.state.records import Store
        self.root = root
        self.host = open_host(root)
        self.tmp = tmp
        self.run_dir, self.state_dir = str(tmp / "run"), str(tmp / "state")
        self.store = Store(Settings(run_dir=self.run_dir, state_dir=self.state_dir))
        self.containers: list[Any] = []

    def leftovers(self) -> list[str]:
        return _tops(self.root)

    def start(self, n: int) -> None:
        from cgman.errors import CgmanError
        from cgman.model import CpuLimits, MemoryLimits, NetworkSpec, PidsLimits, Resources
        from cgman.policy import load_files
        from cgman.reconcile.apply import apply
        from cgman.containers.launch import ContainerSpec, launch
        policy = self.tmp / "scrape.yaml"
        policy.write_text("version: 1\npolicies:\n" +
                          "".join(f"  g{i}: {{tenant: tenant{i}}}\n" for i in range(GROUPS)))
        apply(load_files([policy]), self.host)
        res = Resources(cpu=CpuLimits(max_cpus=CPU_MAX_CPUS), memory=MemoryLimits(max_bytes=MEMORY_MAX_BYTES),
                        pids=PidsLimits(max=PIDS_MAX))
        sleep = shutil.which("sleep") or "/bin/sleep"
        step = max(1, n // 10)
        t0 = time.monotonic()
        for i in range(n):
            if stop_requested():
                return
            spec = ContainerSpec(name=f"c{i:05d}", group=f"g{i % GROUPS}", tenant=f"tenant{i % GROUPS}",
                                 argv=(sleep, "infinity"), resources=res, network=NetworkSpec(mode="none"))
            try:
                c = launch(self.host, self.store, spec)
            except CgmanError as e:
                raise SystemExit(f"launching container {i + 1} of {n} failed: {e}") from None
            c.sample_interval_s = 0          # nobody waits on them until the end: no memory samples
            self.containers.append(c)
            if (i + 1) % step == 0 or i + 1 == n:
                dt = time.monotonic() - t0
                print(f"  launched {i + 1}/{n} containers in {dt:.1f}s ({dt * 1000 / (i + 1):.1f} ms each)",
                      file=sys.stderr, flush=True)

    def stop(self) -> list[str]:
        """SIGKILL every container through its cgroup, reap and finish it (usage read, cgroup
        and record removed). Returns the problems; never raises (cleanup must go on)."""
        problems: list[str] = []
        if not self.containers:
            return problems
        print(f"stopping {len(self.containers)} containers", file=sys.stderr, flush=True)
        try:
            self.host.kill(".")              # the whole root at once (cgroup.kill where the kernel has it)
        except Exception as e:               # each container is killed on its own below
            problems.append(f"kill {self.root}: {e}")
        for c in self.containers:
            try:
                if c.wait(10) is None:
                    self.host.kill(c.rec.cgroup)
                    if c.wait(10) is None:
                        problems.append(f"{c.rec.name}: pid {c.pid} still alive after SIGKILL")
                        continue
                c.finish("killed by benchmarks/scrape.py")
            except Exception as e:           # report it and go on with the others
                problems.append(f"{c.rec.name}: {e}")
        self.containers.clear()
        return problems


def _tops(name: str) -> list[str]:
    """``name`` at the top of every cgroup and cgroup2 mount where it exists."""
    assert name.startswith(PREFIX) and "/" not in name
    with open("/proc/self/mountinfo", encoding="utf-8") as f:
        mounts = [ln.split()[4] for ln in f if ln.partition(" - ")[2].split()[0] in ("cgroup", "cgroup2")]
    return [p for m in mounts if os.path.isdir(p := os.path.join(m, name))]


def remove_roots(name: str) -> list[str]:
    """rmdir the benchmark's cgroup root (and anything left below it) in every hierarchy."""
    failed: list[str] = []
    for top in _tops(name):
        failed += rmdir_tree(top)[1]
    return failed


# ------------------------------------------------------------------------------ servers and scrapes
@dataclass
class Scrape:
    ms: float
    wire_bytes: int = 0
    body: bytes | None = None        # as received (gzip'd if encoding says so)
    encoding: str = ""


@dataclass
class Contender:
    key: str
    do: Callable[[], Scrape]
    note: str
    pid: int | None = None           # the server process (None: in this process)
    ms: list[float] = field(default_factory=list)
    first_ms: float | None = None
    last: Scrape | None = None
    rss_idle: int | None = None
    rss: int | None = None
    hwm: int | None = None


def http_scraper(port: int, gz: bool) -> Callable[[], Scrape]:
    """One GET /metrics on a fresh connection, timed from the request to the last byte."""
    def once() -> Scrape:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
        try:
            t0 = time.perf_counter()
            conn.request("GET", "/metrics", headers={"Accept-Encoding": "gzip" if gz else "identity"})
            r = conn.getresponse()
            body = r.read()
            ms = (time.perf_counter() - t0) * 1000
        finally:
            conn.close()
        if r.status != 200:
            raise RuntimeError(f"HTTP {r.status}: {body[:300]!r}")
        return Scrape(ms, len(body), body, r.getheader("Content-Encoding") or "")
    return once


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


_LIBC: list[Any] = []


def _die_with_parent() -> None:
    """In the server, before exec: SIGTERM when this benchmark dies, even by SIGKILL."""
    _LIBC[0].prctl(1, signal.SIGTERM, 0, 0, 0)      # PR_SET_PDEATHSIG


class Servers:
    """The exporter processes, each with its log file; stopped by PID."""

    def __init__(self, tmp: Path) -> None:
        self.tmp = tmp
        self.procs: dict[str, subprocess.Popen[bytes]] = {}
        self.fds: list[int] = []      # kept-open cgroup files of the kernel-pread floor

    def start(self, key: str, argv_for: Callable[[int], list[str]], cwd: Path | None = None) -> tuple[int, int]:
        """Start a server on a free port; return (pid, port) once it accepts connections."""
        if not _LIBC:
            _LIBC.append(ctypes.CDLL(None, use_errno=True))    # loaded before fork: the child only calls it
        port = _free_port()
        argv = argv_for(port)
        with open(self.tmp / f"{key}.log", "wb") as log:
            p = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, cwd=cwd,
                                 start_new_session=True, preexec_fn=_die_with_parent)
        self.procs[key] = p
        deadline = time.monotonic() + 60
        while True:
            if p.poll() is not None:
                raise Skip(f"{os.path.basename(argv[0])} exited with status {p.returncode} before listening")
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
                return p.pid, port
            except OSError:
                pass
            if time.monotonic() > deadline:
                raise Skip(f"{os.path.basename(argv[0])} not listening on port {port} after 60 s")
            time.sleep(0.05)

    def _log(self, key: str) -> list[str]:
        try:
            text = (self.tmp / f"{key}.log").read_text(errors="replace")
        except OSError:
            return []
        return [ln.strip() for ln in text.splitlines() if ln.strip()]

    def log_tail(self, key: str) -> str:
        lines = self._log(key)[-5:]
        return f" [its output: {' | '.join(lines)}]" if lines else ""

    def complaints(self, keys: tuple[str, ...]) -> list[str]:
        """What the exporters logged beyond their start banner (warnings, tracebacks)."""
        out = []
        for k in keys:
            lines = [ln for ln in self._log(k) if not ln.startswith("cgman exporter: serving")]
            if lines:
                out.append(f"{k} logged {len(lines)} line(s): {' | '.join(lines[:5])}")
        return out

    @staticmethod
    def rss(pid: int | None) -> int | None:
        if pid is None:
            return None
        import psutil
        try:
            return int(psutil.Process(pid).memory_info().rss)
        except psutil.Error:
            return None

    @staticmethod
    def hwm(pid: int | None) -> int | None:
        """Peak RSS (VmHWM) of ``pid``."""
        if pid is None:
            return None
        try:
            with open(f"/proc/{pid}/status") as f:
                return next(int(ln.split()[1]) * 1024 for ln in f if ln.startswith("VmHWM:"))
        except (OSError, StopIteration):
            return None

    def stop(self) -> list[str]:
        """SIGTERM each server by PID, SIGKILL after 5 s; close the floor's files."""
        for fd in self.fds:
            os.close(fd)
        self.fds.clear()
        problems = []
        for p in self.procs.values():
            if p.poll() is None:
                p.terminate()
        for key, p in self.procs.items():
            try:
                p.wait(5)
            except subprocess.TimeoutExpired:
                problems.append(f"{key} (pid {p.pid}) ignored SIGTERM for 5 s: killed")
                p.kill()
                p.wait()
        self.procs.clear()
        return problems
