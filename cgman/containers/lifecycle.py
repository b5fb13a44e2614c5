"""Container lifecycle for the CLI: run (foreground or detached), exec, ps, stop, rm, gc.

Who waits: a foreground ``cgman run`` waits on its container itself; ``run -d``
forks a small supervisor (its own session, output to the container's log) that
waits, records the final usage and cleans up. The container's first process has
PR_SET_PDEATHSIG=SIGKILL towards whoever waits, so if that waiter is SIGKILLed
the container dies with it rather than running unaccounted; the next cgman
command (or ``cgman gc``) then reads what is left of its usage and removes
everything it held.
"""

from __future__ import annotations

import dataclasses
import os
import signal
import time
from typing import TYPE_CHECKING, Any, Callable

from ..errors import Busy, CgmanError, LaunchError, NotFound
from ..model import UNLIMITED, LaunchSpec, NetworkSpec, PolicySet, Resources, RootfsSpec
from ..security.resolve import RunSecurity, from_summary, resolve
from .collect import finish, retry_cleanup
from .launch import DEFAULT_USER_MAP, Container, ContainerSpec, clean_env, launch, start_process
from ..state.recordcheck import OtherRoot, owned_pid, signal_owned
from ..state.records import Record, Store, alive

if TYPE_CHECKING:
    from ..drivers import Host

HostFactory = Callable[[str], "Host"]
FORWARDED = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP, signal.SIGQUIT, signal.SIGUSR1, signal.SIGUSR2)
EXIT_TIMEOUT = 124          # as timeout(1)


@dataclasses.dataclass(frozen=True)
class Overrides:
    """Command-line flags that override a group's container/launch blocks (None: keep)."""

    cpus: float | None = None
    memory_bytes: int | None = None
    pids: int | None = None
    hostname: str | None = None
    network: str | None = None
    rootfs: str | None = None
    layers: tuple[str, ...] = ()
    userns: bool = False
    init: bool = True
    env: tuple[tuple[str, str], ...] = ()
    auto_remove: bool = False
    security: RunSecurity = RunSecurity()


def _check_dir(path: str, what: str) -> str:
    if not os.path.isabs(path):
        path = os.path.abspath(path)
    if not os.path.isdir(path):
        raise LaunchError(f"{what} {path} does not exist or is not a directory")
    return path


