"""The `usage` command: the ledger, optionally priced, per tenant, group or container.

Thin: parse the options, read the ledger, call cgman.accounting.billing, render. The table rounds
money to 4 places; csv and json give billing's full precision (20 places at most,
trailing zeros dropped), in json as strings, so that no reader turns money into a float.
"""

from __future__ import annotations

import csv
import sys
from datetime import datetime
from decimal import ROUND_HALF_EVEN, Decimal, localcontext
from pathlib import Path
from typing import TYPE_CHECKING, Any, Optional

import typer

from .common import store
from .params import print_json, settings

if TYPE_CHECKING:
    from ..accounting.billing import Bill, Row
    from ..accounting.prices import PriceSheet
    from ..settings import Settings

FORMATS = ("table", "csv", "json")
TABLE_PLACES = 4
_HEADS = {"cpu": "CPU", "memory": "MEMORY", "io_read": "READ", "io_write": "WRITE", "container": "FEE"}


def usage(
    ctx: typer.Context,
    by: str = typer.Option("tenant", "--by", help="Group rows by tenant, group, container or (with "
                           "--ledger-url) node."),
    since: Optional[str] = typer.Option(None, "--since", help="Bill containers that ended at or after T: "
                                        "2024-05-01, 2024-05-01T12:00[+02:00] (no zone: local), epoch "
                                        "seconds, now, or an age such as 7d, 24h, 30m. [default: no start]",
                                        show_default=False),
    until: Optional[str] = typer.Option(None, "--until", help="... and before T (same forms). "
                                        "[default: no end]", show_default=False),
    prices: Optional[Path] = typer.Option(None, "--prices", help="Price sheet (YAML) to add costs; "
                                          "see prices/example.yaml."),
    fmt: Optional[str] = typer.Option(None, "--format", help="table (default), csv or json.",
                                      show_default=False),
    as_json: bool = typer.Option(False, "--json", help="Same as --format json."),
    ledger_url: Optional[str] = typer.Option(None, "--ledger-url", show_default=False, help="Bill the fleet: "
                                             "every node's rows in this PostgreSQL (postgresql://USER@HOST/DB, "
                                             "a cgman_billing role; docs/fleet.md) instead of this node's ledger."),
) -> None:
    """Usage and cost of finished containers per tenant, group or container, from the ledger.

    A container is billed in the period its end falls in: [--since, --until).
    Consecutive periods therefore bill each container exactly once.
    With --prices, cpu and memory are billed by usage, allocation or the max of both.
    Examples:

      cgman usage --since 2024-05-01 --prices prices/example.yaml

      cgman usage --by container --since 24h --format csv

      cgman usage --ledger-url postgresql://billing@db/cgman --by node --since 2024-05-01 --until 2024-06-01
    """
    s = settings(ctx)
    _check_by(by, ledger_url)
    out = _output_format(fmt, as_json)
    start, end = _period(since, until)
    sheet = None
    if prices is not None:
        from ..accounting.prices import load_prices
        sheet = load_prices(prices, s.input_limits.max_input_bytes)     # before any output: a bad sheet bills nothing
    result = _fleet_bill(ledger_url, sheet, by, start, end) if ledger_url else _local_bill(s, sheet, by, start, end)
    if out == "json":
        print_json(_as_json(result, sheet))
    elif out == "csv":
        _csv(result)
    else:
        _table(result, sheet)


def _check_by(by: str, ledger_url: Optional[str]) -> None:
    from ..accounting.billing import BY
    if by not in BY:
        raise typer.BadParameter(f"{by!r}: use {', '.join(BY[:-1])} or {BY[-1]}", param_hint="--by")
    if by == "node" and not ledger_url:
        raise typer.BadParameter("a node's own ledger holds one node: give --ledger-url to bill the fleet "
                                 "by node", param_hint="--by")


def _output_format(fmt: Optional[str], as_json: bool) -> str:
    if fmt is not None and fmt not in FORMATS:
        raise typer.BadParameter(f"{fmt!r}: use table, csv or json", param_hint="--format")
    if as_json and fmt not in (None, "json"):
        raise typer.BadParameter(f"--json asks for json, --format for {fmt}: give one", param_hint="--json")
    return "json" if as_json else fmt or "table"


