"""Running containers for the CLI: run (foreground or detached) and exec.

Who waits: a foreground ``cgman run`` waits on its container itself; ``run -d``
forks a small supervisor (its own session, output to the container's log) that
waits, records the final usage and cleans up. The container's first process has
PR_SET_PDEATHSIG=SIGKILL towards whoever waits, so if that waiter is SIGKILLed
the container dies with it rather than running unaccounted; the next cgman
command (or ``cgman gc``, in manage.py) then reads what is left of its usage and
removes everything it held. The spec a run starts from is built in spec.py.
"""

from __future__ import annotations

import dataclasses
import os
import signal

from ..errors import Busy, LaunchError
from ..security.resolve import from_summary
from ..state.recordcheck import owned_pid
from ..state.records import Record, Store
from .launch import Container, ContainerSpec, launch
from .manage import state_of
from .process import clean_env, start_process
from .signals import FORWARDED

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any, Callable

    from ..drivers import Host

EXIT_TIMEOUT = 124          # as timeout(1)


# ------------------------------------------------------------------------------ running
def run_foreground(host: "Host", store: Store, spec: ContainerSpec, timeout_s: float | None = None,
                   stop_grace_s: float = 10.0, on_timeout: Callable[[], None] | None = None) -> int:
    """Run and wait; forward SIGINT/SIGTERM/…; return the exit code (128+N for signal N)."""
    # Handlers go in before the launch: a signal that arrives while the workload is starting
    # is held and forwarded once there is a process to forward it to, never lost or fatal.
    # A second SIGINT/SIGTERM kills: a PID 1 without a handler (--no-init) ignores the first.
    box: dict[str, Any] = {"c": None, "held": [], "stops": 0}

    def forward(sig: int, _frame: Any) -> None:
        if box["c"] is None:
            box["held"].append(sig)
            return
        if sig in (signal.SIGINT, signal.SIGTERM):
            box["stops"] += 1
        box["c"].signal(signal.SIGKILL if box["stops"] > 1 else sig)
    old = {s: signal.signal(s, forward) for s in FORWARDED}
    reason = "exited"
    try:
        c = box["c"] = launch(host, store, spec)
        for sig in box["held"]:
            forward(sig, None)
        try:
            code = c.wait(timeout_s)
            if code is None:
                if on_timeout:
                    on_timeout()
                c.stop(stop_grace_s)
                code, reason = EXIT_TIMEOUT, "timeout"
        except BaseException:
            c.stop(0)
            c.finish("interrupted")
            raise
        c.finish(reason)          # still under our handlers: a Ctrl-C now cannot lose the usage
    finally:
        for s, h in old.items():
            signal.signal(s, h)
    return code


def run_detached(host: "Host", store: Store, spec: ContainerSpec, timeout_s: float | None = None,
                 stop_grace_s: float = 10.0) -> Record:
    """Fork a supervisor that launches and waits; return once the container runs (or failed)."""
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:                                            # the supervisor
        code = 1
        try:
            os.close(r)
            os.setsid()
            _supervise(host, store, spec, w, timeout_s, stop_grace_s)
            code = 0
        except SystemExit as e:
            code = e.code if isinstance(e.code, int) else 1
        except BaseException:
            import traceback
            traceback.print_exc()          # stderr is the container's log by now
        finally:
            os._exit(code)
    os.close(w)
    msg = b""
    while chunk := os.read(r, 65536):
        msg += chunk
    os.close(r)
    if not msg.startswith(b"ok"):
        os.waitpid(pid, 0)
        text = msg.decode(errors="replace")
        ecode, _, text = text.removeprefix("error:").partition(":") if text.startswith("error:") else ("1", "", text)
        raise LaunchError(text or "the supervisor died before the container started",
                          int(ecode) if ecode.isdigit() else 1)
    return store.load(spec.name)


