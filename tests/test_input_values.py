"""Values in policy files, price sheets and the ledger that used to pass or crash (issue 16):
prices kept exactly as written, ASCII digits only, numbers within the kernel's range, interface
names the kernel accepts, and ledger rows checked before billing does arithmetic on them."""

from __future__ import annotations

import sqlite3
from dataclasses import fields, replace
from decimal import Decimal
from pathlib import Path

import pytest

from cgman.accounting.billing import CHECKED_COLUMNS, BadLedgerRow, bill, check_entry, parse_time
from cgman.errors import PolicyError
from cgman.policy import parse_text
from cgman.accounting.prices import parse_prices
from cgman.accounting.ledger import Entry, Ledger, ledger_path
from cgman.units import UnitError, parse_cpu_list, parse_cpus, parse_quantity

from .test_usage_cli import cgman as usage, entry, one_error_line

P = "version: 1\npolicies:\n  g:\n"
SHEET = "version: 1\nprices:\n  container: {price: %s}\n"


def one_group(body: str):
    return parse_text(P + body)[0]


def refused(body: str) -> str:
    with pytest.raises(PolicyError) as ei:
        parse_text(P + body)
    msg = str(ei.value)
    assert "\n" not in msg and len(msg) < 400
    return msg


# ------------------------------------------------------------------ prices
def test_a_price_with_25_significant_digits_is_kept_exactly():
    digits = "12345.67890123456789012345"           # 25 digits, 20 places: billing keeps 20
    p = parse_prices(SHEET % digits).prices["container"].price
    assert p == Decimal(digits) and str(p) == digits
    b = bill([entry(f"c{i}", "acme", "acme/web", 1e9 + i) for i in range(4)], parse_prices(SHEET % digits))
    assert b.total.cost is not None and b.total.cost.total == Decimal(digits) * 4


@pytest.mark.parametrize("text, fragment", [
    ("-0", "price must be a finite number >= 0, got -0"),
    ("-0.0", ">= 0"),
    ("1e308", "price is implausibly large (1e308"),
    ("1.0e+308", "implausibly large"),
    (".nan", "finite number >= 0, got .nan"),
    (".NaN", "finite"),
    ("1e-400", "finer than 1e-30"),
    ("1" * 50, "number too long (50 characters"),
    ("١٢", "expected a number"),
])
def test_prices_that_are_not_plain_finite_non_negative_numbers_are_refused(text, fragment):
    with pytest.raises(PolicyError, match=r"^<input>:3:22: prices\.container\.price: ") as ei:
        parse_prices(SHEET % text)
    assert fragment in str(ei.value)


# ------------------------------------------------------------------ digits and ranges
@pytest.mark.parametrize("body, key", [
    ('    cpu: {cpus: "٠-٣"}\n', "cpu.cpus"),                   # Arabic-Indic
    ('    cpu: {cpus: "０-３"}\n', "cpu.cpus"),                  # fullwidth
    ('    cpu: {mems: "۰"}\n', "cpu.mems"),                     # extended Arabic-Indic
    ('    memory: {max: "١٢Mi"}\n', "memory.max"),
    ('    memory: {high: "１Gi"}\n', "memory.high"),
    ('    cpu: {max: "١.٥"}\n', "cpu.max"),
])
def test_non_ascii_digits_are_refused(body, key):
    assert f"policies.g.{key}: " in refused(body)


@pytest.mark.parametrize("bad", ["٠-٣", "０", "1,٢", "𝟎-𝟑"])
def test_cpu_lists_take_ascii_digits_only(bad):
    with pytest.raises(UnitError, match="ASCII"):
        parse_cpu_list(bad)


@pytest.mark.parametrize("bad", ["١٢Mi", "１Gi", "٣"])
def test_quantities_take_ascii_digits_only(bad):
    with pytest.raises(UnitError, match="ASCII"):
        parse_quantity(bad)


@pytest.mark.parametrize("bad", ["١.٥", "1_0", "infinity"])
def test_cpus_take_ascii_digits_only(bad):
    with pytest.raises(UnitError, match="ASCII"):
        parse_cpus(bad)


def test_a_4000_digit_memory_max_is_refused_not_taken_as_unlimited():
    msg = refused("    memory: {max: " + "9" * 4000 + "}\n")
    assert "policies.g.memory.max: number too long (4000 characters" in msg
    msg = refused('    memory: {max: "' + "9" * 4000 + '"}\n')
    assert "policies.g.memory.max: bad quantity" in msg and "(4000 characters)" in msg


