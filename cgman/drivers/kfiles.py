"""How each kernel file reads back: deciding "already satisfied" and how to undo a write.

Reads do not echo writes: memory limits come back page-rounded and "max" reads
as 9223372036854771712 on v1; cpusets come back canonicalised; keyed files
(io.max, io.weight, blkio.throttle.*) hold one line per device. Pure functions.
"""

from __future__ import annotations

import os

from ..units import UnitError, parse_cpu_list
from . import formats as fmt

PAGE = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096
MEMORY_FILES = {"memory.limit_in_bytes", "memory.memsw.limit_in_bytes", "memory.soft_limit_in_bytes",
                "memory.max", "memory.high", "memory.low", "memory.min", "memory.swap.max"}
CPUSET_FILES = {"cpuset.cpus", "cpuset.mems"}
KEYED_FILES = {"io.max", "io.weight", "io.bfq.weight", "blkio.bfq.weight_device",
               "blkio.weight_device", "blkio.throttle.read_bps_device",
               "blkio.throttle.write_bps_device", "blkio.throttle.read_iops_device",
               "blkio.throttle.write_iops_device"}
SUBTREE = "cgroup.subtree_control"


def _mem(v: str) -> int | None:
    """Normalised bytes; None = unlimited."""
    n = fmt.limit(v)
    return None if n is None else n // PAGE * PAGE


def satisfied(file: str, desired: str, live: str) -> bool:
    """True when ``live`` (the file's current content) already means ``desired``."""
    try:
        if file in MEMORY_FILES:
            return _mem(desired) == _mem(live)
        if file in CPUSET_FILES:
            return parse_cpu_list(desired) == (parse_cpu_list(live) if live.strip() else frozenset())
    except (ValueError, UnitError):
        return False
    if file == SUBTREE:
        have = set(live.split())
        return all(tok[1:] in have for tok in desired.split() if tok.startswith("+"))
    if file in KEYED_FILES:
        key, _, want = desired.partition(" ")
        entries = fmt.flat_keyed(live)
        if file == "io.max":
            kv = fmt.sub_keys(entries.get(key, ""))
            return all(kv.get(k, "max") == v for k, v in fmt.sub_keys(want).items())
        if file.startswith("blkio.throttle.") and want == "0":
            return key not in entries          # 0 = no rule
        if file.startswith("blkio.throttle."):
            return entries.get(key) == want
        if file in ("io.weight", "io.bfq.weight", "blkio.bfq.weight_device", "blkio.weight_device"):
            if want == "default":
                return key not in entries
            return entries.get(key) == want
    if file == "cpu.max":
        return desired.split() == live.split()
    return live.strip() == desired.strip()


def undo_value(file: str, desired: str, live: str) -> str:
    """The value that restores ``live`` after ``desired`` was written."""
    if file == SUBTREE:
        have = set(live.split())
        return " ".join(f"-{tok[1:]}" for tok in reversed(desired.split())
                        if tok.startswith("+") and tok[1:] not in have)
    if file in KEYED_FILES:
        key, _, want = desired.partition(" ")
        entries = fmt.flat_keyed(live)
        old = entries.get(key)
        if file == "io.max":
            kv = fmt.sub_keys(old or "")
            return key + " " + " ".join(f"{k}={kv.get(k, 'max')}" for k in fmt.sub_keys(want))
        if file.startswith("blkio.throttle."):
            return f"{key} {old if old is not None else 0}"
        return f"{key} {old if old is not None else 'default'}"
    return live.strip()
