"""Price sheets: every error class is one line `file:line:column: key: message`; defaults; the example."""

from __future__ import annotations

import re
from decimal import Decimal
from pathlib import Path

import pytest

from cgman.errors import PolicyError
from cgman.accounting.prices import load_prices, parse_prices

REPO = Path(__file__).resolve().parent.parent
OK = "version: 1\nprices:\n"

# (name, sheet text, line, column, key, a piece of the message)
CASES = [
    ("yaml-syntax", "version: 1\nprices: {cpu: {price: 1}\n", 3, 1, "", "YAML syntax error"),
    ("yaml-tab", "version: 1\nprices:\n\tcpu: {price: 1}\n", 3, 1, "", "YAML syntax error"),
    ("empty", "", 1, 1, "", "empty price sheet"),
    ("not-a-mapping", "- 1\n- 2\n", 1, 1, "", "expected a mapping"),
    ("missing-version", "prices: {}\n", 1, 1, "version", "required key is missing"),
    ("missing-prices", "version: 1\n", 1, 1, "prices", "required key is missing"),
    ("bad-version", "version: 2\nprices: {}\n", 1, 10, "version", "reads version 1"),
    ("version-not-int", "version: '1'\nprices: {}\n", 1, 10, "version", "reads version 1"),
    ("unknown-top-key", "version: 1\nprices: {}\ntax: 0.2\n", 3, 1, "tax", "unknown key; expected one of: version"),
    ("unknown-resource", OK + "  gpu: {price: 1}\n", 3, 3, "prices.gpu", "expected one of: cpu, memory"),
    ("unknown-field", OK + "  cpu: {price: 1, unit: cpu-hour}\n", 3, 19, "prices.cpu.unit",
     "expected one of: price, per, mode"),
    ("missing-price", OK + "  cpu: {per: cpu-hour}\n", 3, 8, "prices.cpu.price", "required key is missing"),
    ("resource-not-mapping", OK + "  cpu: 0.03\n", 3, 8, "prices.cpu", "expected a mapping"),
    ("negative-price", OK + "  memory: {price: -0.5}\n", 3, 19, "prices.memory.price", ">= 0"),
    ("infinite-price", OK + "  memory: {price: .inf}\n", 3, 19, "prices.memory.price", ">= 0"),
    ("text-price", OK + "  io_read: {price: cheap}\n", 3, 20, "prices.io_read.price", "expected a number"),
    ("quoted-price", OK + "  io_read: {price: '0.1'}\n", 3, 20, "prices.io_read.price", "expected a number"),
    ("bool-price", OK + "  io_read: {price: true}\n", 3, 20, "prices.io_read.price", "expected a number"),
    ("list-price", OK + "  io_read: {price: [1]}\n", 3, 20, "prices.io_read.price", "expected a single value"),
    ("unknown-cpu-unit", OK + "  cpu: {price: 1, per: cpu-minute}\n", 3, 24, "prices.cpu.per",
     "cpu-hour | cpu-second"),
    ("unit-of-another-resource", OK + "  memory:\n    price: 1\n    per: GiB\n", 5, 10, "prices.memory.per",
     "GiB-hour | GB-hour | MiB-hour | GiB-second"),
    ("unknown-io-unit", OK + "  io_write: {price: 1, per: TiB}\n", 3, 29, "prices.io_write.per", "GiB | GB | MiB"),
    ("unknown-mode", OK + "  cpu: {price: 1, mode: peak}\n", 3, 25, "prices.cpu.mode",
     "use usage, allocation or max"),
    ("mode-not-allowed-io", OK + "  io_read: {price: 1, mode: allocation}\n", 3, 29, "prices.io_read.mode",
     "io_read allows: usage"),
    ("mode-not-allowed-fee", OK + "  container: {price: 1, mode: max}\n", 3, 31, "prices.container.mode",
     "container allows: usage"),
    ("duplicate-top", "version: 1\nversion: 1\nprices: {}\n", 2, 1, "version",
     "duplicate key (first defined at line 1)"),
    ("duplicate-resource", OK + "  cpu: {price: 1}\n  cpu: {price: 2}\n", 4, 3, "prices.cpu",
     "duplicate key (first defined at line 3)"),
    ("duplicate-field", OK + "  cpu: {price: 1, price: 2}\n", 3, 19, "prices.cpu.price", "duplicate key"),
    ("currency-list", "version: 1\ncurrency: [EUR]\nprices: {}\n", 2, 11, "currency", "expected a single value"),
    ("currency-number", "version: 1\ncurrency: 978\nprices: {}\n", 2, 11, "currency", "short label"),
    ("negative-exponent-price", OK + "  cpu: {price: -1e-3}\n", 3, 16, "prices.cpu.price", ">= 0"),
]


