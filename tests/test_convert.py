"""Table tests of the pure v1 <-> v2 unit conversions (SPEC §2). No root, no cgroup I/O."""

from __future__ import annotations

from decimal import ROUND_CEILING, Decimal, localcontext

import pytest

from cgman import convert
from cgman.convert import (blkio_cfq_weight, bfq_weight, cpu_quota_usec, shares_to_weight,
                           weight_to_shares)
from cgman.model import UNLIMITED


# ------------------------------------------------------------------ shares -> weight
@pytest.mark.parametrize("shares, weight", [
    (2, 1),            # min (SPEC 2 <-> 1)
    (3, 2),
    (1024, 100),       # default (SPEC 1024 <-> 100)
    (262143, 10000),
    (262144, 10000),   # max (SPEC 262144 <-> 10000)
])
def test_shares_to_weight_oci(shares, weight):
    assert shares_to_weight(shares, "oci") == weight


def test_shares_to_weight_default_formula_is_oci():
    # 512 distinguishes the formulas: oci and systemd differ there.
    assert shares_to_weight(512) == shares_to_weight(512, "oci") != shares_to_weight(512, "systemd")


@pytest.mark.parametrize("shares, weight", [
    (2, 1),            # 2*100//1024 = 0 -> clamped to 1
    (10, 1),
    (11, 1),           # 1100//1024 = 1
    (21, 2),
    (512, 50),
    (1024, 100),
    (2048, 200),
    (102400, 10000),
    (102399, 9999),
    (262144, 10000),   # 25600 clamped to 10000
])
def test_shares_to_weight_systemd(shares, weight):
    assert shares_to_weight(shares, "systemd") == weight


@pytest.mark.parametrize("formula", ["oci", "systemd"])
@pytest.mark.parametrize("shares", [-1, 0, 1, 262145, 10**9, True, 1024.0, "1024", None])
def test_shares_to_weight_out_of_range(formula, shares):
    with pytest.raises(ValueError):
        shares_to_weight(shares, formula)


def test_shares_to_weight_unknown_formula():
    with pytest.raises(ValueError, match="formula"):
        shares_to_weight(1024, "linear")  # type: ignore[arg-type]


def _exact_oci(shares: int) -> int:
    """SPEC's oci formula in 40-digit decimal arithmetic (independent of float rounding)."""
    if shares <= 2:
        return 1
    if shares >= 262144:
        return 10000
    with localcontext() as ctx:
        ctx.prec = 40
        lg = Decimal(shares).ln() / Decimal(2).ln()
        exponent = (lg * lg + 125 * lg) / 612 - Decimal(7) / 34
        value = (exponent * Decimal(10).ln()).exp()
        return int(value.to_integral_value(rounding=ROUND_CEILING))


@pytest.mark.parametrize("start", range(2, 100))
def test_shares_to_weight_oci_matches_exact_formula(start):
    # A spread sample of the whole domain: 2..262144 in steps of 97, shifted by start.
    for s in range(start, 262145, 97 * 97):
        assert shares_to_weight(s, "oci") == _exact_oci(s), s


@pytest.mark.parametrize("formula", ["oci", "systemd"])
def test_shares_to_weight_is_monotonic_and_in_range(formula):
    prev = 0
    for s in range(2, 262145):
        w = shares_to_weight(s, formula)
        assert 1 <= w <= 10000
        assert w >= prev, (s, w, prev)
        prev = w
    assert prev == 10000


# ------------------------------------------------------------------ weight -> shares
@pytest.mark.parametrize("weight, shares", [
    (1, 2),            # min (SPEC 1 <-> 2)
    (100, 1024),       # default (SPEC 100 <-> 1024)
    (10000, 262144),   # max (SPEC 10000 <-> 262144)
])
def test_weight_to_shares_oci_spec_pairs(weight, shares):
    assert weight_to_shares(weight, "oci") == shares
    assert weight_to_shares(weight) == shares          # oci is the default
    assert shares_to_weight(shares, "oci") == weight  # and they are exact round trips


@pytest.mark.parametrize("weight, shares", [
    (1, 10),           # 1024//100 = 10 (>= 2, so no clamp)
    (2, 20),
    (50, 512),
    (100, 1024),
    (300, 3072),
    (2560, 26214),
    (10000, 102400),   # below the 262144 clamp
])
def test_weight_to_shares_systemd(weight, shares):
    assert weight_to_shares(weight, "systemd") == shares


@pytest.mark.parametrize("formula", ["oci", "systemd"])
@pytest.mark.parametrize("weight", [-5, 0, 10001, 262144, False, 100.0, "100", None])
def test_weight_to_shares_out_of_range(formula, weight):
    with pytest.raises(ValueError):
        weight_to_shares(weight, formula)


def test_weight_to_shares_unknown_formula():
    with pytest.raises(ValueError, match="formula"):
        weight_to_shares(100, "cfs")  # type: ignore[arg-type]


SAMPLE_WEIGHTS = [1, 2, 3, 5, 7, 10, 17, 39, 50, 99, 100, 101, 150, 200, 299, 300, 333, 500, 512,
                  999, 1000, 1234, 2500, 4096, 5000, 7777, 9000, 9998, 9999, 10000]


