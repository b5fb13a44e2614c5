"""Billing: usage and cost per tenant, group or container from ledger rows (SPEC §6). Pure: no I/O.

**Period rule.** A container is billed in the period its ``ended`` falls in, half-open:
``since <= ended < until``. Consecutive periods [a, b) and [b, c) therefore bill every
container exactly once, and a container that runs across a boundary is billed whole
in the period it ends, never split: its usage is only final, and in the ledger, once
it has exited.

**Modes** (per resource in the price sheet; ``allocation`` and ``max`` for cpu and memory):

- ``usage``: what the container used (CPU time from the kernel's counter, memory
  byte-seconds integrated from samples, bytes read and written).
- ``allocation``: the limit times the wall time, as Slurm bills. A container without a
  limit is charged the host capacity recorded in its row; a limit above that capacity
  is charged as the capacity, since the container could not have used more.
- ``max``: per container, max(allocation, usage), OpenCost's max(request, usage).
  Taken per container before summing, so one idle container cannot offset a busy one.

**Money** is ``decimal.Decimal``. Ledger ints convert exactly and floats through their
shortest text (repr), so 0.1 stays 0.1. Quantities are summed exactly in base units
(cpu-seconds, byte-seconds, bytes); the one inexact step, dividing by the price's unit
(an hour is 3600 s), is carried to 20 decimal places, once per row. From there on
money is fixed-point, so every sum is exact and independent of order: the total is the
sum of the rows, to the last digit. Rounding to what people read is the renderer's job.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field, replace
from datetime import datetime, timezone
from decimal import Decimal, localcontext
from typing import TYPE_CHECKING, Iterable

from ..errors import CgmanError, shown

if TYPE_CHECKING:     # for hints only: billing reads no file and needs neither yaml nor sqlite3
    from .prices import Price, PriceSheet
    from .ledger import Entry

BY = ("tenant", "group", "container", "node")     # node: the fleet ledger's rows only
PRECISION = 50           # significant digits while billing: room for 20 places after the point
PLACES = 20              # decimal places of every quotient (cost, GiB-hours)
_QUANTUM = Decimal(1).scaleb(-PLACES)
_USEC_PER_S = Decimal(10**6)
_GIB_HOUR = Decimal((1 << 30) * 3600)


@dataclass(frozen=True)
class Cost:
    """Cost per priced resource (absent: not on the price sheet) and their total."""

    by_resource: dict[str, Decimal]
    total: Decimal


@dataclass(frozen=True)
class Row:
    """Usage (and cost, when priced) of one tenant, group or container, or of all (the total).

    ``billed_*`` are the quantities the cpu and memory modes bill (usage when unpriced).
    For ``--by container`` the key is the container id and ``entry`` its ledger row.
    """

    key: str
    containers: int
    cpu_seconds: Decimal
    memory_byte_seconds: Decimal
    io_read_bytes: int
    io_write_bytes: int
    billed_cpu_seconds: Decimal
    billed_memory_byte_seconds: Decimal
    cost: Cost | None = None
    entry: Entry | None = None

    @property
    def memory_gib_hours(self) -> Decimal:
        return div(self.memory_byte_seconds, _GIB_HOUR)


@dataclass(frozen=True)
class Bill:
    """Rows of one ``cgman usage`` report and their total. ``currency`` is None when unpriced."""

    by: str
    since: float | None
    until: float | None
    currency: str | None
    priced: tuple[str, ...]
    rows: tuple[Row, ...]
    total: Row


# ------------------------------------------------------------------------------ ledger rows
# The ledger is a file on disk: anyone with write access (or a damaged disk) can put text in
# a number column, and SQLite's type affinity keeps it. Each row is checked before use, so a
# bad row gives one line naming it instead of a traceback from deep in the arithmetic.
_TEXT = ("id", "name", "tenant", "grp", "cgroup_root")
_OPT_TEXT = ("exit_reason", "node")     # node: only on the fleet ledger's rows (fleet.FleetEntry)
_COUNTS = ("cpu_usage_usec", "io_read_bytes", "io_write_bytes", "host_memory_bytes")
_OPT_COUNTS = ("cpu_user_usec", "cpu_system_usec", "memory_peak_bytes", "memory_limit_bytes")
_TIMES = ("started", "ended", "recorded")
_REALS = ("memory_byte_seconds", "host_cpus")
_OPT_REALS = ("cpu_limit_cpus",)
CHECKED_COLUMNS = frozenset(_TEXT + _OPT_TEXT + _COUNTS + _OPT_COUNTS + _TIMES + _REALS + _OPT_REALS
                            + ("exit_code",))
MAX_COUNT = 2**63 - 1          # SQLite's INTEGER
MAX_REAL = 1e24                # a TiB held for 30 000 years, in byte-seconds: beyond it is damage
MAX_EPOCH = 253402300799.0     # 9999-12-31T23:59:59Z: the last instant the reports can print


class BadLedgerRow(CgmanError):
    """A ledger row holds a value of the wrong type or out of range."""


def _want(col: str) -> tuple[tuple[type, ...], bool, float | None, str]:
    """(accepted types, None allowed, upper bound, what belongs) for one column."""
    if col in _TEXT or col in _OPT_TEXT:
        return (str,), col in _OPT_TEXT, None, "text"
    if col == "exit_code":
        return (int,), True, None, "an integer"
    if col in _COUNTS or col in _OPT_COUNTS:
        return (int,), col in _OPT_COUNTS, MAX_COUNT, "an integer >= 0"
    bound = MAX_EPOCH if col in _TIMES else MAX_REAL
    return (int, float), col in _OPT_REALS, bound, "a number >= 0"


def check_entry(e: Entry, source: str = "ledger") -> None:
    """Raise BadLedgerRow, naming the row and column, unless every column of ``e`` holds
    what billing needs (a column this module does not know is left alone)."""
    for col, (types, optional, bound, want) in _WANTS:
        v = getattr(e, col, None)
        if v is None and optional:
            continue
        ok = isinstance(v, types) and not isinstance(v, bool)
        if ok and bound is not None:
            ok = isinstance(v, (int, float)) and 0 <= v <= bound     # NaN fails too
        if not ok:
            row = shown(e.id) if isinstance(getattr(e, "id", None), str) else "?"
            raise BadLedgerRow(f"{source}: row for container {row}: column {col} holds {shown(v)}, "
                               f"where {want} belongs; the ledger was edited or damaged: correct or "
                               f"delete that row (sqlite3), or bill a period without it (--since/--until)")


_WANTS = tuple((col, _want(col)) for col in sorted(CHECKED_COLUMNS))     # once, not per row


def dec(x: int | float) -> Decimal:
    """A ledger number as a Decimal: ints exactly, floats through their shortest text."""
    return Decimal(x) if isinstance(x, int) else Decimal(repr(float(x)))


def div(a: Decimal, b: Decimal | int) -> Decimal:
    """a / b to PLACES decimal places (half even): the only rounding billing does."""
    with localcontext(prec=PRECISION):
        return (a / b).quantize(_QUANTUM)


def in_period(e: Entry, since: float | None, until: float | None) -> bool:
    """The period rule: ``since <= ended < until`` (either bound may be open)."""
    return (since is None or e.ended >= since) and (until is None or e.ended < until)


@dataclass(frozen=True)
class _Quantities:
    """One container's quantities in base units, and what each mode would bill."""

    cpu_usage_s: Decimal
    cpu_alloc_s: Decimal
    mem_usage_bs: Decimal
    mem_alloc_bs: Decimal


