"""The exporter's own health, rendered at each scrape from a private registry (server.py):
the process, the caller's (the agent's) metrics, and the HTTP server's bounds (conns.py)."""

from __future__ import annotations

import os
from typing import Any


class ProcessCollector:
    """The standard process_* metrics of prometheus_client's ProcessCollector, less
    process_open_fds: counting /proc/self/fd costs 10-25 ms here with the ~12,000 stat
    files a 1000-container exporter keeps open (cgman_exporter_open_files says how many)."""

    def collect(self) -> Any:
        from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
        try:
            with open("/proc/self/stat", "rb") as f:
                parts = f.read().rpartition(b")")[2].split()
            with open("/proc/stat", "rb") as f:
                btime = next(int(ln.split()[1]) for ln in f if ln.startswith(b"btime "))
        except (OSError, StopIteration, IndexError, ValueError):
            return
        ticks = os.sysconf("SC_CLK_TCK") or 100
        yield CounterMetricFamily("process_cpu_seconds", "Total user and system CPU time spent in seconds.",
                                  value=(int(parts[11]) + int(parts[12])) / ticks)
        yield GaugeMetricFamily("process_virtual_memory_bytes", "Virtual memory size in bytes.", value=int(parts[20]))
        yield GaugeMetricFamily("process_resident_memory_bytes", "Resident memory size in bytes.",
                                value=int(parts[21]) * os.sysconf("SC_PAGE_SIZE"))
        yield GaugeMetricFamily("process_start_time_seconds", "Start time of the process since unix epoch "
                                "in seconds.", value=btime + int(parts[19]) / ticks)
        import resource
        yield GaugeMetricFamily("process_max_fds", "Maximum number of open file descriptors.",
                                value=resource.getrlimit(resource.RLIMIT_NOFILE)[0])


class Health:
    """Plain (name, "counter"|"gauge", help, value) tuples from a caller outside this
    layer (the agent), rendered as metric families at each scrape."""

    def __init__(self, fn: Any) -> None:
        self.fn = fn

    def collect(self) -> Any:
        from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
        for name, kind, text, value in self.fn():
            cls = CounterMetricFamily if kind == "counter" else GaugeMetricFamily
            yield cls(name, text, value=value)


class ConnStats:
    """The HTTP server's bounds at work (conns.py): open connections and what was turned away."""

    def __init__(self, conns: Any) -> None:
        self.conns = conns

    def collect(self) -> Any:
        from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
        yield GaugeMetricFamily("cgman_exporter_connections_open", "HTTP connections open now "
                                "(at most --max-connections).", value=self.conns.open())
        c = CounterMetricFamily("cgman_exporter_connections_rejected", "HTTP connections closed by a bound: "
                                "max_connections (evicted or refused at --max-connections), header_timeout "
                                "(no whole request head within --header-timeout), header_too_large (414/431).",
                                labels=["reason"])
        for reason, n in sorted(self.conns.rejected.items()):
            c.add_metric([reason], n)
        yield c
        yield CounterMetricFamily("cgman_exporter_requests_rejected", "Requests answered 503 because "
                                  "--max-requests were already in flight.", value=self.conns.requests_rejected)
