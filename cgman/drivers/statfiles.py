"""Which kernel file holds each usage value of a group, per hierarchy and version, and
how each of those files turns into named values.

``stat_files(info)`` lists the files to read on this host (v1, v2 or hybrid), each with
its parser; a parser adds the values of one file to a dict, and ``finalize`` derives the
rest (the working set). Every reader of usage goes through this table: ``cgman status``
and the bill (drivers/reads.py), the exporter's Python path, and the exporter's C path
(cgman/_fastread.c), whose kinds are this module's PARSERS by name and which the tests
hold to these parsers. So the number on a bill is the number a dashboard showed.

Values (all integers; absent: not available on this host):
  cpu_usage_usec, cpu_user_usec, cpu_system_usec, cpu_throttled_usec,
  memory_bytes, memory_inactive_file_bytes, memory_working_set_bytes, memory_oom_kills,
  memory_rss_bytes, memory_cache_bytes (--compat cadvisor only),
  memory_peak_bytes (final usage only), io_read_bytes, io_write_bytes, io_read_ops,
  io_write_ops, pids, frozen (0/1),
  psi_{cpu,memory,io}_{some,full}_usec (pressure stall time; "some" = waiting).

Kernel files: Documentation/admin-guide/cgroup-v2.rst (cpu.stat, memory.stat,
memory.events, io.stat, *.pressure, cgroup.events) and cgroup-v1/ (cpuacct.usage in
ns, cpuacct.stat in USER_HZ ticks, cpu.stat throttled_time in ns, memory.stat
total_*, memory.oom_control oom_kill, blkio.throttle.io_service*_recursive).
"""

from __future__ import annotations

import os
from dataclasses import dataclass

from . import formats as fmt

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Callable, Iterable

    from .detect import HostInfo

Values = dict[str, int]
if TYPE_CHECKING:
    Parser = Callable[[str, Values], None]

_TICK_USEC = 1_000_000 // (os.sysconf("SC_CLK_TCK") or 100)


# ------------------------------------------------------------------------- parsers
def p_v2_cpu_stat(text: str, out: Values) -> None:
    kv = fmt.flat_keyed(text)
    out["cpu_usage_usec"] = int(kv["usage_usec"])
    out["cpu_user_usec"] = int(kv["user_usec"])
    out["cpu_system_usec"] = int(kv["system_usec"])
    if "throttled_usec" in kv:             # only where the cpu controller is enabled
        out["cpu_throttled_usec"] = int(kv["throttled_usec"])


def p_v1_cpuacct_usage(text: str, out: Values) -> None:
    out["cpu_usage_usec"] = fmt.single_int(text) // 1000


def p_v1_cpuacct_stat(text: str, out: Values) -> None:
    kv = fmt.flat_keyed(text)
    out["cpu_user_usec"] = int(kv["user"]) * _TICK_USEC
    out["cpu_system_usec"] = int(kv["system"]) * _TICK_USEC


def p_v1_cpu_stat(text: str, out: Values) -> None:
    t = fmt.flat_keyed_int(text, "throttled_time")
    if t is not None:
        out["cpu_throttled_usec"] = t // 1000


def p_memory_bytes(text: str, out: Values) -> None:
    out["memory_bytes"] = fmt.single_int(text)


def p_memory_peak(text: str, out: Values) -> None:
    out["memory_peak_bytes"] = fmt.single_int(text)


def _keys_of(*pairs: tuple[str, str]) -> Parser:
    """A flat keyed file's parser that copies the given (key, value name) pairs."""
    def parse(text: str, out: Values) -> None:
        for key, name in pairs:
            v = fmt.flat_keyed_int(text, key)
            if v is not None:
                out[name] = v
    return parse


# memory.stat: the inactive file cache for the working set; with --compat cadvisor also the
# RSS and cache as cAdvisor reads them (v1 total_rss/total_cache, v2 anon/file).
p_v1_memory_stat = _keys_of(("total_inactive_file", "memory_inactive_file_bytes"))
p_v2_memory_stat = _keys_of(("inactive_file", "memory_inactive_file_bytes"))
p_v1_memory_stat_rss = _keys_of(("total_inactive_file", "memory_inactive_file_bytes"),
                                ("total_rss", "memory_rss_bytes"), ("total_cache", "memory_cache_bytes"))
p_v2_memory_stat_rss = _keys_of(("inactive_file", "memory_inactive_file_bytes"),
                                ("anon", "memory_rss_bytes"), ("file", "memory_cache_bytes"))
# v1 memory.oom_control and v2 memory.events both have an "oom_kill N" line.
p_oom_kills = _keys_of(("oom_kill", "memory_oom_kills"))
# v2 cgroup.events: "frozen 1" once the whole group is frozen.
p_v2_events = _keys_of(("frozen", "frozen"))
RSS_PARSERS: dict[Parser, Parser] = {p_v1_memory_stat: p_v1_memory_stat_rss, p_v2_memory_stat: p_v2_memory_stat_rss}