def _capped(limit: float | int | None, capacity: float | int) -> Decimal:
    if limit is None or (capacity > 0 and limit > capacity):
        return dec(capacity)
    return dec(limit)


def quantities(e: Entry) -> _Quantities:
    """Usage and allocation of one container (cpu-seconds, byte-seconds)."""
    wall = max(Decimal(0), dec(e.ended) - dec(e.started))
    return _Quantities(cpu_usage_s=Decimal(e.cpu_usage_usec) / _USEC_PER_S,
                       cpu_alloc_s=_capped(e.cpu_limit_cpus, e.host_cpus) * wall,
                       mem_usage_bs=dec(e.memory_byte_seconds),
                       mem_alloc_bs=_capped(e.memory_limit_bytes, e.host_memory_bytes) * wall)


def _billed(usage: Decimal, alloc: Decimal, p: Price | None) -> Decimal:
    mode = p.mode if p else "usage"
    return usage if mode == "usage" else alloc if mode == "allocation" else max(usage, alloc)


@dataclass
class _Acc:
    """One tenant's running sums while a bill is added up."""

    containers: int = 0
    cpu_s: Decimal = Decimal(0)
    mem_bs: Decimal = Decimal(0)
    io_r: int = 0
    io_w: int = 0
    cpu_billed_s: Decimal = Decimal(0)
    mem_billed_bs: Decimal = Decimal(0)
    entries: list[Entry] = field(default_factory=list)

    def add(self, e: Entry, q: _Quantities, cpu_billed: Decimal, mem_billed: Decimal) -> None:
        self.containers += 1
        self.cpu_s += q.cpu_usage_s
        self.mem_bs += q.mem_usage_bs
        self.io_r += e.io_read_bytes
        self.io_w += e.io_write_bytes
        self.cpu_billed_s += cpu_billed
        self.mem_billed_bs += mem_billed
        self.entries.append(e)

    def cost(self, sheet: PriceSheet) -> Cost:
        qty = {"cpu": self.cpu_billed_s, "memory": self.mem_billed_bs, "io_read": Decimal(self.io_r),
               "io_write": Decimal(self.io_w), "container": Decimal(self.containers)}
        costs = {res: div(p.price * qty[res], p.per_base) for res, p in sheet.prices.items()}
        return Cost(by_resource=costs, total=sum(costs.values(), Decimal(0)))

    def row(self, key: str, sheet: PriceSheet | None, entry: Entry | None = None) -> Row:
        return Row(key=key, containers=self.containers, cpu_seconds=self.cpu_s, memory_byte_seconds=self.mem_bs,
                   io_read_bytes=self.io_r, io_write_bytes=self.io_w, billed_cpu_seconds=self.cpu_billed_s,
                   billed_memory_byte_seconds=self.mem_billed_bs,
                   cost=self.cost(sheet) if sheet is not None else None, entry=entry)


