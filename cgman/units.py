"""Parsing of quantities (bytes), durations and CPU lists. Pure functions.

Quantities follow Kubernetes: plain integers are bytes, Ki Mi Gi Ti are binary,
k M G T decimal; ``max`` means unlimited.
"""

from __future__ import annotations

import math
import re

from .errors import shown
from .model import UNLIMITED, Unlimited

_BINARY = {"Ki": 1 << 10, "Mi": 1 << 20, "Gi": 1 << 30, "Ti": 1 << 40, "Pi": 1 << 50}
_DECIMAL = {"k": 10**3, "M": 10**6, "G": 10**9, "T": 10**12, "P": 10**15}
# ASCII only: \d, str.isdigit() and int() accept Arabic-Indic or fullwidth digits, which the
# kernel does not; a policy that validates must be written as the operator wrote it.
_QTY = re.compile(r"([0-9]{1,30}(?:\.[0-9]{1,30})?)[ \t]*([A-Za-z]*)")
_DUR = re.compile(r"([0-9]{1,30}(?:\.[0-9]{1,30})?)[ \t]*(us|µs|ms|s|m)")
_DUR_USEC = {"us": 1, "µs": 1, "ms": 1000, "s": 1_000_000, "m": 60_000_000}
_CPUS = re.compile(r"[-+]?[0-9]{1,30}(?:\.[0-9]{1,30})?")
# Leading and trailing newlines: the kernel's read-back ("0-3\n") goes through here too.
_CPULIST = re.compile(r"[ \t\n]*[0-9]{1,10}(-[0-9]{1,10})?([ \t]*,[ \t]*[0-9]{1,10}(-[0-9]{1,10})?)*[ \t\n]*")
MAX_CPU_ID = 8191        # the largest NR_CPUS (CONFIG_NR_CPUS_RANGE_END on x86_64 with MAXSMP)
#: The largest value a cgroup byte or count file holds (the kernel parses them as s64/u64;
#: a larger one is either refused or silently clamped to "max", which is not what was written).
MAX_QUANTITY = 2**63 - 1
#: A CPU bandwidth beyond any machine's CPU count (NR_CPUS).
MAX_CPUS = MAX_CPU_ID + 1


class UnitError(ValueError):
    """A value could not be parsed; the policy layer adds file/line/key."""


def parse_quantity(value: object) -> int | Unlimited:
    """Parse a byte quantity: 512, "512Mi", "2G", "max"."""
    if isinstance(value, bool):
        raise UnitError(f"expected a quantity like 512Mi, got {value!r}")
    if isinstance(value, int):
        if value < 0:
            raise UnitError(f"quantity must not be negative, got {shown(value)}")
        return _bounded(value, value)
    if not isinstance(value, str):
        raise UnitError(f"expected a quantity like 512Mi, got {shown(value)}")
    s = value.strip(" \t")
    if s == "max":
        return UNLIMITED
    m = _QTY.fullmatch(s)
    if not m:
        raise UnitError(f"bad quantity {shown(value)}: use bytes (ASCII digits) or a suffix "
                        f"Ki Mi Gi Ti / k M G T, or max")
    number, suffix = m.groups()
    if suffix == "":
        mult = 1
    elif suffix in _BINARY:
        mult = _BINARY[suffix]
    elif suffix in _DECIMAL:
        mult = _DECIMAL[suffix]
    else:
        raise UnitError(f"bad unit {shown(suffix)} in {shown(value)}: use Ki Mi Gi Ti (binary) or k M G T "
                        f"(decimal)")
    if "." in number:
        whole, frac = number.split(".")
        total = int(whole) * mult + (int(frac) * mult) // (10 ** len(frac))
    else:
        total = int(number) * mult
    return _bounded(total, value)


def _bounded(total: int, value: object) -> int:
    if total > MAX_QUANTITY:
        raise UnitError(f"quantity {shown(value)} is beyond the kernel's largest ({MAX_QUANTITY}); "
                        f"for no limit write max")
    return total


