"""A container's usage for billing: memory sampling while it runs, and its final row
in the ledger when it is collected.

Whoever waits on a container (the foreground ``cgman run``, a detached container's
supervisor) samples its memory every ``CGMAN_SAMPLE_INTERVAL`` seconds (default 5)
and integrates byte-seconds with the trapezoid rule, from its start to its end; the
running integral lives in the container's record, so the exporter can show it and
a collector (``gc``) that takes over from a dead supervisor can finish it.

CPU is not sampled: the kernel's counter is cumulative and exact, and is read once
after the last process exited, before the cgroup is removed (SPEC §6).
"""

from __future__ import annotations

import os
import time

from .. import lazylog
from ..drivers import reads
from ..errors import CgmanError
from .ahead import close_ahead, for_commit
from .ledger import Entry, LedgerError, ledger_path

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

    from ..drivers import Host
    from ..state.records import Record, Store

log = lazylog.getLogger(__name__)   # logging only if a record is shown (lazylog.py)

DEFAULT_SAMPLE_INTERVAL_S = 5.0


def sample_interval_s(configured: float | None) -> float:
    """Seconds between memory samples: the configured CGMAN_SAMPLE_INTERVAL (settings.py;
    0 disables sampling), else the default."""
    return DEFAULT_SAMPLE_INTERVAL_S if configured is None else configured


def add_sample(rec: "Record", now: float, mem: int) -> None:
    """Integrate from the previous sample (or from the start, at zero) to ``now``."""
    if rec.memory_sampled_at is None:
        t0, m0 = (rec.started or now), 0
    else:
        t0, m0 = rec.memory_sampled_at, (rec.memory_sampled_bytes or 0)
    if now > t0:
        rec.memory_byte_seconds += (m0 + mem) / 2 * (now - t0)
    rec.memory_sampled_at, rec.memory_sampled_bytes = max(now, t0), mem
    rec.memory_peak_bytes = max(rec.memory_peak_bytes or 0, mem)


def sample(host: "Host", store: "Store", rec: "Record") -> None:
    """One memory sample of a running container, saved in its record."""
    close_ahead()            # a run this long commits on a connection of its own (ahead.py)
    mem = reads.memory_bytes(host, rec.cgroup)
    if mem is None:
        return
    add_sample(rec, time.time(), mem)
    try:
        store.save(rec)
    except OSError as e:      # the record is the exporter's view; the integral is also kept in memory
        log.warning("container %s: cannot save the memory sample: %s", rec.name, e)


def _host_capacity() -> tuple[float, int]:
    cpus = float(len(os.sched_getaffinity(0)))
    mem = 0
    try:
        with open("/proc/meminfo", "rb") as f:
            for line in f:
                if line.startswith(b"MemTotal:"):
                    mem = int(line.split()[1]) * 1024
                    break
    except OSError:
        pass
    return cpus, mem


def effective_limits(host: "Host", leaf: str) -> dict[str, Any]:
    """The tightest CPU and memory limits on the path from the cgman root to ``leaf``
    (None: unlimited) and the host's capacity, for allocation billing."""
    cpu: float | None = None
    mem: int | None = None
    parts = leaf.split("/")
    for i in range(len(parts), -1, -1):
        path = "/".join(parts[:i]) or "."
        try:
            lim = reads.live_limits(host, path)
        except CgmanError:
            continue
        c, m = lim.get("cpu_max"), lim.get("memory_max_bytes")
        if isinstance(c, (int, float)) and not isinstance(c, bool) and c > 0:
            cpu = c if cpu is None else min(cpu, c)
        if isinstance(m, int) and not isinstance(m, bool):        # "max": no limit
            mem = m if mem is None else min(mem, m)
    host_cpus, host_mem = _host_capacity()
    return {"cpu_limit_cpus": cpu, "memory_limit_bytes": mem,
            "host_cpus": host_cpus, "host_memory_bytes": host_mem}


def final_usage(host: "Host", rec: "Record", collected: bool) -> dict[str, Any] | None:
    """Read the leaf's final usage (its last process has exited) and close the memory
    integral. A collected container (its supervisor died) is integrated only up to
    its last sample: when it died between then and now is unknown."""
    values = reads.read_stats(host, rec.cgroup, final=True)
    if values is None:
        return None
    now = time.time()
    if collected:
        rec.ended = max(rec.memory_sampled_at or 0.0, rec.started or 0.0) or now
    else:
        rec.ended = now
        mem = values.get("memory_bytes")
        if mem is not None:
            add_sample(rec, now, mem)
    if rec.memory_peak_bytes is not None:
        values["memory_peak_bytes"] = max(values.get("memory_peak_bytes", 0), rec.memory_peak_bytes)
    out: dict[str, Any] = dict(values)
    out["memory_byte_seconds"] = rec.memory_byte_seconds
    out.update(effective_limits(host, rec.cgroup))
    return out


def entry_for(rec: "Record") -> Entry:
    """The ledger row of a collected container (pure: everything comes from the record)."""
    u = rec.final_usage or {}
    started = rec.started or rec.created
    return Entry(
        id=rec.id, name=rec.name, tenant=rec.tenant, grp=rec.group, cgroup_root=rec.cgroup_root,
        started=started, ended=max(rec.ended or started, started),
        exit_code=rec.exit_code, exit_reason=rec.exit_reason,
        cpu_usage_usec=int(u.get("cpu_usage_usec") or 0),
        cpu_user_usec=u.get("cpu_user_usec"), cpu_system_usec=u.get("cpu_system_usec"),
        memory_byte_seconds=float(u.get("memory_byte_seconds") or 0.0),
        memory_peak_bytes=u.get("memory_peak_bytes"),
        io_read_bytes=int(u.get("io_read_bytes") or 0), io_write_bytes=int(u.get("io_write_bytes") or 0),
        cpu_limit_cpus=u.get("cpu_limit_cpus"), memory_limit_bytes=u.get("memory_limit_bytes"),
        host_cpus=float(u.get("host_cpus") or 0.0), host_memory_bytes=int(u.get("host_memory_bytes") or 0))


def commit(store: "Store", rec: "Record") -> bool:
    """Write ``rec``'s row to the ledger. On failure the row waits in the record
    (``ledger_pending``) for ``cgman gc``; returns whether it is in the ledger now."""
    if rec.final_usage is None:
        rec.ledger_pending = False
        return False
    try:
        with for_commit(ledger_path(store.state), store.settings.ledger_timeout_s) as led:
            if not led.record(entry_for(rec)):
                log.info("container %s (%s) was already in the ledger", rec.name, rec.id)
        rec.ledger_pending = False
        return True
    except LedgerError as e:
        rec.ledger_pending = True
        log.warning("container %s: usage not yet in the ledger (kept in its record for `cgman gc`): %s",
                    rec.name, e)
        return False
