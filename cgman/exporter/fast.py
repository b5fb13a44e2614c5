"""The C scrape path (cgman/_fastread.c: read_parse + render) and its slot layout.

The slot and kind tables are written once, in C, and exported by name (``SLOTS``,
``KINDS``). Here slots are numbered by those names, each kind is paired with the
drivers/statfiles.py parser of the same name, and at import every name Python reads or
writes is checked against them, one by one. A C helper that is missing or does not
match (built from other sources) is not used: collector.py then parses with statfiles'
parsers, which the tests hold the C path to, and ``module()`` warns once, naming what
differs and that ``pip install -e .`` rebuilds it.
"""

from __future__ import annotations

import functools
import logging
import struct
from typing import Any, Sequence

from ..drivers import statfiles
from .cadvisor import KEYS as COMPAT_KEYS
from .metrics import CONTAINER, RECORD

log = logging.getLogger(__name__)

# The record's values, written by Python into each container's slots in this order.
RECORD_SLOTS = ("_info", "_start_usec", "_memory_byte_seconds", "_limit_ucpus", "_limit_memory_bytes",
                "_limit_pids")
# metrics.RECORD key -> (its slot, printed as millionths)
_RECORD_METRIC_SLOTS = {"": ("_info", False), "started": ("_start_usec", True),
                        "memory_byte_seconds": ("_memory_byte_seconds", False),
                        "cpu_max_cpus": ("_limit_ucpus", True), "memory_max_bytes": ("_limit_memory_bytes", False),
                        "pids_max": ("_limit_pids", False)}
# Parsers only Python runs: the peak memory is read once at a container's exit, never by a scrape.
PYTHON_ONLY = frozenset({"memory_peak"})


def mismatches(slots: Sequence[str], kinds: Sequence[str]) -> list[str]:
    """Where the C tables and what Python uses of them disagree, name by name (empty: none)."""
    out = []
    used = [m.key for m in CONTAINER] + list(COMPAT_KEYS) + ["_gone", "_errors"] + list(RECORD_SLOTS)
    out += [f"slot {name!r} is used by Python but not in the C SLOTS" for name in dict.fromkeys(used)
            if name not in slots]
    at = [slots.index(n) for n in RECORD_SLOTS if n in slots]
    if len(at) == len(RECORD_SLOTS) and at != list(range(at[0], at[0] + len(at))):
        out.append(f"the record slots must follow each other in the order {', '.join(RECORD_SLOTS)}; "
                   f"C has them at {at}")
    if not kinds or kinds[0] != "skip":
        out.append("C kind 0 must be 'skip'")
    out += [f"C kind {k!r} has no parser of that name in drivers/statfiles.py" for k in kinds[1:]
            if k not in statfiles.PARSERS]
    out += [f"parser {p!r} of drivers/statfiles.py has no C kind" for p in statfiles.PARSERS
            if p not in kinds and p not in PYTHON_ONLY]
    return out


def _load() -> tuple[Any, list[str]]:
    """The built C module (None: not built, the quiet slow path) and where it differs from
    this cgman (empty: it matches and is used)."""
    try:
        from .. import _fastread
    except ImportError:
        return None, []
    missing = [name for name in ("SLOTS", "KINDS") if not hasattr(_fastread, name)]
    if missing:
        return _fastread, [f"it exports no {'/'.join(missing)} table (built from older sources)"]
    return _fastread, mismatches(_fastread.SLOTS, _fastread.KINDS)


_BUILT, MISMATCHES = _load()
_C = _BUILT if not MISMATCHES else None
SLOTS: tuple[str, ...] = tuple(_C.SLOTS) if _C is not None else ()
SLOT = {name: i for i, name in enumerate(SLOTS)}
NSLOTS = len(SLOTS)
# statfiles parser -> the C kind's code (absent: K_SKIP, not read by the C path)
KIND: dict[statfiles.Parser, int] = {statfiles.PARSERS[name]: code for code, name in
                                     enumerate(_C.KINDS if _C is not None else ()) if name in statfiles.PARSERS}


def pack_record(values: dict[str, int]) -> bytes:
    """A record's values (by RECORD_SLOTS name, -1: absent) as the C side's int64 slots."""
    return struct.pack(f"{len(RECORD_SLOTS)}q", *(values[name] for name in RECORD_SLOTS))


def _header(name: str, help_: str, type_: str) -> bytes:
    return f"# HELP {name} {help_}\n# TYPE {name} {type_}\n".encode()


def _render_table() -> list[tuple[bytes, bytes, int, bool]]:
    """(header, name, slot, micro) for render(), in the order of metrics.py."""
    return ([(_header(m.name, m.help, m.type), m.name.encode(), SLOT[m.key], m.div == 1e6) for m in CONTAINER]
            + [(_header(m.name, m.help, m.type), m.name.encode(), SLOT[_RECORD_METRIC_SLOTS[m.key][0]],
                _RECORD_METRIC_SLOTS[m.key][1]) for m in RECORD])


RENDER = _render_table() if _C is not None and not MISMATCHES else []


def module() -> Any:
    """The C extension if it is built and matches this Python, else None (and, once per
    process, a warning that names what differs when it is built but does not match)."""
    if MISMATCHES:
        _warn_stale()
    return _C


@functools.cache
def _warn_stale() -> None:
    log.warning("not using cgman._fastread, it does not match this cgman: %s; the exporter parses in "
                "Python (slower) until it is rebuilt: pip install -e .", "; ".join(MISMATCHES))