@pytest.mark.parametrize("value", [2**63, "8589934592Gi", "9223372036854775808"])
def test_quantities_beyond_the_kernels_largest_are_refused(value):
    with pytest.raises(UnitError, match="beyond the kernel's largest"):
        parse_quantity(value)


def test_the_largest_quantity_is_accepted():
    assert one_group(f"    memory: {{max: {2**63 - 1}}}\n").resources.memory.max_bytes == 2**63 - 1


@pytest.mark.parametrize("body, fragment", [
    ("    cpu: {cpus: '99999'}\n", "bad number '99999'"),
    ("    cpu: {max: " + "9" * 30 + "}\n", "more than any machine has"),
    ("    pids: {max: " + "9" * 30 + "}\n", "is out of range 0..9223372036854775807"),
    ("    io: {weight: " + "9" * 39 + "}\n", "out of range"),
])
def test_numbers_past_their_range_are_one_line(body, fragment):
    assert fragment in refused(body)


def test_since_and_until_take_ascii_digits_only():
    with pytest.raises(ValueError, match="bad time"):
        parse_time("١٢h", 1e9)


# ------------------------------------------------------------------ interface names
@pytest.mark.parametrize("name", ["..", ".", "a" * 16, "br 0", "br/0", "br:0", ""])
def test_bridge_names_the_kernel_refuses_are_refused(name):
    assert "policies.g.launch.network.bridge: " in refused(f"    launch:\n      network: {{bridge: '{name}'}}\n")


@pytest.mark.parametrize("name", ["br.0", "a" * 15, "...", "cgman0", "br-acme"])
def test_bridge_names_the_kernel_takes_are_accepted(name):
    g = one_group(f"    launch:\n      network: {{bridge: '{name}'}}\n")
    assert g.launch is not None and g.launch.network.bridge == name


# ------------------------------------------------------------------ ledger rows
def test_every_ledger_column_is_checked_before_billing():
    assert {f.name for f in fields(Entry)} <= CHECKED_COLUMNS


@pytest.mark.parametrize("col, value, want", [
    ("cpu_usage_usec", "lots", "an integer >= 0"),
    ("cpu_usage_usec", -1, "an integer >= 0"),
    ("io_read_bytes", 1.5, "an integer >= 0"),
    ("memory_byte_seconds", float("nan"), "a number >= 0"),
    ("memory_byte_seconds", float("inf"), "a number >= 0"),
    ("ended", 1e300, "a number >= 0"),
    ("started", None, "a number >= 0"),
    ("cpu_limit_cpus", b"\x00", "a number >= 0"),
    ("tenant", 7, "text"),
    ("exit_code", "0", "an integer"),
])
def test_a_bad_ledger_row_is_one_line_naming_row_and_column(col, value, want):
    e = replace(entry("c9", "acme", "acme/web", 1e9), **{col: value})
    with pytest.raises(BadLedgerRow) as ei:
        bill([e], None, source="/var/lib/cgman/ledger.db")
    msg = str(ei.value)
    assert msg.startswith(f"/var/lib/cgman/ledger.db: row for container 'c9': column {col} holds ")
    assert f"where {want} belongs" in msg and "\n" not in msg
    check_entry(entry("c9", "acme", "acme/web", 1e9))          # a good row passes


def test_usage_with_text_in_a_number_column_is_one_clean_line(tmp_path: Path):
    with Ledger(ledger_path(str(tmp_path))) as led:
        led.record(entry("c1", "acme", "acme/web", 1e9))
        led.record(entry("c2", "acme", "acme/web", 1e9 + 1))
    db = sqlite3.connect(ledger_path(str(tmp_path)))
    with db:
        db.execute("UPDATE containers SET cpu_usage_usec = 'lots' WHERE id = 'c2'")
    db.close()
    line = one_error_line(usage(tmp_path))
    assert line == (f"cgman: error: {ledger_path(str(tmp_path))}: row for container 'c2': column cpu_usage_usec "
                    f"holds 'lots', where an integer >= 0 belongs; the ledger was edited or damaged: correct "
                    f"or delete that row (sqlite3), or bill a period without it (--since/--until)")
