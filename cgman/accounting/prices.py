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
sheet with any error raises and so bills nothing. Prices become ``Decimal`` from the
text of the YAML scalar, never through a float, so 0.1 is exactly 0.1 and 25 significant
digits stay 25. The sheet is read as policy files are (inputs.read_input): a regular
file of at most max_bytes.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path
from typing import Any

import yaml

from ..errors import clip, shown
from ..inputs import DEFAULT_MAX_INPUT_BYTES, decode, read_input
from ..policy import MAX_NUMBER_CHARS, NUMBER_TAGS, Walker, compose, join_key

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
#: A price in plain decimal notation, YAML 1.1's '_' digit separators allowed. ASCII digits only.
_DECIMAL_TEXT = re.compile(r"\+?(?:[0-9][0-9_]*(?:\.[0-9_]*)?|\.[0-9][0-9_]*)(?:[eE][-+]?[0-9]+)?")
_INT_TAG = "tag:yaml.org,2002:int"
MAX_PRICE = Decimal(10**15)
MIN_PRICE_EXPONENT = -30


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


def load_prices(path: str | Path, max_bytes: int = DEFAULT_MAX_INPUT_BYTES) -> PriceSheet:
    """Read and validate the price sheet at ``path`` (a regular file of at most ``max_bytes``);
    raises PolicyError naming file:line:column."""
    file = str(path)
    return parse_prices(decode(read_input(file, max_bytes, "price sheet"), file, "price sheet"), file)


def parse_prices(text: str, file: str = "<input>") -> PriceSheet:
    """Validate one price sheet document; raises PolicyError naming file:line:column: key."""
    w = Walker(file)
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
    prices = {res: _price(w, vn, join_key("prices", res), res) for res, (_, vn) in entries.items()}
    return PriceSheet(file=file, currency=currency, prices=prices)


def _mapping(w: Walker, node: yaml.Node, key: str,
             allowed: tuple[str, ...]) -> dict[str, tuple[yaml.Node, yaml.Node]]:
    """The keys of a mapping node (duplicates refused by the walker), each one of ``allowed``."""
    out = {}
    for k, knode, vnode in w.items(node, key):
        if k not in allowed:
            raise w.fail(knode, join_key(key, k), f"unknown key; expected one of: {', '.join(allowed)}")
        out[k] = (knode, vnode)
    return out


def _value(w: Walker, node: yaml.Node, key: str) -> Any:
    try:
        return w.scalar(node)
    except (ValueError, yaml.YAMLError) as e:
        raise w.fail(node, key, str(e)) from None


def _price_value(w: Walker, pn: yaml.Node, key: str) -> Decimal:
    """The price as written: the scalar's own text into Decimal, never through a float
    (a float keeps ~17 significant digits; a sheet may give more)."""
    if not isinstance(pn, yaml.ScalarNode):
        kind = "a mapping" if isinstance(pn, yaml.MappingNode) else "a list"
        raise w.fail(pn, key, f"expected a single value, got {kind}")
    text = str(pn.value).strip()
    numeric = pn.tag in NUMBER_TAGS or (not pn.style and _EXPONENT.fullmatch(text) is not None)
    if not numeric:                        # quoted text, true, null, a word
        raise w.fail(pn, key, f"expected a number (currency units per unit), got {shown(_value(w, pn, key))}")
    if len(text) > MAX_NUMBER_CHARS:
        raise w.fail(pn, key, f"number too long ({len(text)} characters)")
    if text.startswith("-"):               # -0 too: a sign on a price is a typo, not a discount
        raise w.fail(pn, key, f"price must be a finite number >= 0, got {clip(text)}")
    if _DECIMAL_TEXT.fullmatch(text):
        price = Decimal(text.replace("_", ""))
    elif pn.tag == _INT_TAG:               # 0x1F, 0o17, 1:30 (YAML 1.1): ints, so exact
        price = Decimal(_value(w, pn, key))
    else:                                  # .inf, .nan, sexagesimal floats
        raise w.fail(pn, key, f"price must be a finite number >= 0, got {clip(text)}")
    if price > MAX_PRICE:
        raise w.fail(pn, key, f"price is implausibly large ({clip(text)}; at most {MAX_PRICE:,})")
    if price and price.adjusted() < MIN_PRICE_EXPONENT:
        raise w.fail(pn, key, f"price {clip(text)} is finer than 1e{MIN_PRICE_EXPONENT}")
    return price


def _price(w: Walker, node: yaml.Node, key: str, resource: str) -> Price:
    fields = _mapping(w, node, key, _PRICE_KEYS)
    if "price" not in fields:
        raise w.fail(node, join_key(key, "price"), "required key is missing")
    units, modes = UNITS[resource], MODES[resource]
    price = _price_value(w, fields["price"][1], join_key(key, "price"))
    per = next(iter(units))
    if "per" in fields:
        un = fields["per"][1]
        per = _value(w, un, join_key(key, "per"))
        if per not in units:
            raise w.fail(un, join_key(key, "per"), f"unknown unit {per!r}; {resource} is priced per "
                                                 f"{' | '.join(units)}")
    mode = "usage"
    if "mode" in fields:
        mn = fields["mode"][1]
        mode = _value(w, mn, join_key(key, "mode"))
        if mode not in MODES["cpu"]:
            raise w.fail(mn, join_key(key, "mode"), f"unknown mode {mode!r}; use usage, allocation or max")
        if mode not in modes:
            raise w.fail(mn, join_key(key, "mode"), f"mode {mode!r} needs a limit, which only cpu and "
                                                  f"memory have; {resource} allows: {', '.join(modes)}")
    return Price(resource=resource, price=price, per=per, per_base=units[per], mode=mode)
