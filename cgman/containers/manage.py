"""Containers on record, as the CLI and the agent handle them: ps, stop, rm, and gc (collecting
containers whose waiter died: kill what is left, bill it, free everything it held)."""

from __future__ import annotations

import signal
import time

from ..errors import Busy, CgmanError, NotFound
from ..state.recordcheck import OtherRoot, owned_pid, signal_owned
from ..state.records import Record, Store, alive
from .collect import finish, retry_cleanup

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any, Callable

    from ..drivers import Host
    HostFactory = Callable[[str], Host]

# The usage `cgman ps` shows: only the files that hold these are read.
PS_VALUES = ("cpu_usage_usec", "memory_bytes")


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
                u = host.usage(rec.cgroup, PS_VALUES)
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
    if owned_pid(rec.pid, rec.pid_start, rec.cgroup_root, rec.cgroup):
        if not alive(rec.supervisor_pid, rec.supervisor_start):
            _sample_orphan(host, store, rec)
        if host.is_frozen(rec.cgroup):
            host.thaw(rec.cgroup)       # a frozen process cannot act on SIGTERM
        signal_owned(rec.pid, rec.pid_start, rec.cgroup_root, rec.cgroup, signal.SIGTERM)
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


def gc_name(store: Store, hosts: HostFactory, name: str) -> bool:
    """``gc`` of one container: a run served by the agent (which collects every interval, not
    before each run) frees the name it asks for if a dead supervisor's container holds it."""
    with store.lock("gc"):
        try:
            rec = store.load(name)
        except CgmanError:
            return False
        return _collect_one(store, hosts, rec)


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
    if owned_pid(rec.pid, rec.pid_start, rec.cgroup_root, rec.cgroup) and host.exists(rec.cgroup):
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