def p_v1_blkio_bytes(text: str, out: Values) -> None:
    out["io_read_bytes"], out["io_write_bytes"] = fmt.v1_blkio_totals(text)


def p_v1_blkio_ops(text: str, out: Values) -> None:
    out["io_read_ops"], out["io_write_ops"] = fmt.v1_blkio_totals(text)


def p_v2_io_stat(text: str, out: Values) -> None:
    rb = wb = ro = wo = 0
    for dev in fmt.nested_keyed(text).values():
        rb += int(dev.get("rbytes", 0))
        wb += int(dev.get("wbytes", 0))
        ro += int(dev.get("rios", 0))
        wo += int(dev.get("wios", 0))
    out["io_read_bytes"], out["io_write_bytes"] = rb, wb
    out["io_read_ops"], out["io_write_ops"] = ro, wo


def p_pids(text: str, out: Values) -> None:
    out["pids"] = fmt.single_int(text)


def p_v1_freezer(text: str, out: Values) -> None:
    out["frozen"] = int(fmt.v1_frozen(text))


def _psi(kind: str) -> Parser:
    some_key, full_key = f"psi_{kind}_some_usec", f"psi_{kind}_full_usec"

    def parse(text: str, out: Values) -> None:
        some = fmt.nested_keyed_int(text, "some", "total")
        if some is not None:
            out[some_key] = some
        full = fmt.nested_keyed_int(text, "full", "total")
        if full is not None:                       # cpu.pressure has no "full" before Linux 5.13
            out[full_key] = full
    return parse


p_psi_cpu, p_psi_memory, p_psi_io = _psi("cpu"), _psi("memory"), _psi("io")

# Every parser by name. The C reader (cgman/_fastread.c) names its kinds the same way;
# exporter/fast.py pairs them by these names and checks both sides at import.
PARSERS: dict[str, Parser] = {
    "v2_cpu_stat": p_v2_cpu_stat, "v1_cpuacct_usage": p_v1_cpuacct_usage, "v1_cpuacct_stat": p_v1_cpuacct_stat,
    "v1_cpu_stat": p_v1_cpu_stat, "memory_bytes": p_memory_bytes, "memory_peak": p_memory_peak,
    "v1_memory_stat": p_v1_memory_stat, "v2_memory_stat": p_v2_memory_stat, "oom_kills": p_oom_kills,
    "v1_blkio_bytes": p_v1_blkio_bytes, "v1_blkio_ops": p_v1_blkio_ops, "v2_io_stat": p_v2_io_stat,
    "pids": p_pids, "v1_freezer": p_v1_freezer, "v2_events": p_v2_events,
    "psi_cpu": p_psi_cpu, "psi_memory": p_psi_memory, "psi_io": p_psi_io,
    "v1_memory_stat_rss": p_v1_memory_stat_rss, "v2_memory_stat_rss": p_v2_memory_stat_rss,
}

_CPU = ("cpu_usage_usec", "cpu_user_usec", "cpu_system_usec")
_IO = ("io_read_bytes", "io_write_bytes", "io_read_ops", "io_write_ops")
# The values each parser can add (tests hold each parser to its line): a reader that shows a
# few values opens only the files whose parsers give them (``files_for``).
YIELDS: dict[Parser, frozenset[str]] = {p: frozenset(names) for p, names in (
    (p_v2_cpu_stat, (*_CPU, "cpu_throttled_usec")), (p_v1_cpuacct_usage, ("cpu_usage_usec",)),
    (p_v1_cpuacct_stat, _CPU[1:]), (p_v1_cpu_stat, ("cpu_throttled_usec",)), (p_memory_bytes, ("memory_bytes",)),
    (p_memory_peak, ("memory_peak_bytes",)), (p_v1_memory_stat, ("memory_inactive_file_bytes",)),
    (p_v2_memory_stat, ("memory_inactive_file_bytes",)), (p_oom_kills, ("memory_oom_kills",)),
    (p_v1_blkio_bytes, _IO[:2]), (p_v1_blkio_ops, _IO[2:]), (p_v2_io_stat, _IO), (p_pids, ("pids",)),
    (p_v1_freezer, ("frozen",)), (p_v2_events, ("frozen",)),
    *((p, (f"psi_{k}_some_usec", f"psi_{k}_full_usec")) for p, k in
      ((p_psi_cpu, "cpu"), (p_psi_memory, "memory"), (p_psi_io, "io"))),
    *((p, ("memory_inactive_file_bytes", "memory_rss_bytes", "memory_cache_bytes")) for p in RSS_PARSERS.values()))}
