"""Pure tables for cgman.accounting.billing: modes x resources, units, exact money, grouping, periods, times."""

from __future__ import annotations

from dataclasses import replace
from datetime import datetime, timezone
from decimal import Decimal, localcontext
from itertools import pairwise

import pytest

from cgman.accounting.billing import PLACES, PRECISION, bill, parse_time, quantities
from cgman.accounting.prices import parse_prices
from cgman.accounting.ledger import Entry

GiB = 1 << 30
T0 = 1_714_521_600.0          # 2024-05-01T00:00:00Z


def entry(**kw) -> Entry:
    """One container: 1 h wall, 0.5 cpu-hour used, 2 GiB-h of memory, 3 GiB read, 1 GiB written."""
    base = dict(id="c1", name="web1", tenant="acme", grp="acme/web", cgroup_root="cgman",
                started=T0, ended=T0 + 3600, exit_code=0, exit_reason=None,
                cpu_usage_usec=1_800_000_000, cpu_user_usec=None, cpu_system_usec=None,
                memory_byte_seconds=float(2 * GiB * 3600), memory_peak_bytes=None,
                io_read_bytes=3 * GiB, io_write_bytes=1 * GiB,
                cpu_limit_cpus=2.0, memory_limit_bytes=4 * GiB, host_cpus=8.0, host_memory_bytes=64 * GiB)
    base.update(kw)
    return Entry(**base)  # type: ignore[arg-type]


def sheet(body: str, currency: str = ""):
    return parse_prices(f"version: 1\n{currency}prices:\n{body}", "t.yaml")


def cost(e: Entry | list[Entry], body: str, resource: str) -> Decimal:
    b = bill(e if isinstance(e, list) else [e], sheet(body))
    assert b.total.cost is not None
    return b.total.cost.by_resource[resource]


# ------------------------------------------------------------------ modes x resources
@pytest.mark.parametrize("body, resource, kw, want", [
    # cpu, priced 0.04 per cpu-hour; the container used 0.5 cpu-hour in 1 h with a limit of 2 CPUs
    ("  cpu: {price: 0.04}", "cpu", {}, "0.02"),
    ("  cpu: {price: 0.04, mode: usage}", "cpu", {}, "0.02"),
    ("  cpu: {price: 0.04, mode: allocation}", "cpu", {}, "0.08"),                 # 2 CPUs x 1 h
    ("  cpu: {price: 0.04, mode: allocation}", "cpu", {"cpu_limit_cpus": None}, "0.32"),   # host: 8 CPUs
    ("  cpu: {price: 0.04, mode: allocation}", "cpu", {"cpu_limit_cpus": 16.0}, "0.32"),   # capped at host
    ("  cpu: {price: 0.04, mode: allocation}", "cpu", {"cpu_limit_cpus": 0.25}, "0.01"),
    ("  cpu: {price: 0.04, mode: max}", "cpu", {}, "0.08"),                        # allocation > usage
    ("  cpu: {price: 0.04, mode: max}", "cpu", {"cpu_limit_cpus": 0.25}, "0.02"),  # usage > allocation
    ("  cpu: {price: 0.04, mode: max}", "cpu", {"cpu_limit_cpus": None}, "0.32"),
    # memory, 0.005 per GiB-hour; used 2 GiB-h, limit 4 GiB, host 64 GiB
    ("  memory: {price: 0.005}", "memory", {}, "0.01"),
    ("  memory: {price: 0.005, mode: allocation}", "memory", {}, "0.02"),
    ("  memory: {price: 0.005, mode: allocation}", "memory", {"memory_limit_bytes": None}, "0.32"),
    ("  memory: {price: 0.005, mode: allocation}", "memory", {"memory_limit_bytes": 128 * GiB}, "0.32"),
    ("  memory: {price: 0.005, mode: max}", "memory", {}, "0.02"),
    ("  memory: {price: 0.005, mode: max}", "memory", {"memory_limit_bytes": GiB}, "0.01"),
    ("  memory: {price: 0.005, mode: max}", "memory", {"memory_limit_bytes": None}, "0.32"),
    # io and the flat fee: usage only
    ("  io_read: {price: 0.01}", "io_read", {}, "0.03"),
    ("  io_write: {price: 0.02, mode: usage}", "io_write", {}, "0.02"),
    ("  container: {price: 0.0001}", "container", {}, "0.0001"),
    # nothing used, nothing allocated (zero wall time): zero in every mode
    ("  cpu: {price: 0.04, mode: max}", "cpu", {"cpu_usage_usec": 0, "ended": T0}, "0"),
    ("  memory: {price: 0.005, mode: allocation}", "memory", {"ended": T0}, "0"),
    # a clock step backwards never makes a negative allocation
    ("  memory: {price: 0.005, mode: allocation}", "memory", {"ended": T0 - 10, "started": T0}, "0"),
])
def test_mode_times_resource(body, resource, kw, want):
    assert cost(entry(**kw), body, resource) == Decimal(want)