def spec_for(policies: PolicySet, group: str, name: str | None, argv: list[str], o: Overrides,
             where: str = "in the policies", hint: str = "see `cgman validate`") -> ContainerSpec:
    """The container spec for ``group`` from its policy blocks plus the overrides. ``where`` and
    ``hint`` say, in the error for an unknown group, where the policies came from and what to do."""
    group = group.strip("/")
    g = policies.get(group)
    if g is None:
        known = ", ".join(x.path for x in policies.groups) or "none"
        raise NotFound(f"no group {group!r} {where} (known: {known}); {hint}")
    if not argv:
        raise LaunchError("no command given: put it after --, e.g. `cgman run --policy acme/web -- sleep 60`")
    name = name or f"{group.rsplit('/', 1)[-1]}-{os.urandom(3).hex()}"
    res = g.container or Resources()
    if o.cpus is not None:
        if o.cpus <= 0:
            raise LaunchError(f"--cpus must be above 0, not {o.cpus:g}")
        res = dataclasses.replace(res, cpu=dataclasses.replace(res.cpu, max_cpus=o.cpus))
    if o.memory_bytes is not None:
        res = dataclasses.replace(res, memory=dataclasses.replace(res.memory, max_bytes=o.memory_bytes))
    if o.pids is not None:
        res = dataclasses.replace(res, pids=dataclasses.replace(res.pids, max=o.pids if o.pids > 0 else UNLIMITED))
    ls = g.launch or LaunchSpec()
    ns = set(ls.namespaces)
    net = ls.network
    if o.network is not None:
        if o.network not in ("none", "loopback", "bridge"):
            raise LaunchError(f"--network must be none, loopback or bridge, not {o.network!r}")
        net = dataclasses.replace(net, mode=o.network)  # type: ignore[arg-type]
        ns.add("net")
    user_map = None
    if o.userns or "user" in ns:
        ns.add("user")
        user_map = (ls.user_map_uid or DEFAULT_USER_MAP[0],
                    ls.user_map_gid or ls.user_map_uid or DEFAULT_USER_MAP[1],
                    ls.user_map_count or DEFAULT_USER_MAP[2])
    rootfs = ls.rootfs
    if o.rootfs and o.layers:
        raise LaunchError("give --rootfs or --layer, not both")
    if o.rootfs:
        rootfs = RootfsSpec(path=o.rootfs)
    elif o.layers:
        rootfs = RootfsSpec(layers=o.layers)
    if rootfs is not None:
        rootfs = RootfsSpec(path=_check_dir(rootfs.path, "rootfs") if rootfs.path else None,
                            layers=tuple(_check_dir(p, "layer") for p in rootfs.layers))
        ns.add("mount")
    hostname = o.hostname or (ls.hostname or "{name}").replace("{name}", name)
    security = resolve(group, ls.security, o.security)
    if not security.privileged and not {"mount", "pid"} <= ns:
        raise LaunchError(f"group {group} launches without a mount or pid namespace, which its containers' "
                          f"protections need: add mount and pid to launch.namespaces")
    return ContainerSpec(name=name, group=group, tenant=g.tenant, argv=tuple(argv), resources=res,
                         formula=g.formula, namespaces=frozenset(ns), hostname=hostname[:64],
                         network=NetworkSpec(mode=net.mode, bridge=net.bridge, subnet=net.subnet),
                         rootfs=rootfs, user_map=user_map, env=o.env, init=o.init, auto_remove=o.auto_remove,
                         security=security)


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
    if rec.state != "running" or not owned_pid(rec.pid, rec.pid_start, store.root, rec.cgroup):
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


# ------------------------------------------------------------------------ ps, stop, rm, gc
def state_of(host: "Host | None", rec: Record) -> str:
    if rec.state == "exited":
        return "exited"
    if not owned_pid(rec.pid, rec.pid_start, rec.cgroup_root, rec.cgroup):
        if alive(rec.supervisor_pid, rec.supervisor_start):
            return "created" if rec.state == "created" else "exiting"    # its supervisor is on it
        return "dead"
    if host is not None:
        try:
            if host.is_frozen(rec.cgroup):
                return "frozen"
        except (CgmanError, OSError):
            pass
    return "running"


def ps(store: Store, hosts: HostFactory, all_: bool = False) -> list[dict[str, Any]]:
    """One row per container (running and frozen; with ``all_`` also exited)."""
    import psutil
    rows = []
    now = time.time()
    recs, bad = store.scan()
    for name, err in bad:        # shown, never acted on
        rows.append({"name": name, "id": "", "group": "-", "tenant": "-", "pid": None,
                     "state": "other-root" if isinstance(err, OtherRoot) else "invalid", "command": "",
                     "address": None, "exit_code": None, "uptime_s": None, "cpu_s": None,
                     "memory_bytes": None, "processes": None, "problem": str(err)})
    for rec in recs:
        host = hosts(rec.cgroup_root)
        st = state_of(host, rec)
        if st == "exited" and not all_:
            continue
        row: dict[str, Any] = {"name": rec.name, "id": rec.id[:12], "group": rec.group, "tenant": rec.tenant,
                               "pid": rec.pid, "state": st, "command": " ".join(rec.argv),
                               "address": rec.network.get("address"), "exit_code": rec.exit_code,
                               "uptime_s": None, "cpu_s": None, "memory_bytes": None, "processes": None}
        if st in ("running", "frozen"):
            try:
                assert rec.pid is not None
                p = psutil.Process(rec.pid)
                row["uptime_s"] = round(now - p.create_time(), 1)
                row["processes"] = 1 + len(p.children(recursive=True))
            except (psutil.Error, AssertionError):
                pass
            try:
                u = host.usage(rec.cgroup)
                row["cpu_s"] = None if u.cpu_usage_usec is None else u.cpu_usage_usec / 1e6
                row["memory_bytes"] = u.memory_bytes
            except CgmanError:
                pass
        elif rec.final_usage:
            cpu = rec.final_usage.get("cpu_usage_usec")
            row["cpu_s"] = None if cpu is None else cpu / 1e6
            row["memory_bytes"] = rec.final_usage.get("memory_bytes")
            if rec.started and rec.ended:
                row["uptime_s"] = round(rec.ended - rec.started, 3)
        rows.append(row)
    return rows


