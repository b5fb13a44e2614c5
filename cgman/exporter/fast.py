"""The C scrape path (cgman/_fastread.c: read_parse + render) and its slot layout.

collector.py uses it when the extension is built, and drivers/statfiles.py's parsers otherwise;
tests check that both give the same values for the same containers.
"""

from __future__ import annotations

from typing import Any

from ..drivers import statfiles
from .metrics import CONTAINER, RECORD

# Per-container int64 slots, in the order of the C enum (-1: absent).
SLOTS = ("cpu_usage_usec", "cpu_user_usec", "cpu_system_usec", "cpu_throttled_usec",
         "memory_bytes", "memory_working_set_bytes", "memory_inactive_file_bytes", "memory_oom_kills",
         "memory_rss_bytes", "memory_cache_bytes",
         "io_read_bytes", "io_write_bytes", "io_read_ops", "io_write_ops",
         "pids", "frozen",
         "psi_cpu_some_usec", "psi_cpu_full_usec", "psi_memory_some_usec", "psi_memory_full_usec",
         "psi_io_some_usec", "psi_io_full_usec",
         "_gone", "_errors",
         "_info", "_start_usec", "_memory_byte_seconds", "_limit_ucpus", "_limit_memory_bytes", "_limit_pids")
SLOT = {name: i for i, name in enumerate(SLOTS)}
NSLOTS = len(SLOTS)

# Parser -> the C enum's kind code (K_SKIP = 0: not read by the exporter).
KIND: dict[Any, int] = {
    statfiles.p_v2_cpu_stat: 1, statfiles.p_v1_cpuacct_usage: 2, statfiles.p_v1_cpuacct_stat: 3,
    statfiles.p_v1_cpu_stat: 4,
    statfiles.p_memory_bytes: 5, statfiles.p_v1_memory_stat: 6, statfiles.p_v2_memory_stat: 7, statfiles.p_oom_kills: 8,
    statfiles.p_v1_blkio_bytes: 9, statfiles.p_v1_blkio_ops: 10, statfiles.p_v2_io_stat: 11, statfiles.p_pids: 12,
    statfiles.p_v1_freezer: 13, statfiles.p_v2_events: 14, statfiles.p_psi_cpu: 15, statfiles.p_psi_memory: 16,
    statfiles.p_psi_io: 17, statfiles.p_v1_memory_stat_rss: 18, statfiles.p_v2_memory_stat_rss: 19,
}

_RECORD_SLOTS = {"": ("_info", False), "started": ("_start_usec", True),
                 "memory_byte_seconds": ("_memory_byte_seconds", False),
                 "cpu_max_cpus": ("_limit_ucpus", True), "memory_max_bytes": ("_limit_memory_bytes", False),
                 "pids_max": ("_limit_pids", False)}


def _header(name: str, help_: str, type_: str) -> bytes:
    return f"# HELP {name} {help_}\n# TYPE {name} {type_}\n".encode()


# (header, name, slot, micro) for render(), in the order of metrics.py.
RENDER: list[tuple[bytes, bytes, int, bool]] = (
    [(_header(m.name, m.help, m.type), m.name.encode(), SLOT[m.key], m.div == 1e6) for m in CONTAINER]
    + [(_header(m.name, m.help, m.type), m.name.encode(), SLOT[_RECORD_SLOTS[m.key][0]],
        _RECORD_SLOTS[m.key][1]) for m in RECORD])


def module() -> Any:
    """The C extension if it is built and has the scrape functions, else None."""
    try:
        from .. import _fastread
    except ImportError:
        return None
    if not hasattr(_fastread, "read_parse") or _fastread.NSLOTS != NSLOTS:
        return None
    return _fastread
