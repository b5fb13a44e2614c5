"""Reading a group: its usage (statfiles.py's table) and its limits, as the kernel holds them.

``cgman status``, ``cgman ps``, the memory samples and the final usage of a bill all read
through here, with the same files and parsers as the exporter (status and ps open only the
files whose values they show), and every file is opened through the confined walk of cgfs.py.
"""

from __future__ import annotations


from ..errors import CgmanError, NotFound
from ..plan import Write
from . import formats as fmt
from .base import Usage
from .statfiles import StatFile, Values, files_for, finalize, memory_usage_file, stat_files

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

    from . import Host
    from .cgfs import CgroupTree


def _trees(host: "Host") -> dict[str, "CgroupTree"]:
    return {t.mount: t for d in host.drivers for t in d.hierarchies()}


def read_values(host: "Host", cgroup: str, files: list[StatFile]) -> Values | None:
    """The values of ``files`` for group ``cgroup``; None if none of them could be read (no
    such group). A file that is missing or unreadable is skipped, its values stay absent:
    a kernel without PSI, a v1 kernel older than oom_kill in memory.oom_control."""
    trees = _trees(host)
    by_mount: dict[str, list[StatFile]] = {}
    for f in files:
        by_mount.setdefault(f.mount, []).append(f)
    out: Values = {}
    seen = False
    for mount, group in by_mount.items():
        tree = trees.get(mount)
        if tree is None:
            continue
        try:
            texts = tree.read_files(cgroup, [f.file for f in group])
        except CgmanError:           # not in this hierarchy (or not any more)
            continue
        for f, text in zip(group, texts, strict=True):
            if text is None:
                continue
            seen = True
            try:
                f.parse(text, out)
            except (ValueError, KeyError, IndexError):
                continue
    return finalize(out) if seen else None


def read_stats(host: "Host", cgroup: str, *, final: bool = False, pressure: bool = True) -> Values | None:
    """Every usage value of one group, read now; None if the group does not exist.
    ``final`` adds the peak memory, read once when a container has exited."""
    return read_values(host, cgroup, stat_files(host.info, final=final, pressure=pressure))


# What `cgman status` shows of a group's usage (`cgman ps` shows the first two).
USAGE_VALUES = ("cpu_usage_usec", "memory_bytes", "pids", "frozen")


def usage(host: "Host", path: str, values: tuple[str, ...] = USAGE_VALUES) -> Usage:
    """The usage ``cgman status`` and ``cgman ps`` show, with a bill's files and parsers;
    only the files that hold ``values`` are read (the rest of the Usage is None)."""
    read = read_values(host, path, files_for(host.info, values))
    if read is None:
        raise NotFound(f"no group {path} under the cgman root {host.root}")
    frozen = read.get("frozen")
    return Usage(cpu_usage_usec=read.get("cpu_usage_usec"), memory_bytes=read.get("memory_bytes"),
                 pids=read.get("pids"), frozen=None if frozen is None else bool(frozen))


def memory_bytes(host: "Host", cgroup: str) -> int | None:
    """The group's charged memory now (a bill's memory sample); None if unreadable."""
    f = memory_usage_file(host.info)
    values = read_values(host, cgroup, [f]) if f is not None else None
    return None if values is None else values.get("memory_bytes")


# -------------------------------------------------------------------------- limits
def _read(host: "Host", path: str, controller: str, file: str) -> str | None:
    try:
        return host.read(Write(path, controller, file, "")).strip()
    except CgmanError:          # file or controller absent on this host
        return None


def _limit(text: str | None) -> int | str | None:
    """A limit as status shows it: bytes or a count, "max" for none, None if unreadable."""
    if text is None:
        return None
    n = fmt.limit(text)
    return "max" if n is None else n


def _cpus(quota_usec: int | None, period_usec: int) -> float | str:
    return "max" if quota_usec is None else round(quota_usec / period_usec, 3)


def live_limits(host: "Host", path: str) -> dict[str, Any]:
    """The main limits of ``path`` as read back from the kernel (None: not readable here):
    memory_max_bytes, cpu_max (CPUs), cpu_shares (v1) or cpu_weight (v2), pids_max;
    "max" where there is no limit."""
    version_of = host.layout.version_of
    out: dict[str, Any] = {}
    out["memory_max_bytes"] = _limit(_read(host, path, "memory", "memory.limit_in_bytes"
                                           if version_of("memory") == 1 else "memory.max"))
    if version_of("cpu") == 1:
        quota, period = _read(host, path, "cpu", "cpu.cfs_quota_us"), _read(host, path, "cpu", "cpu.cfs_period_us")
        out["cpu_max"] = None if quota is None or period is None else \
            _cpus(fmt.limit(quota), fmt.single_int(period))
        shares = _read(host, path, "cpu", "cpu.shares")
        out["cpu_shares"] = fmt.single_int(shares) if shares else None
    else:
        cm = _read(host, path, "cpu", "cpu.max")
        out["cpu_max"] = _cpus(*fmt.cpu_max(cm)) if cm else None
        weight = _read(host, path, "cpu", "cpu.weight")
        out["cpu_weight"] = fmt.single_int(weight) if weight else None
    out["pids_max"] = _limit(_read(host, path, "pids", "pids.max"))
    return out