@pytest.mark.parametrize("w", SAMPLE_WEIGHTS)
def test_weight_to_shares_oci_is_largest_s_not_above_w(w):
    """SPEC: the largest s in [2, 262144] whose shares_to_weight(s) <= w (checked on neighbours)."""
    s = weight_to_shares(w, "oci")
    assert 2 <= s <= 262144
    assert shares_to_weight(s, "oci") <= w
    if s < 262144:
        assert shares_to_weight(s + 1, "oci") > w
        # and no larger s further up qualifies either (forward map is monotonic, spot-check)
        for t in (s + 2, s + 10, s + 1000):
            if t <= 262144:
                assert shares_to_weight(t, "oci") > w


def test_weight_to_shares_oci_whole_table_by_brute_force():
    """For every w in 1..10000, compare with one linear pass over every s."""
    largest: dict[int, int] = {}
    for s in range(2, 262145):
        largest[shares_to_weight(s, "oci")] = s   # s increases: last write is the largest
    best = 2
    for w in range(1, 10001):
        best = max(best, largest.get(w, best))
        assert weight_to_shares(w, "oci") == best, w


@pytest.mark.parametrize("formula", ["oci", "systemd"])
@pytest.mark.parametrize("w", SAMPLE_WEIGHTS)
def test_weight_round_trip_never_exceeds(formula, w):
    s = weight_to_shares(w, formula)
    assert 2 <= s <= 262144
    assert shares_to_weight(s, formula) <= w


# ------------------------------------------------------------------ io weights
@pytest.mark.parametrize("weight, bfq", [
    (1, 1),
    (50, 50),
    (100, 100),
    (101, 100),       # 100 + 1*900//9900 = 100
    (110, 100),
    (111, 101),       # 11*900//9900 = 1
    (211, 110),       # 100 + 111*900//9900 = 100 + 10
    (200, 109),
    (500, 136),
    (5050, 550),
    (9999, 999),
    (10000, 1000),
])
def test_bfq_weight(weight, bfq):
    assert bfq_weight(weight) == bfq


def test_bfq_weight_is_monotonic_into_1_1000():
    values = [bfq_weight(w) for w in range(1, 10001)]
    assert values == sorted(values)
    assert values[0] == convert.BFQ_MIN and values[-1] == convert.BFQ_MAX


@pytest.mark.parametrize("weight", [0, -1, 10001, True, 1.5, "100"])
def test_bfq_weight_out_of_range(weight):
    with pytest.raises(ValueError):
        bfq_weight(weight)


@pytest.mark.parametrize("weight, cfq", [
    (1, 10),           # clamp(0, 10, 1000)
    (99, 10),
    (100, 10),
    (109, 10),
    (110, 11),
    (200, 20),
    (5000, 500),
    (10000, 1000),
])
def test_blkio_cfq_weight(weight, cfq):
    assert blkio_cfq_weight(weight) == cfq


@pytest.mark.parametrize("weight", [0, 10001, False, "200"])
def test_blkio_cfq_weight_out_of_range(weight):
    with pytest.raises(ValueError):
        blkio_cfq_weight(weight)


# ------------------------------------------------------------------ cpu quota
@pytest.mark.parametrize("cpus, period, quota", [
    (1.5, 100_000, 150_000),
    (2.0, 100_000, 200_000),
    (0.5, 50_000, 25_000),
    (0.01, 100_000, 1_000),        # exactly the kernel minimum
    (1, 1_000, 1_000),             # period min
    (0.25, 1_000_000, 250_000),    # period max
    (64, 100_000, 6_400_000),      # quota may exceed the period (many CPUs)
    (1.23456, 100_000, 123_456),
])
def test_cpu_quota_usec(cpus, period, quota):
    assert cpu_quota_usec(cpus, period) == quota


@pytest.mark.parametrize("period", [1_000, 100_000, 1_000_000])
def test_cpu_quota_usec_max_is_none(period):
    assert cpu_quota_usec(UNLIMITED, period) is None


@pytest.mark.parametrize("cpus, period", [
    (0.005, 100_000),    # 500us
    (0.0099, 100_000),   # 990us
    (0.5, 1_000),        # 500us
    (0.000001, 1_000_000),
])
def test_cpu_quota_usec_too_small(cpus, period):
    with pytest.raises(ValueError, match="below the kernel minimum"):
        cpu_quota_usec(cpus, period)


@pytest.mark.parametrize("period", [0, 999, 1_000_001, 10_000_000, -100_000])
def test_cpu_quota_usec_bad_period(period):
    with pytest.raises(ValueError, match="period"):
        cpu_quota_usec(1.0, period)


def test_constants_match_spec():
    assert (convert.SHARES_MIN, convert.SHARES_DEFAULT, convert.SHARES_MAX) == (2, 1024, 262144)
    assert (convert.WEIGHT_MIN, convert.WEIGHT_DEFAULT, convert.WEIGHT_MAX) == (1, 100, 10000)
    assert (convert.BFQ_MIN, convert.BFQ_MAX) == (1, 1000)
    assert shares_to_weight(convert.SHARES_DEFAULT) == convert.WEIGHT_DEFAULT