def parse_duration_usec(value: object) -> int:
    """Parse a duration such as "100ms", "1s", "250us" into microseconds."""
    if isinstance(value, bool) or not isinstance(value, str):
        raise UnitError(f"expected a duration like 100ms, got {shown(value)}")
    m = _DUR.fullmatch(value.strip(" \t"))
    if not m:
        raise UnitError(f"bad duration {shown(value)}: use a number with us, ms, s or m (e.g. 100ms)")
    number, unit = m.groups()
    from decimal import Decimal          # here: ~1 ms of every `cgman run`, which parses no duration
    usec = Decimal(number) * _DUR_USEC[unit]     # Decimal: 2.01ms is exactly 2010us
    if usec != usec.to_integral_value():
        raise UnitError(f"duration {shown(value)} is finer than a microsecond")
    return int(usec)


def parse_cpus(value: object) -> float | Unlimited:
    """Parse a CPU bandwidth in CPUs: 0.5, 2, "1.5" or "max"."""
    if isinstance(value, bool):
        raise UnitError(f"expected a number of CPUs or max, got {shown(value)}")
    if isinstance(value, str):
        s = value.strip(" \t")
        if s == "max":
            return UNLIMITED
        if not _CPUS.fullmatch(s):      # float() would take "١.٥", "1_0", "inf"
            raise UnitError(f"expected a number of CPUs (ASCII digits) or max, got {shown(value)}")
        value = float(s)
    if not isinstance(value, (int, float)):
        raise UnitError(f"expected a number of CPUs or max, got {shown(value)}")
    if isinstance(value, int) and value > MAX_CPUS:     # before float(): a huge int overflows it
        raise UnitError(f"{shown(value)} CPUs is more than any machine has (at most {MAX_CPUS})")
    if not math.isfinite(value) or value <= 0:
        raise UnitError(f"CPUs must be a positive finite number, got {shown(value)}")
    if value > MAX_CPUS:
        raise UnitError(f"{shown(value)} CPUs is more than any machine has (at most {MAX_CPUS})")
    return float(value)


def parse_cpu_list(value: object) -> frozenset[int]:
    """Parse a kernel cpu/mem list like "0-3,6" into a set of ints."""
    if isinstance(value, int) and not isinstance(value, bool):
        value = str(value)
    if not isinstance(value, str) or not _CPULIST.fullmatch(value):
        raise UnitError(f"bad cpu list {shown(value)}: use a kernel list like 0-3,6 (ASCII digits)")
    out: set[int] = set()
    for part in value.replace(" ", "").replace("\t", "").strip("\n").split(","):
        if "-" in part:
            lo, hi = (int(x) for x in part.split("-"))
            if hi < lo:
                raise UnitError(f"bad range {part!r} in cpu list {shown(value)}")
        else:
            lo = hi = int(part)
        if hi > MAX_CPU_ID:    # a typo like 0-1000000000 would build a set of 10^9 numbers
            raise UnitError(f"bad {'range' if '-' in part else 'number'} {part!r} in cpu list "
                            f"{shown(value)}: the kernel numbers CPUs and memory nodes below "
                            f"{MAX_CPU_ID + 1} (NR_CPUS)")
        out.update(range(lo, hi + 1))
    return frozenset(out)


def format_cpu_list(cpus: frozenset[int] | set[int]) -> str:
    """Render a set of ints as a canonical kernel list ("0-3,6")."""
    items = sorted(cpus)
    parts: list[str] = []
    i = 0
    while i < len(items):
        j = i
        while j + 1 < len(items) and items[j + 1] == items[j] + 1:
            j += 1
        parts.append(str(items[i]) if i == j else f"{items[i]}-{items[j]}")
        i = j + 1
    return ",".join(parts)


def format_bytes(n: int | Unlimited | None) -> str:
    """Human-readable binary size for status output."""
    if n is None:
        return "-"
    if isinstance(n, Unlimited):
        return "max"
    size = float(n)
    for unit in ("B", "Ki", "Mi", "Gi", "Ti"):
        if size < 1024 or unit == "Ti":
            return f"{size:.0f}{unit}" if unit == "B" else f"{size:.1f}{unit}"
        size /= 1024
    return f"{n}B"