def test_unpriced_resources_cost_nothing_and_are_not_listed():
    b = bill([entry()], sheet("  cpu: {price: 0.04}"))
    assert b.priced == ("cpu",)
    assert b.total.cost is not None and set(b.total.cost.by_resource) == {"cpu"}
    assert b.total.cost.total == Decimal("0.02")


def test_without_a_sheet_there_is_no_cost_and_billed_is_usage():
    b = bill([entry()])
    assert b.currency is None and b.priced == () and b.total.cost is None
    assert b.total.billed_cpu_seconds == b.total.cpu_seconds == Decimal(1800)
    assert b.total.billed_memory_byte_seconds == b.total.memory_byte_seconds


def test_max_is_per_container_not_per_group():
    """One idle container does not offset a busy one: max is taken before summing."""
    busy = entry(id="a", cpu_limit_cpus=0.25, cpu_usage_usec=3_600_000_000)    # used 1 cpu-h, alloc 0.25
    idle = entry(id="b", cpu_limit_cpus=2.0, cpu_usage_usec=0)                  # used 0, alloc 2
    assert cost([busy, idle], "  cpu: {price: 1, mode: max}", "cpu") == Decimal(3)  # 1 + 2, not max(1, 2.25)


def test_allocation_and_usage_quantities():
    q = quantities(entry(started=T0, ended=T0 + 0.3, cpu_limit_cpus=0.1))
    assert q.cpu_alloc_s == Decimal("0.03")                      # exact, not 0.030000000000000002
    assert q.cpu_usage_s == Decimal(1800)


# ------------------------------------------------------------------ units
@pytest.mark.parametrize("body, resource, kw, want", [
    ("  cpu: {price: 1, per: cpu-hour}", "cpu", {"cpu_usage_usec": 3_600_000_000}, "1"),
    ("  cpu: {price: 1, per: cpu-second}", "cpu", {"cpu_usage_usec": 3_600_000_000}, "3600"),
    ("  cpu: {price: 1, per: cpu-second}", "cpu", {"cpu_usage_usec": 1}, "0.000001"),
    ("  memory: {price: 1, per: GiB-hour}", "memory", {}, "2"),
    ("  memory: {price: 1, per: GiB-second}", "memory", {}, "7200"),
    ("  memory: {price: 1, per: MiB-hour}", "memory", {}, "2048"),
    ("  memory: {price: 1, per: GB-hour}", "memory", {}, "2.147483648"),
    # 10^9 / 2^30 = 0.931322574615478515625, to 20 places half even
    ("  io_read: {price: 1, per: GiB}", "io_read", {"io_read_bytes": 10**9}, "0.93132257461547851562"),
    ("  io_read: {price: 1, per: GB}", "io_read", {"io_read_bytes": 10**9}, "1"),
    ("  io_write: {price: 1, per: MiB}", "io_write", {"io_write_bytes": 3 << 20}, "3"),
])
def test_units(body, resource, kw, want):
    assert cost(entry(**kw), body, resource) == Decimal(want)


# ------------------------------------------------------------------ exact money
def test_decimal_three_times_a_tenth_is_three_tenths():
    assert 3 * 0.1 != 0.3                                         # what floats would bill
    es = [entry(id=f"c{i}") for i in range(3)]
    b = bill(es, sheet("  container: {price: 0.1}"))
    assert b.total.cost is not None and b.total.cost.total == Decimal("0.3")


def test_float_usage_converts_through_its_shortest_text():
    es = [entry(id=f"c{i}", memory_byte_seconds=0.1) for i in range(3)]
    assert bill(es).total.memory_byte_seconds == Decimal("0.3")


def test_total_is_the_exact_sum_of_the_rows():
    es = [entry(id=f"c{i}", tenant=f"t{i % 3}", cpu_usage_usec=1_000_003 * (i + 1),
                memory_byte_seconds=1e9 / 7 * i, io_read_bytes=12345 * i) for i in range(30)]
    b = bill(es, sheet("  cpu: {price: 0.031}\n  memory: {price: 0.004, mode: max}\n"
                       "  io_read: {price: 0.01}\n  container: {price: 0.0001}"))
    assert b.total.cost is not None
    with localcontext(prec=PRECISION):          # more digits than the default 28, exact as fixed point
        for res in b.priced:
            assert sum(r.cost.by_resource[res] for r in b.rows if r.cost) == b.total.cost.by_resource[res]
        assert sum(r.cost.total for r in b.rows if r.cost) == b.total.cost.total
        # order-independent: summing per resource first or per row first gives the same digits
        assert sum(sum(r.cost.by_resource.values()) for r in reversed(b.rows) if r.cost) == b.total.cost.total
    assert all(-PLACES <= int(c.as_tuple().exponent) < 0 for c in b.total.cost.by_resource.values())
    assert sum(r.containers for r in b.rows) == b.total.containers == 30


