"""Collecting a container whose first process is gone: final usage into the ledger, then its
cgroup, veth, lease and scratch removed (exactly once, under the container's lock)."""

from __future__ import annotations

import errno
import time

from .. import lazylog
from ..drivers.cgfs import KeptWalks
from ..errors import Busy, CgmanError, CgroupIOError
from ..state.records import Record, Store

TYPE_CHECKING = False
if TYPE_CHECKING:
    from ..drivers import Host

log = lazylog.getLogger(__name__)   # logging only if a record is shown (lazylog.py)


def finish(host: "Host", store: Store, rec: Record, code: int | None, reason: str) -> Record:
    """Collect a container whose first process is gone: kill stragglers, read the final
    usage from the still-existing cgroup, then remove cgroup, veth, lease, scratch.

    Exactly once: under the container's lock, and a record already collected is returned
    as it is (a supervisor, `stop`, `rm` and `gc` may race here)."""
    with store.container_lock(rec.name):
        try:
            on_disk = store.load(rec.name)
        except CgmanError:
            on_disk = None
        if on_disk is not None and on_disk.id == rec.id and on_disk.state == "exited":
            return on_disk
        if on_disk is not None and on_disk.id != rec.id:
            return rec                    # the name now belongs to another container
        return _finish(host, store, rec, code, reason)


def _finish(host: "Host", store: Store, rec: Record, code: int | None, reason: str) -> Record:
    problems: list[str] = []
    try:
        collect_cgroup(host, store, rec, code, reason)
    except CgmanError as e:
        problems.append(str(e))
    _release_rest(store, rec, problems)
    rec.state = "exited"
    if rec.ended is None:
        rec.ended = time.time()
    rec.cleanup_pending = bool(problems)
    if problems:
        rec.exit_reason = f"{reason}; cleanup incomplete: {'; '.join(problems)}"
        log.warning("container %s: %s", rec.name, rec.exit_reason)
    if rec.auto_remove and not problems and not rec.ledger_pending:
        store.delete(rec.name)
    else:
        store.save(rec)
    return rec


def collect_cgroup(host: "Host", store: Store, rec: Record, code: int | None, reason: str) -> None:
    """The container's exit (``code``, ``reason``) into its record; then kill what is left in its
    cgroup, bill what ran there (final usage into the ledger) and remove the cgroup."""
    from ..accounting import usage as accounting
    leaf = rec.cgroup
    rec.exit_code, rec.exit_reason = code, reason
    with KeptWalks():             # the leaf is read in every hierarchy; nothing is removed in here
        if host.procs(leaf):
            host.kill(leaf)       # e.g. `cgman exec` processes outside the pid namespace
        if rec.started is not None:   # it ran: bill it
            if not (rec.ledger_pending and rec.final_usage):    # not read by an earlier attempt
                rec.final_usage = accounting.final_usage(host, rec, collected="collected" in reason)
            if rec.final_usage is not None:
                # Into the ledger before the cgroup goes, so that the exporter, which reads
                # live cgroups first and the ledger second, never misses this container.
                accounting.commit(store, rec)
                if rec.ledger_pending:
                    store.save(rec)   # the usage must outlive us before the cgroup goes
        present = host.exists(leaf)
    if present:
        _remove_cgroup(host, leaf)
    _release_scope(host, rec)


def _release_scope(host: "Host", rec: Record) -> None:
    """systemd driver: the payload is billed and gone; end the scope's keeper (scope.py)."""
    if rec.driver == "systemd":
        from .scope import release_scope
        release_scope(host, rec.cgroup)


def release_network(store: Store, rec: Record) -> None:
    """The container's veth and address lease, if it has (or was getting) one."""
    if rec.network.get("mode") == "bridge" and rec.network.get("address"):
        from . import network
        network.release(store, rec.network["bridge"], rec.id)


def _release_rest(store: Store, rec: Record, problems: list[str]) -> None:
    """Everything but the cgroup: the veth and address lease, the overlay scratch."""
    try:
        release_network(store, rec)
    except CgmanError as e:
        problems.append(str(e))
    store.delete_scratch(rec.name)


def retry_cleanup(host: "Host", store: Store, rec: Record) -> Record:
    """Again the cleanup steps of an exited container whose first cleanup failed (usage kept)."""
    with store.container_lock(rec.name):
        problems: list[str] = []
        try:
            if host.exists(rec.cgroup):
                if host.procs(rec.cgroup, recursive=True):
                    host.kill(rec.cgroup)
                _remove_cgroup(host, rec.cgroup)
            _release_scope(host, rec)
        except CgmanError as e:
            problems.append(str(e))
        _release_rest(store, rec, problems)
        if rec.ledger_pending:
            from ..accounting import usage as accounting
            accounting.commit(store, rec)
        rec.cleanup_pending = bool(problems)
        if not problems:
            rec.exit_reason = (rec.exit_reason or "").split("; cleanup incomplete")[0]
        store.save(rec)
        return rec


def _remove_cgroup(host: "Host", leaf: str) -> None:
    deadline = time.monotonic() + 2.0
    while True:
        try:
            host.remove(leaf)
            return
        except (Busy, CgroupIOError) as e:
            if host.children(leaf):       # the workload made groups of its own below its leaf
                host.kill(leaf)
                for cg in reversed(host.walk(leaf)[1:]):
                    host.remove(cg)
                continue
            # v1 may keep an exiting task listed for a moment after its parent reaped it.
            if getattr(e, "errno", errno.EBUSY) not in (errno.EBUSY, None) or time.monotonic() > deadline:
                raise
            time.sleep(0.005)
