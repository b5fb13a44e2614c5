"""Parsing of quantities (bytes), durations and CPU lists. Pure functions.

Quantities follow Kubernetes: plain integers are bytes, Ki Mi Gi Ti are binary,
k M G T decimal; ``max`` means unlimited.
"""

from __future__ import annotations

import math
import re
from decimal import Decimal

from .model import UNLIMITED, Unlimited

_BINARY = {"Ki": 1 << 10, "Mi": 1 << 20, "Gi": 1 << 30, "Ti": 1 << 40, "Pi": 1 << 50}
_DECIMAL = {"k": 10**3, "M": 10**6, "G": 10**9, "T": 10**12, "P": 10**15}
_QTY = re.compile(r"^([0-9]+(?:\.[0-9]+)?)\s*([A-Za-z]*)$")
_DUR = re.compile(r"^([0-9]+(?:\.[0-9]+)?)\s*(us|µs|ms|s|m)$")
_DUR_USEC = {"us": 1, "µs": 1, "ms": 1000, "s": 1_000_000, "m": 60_000_000}
_CPULIST = re.compile(r"^\s*\d+(-\d+)?(\s*,\s*\d+(-\d+)?)*\s*$")
MAX_CPU_ID = 8191        # the largest NR_CPUS (CONFIG_NR_CPUS_RANGE_END on x86_64 with MAXSMP)


class UnitError(ValueError):
    """A value could not be parsed; the policy layer adds file/line/key."""


def parse_quantity(value: object) -> int | Unlimited:
    """Parse a byte quantity: 512, "512Mi", "2G", "max"."""
    if isinstance(value, bool):
        raise UnitError(f"expected a quantity like 512Mi, got {value!r}")
    if isinstance(value, int):
        if value < 0:
            raise UnitError(f"quantity must not be negative, got {value}")
        return value
    if not isinstance(value, str):
        raise UnitError(f"expected a quantity like 512Mi, got {value!r}")
    s = value.strip()
    if s == "max":
        return UNLIMITED
    m = _QTY.match(s)
    if not m:
        raise UnitError(f"bad quantity {value!r}: use bytes or a suffix Ki Mi Gi Ti / k M G T, or max")
    number, suffix = m.groups()
    if suffix == "":
        mult = 1
    elif suffix in _BINARY:
        mult = _BINARY[suffix]
    elif suffix in _DECIMAL:
        mult = _DECIMAL[suffix]
    else:
        raise UnitError(f"bad unit {suffix!r} in {value!r}: use Ki Mi Gi Ti (binary) or k M G T (decimal)")
    if "." in number:
        whole, frac = number.split(".")
        total = int(whole) * mult + (int(frac) * mult) // (10 ** len(frac))
    else:
        total = int(number) * mult
    return total


def parse_duration_usec(value: object) -> int:
    """Parse a duration such as "100ms", "1s", "250us" into microseconds."""
    if isinstance(value, bool) or not isinstance(value, str):
        raise UnitError(f"expected a duration like 100ms, got {value!r}")
    m = _DUR.match(value.strip())
    if not m:
        raise UnitError(f"bad duration {value!r}: use a number with us, ms, s or m (e.g. 100ms)")
    number, unit = m.groups()
    usec = Decimal(number) * _DUR_USEC[unit]     # Decimal: 2.01ms is exactly 2010us
    if usec != usec.to_integral_value():
        raise UnitError(f"duration {value!r} is finer than a microsecond")
    return int(usec)


def parse_cpus(value: object) -> float | Unlimited:
    """Parse a CPU bandwidth in CPUs: 0.5, 2, "1.5" or "max"."""
    if isinstance(value, bool):
        raise UnitError(f"expected a number of CPUs or max, got {value!r}")
    if isinstance(value, str):
        if value.strip() == "max":
            return UNLIMITED
        try:
            value = float(value)
        except ValueError:
            raise UnitError(f"expected a number of CPUs or max, got {value!r}") from None
    if not isinstance(value, (int, float)):
        raise UnitError(f"expected a number of CPUs or max, got {value!r}")
    if not math.isfinite(value) or value <= 0:
        raise UnitError(f"CPUs must be a positive finite number, got {value}")
    return float(value)


def parse_cpu_list(value: object) -> frozenset[int]:
    """Parse a kernel cpu/mem list like "0-3,6" into a set of ints."""
    if isinstance(value, int) and not isinstance(value, bool):
        value = str(value)
    if not isinstance(value, str) or not _CPULIST.match(value):
        raise UnitError(f"bad cpu list {value!r}: use a kernel list like 0-3,6")
    out: set[int] = set()
    for part in value.replace(" ", "").split(","):
        if "-" in part:
            lo, hi = (int(x) for x in part.split("-"))
            if hi < lo:
                raise UnitError(f"bad range {part!r} in cpu list {value!r}")
            if hi > MAX_CPU_ID:    # a typo like 0-1000000000 would build a set of 10^9 numbers
                raise UnitError(f"bad range {part!r} in cpu list {value!r}: the kernel numbers CPUs "
                                f"and memory nodes below {MAX_CPU_ID + 1} (NR_CPUS)")
            out.update(range(lo, hi + 1))
        else:
            out.add(int(part))
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