# Values finalize() derives, and the values they are derived from.
DERIVED = {"memory_working_set_bytes": frozenset({"memory_bytes", "memory_inactive_file_bytes"})}


def finalize(out: Values) -> Values:
    """Derived values: the working set is usage minus inactive file cache, as cAdvisor."""
    mem = out.get("memory_bytes")
    if mem is not None:
        out["memory_working_set_bytes"] = max(0, mem - out.pop("memory_inactive_file_bytes", 0))
    return out


# ------------------------------------------------------------------------ file table
@dataclass(frozen=True)
class StatFile:
    """One kernel file to read: ``file`` in the group's directory of the hierarchy at ``mount``."""

    mount: str
    file: str
    parse: Parser


def memory_usage_file(info: "HostInfo") -> StatFile | None:
    """The file of a group's charged memory (what the memory samples of a bill read)."""
    if "memory" in info.v1_mounts:
        return StatFile(info.v1_mounts["memory"], "memory.usage_in_bytes", p_memory_bytes)
    if info.unified is not None and "memory" in info.unified_controllers:
        return StatFile(info.unified, "memory.current", p_memory_bytes)
    return None


def _cpu_files(info: "HostInfo") -> list[StatFile]:
    # On hybrid hosts the unified cpu.stat has usage/user/system in µs even with no
    # controller enabled there: exact, where cpuacct.stat counts in ticks.
    v1, u = info.v1_mounts, info.unified
    files: list[StatFile] = []
    if u is not None:
        files.append(StatFile(u, "cpu.stat", p_v2_cpu_stat))
    elif "cpuacct" in v1:
        files += [StatFile(v1["cpuacct"], "cpuacct.usage", p_v1_cpuacct_usage),
                  StatFile(v1["cpuacct"], "cpuacct.stat", p_v1_cpuacct_stat)]
    if "cpu" in v1:
        files.append(StatFile(v1["cpu"], "cpu.stat", p_v1_cpu_stat))
    return files


def _memory_files(info: "HostInfo", final: bool) -> list[StatFile]:
    usage = memory_usage_file(info)
    if usage is None:
        return []
    v1 = "memory" in info.v1_mounts
    files = [usage, StatFile(usage.mount, "memory.stat", p_v1_memory_stat if v1 else p_v2_memory_stat),
             StatFile(usage.mount, "memory.oom_control" if v1 else "memory.events", p_oom_kills)]
    if final:
        files.append(StatFile(usage.mount, "memory.max_usage_in_bytes" if v1 else "memory.peak", p_memory_peak))
    return files


def _io_pids_freezer_files(info: "HostInfo") -> list[StatFile]:
    v1, u = info.v1_mounts, info.unified
    unified_has = info.unified_controllers if u is not None else frozenset()
    files: list[StatFile] = []
    if "io" in v1:
        files += [StatFile(v1["io"], "blkio.throttle.io_service_bytes_recursive", p_v1_blkio_bytes),
                  StatFile(v1["io"], "blkio.throttle.io_serviced_recursive", p_v1_blkio_ops)]
    elif u is not None and "io" in unified_has:
        files.append(StatFile(u, "io.stat", p_v2_io_stat))
    if "pids" in v1:
        files.append(StatFile(v1["pids"], "pids.current", p_pids))
    elif u is not None and "pids" in unified_has:
        files.append(StatFile(u, "pids.current", p_pids))
    if "freezer" in v1:
        files.append(StatFile(v1["freezer"], "freezer.state", p_v1_freezer))
    elif u is not None:
        files.append(StatFile(u, "cgroup.events", p_v2_events))
    return files


def stat_files(info: "HostInfo", *, pressure: bool = True, final: bool = False) -> list[StatFile]:
    """What to read on this host. On hybrid hosts a group exists in every v1 hierarchy and
    in the unified one; each value comes from the hierarchy that has it. ``final`` adds the
    peak memory (read once at exit, not on every scrape)."""
    files = _cpu_files(info) + _memory_files(info, final) + _io_pids_freezer_files(info)
    u = info.unified
    if pressure and u is not None and os.path.exists(os.path.join(u, "cpu.pressure")):
        files += [StatFile(u, "cpu.pressure", p_psi_cpu), StatFile(u, "memory.pressure", p_psi_memory),
                  StatFile(u, "io.pressure", p_psi_io)]
    return files


def files_for(info: "HostInfo", values: Iterable[str]) -> list[StatFile]:
    """The files of ``stat_files`` that hold any of ``values``, and only those: what a reader
    that shows a few values (``cgman status``, ``cgman ps``) opens."""
    want: set[str] = set()
    for v in values:
        want |= DERIVED.get(v, {v})
    pressure = any(v.startswith("psi_") for v in want)
    return [f for f in stat_files(info, pressure=pressure, final="memory_peak_bytes" in want)
            if YIELDS[f.parse] & want]