# ------------------------------------------------------------------ grouping
ES = [entry(id="c3", name="db", tenant="globex", grp="globex/db", ended=T0 + 10),
      entry(id="c1", name="web1", tenant="acme", grp="acme/web", ended=T0 + 30),
      entry(id="c2", name="job", tenant="acme", grp="acme/batch", ended=T0 + 20),
      entry(id="c4", name="web2", tenant="acme", grp="acme/web", ended=T0 + 5)]


@pytest.mark.parametrize("by, want", [
    ("tenant", [("acme", 3), ("globex", 1)]),
    ("group", [("acme/batch", 1), ("acme/web", 2), ("globex/db", 1)]),
    ("container", [("c4", 1), ("c3", 1), ("c2", 1), ("c1", 1)]),        # by end time
])
def test_grouping(by, want):
    b = bill(ES, by=by)
    assert [(r.key, r.containers) for r in b.rows] == want
    assert b.total.containers == 4 and b.total.key == "TOTAL"
    assert sum(r.cpu_seconds for r in b.rows) == b.total.cpu_seconds == Decimal(1800 * 4)


def test_container_rows_carry_their_entry():
    b = bill(ES, by="container")
    assert [r.entry.name for r in b.rows if r.entry] == ["web2", "db", "job", "web1"]
    assert bill(ES, by="tenant").rows[0].entry is None


def test_unknown_grouping_is_refused():
    with pytest.raises(ValueError, match="tenant, group, container"):
        bill(ES, by="host")


# ------------------------------------------------------------------ periods
@pytest.mark.parametrize("since, until, want", [
    (T0 + 10, T0 + 30, ["c3", "c2"]),       # ended == since is in, ended == until is out
    (T0 + 10, None, ["c3", "c2", "c1"]),
    (None, T0 + 10, ["c4"]),
    (T0 + 30, T0 + 31, ["c1"]),
    (T0 + 31, None, []),
    (None, None, ["c4", "c3", "c2", "c1"]),
])
def test_period_is_half_open_on_end_time(since, until, want):
    assert [r.key for r in bill(ES, by="container", since=since, until=until).rows] == want


def test_consecutive_periods_bill_each_container_once():
    es = [entry(id=f"c{i}", ended=T0 + i * 0.5, started=T0 - 100) for i in range(100)]
    cuts = [T0, T0 + 7, T0 + 7.5, T0 + 20, T0 + 49.5, T0 + 50]
    billed = [r.key for a, b in pairwise(cuts) for r in bill(es, by="container", since=a, until=b).rows]
    assert sorted(billed) == sorted(e.id for e in es)            # each exactly once
    assert len(billed) == len(set(billed))


def test_a_container_across_a_boundary_is_billed_whole_where_it_ended():
    long = entry(started=T0 - 86400, ended=T0 + 60)
    assert bill([long], until=T0).rows == ()
    assert bill([long], since=T0).total.cpu_seconds == Decimal(1800)


# ------------------------------------------------------------------ times
NOW = 1_720_000_000.0


@pytest.mark.parametrize("text, want", [
    ("now", NOW),
    ("7d", NOW - 7 * 86400),
    ("24h", NOW - 86400),
    ("30m", NOW - 1800),
    ("45s", NOW - 45),
    ("2w", NOW - 14 * 86400),
    ("1.5h", NOW - 5400),
    ("1714521600", T0),
    ("1714521600.25", T0 + 0.25),
    ("2024-05-01T00:00:00Z", T0),
    ("2024-05-01T02:00:00+02:00", T0),
    ("2024-05-01 00:00:00+00:00", T0),
    ("2024-05-01T12:00", datetime(2024, 5, 1, 12, 0).timestamp()),        # naive: local time
    ("2024-05-01", datetime(2024, 5, 1).timestamp()),
    (" now ", NOW),
])
def test_parse_time(text, want):
    assert parse_time(text, NOW) == pytest.approx(want)


@pytest.mark.parametrize("text", ["", "yesterday", "7 days", "-7d", "7y", "2024-13-01", "1714521600s5",
                                  "2024-05-01T25:00"])
def test_parse_time_refuses(text):
    with pytest.raises(ValueError, match="ISO 8601.*epoch seconds.*now.*7d"):
        parse_time(text, NOW)


def test_zoned_and_utc_agree():
    assert parse_time("2024-05-01T00:00:00Z", NOW) == datetime(2024, 5, 1, tzinfo=timezone.utc).timestamp()


def test_billing_does_not_mutate_entries():
    e = entry()
    bill([e], sheet("  cpu: {price: 1, mode: max}"))
    assert e == replace(e)


@pytest.mark.parametrize("text", ["99999999999999", "9999-12-31T23:59:59-14:00", "0001-01-01T00:00+14:00"])
def test_a_time_out_of_range_is_a_value_error_not_a_crash(text):
    from cgman.accounting.billing import parse_time
    with pytest.raises(ValueError, match="out of range"):
        parse_time(text, 1_700_000_000.0)
