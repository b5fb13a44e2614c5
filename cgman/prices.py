"""Price sheets: YAML -> PriceSheet, with file:line:column: key on every error (SPEC §6).

::

    version: 1
    currency: EUR                 # a label only (default USD)
    prices:                       # every resource optional; one left out costs nothing
      cpu:       {price: 0.031, per: cpu-hour, mode: usage}
      memory:    {price: 0.004, per: GiB-hour, mode: max}
      io_read:   {price: 0.01, per: GiB}
      io_write:  {price: 0.02, per: GiB}
      container: {price: 0.0001}  # a flat fee per container run

The sheet is walked as a composed node tree with the policy loader's walker, so a
price sheet reports positions and duplicate keys exactly as policy files do. A
sheet with any error raises and so bills nothing. Prices become ``Decimal`` through
the shortest text of the parsed number (0.1 is exactly 0.1).
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path
from typing import Any

import yaml

from .errors import PolicyError
from .policy import _join, _Walker, compose

GIB = 1 << 30
MIB = 1 << 20
GB = 10**9
HOUR_S = 3600

#: Per resource: its base quantity, and how many base units one priced unit is.
#: cpu is billed in cpu-seconds, memory in byte-seconds, io in bytes, container in runs.
UNITS: dict[str, dict[str, int]] = {
    "cpu": {"cpu-hour": HOUR_S, "cpu-second": 1},
    "memory": {"GiB-hour": GIB * HOUR_S, "GB-hour": GB * HOUR_S, "MiB-hour": MIB * HOUR_S,
               "GiB-second": GIB},
    "io_read": {"GiB": GIB, "GB": GB, "MiB": MIB},
    "io_write": {"GiB": GIB, "GB": GB, "MiB": MIB},
    "container": {"container": 1},
}
#: Allocation needs a limit, which only cpu and memory have.
MODES: dict[str, tuple[str, ...]] = {
    "cpu": ("usage", "allocation", "max"),
    "memory": ("usage", "allocation", "max"),
    "io_read": ("usage",),
    "io_write": ("usage",),
    "container": ("usage",),
}
RESOURCES = tuple(UNITS)
DEFAULT_CURRENCY = "USD"
_TOP_KEYS = ("version", "currency", "prices")
_PRICE_KEYS = ("price", "per", "mode")
_EXPONENT = re.compile(r"[-+]?(?:[0-9]+\.?[0-9]*|\.[0-9]+)[eE][-+]?[0-9]+")


@dataclass(frozen=True)
class Price:
    """The price of one resource: ``price`` currency units per ``per`` (``per_base`` base units)."""

    resource: str
    price: Decimal
    per: str
    per_base: int
    mode: str = "usage"


@dataclass(frozen=True)
class PriceSheet:
    """A validated price sheet; ``prices`` holds only the resources it prices."""

    file: str
    currency: str
    prices: dict[str, Price]

    def get(self, resource: str) -> Price | None:
        return self.prices.get(resource)


def load_prices(path: str | Path) -> PriceSheet:
    """Read and validate the price sheet at ``path``; raises PolicyError naming file:line:column."""
    file = str(path)
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as e:
        raise PolicyError(f"cannot read price sheet: {e.strerror}", file) from None
    except UnicodeDecodeError as e:
        raise PolicyError(f"price sheet is not UTF-8 text ({e.reason} at byte {e.start})", file) from None
    return parse_prices(text, file)


def parse_prices(text: str, file: str = "<input>") -> PriceSheet:
    """Validate one price sheet document; raises PolicyError naming file:line:column: key."""
    w = _Walker(file)
    root = compose(text, file, "empty price sheet: expected 'version: 1' and 'prices:'")
    top = _mapping(w, root, "", _TOP_KEYS)
    for required in ("version", "prices"):
        if required not in top:
            raise w.fail(root, required, "required key is missing")
    vnode = top["version"][1]
    version = _value(w, vnode, "version")
    if isinstance(version, bool) or not isinstance(version, int) or version != 1:
        raise w.fail(vnode, "version", "unsupported version: this cgman reads version 1")
    currency = DEFAULT_CURRENCY
    if "currency" in top:
        cnode = top["currency"][1]
        c = _value(w, cnode, "currency")
        if not isinstance(c, str) or not c.strip() or len(c) > 16 or not c.isprintable():
            raise w.fail(cnode, "currency", "expected a short label such as USD or EUR (1-16 characters)")
        currency = c.strip()
    pnode = top["prices"][1]
    if isinstance(pnode, yaml.ScalarNode) and pnode.tag == "tag:yaml.org,2002:null":
        entries: dict[str, tuple[yaml.Node, yaml.Node]] = {}
    else:
        entries = _mapping(w, pnode, "prices", RESOURCES)
    prices = {res: _price(w, vn, _join("prices", res), res) for res, (_, vn) in entries.items()}
    return PriceSheet(file=file, currency=currency, prices=prices)


def _mapping(w: _Walker, node: yaml.Node, key: str,
             allowed: tuple[str, ...]) -> dict[str, tuple[yaml.Node, yaml.Node]]:
    """The keys of a mapping node (duplicates refused by the walker), each one of ``allowed``."""
    out = {}
    for k, knode, vnode in w.items(node, key):
        if k not in allowed:
            raise w.fail(knode, _join(key, k), f"unknown key; expected one of: {', '.join(allowed)}")
        out[k] = (knode, vnode)
    return out


def _value(w: _Walker, node: yaml.Node, key: str) -> Any:
    try:
        return w.scalar(node)
    except (ValueError, yaml.YAMLError) as e:
        raise w.fail(node, key, str(e)) from None


def _price(w: _Walker, node: yaml.Node, key: str, resource: str) -> Price:
    fields = _mapping(w, node, key, _PRICE_KEYS)
    if "price" not in fields:
        raise w.fail(node, _join(key, "price"), "required key is missing")
    units, modes = UNITS[resource], MODES[resource]
    pn = fields["price"][1]
    raw = _value(w, pn, _join(key, "price"))
    if isinstance(raw, str) and isinstance(pn, yaml.ScalarNode) and not pn.style and _EXPONENT.fullmatch(raw):
        raw = float(raw)      # YAML 1.1 reads a plain 1e-5 (no dot) as text; people mean a number
    if isinstance(raw, bool) or not isinstance(raw, (int, float)):
        raise w.fail(pn, _join(key, "price"), f"expected a number (currency units per unit), got {raw!r}")
    if isinstance(raw, int) and raw > 10**15:
        raise w.fail(pn, _join(key, "price"), f"price is implausibly large ({len(str(raw))} digits)")
    if not math.isfinite(raw) or raw < 0:
        raise w.fail(pn, _join(key, "price"), f"price must be a finite number >= 0, got {raw!r}")
    # repr is the shortest text that reads back as the same float: 0.1 -> Decimal("0.1").
    price = Decimal(repr(raw)) if isinstance(raw, float) else Decimal(raw)
    per = next(iter(units))
    if "per" in fields:
        un = fields["per"][1]
        per = _value(w, un, _join(key, "per"))
        if per not in units:
            raise w.fail(un, _join(key, "per"), f"unknown unit {per!r}; {resource} is priced per "
                                                 f"{' | '.join(units)}")
    mode = "usage"
    if "mode" in fields:
        mn = fields["mode"][1]
        mode = _value(w, mn, _join(key, "mode"))
        if mode not in MODES["cpu"]:
            raise w.fail(mn, _join(key, "mode"), f"unknown mode {mode!r}; use usage, allocation or max")
        if mode not in modes:
            raise w.fail(mn, _join(key, "mode"), f"mode {mode!r} needs a limit, which only cpu and "
                                                  f"memory have; {resource} allows: {', '.join(modes)}")
    return Price(resource=resource, price=price, per=per, per_base=units[per], mode=mode)