def _period(since: Optional[str], until: Optional[str]) -> tuple[float | None, float | None]:
    """[--since, --until) as unix times (None: open), checked to be in order."""
    import time

    from ..accounting.billing import TIME_FORMS, parse_time
    now = time.time()
    bounds: list[float | None] = []
    for opt, text in (("--since", since), ("--until", until)):
        try:
            bounds.append(None if text is None else parse_time(text, now))
        except ValueError:
            raise typer.BadParameter(f"bad time {text!r}: use {TIME_FORMS}", param_hint=opt) from None
    start, end = bounds
    if start is not None and end is not None and start >= end:
        raise typer.BadParameter(f"--since ({_when(start)}) must be before --until ({_when(end)})",
                                 param_hint="--since")
    return start, end


def _local_bill(s: Settings, sheet: PriceSheet | None, by: str, start: float | None, end: float | None) -> Bill:
    """The bill from this node's ledger, in the state dir."""
    from ..accounting.billing import bill
    from ..accounting.ledger import Ledger, ledger_path
    path = ledger_path(store(s).state)
    with Ledger(path, readonly=True, busy_timeout_s=s.ledger_timeout_s) as ledger:
        entries = ledger.entries(start, end)
    return bill(entries, sheet, by, start, end, source=path)


def _fleet_bill(url: str, sheet: PriceSheet | None, by: str, start: float | None, end: float | None) -> Bill:
    """The same bill from the fleet ledger's rows, streamed from PostgreSQL."""
    from ..accounting.billing import bill
    from ..fleet.db import check, connect, describe, entries
    conn = connect(url, "usage")
    try:
        check(conn, url)
        return bill(entries(conn, url, start, end), sheet, by, start, end, source=describe(url))
    finally:
        conn.close()


# ------------------------------------------------------------------------------ rendering
def _round(d: Decimal, places: int) -> Decimal:
    with localcontext(prec=60):
        return d.quantize(Decimal(1).scaleb(-places), rounding=ROUND_HALF_EVEN)


def _exact(d: Decimal) -> str:
    """Full precision for machines (billing's 20 places at most), trailing zeros dropped."""
    with localcontext(prec=60):
        return format(d.normalize(), "f")


def _when(t: float | None, default: str | None = None) -> str | None:
    if t is None:
        return default
    return datetime.fromtimestamp(t).astimezone().isoformat()


def _entry_fields(r: Row) -> dict[str, Any]:
    e = r.entry
    if e is None:
        return {}
    node_name = getattr(e, "node", None)          # fleet.FleetEntry: rows from --ledger-url
    node = {"node": node_name} if isinstance(node_name, str) else {}
    return {"name": e.name, "tenant": e.tenant, "group": e.grp, **node, "started": _when(e.started),
            "ended": _when(e.ended), "exit_code": e.exit_code}


def _row_json(r: Row, priced: bool) -> dict[str, Any]:
    d: dict[str, Any] = {"key": r.key, **_entry_fields(r), "containers": r.containers,
                         "cpu_seconds": float(r.cpu_seconds),
                         "memory_byte_seconds": float(r.memory_byte_seconds),
                         "memory_gib_hours": float(r.memory_gib_hours),
                         "io_read_bytes": r.io_read_bytes, "io_write_bytes": r.io_write_bytes}
    if priced:
        d["billed"] = {"cpu_seconds": float(r.billed_cpu_seconds),
                       "memory_byte_seconds": float(r.billed_memory_byte_seconds)}
    if r.cost is not None:
        d["cost"] = {**{k: _exact(v) for k, v in r.cost.by_resource.items()}, "total": _exact(r.cost.total)}
    return d


def _as_json(b: Bill, sheet: PriceSheet | None) -> dict[str, Any]:
    priced = sheet is not None
    return {"by": b.by, "since": _when(b.since), "until": _when(b.until), "currency": b.currency,
            "prices": None if sheet is None else {
                "file": sheet.file,
                **{res: {"price": _exact(p.price), "per": p.per, "mode": p.mode} for res, p in sheet.prices.items()}},
            "rows": [_row_json(r, priced) for r in b.rows], "total": _row_json(b.total, priced)}


