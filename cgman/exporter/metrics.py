"""The metrics the exporter serves (SPEC §5): names, types, help, and where each value
comes from. Dashboards and tests import these lists rather than repeating names."""

from __future__ import annotations

from typing import NamedTuple

LABELS = ("container", "group", "tenant")


class Metric(NamedTuple):
    name: str
    type: str             # counter | gauge
    help: str
    key: str              # value name in drivers/statfiles.py (or a record field)
    div: float | None     # divide the raw value by this (µs -> s: 1e6); None: an integer as it is


# Per live container, from its cgroup (read on every scrape).
CONTAINER: tuple[Metric, ...] = (
    Metric("cgman_cpu_usage_seconds_total", "counter", "CPU time used by the container (user + system).",
           "cpu_usage_usec", 1e6),
    Metric("cgman_cpu_user_seconds_total", "counter", "CPU time used in user mode.", "cpu_user_usec", 1e6),
    Metric("cgman_cpu_system_seconds_total", "counter", "CPU time used in kernel mode.", "cpu_system_usec", 1e6),
    Metric("cgman_cpu_throttled_seconds_total", "counter",
           "Time the container was throttled by its CPU quota (cpu.max / cfs_quota_us).", "cpu_throttled_usec", 1e6),
    Metric("cgman_memory_usage_bytes", "gauge", "Memory charged to the container (memory.current / "
           "memory.usage_in_bytes), page cache included.", "memory_bytes", None),
    Metric("cgman_memory_working_set_bytes", "gauge",
           "Memory usage minus inactive file cache (as cAdvisor): what the container needs to keep.",
           "memory_working_set_bytes", None),
    Metric("cgman_memory_oom_kills_total", "counter", "Processes of the container killed by the OOM killer.",
           "memory_oom_kills", None),
    Metric("cgman_io_read_bytes_total", "counter", "Bytes read from block devices.", "io_read_bytes", None),
    Metric("cgman_io_write_bytes_total", "counter", "Bytes written to block devices.", "io_write_bytes", None),
    Metric("cgman_io_read_ops_total", "counter", "Read operations on block devices.", "io_read_ops", None),
    Metric("cgman_io_write_ops_total", "counter", "Write operations on block devices.", "io_write_ops", None),
    Metric("cgman_pids_current", "gauge", "Processes and threads in the container.", "pids", None),
    Metric("cgman_frozen", "gauge", "1 if the container is frozen (or freezing), else 0.", "frozen", None),
    Metric("cgman_pressure_cpu_waiting_seconds_total", "counter",
           "Time some of the container's tasks waited for CPU (PSI some).", "psi_cpu_some_usec", 1e6),
    Metric("cgman_pressure_cpu_stalled_seconds_total", "counter",
           "Time all of the container's tasks were stalled on CPU (PSI full).", "psi_cpu_full_usec", 1e6),
    Metric("cgman_pressure_memory_waiting_seconds_total", "counter",
           "Time some tasks waited for memory (PSI some).", "psi_memory_some_usec", 1e6),
    Metric("cgman_pressure_memory_stalled_seconds_total", "counter",
           "Time all tasks were stalled on memory (PSI full).", "psi_memory_full_usec", 1e6),
    Metric("cgman_pressure_io_waiting_seconds_total", "counter",
           "Time some tasks waited for IO (PSI some).", "psi_io_some_usec", 1e6),
    Metric("cgman_pressure_io_stalled_seconds_total", "counter",
           "Time all tasks were stalled on IO (PSI full).", "psi_io_full_usec", 1e6),
)

# Per live container, from its record (no kernel read).
RECORD: tuple[Metric, ...] = (
    Metric("cgman_container_info", "gauge", "1 for every live container; labels name it.", "", None),
    Metric("cgman_container_start_time_seconds", "gauge", "When the container started (Unix time).",
           "started", None),
    Metric("cgman_memory_byte_seconds_total", "counter",
           "Memory use integrated over time so far (sampled by the container's supervisor).",
           "memory_byte_seconds", None),
    Metric("cgman_limit_cpu_cpus", "gauge", "The container's CPU limit in CPUs (absent: unlimited).",
           "cpu_max_cpus", None),
    Metric("cgman_limit_memory_bytes", "gauge", "The container's memory limit (absent: unlimited).",
           "memory_max_bytes", None),
    Metric("cgman_limit_pids", "gauge", "The container's process limit (absent: unlimited).", "pids_max", None),
)

# Per tenant: the ledger (exited containers) plus live containers not yet in it.
TENANT: tuple[Metric, ...] = (
    Metric("cgman_tenant_cpu_seconds_total", "counter",
           "CPU time used by the tenant's containers, exited ones included.", "cpu_usage_usec", 1e6),
    Metric("cgman_tenant_memory_byte_seconds_total", "counter",
           "Memory byte-seconds of the tenant's containers, exited ones included.", "memory_byte_seconds", None),
    Metric("cgman_tenant_io_bytes_total", "counter",
           "Block IO bytes of the tenant's containers, exited ones included, by direction.", "io", None),
    Metric("cgman_tenant_containers_total", "counter", "Containers the tenant has started (live and exited).",
           "containers", None),
)

EXPORTER = ("cgman_exporter_scrape_duration_seconds", "cgman_exporter_containers",
            "cgman_exporter_read_errors_total", "cgman_exporter_ledger_up", "cgman_exporter_scrapes_total",
            "cgman_exporter_open_files", "cgman_exporter_connections_open",
            "cgman_exporter_connections_rejected_total", "cgman_exporter_requests_rejected_total")

ALL_NAMES: tuple[str, ...] = tuple(m.name for m in CONTAINER + RECORD + TENANT) + EXPORTER