@pytest.mark.parametrize("text, line, col, key, fragment", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_every_error_is_one_line_with_file_line_column_key(tmp_path, text, line, col, key, fragment):
    f = tmp_path / "sheet.yaml"
    f.write_text(text)
    with pytest.raises(PolicyError) as ei:
        load_prices(f)
    msg = str(ei.value)
    assert "\n" not in msg
    where = rf"^{re.escape(str(f))}:{line}:{col}: "
    assert re.match(where + (re.escape(key) + ": " if key else ""), msg), msg
    assert fragment in msg
    assert (ei.value.file, ei.value.line, ei.value.column, ei.value.key) == (str(f), line, col, key)


def test_an_unreadable_sheet_names_the_file(tmp_path):
    f = tmp_path / "nope.yaml"
    with pytest.raises(PolicyError, match=rf"^{re.escape(str(f))}: cannot read price sheet: No such file"):
        load_prices(f)


def test_a_binary_sheet_names_the_file(tmp_path):
    f = tmp_path / "bin.yaml"
    f.write_bytes(b"version: 1\n\xff\xfe\n")
    with pytest.raises(PolicyError, match="not UTF-8"):
        load_prices(f)


def test_defaults():
    s = parse_prices(OK + "  cpu: {price: 0.031}\n  memory: {price: 2}\n  io_read: {price: 0}\n"
                          "  container: {price: 0.0001}\n")
    assert s.currency == "USD"
    assert set(s.prices) == {"cpu", "memory", "io_read", "container"}
    cpu, mem, io, fee = s.prices["cpu"], s.prices["memory"], s.prices["io_read"], s.prices["container"]
    assert (cpu.per, cpu.per_base, cpu.mode, cpu.price) == ("cpu-hour", 3600, "usage", Decimal("0.031"))
    assert (mem.per, mem.per_base, mem.price) == ("GiB-hour", (1 << 30) * 3600, Decimal(2))
    assert (io.per, io.per_base, io.price) == ("GiB", 1 << 30, Decimal(0))
    assert (fee.per, fee.per_base) == ("container", 1)


@pytest.mark.parametrize("prices", ["", "{}", "~"])
def test_a_sheet_without_prices_is_valid_and_free(prices):
    assert parse_prices(f"version: 1\ncurrency: EUR\nprices: {prices}\n").prices == {}


def test_prices_keep_their_decimal_text():
    s = parse_prices(OK + "  cpu: {price: 0.1}\n  memory: {price: 1e-5}\n  io_read: {price: 3}\n"
                     "  io_write: {price: 2.5E+1}\n")
    assert [p.price for p in s.prices.values()] == [Decimal("0.1"), Decimal("0.00001"), Decimal(3), Decimal(25)]


def test_the_example_sheet_loads():
    s = load_prices(REPO / "prices" / "example.yaml")
    assert s.currency == "EUR"
    assert set(s.prices) == {"cpu", "memory", "io_read", "io_write", "container"}
    assert s.prices["memory"].mode == "max"