def _csv(b: Bill) -> None:
    w = csv.writer(sys.stdout, lineterminator="\n")
    fleet = any(isinstance(getattr(r.entry, "node", None), str) for r in b.rows)
    extra = ["name", "tenant", "group"] + (["node"] if fleet else []) if b.by == "container" else []
    priced = b.currency is not None
    w.writerow([b.by, *extra, "containers", "cpu_seconds", "memory_byte_seconds", "memory_gib_hours",
                "io_read_bytes", "io_write_bytes",
                *(["billed_cpu_seconds", "billed_memory_byte_seconds"] if priced else []),
                *[f"cost_{res}" for res in b.priced], *(["cost_total"] if priced else [])])
    for r in (*b.rows, b.total):
        e = r.entry
        keys = [e.name, e.tenant, e.grp] + ([getattr(e, "node", "")] if fleet else []) if e else [""] * len(extra)
        w.writerow([r.key, *keys, r.containers,
                    _exact(r.cpu_seconds), _exact(r.memory_byte_seconds), _exact(r.memory_gib_hours),
                    r.io_read_bytes, r.io_write_bytes,
                    *([_exact(r.billed_cpu_seconds), _exact(r.billed_memory_byte_seconds)] if priced else []),
                    *([_exact(r.cost.by_resource[res]) for res in b.priced] + [_exact(r.cost.total)]
                      if r.cost else [])])


def _cpu(s: Decimal) -> str:
    """CPU time: 12.34s, 5m07s, 3h02m."""
    sec = float(s)
    if sec < 60:
        return f"{sec:.2f}s"
    if sec < 3600:
        return f"{int(sec // 60)}m{int(sec % 60):02d}s"
    return f"{int(sec // 3600)}h{int(sec % 3600 // 60):02d}m"


def _byte_hours(bs: Decimal) -> str:
    """Memory over time in the largest binary unit-hour that keeps the number >= 1."""
    v = float(bs) / 3600
    for unit in ("B-h", "KiB-h", "MiB-h", "GiB-h"):
        if v < 1024 or unit == "GiB-h":
            return f"{v:.0f} {unit}" if unit == "B-h" else f"{v:.2f} {unit}"
        v /= 1024
    return f"{v:.2f} TiB-h"


def _table(b: Bill, sheet: PriceSheet | None) -> None:
    from ..units import format_bytes
    from ..accounting.prices import MODES
    typer.echo(f"period  {_when(b.since, 'start')} .. {_when(b.until, 'now')} (containers by end time)")
    if sheet is not None:
        terms = ", ".join(f"{res} {_exact(p.price)}/{p.per}" + (f" ({p.mode})" if len(MODES[res]) > 1 else "")
                          for res, p in sheet.prices.items())
        typer.echo(f"prices  {sheet.file}, in {sheet.currency}: {terms or 'none (everything is free)'}")
    typer.echo("")
    key_head = ["CONTAINER", "ID"] if b.by == "container" else [b.by.upper()]
    heads = [*key_head, "RUNS", "CPU", "MEMORY", "READ", "WRITE"]
    if sheet is not None:
        heads += [f"{_HEADS[res]} {b.currency}" for res in b.priced] + [f"TOTAL {b.currency}"]
    lines = []
    for r in (*b.rows, b.total):
        if r.entry is not None:
            keys = [r.entry.name, r.key[:12]]
        else:
            keys = [r.key] + ([""] if b.by == "container" else [])
        cells = [*keys, str(r.containers), _cpu(r.cpu_seconds), _byte_hours(r.memory_byte_seconds),
                 format_bytes(r.io_read_bytes), format_bytes(r.io_write_bytes)]
        if r.cost is not None:
            cells += [f"{_round(r.cost.by_resource[res], TABLE_PLACES)}" for res in b.priced]
            cells.append(f"{_round(r.cost.total, TABLE_PLACES)}")
        lines.append(cells)
    widths = [max(len(x) for x in col) for col in zip(heads, *lines, strict=True)]
    left = len(key_head)
    for cells in (heads, *lines):
        typer.echo("  ".join(c.ljust(w) if i < left else c.rjust(w)
                             for i, (c, w) in enumerate(zip(cells, widths, strict=True))).rstrip())
