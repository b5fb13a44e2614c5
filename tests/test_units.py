"""Table tests of quantity, duration and CPU-list parsing (SPEC §1 units). Pure."""

from __future__ import annotations

import random

import pytest

from cgman.model import UNLIMITED
from cgman.units import (UnitError, format_cpu_list, parse_cpu_list, parse_cpus,
                         parse_duration_usec, parse_quantity)

Ki, Mi, Gi, Ti = 1 << 10, 1 << 20, 1 << 30, 1 << 40


# ------------------------------------------------------------------ quantities
@pytest.mark.parametrize("text, expected", [
    (0, 0),
    (1, 1),
    (512, 512),
    (8 * Gi, 8 * Gi),
    ("0", 0),
    ("512", 512),
    ("1Ki", Ki),
    ("1Mi", Mi),
    ("1Gi", Gi),
    ("1Ti", Ti),
    ("512Mi", 512 * Mi),
    ("1800Mi", 1800 * Mi),
    ("8Gi", 8 * Gi),
    ("1k", 1000),
    ("1M", 10**6),
    ("1G", 10**9),
    ("1T", 10**12),
    ("2G", 2 * 10**9),
    ("1.5Gi", Gi + Gi // 2),
    ("0.5Mi", Mi // 2),
    ("0.25Ki", 256),
    ("2.5M", 2_500_000),
    ("1.5k", 1500),
    ("1.000Gi", Gi),
    (" 2Gi ", 2 * Gi),       # surrounding blanks are tolerated
    ("max", UNLIMITED),
    (" max ", UNLIMITED),
])
def test_parse_quantity(text, expected):
    got = parse_quantity(text)
    if expected is UNLIMITED:
        assert got is UNLIMITED
    else:
        assert got == expected
        assert type(got) is int


def test_binary_and_decimal_suffixes_differ():
    for b, d in (("Ki", "k"), ("Mi", "M"), ("Gi", "G"), ("Ti", "T")):
        assert parse_quantity("1" + b) > parse_quantity("1" + d)


@pytest.mark.parametrize("bad, fragment", [
    (-1, "negative"),
    (-(1 << 40), "negative"),
    ("-1", "bad quantity"),
    ("-1Gi", "bad quantity"),
    ("2GB", "bad unit 'GB'"),
    ("1K", "bad unit 'K'"),        # Kubernetes' decimal kilo is a lower-case k
    ("1gi", "bad unit 'gi'"),
    ("1KiB", "bad unit 'KiB'"),
    ("10m", "bad unit 'm'"),       # milli makes no sense for bytes
    ("1 2Gi", "bad quantity"),
    ("Gi", "bad quantity"),
    ("", "bad quantity"),
    ("1.Gi", "bad quantity"),
    (".5Gi", "bad quantity"),
    ("1e9", "bad quantity"),
    ("MAX", "bad quantity"),
    ("unlimited", "bad quantity"),
    (True, "expected a quantity"),
    (False, "expected a quantity"),
    (None, "expected a quantity"),
    (1.5, "expected a quantity"),
    ([1], "expected a quantity"),
])
def test_parse_quantity_rejects(bad, fragment):
    with pytest.raises(UnitError) as e:
        parse_quantity(bad)
    assert fragment in str(e.value)
    assert isinstance(e.value, ValueError)     # policy layer catches ValueError


# ------------------------------------------------------------------ durations
@pytest.mark.parametrize("text, usec", [
    ("100ms", 100_000),
    ("1s", 1_000_000),
    ("250us", 250),
    ("250µs", 250),
    ("1m", 60_000_000),
    ("1ms", 1_000),
    ("1000us", 1_000),
    ("1.5ms", 1_500),
    ("0.5s", 500_000),
    ("0.25ms", 250),
    ("1.1ms", 1_100),
    (" 50ms ", 50_000),
    ("0us", 0),
])
def test_parse_duration_usec(text, usec):
    assert parse_duration_usec(text) == usec


@pytest.mark.parametrize("bad, fragment", [
    (100, "expected a duration"),        # a bare number has no unit: refused, not guessed
    (0.1, "expected a duration"),
    (True, "expected a duration"),
    (None, "expected a duration"),
    ("100", "bad duration"),
    ("100h", "bad duration"),
    ("100 msec", "bad duration"),
    ("-1ms", "bad duration"),
    ("ms", "bad duration"),
    ("1.2us", "finer than a microsecond"),
    ("0.0001ms", "finer than a microsecond"),
])
def test_parse_duration_rejects(bad, fragment):
    with pytest.raises(UnitError, match=fragment):
        parse_duration_usec(bad)


# Decimal, not float: float('2.01') * 1000 == 2009.9999999999998 (refused before 92fee8c).
@pytest.mark.parametrize("text, usec", [
    ("16.1ms", 16_100),
    ("2.01ms", 2_010),
    ("4.02ms", 4_020),
    ("32.3ms", 32_300),
    ("2.3s", 2_300_000),
    ("0.000001s", 1),
    ("1.000001s", 1_000_001),
])
def test_parse_duration_usec_decimal_exactness(text, usec):
    assert parse_duration_usec(text) == usec


@pytest.mark.parametrize("unit, mult", [("us", 1), ("ms", 1000), ("s", 10**6), ("m", 60 * 10**6)])
def test_parse_duration_usec_is_exact_on_a_decimal_grid(unit, mult):
    for i in range(1000):
        for dec in (1, 2, 3):
            text = f"{i // 10**dec}.{i % 10**dec:0{dec}d}{unit}"
            if (i * mult) % 10**dec == 0:
                assert parse_duration_usec(text) == i * mult // 10**dec, text
            else:
                with pytest.raises(UnitError, match="finer than a microsecond"):
                    parse_duration_usec(text)


# ------------------------------------------------------------------ cpus
@pytest.mark.parametrize("value, cpus", [
    (0.5, 0.5),
    (1, 1.0),
    (2, 2.0),
    (1.5, 1.5),
    ("1.5", 1.5),
    ("2", 2.0),
    (" 0.25 ", 0.25),
    (0.001, 0.001),
    (64, 64.0),
])
def test_parse_cpus(value, cpus):
    got = parse_cpus(value)
    assert got == cpus
    assert type(got) is float


@pytest.mark.parametrize("value", ["max", " max "])
def test_parse_cpus_max(value):
    assert parse_cpus(value) is UNLIMITED


@pytest.mark.parametrize("bad, fragment", [
    (0, "positive"),
    (0.0, "positive"),
    (-1, "positive"),
    ("-0.5", "positive"),
    ("0", "positive"),
    ("abc", "number of CPUs"),
    ("", "number of CPUs"),
    ("MAX", "number of CPUs"),
    ("2cpus", "number of CPUs"),
    (True, "number of CPUs"),
    (None, "number of CPUs"),
    ([1], "number of CPUs"),
])
def test_parse_cpus_rejects(bad, fragment):
    with pytest.raises(UnitError, match=fragment):
        parse_cpus(bad)


@pytest.mark.parametrize("bad", ["nan", "inf", "1e400", float("inf"), float("nan")])
def test_parse_cpus_rejects_non_finite(bad):
    with pytest.raises(UnitError):
        parse_cpus(bad)


# ------------------------------------------------------------------ cpu lists
@pytest.mark.parametrize("text, cpus", [
    ("0", {0}),
    (0, {0}),
    (3, {3}),
    ("0-3", {0, 1, 2, 3}),
    ("0-3,6", {0, 1, 2, 3, 6}),
    ("0,1", {0, 1}),
    ("1,0", {0, 1}),
    ("0-1,1-2", {0, 1, 2}),
    ("2-2", {2}),
    ("0, 2 ,4", {0, 2, 4}),
    (" 0-1 ", {0, 1}),
    ("8-11,0-3", {0, 1, 2, 3, 8, 9, 10, 11}),
    ("127", {127}),
])
def test_parse_cpu_list(text, cpus):
    got = parse_cpu_list(text)
    assert got == frozenset(cpus)
    assert isinstance(got, frozenset)


@pytest.mark.parametrize("bad, fragment", [
    ("", "bad cpu list"),
    ("a", "bad cpu list"),
    ("0-", "bad cpu list"),
    ("-1", "bad cpu list"),
    (",0", "bad cpu list"),
    ("0,", "bad cpu list"),
    ("0 - 3", "bad cpu list"),
    ("0-3-5", "bad cpu list"),
    ("0;1", "bad cpu list"),
    ("3-1", "bad range '3-1'"),
    (-1, "bad cpu list"),
    (True, "bad cpu list"),
    (None, "bad cpu list"),
    (1.0, "bad cpu list"),
    ([0, 1], "bad cpu list"),
])
def test_parse_cpu_list_rejects(bad, fragment):
    with pytest.raises(UnitError, match=fragment):
        parse_cpu_list(bad)


@pytest.mark.parametrize("cpus, text", [
    (set(), ""),
    ({0}, "0"),
    ({0, 1}, "0-1"),
    ({0, 2}, "0,2"),
    ({0, 1, 2, 3, 6}, "0-3,6"),
    ({5, 3, 4, 0}, "0,3-5"),
    ({0, 1, 2, 3, 8, 9, 10, 11}, "0-3,8-11"),
    ({1, 3, 5, 6}, "1,3,5-6"),
])
def test_format_cpu_list(cpus, text):
    assert format_cpu_list(frozenset(cpus)) == text
    assert format_cpu_list(set(cpus)) == text


@pytest.mark.parametrize("text, canonical", [
    ("0,1", "0-1"),
    ("0-1", "0-1"),
    ("1,0,2", "0-2"),
    ("0-3,6", "0-3,6"),
    ("6,0-3", "0-3,6"),
    ("0-1,1-2,4", "0-2,4"),
    (" 0 , 2 ", "0,2"),
])
def test_cpu_list_text_round_trip(text, canonical):
    assert format_cpu_list(parse_cpu_list(text)) == canonical
    assert parse_cpu_list(canonical) == parse_cpu_list(text)


@pytest.mark.parametrize("seed", range(25))
def test_cpu_list_set_round_trip(seed):
    rng = random.Random(seed)
    cpus = frozenset(rng.sample(range(256), rng.randint(1, 64)))
    text = format_cpu_list(cpus)
    assert parse_cpu_list(text) == cpus
    assert format_cpu_list(parse_cpu_list(text)) == text