def _wait_gone(pid: int | None, start: int | None, timeout_s: float) -> bool:
    deadline = time.monotonic() + timeout_s
    while alive(pid, start):
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.01)
    return True


def _wait_recorded(store: Store, name: str, rec: Record, timeout_s: float) -> Record:
    """Give a live supervisor time to record its container's end."""
    deadline = time.monotonic() + timeout_s
    while rec.state != "exited" and alive(rec.supervisor_pid, rec.supervisor_start) \
            and time.monotonic() < deadline:
        time.sleep(0.01)
        if not store.exists(name):
            break
        rec = store.load(name)
    return rec


def stop(store: Store, hosts: HostFactory, name: str, grace_s: float = 10.0) -> Record:
    """SIGTERM the container's init (it forwards), SIGKILL the cgroup after ``grace_s``,
    then wait until its supervisor has recorded it (or collect it ourselves)."""
    rec = store.load(name)
    host = hosts(rec.cgroup_root)
    if rec.state == "exited":
        return rec
    if owned_pid(rec.pid, rec.pid_start, store.root, rec.cgroup):
        if not alive(rec.supervisor_pid, rec.supervisor_start):
            _sample_orphan(host, store, rec)
        if host.is_frozen(rec.cgroup):
            host.thaw(rec.cgroup)       # a frozen process cannot act on SIGTERM
        signal_owned(rec.pid, rec.pid_start, store.root, rec.cgroup, signal.SIGTERM)
        if not _wait_gone(rec.pid, rec.pid_start, grace_s) and host.exists(rec.cgroup):
            host.kill(rec.cgroup)
            _wait_gone(rec.pid, rec.pid_start, 5.0)
    deadline = time.monotonic() + 10.0
    while time.monotonic() < deadline:
        rec = store.load(name) if store.exists(name) else rec
        if rec.state == "exited" or not store.exists(name):
            return rec
        if not alive(rec.supervisor_pid, rec.supervisor_start):
            return finish(host, store, rec, None, "stopped; collected (its supervisor was gone)")
        time.sleep(0.01)
    raise Busy(f"container {name} stopped, but its supervisor (pid {rec.supervisor_pid}) has not recorded "
               f"it after 10s; try `cgman gc`")


def rm(store: Store, hosts: HostFactory, name: str, force: bool = False) -> None:
    """Remove an exited container's record (``force``: stop it first)."""
    rec = store.load(name)
    host = hosts(rec.cgroup_root)
    st = state_of(host, rec)
    if st in ("exiting", "created"):
        rec = _wait_recorded(store, name, rec, 10.0)
        st = state_of(host, rec)
    if st == "exiting" and not force:
        raise Busy(f"container {name} has exited but its supervisor (pid {rec.supervisor_pid}) is still "
                   f"recording it; try again in a moment")
    if st in ("running", "frozen", "created", "exiting"):
        if not force:
            raise Busy(f"container {name} is {st}: stop it first (`cgman stop {name}`) or use `cgman rm --force`")
        stop(store, hosts, name, grace_s=0)
    elif st == "dead":
        rec = finish(host, store, rec, None, "collected (its supervisor was gone)")
    if rec.cleanup_pending or rec.ledger_pending:
        rec = retry_cleanup(host, store, rec)
        if rec.cleanup_pending and not force:
            raise Busy(f"container {name}: cleanup is still incomplete ({rec.exit_reason}); fix the cause "
                       f"and run `cgman rm {name}` again (--force drops the record regardless)")
    if rec.ledger_pending and not force:
        raise Busy(f"container {name}: its usage is not in the ledger yet (see the warning when it exited); "
                   f"fix the ledger and run `cgman gc`, or `cgman rm --force {name}` to drop the usage")
    store.delete(name)