def _key(e: Entry, by: str) -> str:
    if by == "node":
        return str(getattr(e, "node", None) or "")
    return e.tenant if by == "tenant" else e.grp if by == "group" else e.id


def bill(entries: Iterable[Entry], sheet: PriceSheet | None = None, by: str = "tenant",
         since: float | None = None, until: float | None = None, source: str = "ledger") -> Bill:
    """Group the entries that ended in [since, until) by ``by`` and price them with ``sheet``.

    Rows are ordered by key, containers by end time. The total's costs are the sums of the
    rows' costs, so a TOTAL line adds up exactly before rounding. Every entry is checked
    first (``check_entry``); ``source`` names the ledger in that error."""
    if by not in BY:
        raise ValueError(f"unknown grouping {by!r}: use {', '.join(BY)}")
    with localcontext(prec=PRECISION):
        groups: dict[str, _Acc] = {}
        everything = _Acc()
        cpu_price, mem_price = (sheet.get("cpu"), sheet.get("memory")) if sheet else (None, None)
        for e in entries:
            check_entry(e, source)
            if not in_period(e, since, until):
                continue
            q = quantities(e)          # once per container, added to its group and to the total
            cpu_billed = _billed(q.cpu_usage_s, q.cpu_alloc_s, cpu_price)
            mem_billed = _billed(q.mem_usage_bs, q.mem_alloc_bs, mem_price)
            groups.setdefault(_key(e, by), _Acc()).add(e, q, cpu_billed, mem_billed)
            everything.add(e, q, cpu_billed, mem_billed)
        if by == "container":
            order = sorted(groups, key=lambda k: (groups[k].entries[0].ended, k))
        else:
            order = sorted(groups)
        rows = tuple(groups[k].row(k, sheet, groups[k].entries[0] if by == "container" else None)
                     for k in order)
        total = everything.row("TOTAL", None)
        if sheet is not None:
            sums = {res: sum((r.cost.by_resource[res] for r in rows if r.cost), Decimal(0))
                    for res in sheet.prices}
            total = replace(total, cost=Cost(by_resource=sums, total=sum(sums.values(), Decimal(0))))
    return Bill(by=by, since=since, until=until, currency=sheet.currency if sheet else None,
                priced=tuple(sheet.prices) if sheet else (), rows=rows, total=total)


# ------------------------------------------------------------------------------ time
_AGO = re.compile(r"^([0-9]+(?:\.[0-9]+)?)\s*(s|m|h|d|w)$")
_AGO_S = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}
_EPOCH = re.compile(r"^[0-9]+(?:\.[0-9]+)?$")
TIME_FORMS = ("an ISO 8601 date or datetime (2024-05-01, 2024-05-01T12:00, 2024-05-01T12:00:00+02:00; "
              "without a zone: local time), epoch seconds (1714521600), now, or an age such as "
              "30m, 24h, 7d, 2w")


def parse_time(text: str, now: float) -> float:
    """A point in time as epoch seconds; ``now`` anchors `now` and ages. Raises ValueError."""
    t = _parse_time(text, now)
    try:
        datetime.fromtimestamp(t, timezone.utc)     # rendering must work too: years 1..9999
        datetime.fromtimestamp(t)
    except (OverflowError, OSError, ValueError):
        raise ValueError(f"time {text!r} is out of range (years 1..9999)") from None
    return t


def _parse_time(text: str, now: float) -> float:
    s = text.strip()
    if s == "now":
        return now
    m = _AGO.match(s)
    if m:
        return now - float(m.group(1)) * _AGO_S[m.group(2)]
    if _EPOCH.match(s):       # all digits: epoch seconds, never ISO's basic 20240501
        return float(s)
    try:
        dt = datetime.fromisoformat(s)
    except ValueError:
        raise ValueError(f"bad time {text!r}: use {TIME_FORMS}") from None
    try:
        return dt.timestamp()     # a naive datetime is local time
    except (OverflowError, OSError, ValueError):
        raise ValueError(f"time {text!r} is out of range (years 1..9999)") from None