def _supervise(host: "Host", store: Store, spec: ContainerSpec, w: int, timeout_s: float | None,
               stop_grace_s: float) -> None:
    for s in (signal.SIGINT, signal.SIGHUP):
        signal.signal(s, signal.SIG_IGN)
    dev_null = os.open(os.devnull, os.O_RDONLY)
    os.dup2(dev_null, 0)
    os.close(dev_null)

    def to_log() -> None:
        fd = store.open_log(spec.name, write=True)
        os.dup2(fd, 1)
        os.dup2(fd, 2)
        os.close(fd)
    try:
        c = launch(host, store, spec, detached=True, before_spawn=to_log)
    except BaseException as e:
        os.write(w, f"error:{getattr(e, 'exit_code', 1)}:{e}".encode())
        os.close(w)
        raise SystemExit(1) from None
    os.write(w, b"ok")
    os.close(w)
    signal.signal(signal.SIGTERM, lambda sig, _f: c.signal(sig))
    code = c.wait(timeout_s)
    reason = "exited"
    if code is None:
        c.stop(stop_grace_s)
        code, reason = EXIT_TIMEOUT, "timeout"
    c.finish(reason)


# --------------------------------------------------------------------------------- exec
NS_ORDER = ("user", "ipc", "uts", "net", "pid", "mnt", "cgroup")   # user first: it owns the rest


def exec_in(host: "Host", store: Store, name: str, argv: list[str], env: tuple[tuple[str, str], ...] = ()) -> int:
    """Run ``argv`` inside a running container: every namespace it has, and its cgroup."""
    if not argv:
        raise LaunchError(f"no command given: `cgman exec {name} -- CMD...`")
    rec = store.load(name)
    if rec.state != "running" or not owned_pid(rec.pid, rec.pid_start, rec.cgroup_root, rec.cgroup):
        raise Busy(f"container {name} is not running (state: {state_of(host, rec)})")
    if host.is_frozen(rec.cgroup):
        raise Busy(f"container {name} is frozen: a command started in it could not run "
                   f"(`cgman thaw {name}` first)")
    assert rec.pid is not None
    fds: list[int] = []
    joined_user = False
    try:
        for ns in NS_ORDER:
            theirs = f"/proc/{rec.pid}/ns/{ns}"
            try:
                if os.stat(theirs).st_ino == os.stat(f"/proc/self/ns/{ns}").st_ino:
                    continue
                fds.append(os.open(theirs, os.O_RDONLY | os.O_CLOEXEC))
            except FileNotFoundError:
                raise Busy(f"container {name} exited while joining it") from None
            joined_user = joined_user or ns == "user"
        envp = clean_env(rec.hostname, env, store.settings.term)
        box: dict[str, Any] = {"c": None, "held": []}

        def forward(sig: int, _frame: Any) -> None:     # held until there is a process
            box["held"].append(sig) if box["c"] is None else box["c"].signal(sig)
        old = {s: signal.signal(s, forward) for s in FORWARDED}
        try:
            # The same capabilities, no_new_privs and seccomp filter as the container's own processes,
            # as `runc exec` does (devices and the read-only cgroupfs come with its cgroup and mounts).
            proc = start_process(host, rec.cgroup, [os.fsencode(a) for a in argv], envp, setns_fds=fds,
                                 init=True, uid=0 if joined_user else -1, gid=0 if joined_user else -1,
                                 security=from_summary(rec.security), cache_dir=store.state)
            for fd in fds:
                os.close(fd)
            fds = []
            proc.release()
            c = box["c"] = Container(host, store, dataclasses.replace(rec, pid=proc.pid), None,  # type: ignore[arg-type]
                                     sample_interval_s=0)
            for sig in box["held"]:
                c.signal(sig)
            code = c.wait()
        finally:
            for s, h in old.items():
                signal.signal(s, h)
    finally:
        for fd in fds:
            os.close(fd)
    assert code is not None
    return code


__all__ = ["run_foreground", "run_detached", "exec_in"]
