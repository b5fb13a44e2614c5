"""`--compat cadvisor`: cAdvisor's ``container_*`` series for the values cgman already reads.

Dashboards built on cAdvisor (Grafana 893, 179, …) select containers with
``{name=~".+"}`` or ``{image!=""}`` and sum ``by (name)`` or ``by (id, name)``; so every
series carries cAdvisor's labels ``id`` (the cgroup path below the mount, as cAdvisor's
``id``), ``name`` (the container's name) and ``image`` (never empty: the rootfs, or
``host`` for a container on the host's file system), plus cgman's own as cAdvisor
spells a container's labels (``container_label_<key>``), which no dashboard groups by.

Names, types, units and help are cAdvisor's (lib/metrics/prometheus.go); what has no
source in cgman is listed in README.md (Metrics: cAdvisor names). Rendered in Python
from the values the scrape parsed (C or Python path), only when the option is on.
"""

from __future__ import annotations

import time
from typing import Any, Callable, NamedTuple

from ..model import DEFAULT_CPU_PERIOD_USEC

COMPAT = ("cadvisor",)


class Series(NamedTuple):
    name: str
    type: str
    help: str
    key: str               # value name (drivers/statfiles.py) or record field (see _record)
    micro: bool            # µs -> s
    extra: str = ""        # labels of its own, as cAdvisor: cpu="total"


# From the cgroup files read this scrape (drivers/statfiles.py value names).
KERNEL: tuple[Series, ...] = (
    Series("container_cpu_usage_seconds_total", "counter", "Cumulative cpu time consumed in seconds.",
           "cpu_usage_usec", True, 'cpu="total"'),
    Series("container_cpu_user_seconds_total", "counter", "Cumulative user cpu time consumed in seconds.",
           "cpu_user_usec", True),
    Series("container_cpu_system_seconds_total", "counter", "Cumulative system cpu time consumed in seconds.",
           "cpu_system_usec", True),
    Series("container_cpu_cfs_throttled_seconds_total", "counter",
           "Total time duration the container has been throttled.", "cpu_throttled_usec", True),
    Series("container_memory_usage_bytes", "gauge", "Current memory usage in bytes, including all memory "
           "regardless of when it was accessed", "memory_bytes", False),
    Series("container_memory_working_set_bytes", "gauge", "Current working set in bytes.",
           "memory_working_set_bytes", False),
    Series("container_memory_rss", "gauge", "Size of RSS in bytes.", "memory_rss_bytes", False),
    Series("container_memory_cache", "gauge", "Number of bytes of page cache memory.", "memory_cache_bytes", False),
    Series("container_oom_events_total", "counter", "Count of out of memory events observed for the container",
           "memory_oom_kills", False),
    Series("container_fs_reads_bytes_total", "counter", "Cumulative count of bytes read", "io_read_bytes", False),
    Series("container_fs_writes_bytes_total", "counter", "Cumulative count of bytes written", "io_write_bytes",
           False),
    Series("container_fs_reads_total", "counter", "Cumulative count of reads completed", "io_read_ops", False),
    Series("container_fs_writes_total", "counter", "Cumulative count of writes completed", "io_write_ops", False),
    Series("container_threads", "gauge", "Number of threads running inside the container", "pids", False),
    Series("container_pressure_cpu_waiting_seconds_total", "counter", "Total time duration tasks in the "
           "container have waited due to CPU congestion.", "psi_cpu_some_usec", True),
    Series("container_pressure_cpu_stalled_seconds_total", "counter", "Total time duration no tasks in the "
           "container could make progress due to CPU congestion.", "psi_cpu_full_usec", True),
    Series("container_pressure_memory_waiting_seconds_total", "counter", "Total time duration tasks in the "
           "container have waited due to memory congestion.", "psi_memory_some_usec", True),
    Series("container_pressure_memory_stalled_seconds_total", "counter", "Total time duration no tasks in the "
           "container could make progress due to memory congestion.", "psi_memory_full_usec", True),
    Series("container_pressure_io_waiting_seconds_total", "counter", "Total time duration tasks in the "
           "container have waited due to IO congestion.", "psi_io_some_usec", True),
    Series("container_pressure_io_stalled_seconds_total", "counter", "Total time duration no tasks in the "
           "container could make progress due to IO congestion.", "psi_io_full_usec", True),
)
KEYS = tuple(s.key for s in KERNEL)