def rm_named(store: Store, hosts: HostFactory, name: str, force: bool = False) -> str | None:
    """`cgman rm NAME` where NAME is a container's: "removed" (``rm``), or with ``force``
    "invalid" for a record that is invalid or unreadable, dropped without acting on it. None
    when no container has that name (it names a group, then: ``rm_group``)."""
    if "/" in name or not store.exists(name):
        return None
    try:
        store.load(name)
    except NotFound:
        if store.exists(name):
            raise
        return None                   # removed meanwhile
    except CgmanError as e:
        if not force or isinstance(e, OtherRoot):   # another root's: rm it with that --cgroup-root
            raise
        store.delete(name)
        return "invalid"
    rm(store, hosts, name, force)
    return "removed"


def rm_group(host: "Host", path: str, force: bool = False) -> int:
    """Remove group ``path`` and every group below it, deepest first; how many went. Refused
    while processes run in them, unless ``force``: then they are killed first."""
    if host.procs(path, recursive=True):
        if not force:
            raise Busy(f"{path} has running processes: stop them, or use --force to kill them")
        host.kill(path)
    groups = host.walk(path)
    for cg in reversed(groups):
        host.remove(cg)
    return len(groups)


def gc(store: Store, hosts: HostFactory, on_collected: Callable[[str], None] | None = None,
       on_error: Callable[[str, Exception], None] | None = None) -> list[str]:
    """Collect containers whose waiter died: kill what is left, record final usage, free everything.

    ``on_collected(name)`` runs after each container is fully collected (the agent counts
    them). A container that cannot be collected now (a kill that fails, a busy lock) is left
    for the next gc and reported to ``on_error``; the others are still collected. Without
    ``on_error`` the first such error is raised after the pass.
    """
    collected: list[str] = []
    first: Exception | None = None
    with store.lock("gc"):
        recs, bad = store.scan()
        for name, err in bad:     # reported and left alone; another root's are that root's to collect
            if isinstance(err, OtherRoot):
                continue
            if on_error is None:
                first = first or err
            else:
                on_error(name, err)
        for rec in recs:
            try:
                if _collect_one(store, hosts, rec):
                    collected.append(rec.name)
                    if on_collected:
                        on_collected(rec.name)
            except (CgmanError, OSError) as e:
                if on_error is None:
                    first = first or e
                else:
                    on_error(rec.name, e)
        store.sweep_scratch()
    if first is not None:
        raise first
    return collected


def _collect_one(store: Store, hosts: HostFactory, rec: Record) -> bool:
    if rec.state == "exited" and (rec.cleanup_pending or rec.ledger_pending):
        rec = retry_cleanup(hosts(rec.cgroup_root), store, rec)
        if rec.cleanup_pending or rec.ledger_pending:
            return False
        if rec.auto_remove:
            store.delete(rec.name)
        return True
    if rec.state == "exited" or alive(rec.supervisor_pid, rec.supervisor_start):
        return False
    host = hosts(rec.cgroup_root)
    if owned_pid(rec.pid, rec.pid_start, store.root, rec.cgroup) and host.exists(rec.cgroup):
        _sample_orphan(host, store, rec)
        host.kill(rec.cgroup)
    finish(host, store, rec, None, "collected (its supervisor was gone)")
    return True


def _sample_orphan(host: "Host", store: Store, rec: Record) -> None:
    """A container whose supervisor died ran until now: a last memory sample, so that its
    collection bills it up to this moment (not only up to the dead supervisor's last sample)."""
    from ..accounting.usage import sample
    try:
        sample(host, store, rec)
    except CgmanError:
        pass


__all__ = ["Overrides", "spec_for", "run_foreground", "run_detached", "exec_in", "ps", "stop", "rm", "gc",
           "state_of"]
