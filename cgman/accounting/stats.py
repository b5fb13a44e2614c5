"""Usage statistics of one cgroup, read from whichever hierarchy holds each controller.

``stat_files(info)`` says which kernel files to read on this host (v1, v2 or hybrid)
and how to parse each; ``parse_into`` turns one file's bytes into named values, and
``finalize`` derives the rest (working set). The exporter reads these files for
every live container on every scrape (keeping them open, see exporter/collector.py),
and ``read_stats`` reads them once for a container's final usage. Both share the
parsers, so the number a bill uses is the number a dashboard showed.

Values (all integers; None or absent: not available on this host):
  cpu_usage_usec, cpu_user_usec, cpu_system_usec, cpu_throttled_usec,
  memory_bytes, memory_inactive_file_bytes, memory_working_set_bytes, memory_oom_kills,
  memory_peak_bytes (final usage only), io_read_bytes, io_write_bytes, io_read_ops,
  io_write_ops, pids, frozen (0/1),
  psi_{cpu,memory,io}_{some,full}_usec (pressure stall time; "some" = waiting).

Kernel formats: Documentation/admin-guide/cgroup-v2.rst (cpu.stat, memory.stat,
memory.events, io.stat, *.pressure, cgroup.events) and cgroup-v1/ (cpuacct.usage in
ns, cpuacct.stat in USER_HZ ticks, cpu.stat throttled_time in ns, memory.stat
total_*, memory.oom_control oom_kill, blkio.throttle.io_service*_recursive).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable

if TYPE_CHECKING:
    from ..drivers.detect import HostInfo

Values = dict[str, int]
Parser = Callable[[bytes, Values], None]

_TICK_USEC = 1_000_000 // (os.sysconf("SC_CLK_TCK") or 100)


def _flat(data: bytes) -> dict[bytes, bytes]:
    t = data.split()
    return dict(zip(t[0::2], t[1::2], strict=False))


def _first_int(data: bytes) -> int:
    return int(data.split(None, 1)[0])


def _find_int(data: bytes, key: bytes) -> int | None:
    """Value of ``key`` in a 'key value' per line file (key at a line start)."""
    i = data.find(key)
    while i > 0 and data[i - 1] != 0x0A:
        i = data.find(key, i + 1)
    if i < 0:
        return None
    j = i + len(key)
    k = data.find(b"\n", j)
    return int(data[j:k if k >= 0 else None])


# ------------------------------------------------------------------------- parsers
def p_v2_cpu_stat(data: bytes, out: Values) -> None:
    kv = _flat(data)
    out["cpu_usage_usec"] = int(kv[b"usage_usec"])
    out["cpu_user_usec"] = int(kv[b"user_usec"])
    out["cpu_system_usec"] = int(kv[b"system_usec"])
    t = kv.get(b"throttled_usec")         # only where the cpu controller is enabled
    if t is not None:
        out["cpu_throttled_usec"] = int(t)


def p_v1_cpuacct_usage(data: bytes, out: Values) -> None:
    out["cpu_usage_usec"] = _first_int(data) // 1000


def p_v1_cpuacct_stat(data: bytes, out: Values) -> None:
    kv = _flat(data)
    out["cpu_user_usec"] = int(kv[b"user"]) * _TICK_USEC
    out["cpu_system_usec"] = int(kv[b"system"]) * _TICK_USEC


def p_v1_cpu_stat(data: bytes, out: Values) -> None:
    t = _find_int(data, b"throttled_time ")
    if t is not None:
        out["cpu_throttled_usec"] = t // 1000


def p_memory_bytes(data: bytes, out: Values) -> None:
    out["memory_bytes"] = _first_int(data)


def p_memory_peak(data: bytes, out: Values) -> None:
    out["memory_peak_bytes"] = _first_int(data)


def p_v1_memory_stat(data: bytes, out: Values) -> None:
    v = _find_int(data, b"total_inactive_file ")
    if v is not None:
        out["memory_inactive_file_bytes"] = v


def p_v2_memory_stat(data: bytes, out: Values) -> None:
    v = _find_int(data, b"inactive_file ")
    if v is not None:
        out["memory_inactive_file_bytes"] = v


def _memory_stat_rss(inactive: bytes, rss: bytes, cache: bytes) -> Parser:
    def parse(data: bytes, out: Values) -> None:
        for key, name in ((inactive, "memory_inactive_file_bytes"), (rss, "memory_rss_bytes"),
                          (cache, "memory_cache_bytes")):
            v = _find_int(data, key)
            if v is not None:
                out[name] = v
    return parse


# memory.stat with cAdvisor's RSS and cache too (--compat cadvisor): v1 total_rss/total_cache,
# v2 anon/file, as cAdvisor reads them.
p_v1_memory_stat_rss = _memory_stat_rss(b"total_inactive_file ", b"total_rss ", b"total_cache ")
p_v2_memory_stat_rss = _memory_stat_rss(b"inactive_file ", b"anon ", b"file ")
RSS_PARSERS: dict[Parser, Parser] = {p_v1_memory_stat: p_v1_memory_stat_rss, p_v2_memory_stat: p_v2_memory_stat_rss}


def p_oom_kills(data: bytes, out: Values) -> None:
    """v1 memory.oom_control and v2 memory.events both have an ``oom_kill N`` line."""
    v = _find_int(data, b"oom_kill ")
    if v is not None:
        out["memory_oom_kills"] = v


def _blkio(data: bytes, out: Values, what: str) -> None:
    r = w = 0
    for line in data.splitlines():
        parts = line.split()
        if len(parts) == 3:
            if parts[1] == b"Read":
                r += int(parts[2])
            elif parts[1] == b"Write":
                w += int(parts[2])
    out[f"io_read_{what}"] = r
    out[f"io_write_{what}"] = w


def p_v1_blkio_bytes(data: bytes, out: Values) -> None:
    _blkio(data, out, "bytes")


def p_v1_blkio_ops(data: bytes, out: Values) -> None:
    _blkio(data, out, "ops")


def p_v2_io_stat(data: bytes, out: Values) -> None:
    rb = wb = ro = wo = 0
    for tok in data.split():
        k, _, v = tok.partition(b"=")
        if k == b"rbytes":
            rb += int(v)
        elif k == b"wbytes":
            wb += int(v)
        elif k == b"rios":
            ro += int(v)
        elif k == b"wios":
            wo += int(v)
    out["io_read_bytes"], out["io_write_bytes"] = rb, wb
    out["io_read_ops"], out["io_write_ops"] = ro, wo


def p_pids(data: bytes, out: Values) -> None:
    out["pids"] = _first_int(data)


def p_v1_freezer(data: bytes, out: Values) -> None:
    out["frozen"] = 0 if data.startswith(b"THAWED") else 1     # FREEZING counts as frozen


def p_v2_events(data: bytes, out: Values) -> None:
    v = _find_int(data, b"frozen ")
    if v is not None:
        out["frozen"] = v


def _psi(kind: str) -> Parser:
    some_key, full_key = f"psi_{kind}_some_usec", f"psi_{kind}_full_usec"

    def parse(data: bytes, out: Values) -> None:
        i = data.find(b"total=")
        if i < 0:
            return
        j = data.find(b"\n", i)
        out[some_key] = int(data[i + 6:j if j >= 0 else None])
        i = data.find(b"total=", j) if j >= 0 else -1
        if i >= 0:
            j = data.find(b"\n", i)
            out[full_key] = int(data[i + 6:j if j >= 0 else None])
    parse.__name__ = f"p_psi_{kind}"
    return parse


p_psi_cpu, p_psi_memory, p_psi_io = _psi("cpu"), _psi("memory"), _psi("io")


def finalize(out: Values) -> Values:
    """Derived values: the working set is usage minus inactive file cache, as cAdvisor."""
    mem = out.get("memory_bytes")
    if mem is not None:
        out["memory_working_set_bytes"] = max(0, mem - out.pop("memory_inactive_file_bytes", 0))
    return out


# ------------------------------------------------------------------------ file plan
@dataclass(frozen=True)
class StatFile:
    """One kernel file to read: ``<mount>/<cgman root>/<cgroup>/<file>``."""

    mount: str
    file: str
    parse: Parser


def stat_files(info: "HostInfo", *, pressure: bool = True, final: bool = False) -> list[StatFile]:
    """What to read on this host. On hybrid hosts a container's leaf exists in every v1
    hierarchy and in the unified one; each value comes from the hierarchy that has it
    (the unified cpu.stat has usage/user/system in µs even with no controller enabled).
    ``final`` adds the peak memory (read once at exit, not on every scrape)."""
    v1 = info.v1_mounts
    u = info.unified
    files: list[StatFile] = []
    if u is not None:
        files.append(StatFile(u, "cpu.stat", p_v2_cpu_stat))
    elif "cpuacct" in v1:
        files += [StatFile(v1["cpuacct"], "cpuacct.usage", p_v1_cpuacct_usage),
                  StatFile(v1["cpuacct"], "cpuacct.stat", p_v1_cpuacct_stat)]
    if "cpu" in v1:
        files.append(StatFile(v1["cpu"], "cpu.stat", p_v1_cpu_stat))
    if "memory" in v1:
        m = v1["memory"]
        files += [StatFile(m, "memory.usage_in_bytes", p_memory_bytes),
                  StatFile(m, "memory.stat", p_v1_memory_stat),
                  StatFile(m, "memory.oom_control", p_oom_kills)]
        if final:
            files.append(StatFile(m, "memory.max_usage_in_bytes", p_memory_peak))
    elif u is not None and "memory" in info.unified_controllers:
        files += [StatFile(u, "memory.current", p_memory_bytes),
                  StatFile(u, "memory.stat", p_v2_memory_stat),
                  StatFile(u, "memory.events", p_oom_kills)]
        if final:
            files.append(StatFile(u, "memory.peak", p_memory_peak))
    if "io" in v1:
        b = v1["io"]
        files += [StatFile(b, "blkio.throttle.io_service_bytes_recursive", p_v1_blkio_bytes),
                  StatFile(b, "blkio.throttle.io_serviced_recursive", p_v1_blkio_ops)]
    elif u is not None and "io" in info.unified_controllers:
        files.append(StatFile(u, "io.stat", p_v2_io_stat))
    if "pids" in v1:
        files.append(StatFile(v1["pids"], "pids.current", p_pids))
    elif u is not None and "pids" in info.unified_controllers:
        files.append(StatFile(u, "pids.current", p_pids))
    if "freezer" in v1:
        files.append(StatFile(v1["freezer"], "freezer.state", p_v1_freezer))
    elif u is not None:
        files.append(StatFile(u, "cgroup.events", p_v2_events))
    if pressure and u is not None and os.path.exists(os.path.join(u, "cpu.pressure")):
        files += [StatFile(u, "cpu.pressure", p_psi_cpu), StatFile(u, "memory.pressure", p_psi_memory),
                  StatFile(u, "io.pressure", p_psi_io)]
    return files


def cgroup_dir(mount: str, root: str, cgroup: str) -> str:
    return os.path.join(mount, root.strip("/"), cgroup)


def read_stats(info: "HostInfo", root: str, cgroup: str, *, final: bool = False,
               pressure: bool = True) -> Values | None:
    """Every available value of one group, read now; None if the group does not exist.

    A file that is missing or unreadable is skipped (its values stay absent): a kernel
    without PSI, a v1 kernel older than oom_kill in memory.oom_control."""
    out: Values = {}
    seen = False
    for f in stat_files(info, final=final, pressure=pressure):
        path = os.path.join(cgroup_dir(f.mount, root, cgroup), f.file)
        try:
            fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        except FileNotFoundError:
            continue
        except OSError:
            continue
        try:
            data = os.read(fd, 65536)
        except OSError:
            continue
        finally:
            os.close(fd)
        seen = True
        try:
            f.parse(data, out)
        except (ValueError, KeyError, IndexError):
            continue
    return finalize(out) if seen else None