# From the container's record (no kernel read).
RECORD: tuple[Series, ...] = (
    Series("container_last_seen", "gauge", "Last time a container was seen by the exporter", "last_seen", False),
    Series("container_start_time_seconds", "gauge", "Start time of the container since unix epoch in seconds.",
           "started", False),
    Series("container_memory_max_usage_bytes", "gauge", "Maximum memory usage recorded in bytes",
           "memory_peak_bytes", False),
    Series("container_spec_memory_limit_bytes", "gauge", "Memory limit for the container.", "memory_limit", False),
    Series("container_spec_cpu_period", "gauge", "CPU period of the container.", "cpu_period", False),
    Series("container_spec_cpu_quota", "gauge", "CPU quota of the container.", "cpu_quota", False),
    Series("container_threads_max", "gauge",
           "Maximum number of threads allowed inside the container, infinity if value is zero", "pids_max", False),
)
NAMES: tuple[str, ...] = tuple(s.name for s in KERNEL + RECORD)


def image(rootfs: Any) -> str:
    """cAdvisor's image label of a record's rootfs: its path, or its layers, or ``host``."""
    if isinstance(rootfs, dict):
        if isinstance(rootfs.get("path"), str) and rootfs["path"]:
            return str(rootfs["path"])
        layers = rootfs.get("layers")
        if isinstance(layers, list) and layers:
            return ":".join(str(x) for x in layers)
    return "host"


def nonneg_int(v: Any) -> int | None:
    return v if isinstance(v, int) and not isinstance(v, bool) and v >= 0 else None


def _esc(v: str) -> str:
    return v.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def labels(c: Any) -> str:
    """cAdvisor's labels of one container (Live), without the braces; sorted as client_golang does."""
    return (f'container_label_cgman_group="{_esc(c.group)}",container_label_cgman_tenant="{_esc(c.tenant)}",'
            f'id="{_esc(c.cgroup_path)}",image="{_esc(c.image)}",name="{_esc(c.name)}"')


def _record(c: Any, now: int) -> dict[str, int | float]:
    """The record's values, in cAdvisor's units (a limit of 0: unlimited, as cAdvisor)."""
    out: dict[str, int | float] = {"last_seen": now}
    if c.started is not None:
        out["started"] = int(c.started)
    if c.memory_peak_bytes is not None:
        out["memory_peak_bytes"] = c.memory_peak_bytes
    out["memory_limit"] = int(c.limits.get("memory_max_bytes", 0))
    out["pids_max"] = int(c.limits.get("pids_max", 0))
    cpus = c.limits.get("cpu_max_cpus")
    if cpus is not None:        # cAdvisor serves period and quota of a container with a quota
        period = c.cpu_period_usec or DEFAULT_CPU_PERIOD_USEC
        out["cpu_period"] = period
        out["cpu_quota"] = round(cpus * period)
    return out


def render(rows: list[tuple[Any, dict[str, int]]], micro: Callable[[int], str]) -> bytes:
    """The text exposition of every container in ``rows`` (Live, its parsed values; -1 or
    absent: not read). ``micro`` prints µs as exact seconds (collector._micro)."""
    now = int(time.time())
    lines: dict[str, list[str]] = {s.name: [] for s in KERNEL + RECORD}
    for c, vals in rows:
        L = labels(c)
        for s in KERNEL:
            v = vals.get(s.key)
            if v is None or v < 0:
                continue
            if s.key == "cpu_throttled_usec" and "cpu_max_cpus" not in c.limits:
                continue        # cAdvisor serves it only for a container with a CPU quota
            lab = f"{s.extra},{L}" if s.extra else L
            lines[s.name].append(f"{s.name}{{{lab}}} {micro(v) if s.micro else v}\n")
        rec = _record(c, now)
        for s in RECORD:
            if s.key in rec:
                lines[s.name].append(f"{s.name}{{{L}}} {rec[s.key]}\n")
    out: list[str] = []
    for s in KERNEL + RECORD:
        if lines[s.name]:
            out.append(f"# HELP {s.name} {s.help}\n# TYPE {s.name} {s.type}\n")
            out += lines[s.name]
    return "".join(out).encode()
