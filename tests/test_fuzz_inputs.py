"""Fuzzing the policy loader and the price sheet parser (issue 16): whatever the input, the
result is a valid model or cgman's own one-line error, never another exception.

Bounded: derandomized (the same examples on every run, so CI cannot flake) and a few hundred
examples per property; the whole file takes a few seconds.
"""

from __future__ import annotations

import os
import re
import tempfile
from pathlib import Path

import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cgman.errors import CgmanError
from cgman.model import Group
from cgman.policy import load_files, parse_text
from cgman.accounting.prices import PriceSheet, load_prices, parse_prices

REPO = Path(__file__).resolve().parent.parent
SEEDS = [p.read_text() for p in sorted((REPO / "policies").glob("*.yaml"))]
PRICE_SEED = (REPO / "prices" / "example.yaml").read_text()
FUZZ = settings(max_examples=600, deadline=2000, derandomize=True, database=None,
                suppress_health_check=[HealthCheck.too_slow])

# Pieces that have broken parsers: YAML syntax, anchors and tags, numbers at and past their
# limits, non-ASCII digits, control characters, names the kernel refuses.
PIECES = ["&a ", "*a", "!!int ", "!!float ", "!!binary ", "!!python/object ", "<<: ", "? ", "{", "}",
          "[", "]", ", ", ": ", "- ", "\n", "\n  ", "'", '"', "#", "|", ">", "%YAML 1.1\n", "---\n",
          "...\n", "-0", "1e308", ".nan", ".inf", "-.inf", "0x1F", "0o17", "1:30", "1_000", "9" * 30,
          str(2**63), str(2**64), "max", "١٢", "０-３", "Mi", "Gi", "Ei", "..", "/", "\t", "\x00",
          "\u2028", "\ufeff", "é", "~", "null", "true", "0.1234567890123456789012345", "9" * 400,
          '!!int ""', '!!float ""', "!!timestamp 2024-99-99", "&a [*a]", "&a {children: {x: *a}}"]
VALUE = re.compile(r"(?<=: )[^\s,{}\[\]#]+")


def mutated(seeds: list[str]) -> st.SearchStrategy[str]:
    """A seed document with pieces spliced in at random places and random spans cut out."""
    @st.composite
    def build(draw: st.DrawFn) -> str:
        text = draw(st.sampled_from(seeds))
        for _ in range(draw(st.integers(1, 6))):
            at = draw(st.integers(0, len(text)))
            how = draw(st.sampled_from(["insert", "cut", "value"]))
            if how == "insert":
                text = text[:at] + draw(st.sampled_from(PIECES)) + text[at:]
            elif how == "cut":
                text = text[:at] + text[at + draw(st.integers(1, 20)):]
            else:                           # a value swapped for a piece: reaches the field checks
                spots = list(VALUE.finditer(text))
                if spots:
                    m = spots[draw(st.integers(0, len(spots) - 1))]
                    text = text[:m.start()] + draw(st.sampled_from(PIECES)) + text[m.end():]
        return text
    return build()


SCALARS = st.one_of(st.integers(-2**70, 2**70), st.floats(), st.text(max_size=20), st.booleans(),
                    st.none(), st.sampled_from(PIECES))
POLICY_KEYS = ["version", "policies", "cpu", "memory", "io", "pids", "weight", "shares", "max", "period",
               "cpus", "mems", "high", "low", "min", "swap", "devices", "device", "rbps", "children",
               "container", "launch", "namespaces", "hostname", "network", "bridge", "subnet", "mode",
               "rootfs", "layers", "user", "uid", "tenant", "frozen", "g", "acme"]
PRICE_KEYS = ["version", "currency", "prices", "cpu", "memory", "io_read", "io_write", "container",
              "price", "per", "mode"]


def documents(keys: list[str]) -> st.SearchStrategy[str]:
    """Random nested data over the format's own keys, dumped as YAML."""
    tree = st.recursive(SCALARS, lambda kids: st.one_of(
        st.lists(kids, max_size=4), st.dictionaries(st.sampled_from(keys), kids, max_size=5)), max_leaves=25)
    data = st.fixed_dictionaries({"version": st.sampled_from([1, 1, 2, "1"])},
                                 optional={k: tree for k in keys[1:4]})
    return data.map(lambda d: yaml.safe_dump(d, allow_unicode=True))


def _policy(text: str) -> None:
    try:
        groups = parse_text(text, "fuzz.yaml")
    except CgmanError as e:
        assert "\n" not in str(e) and len(str(e)) < 1500, str(e)
    else:
        assert all(isinstance(g, Group) for g in groups)


def _prices(text: str) -> None:
    try:
        sheet = parse_prices(text, "fuzz.yaml")
    except CgmanError as e:
        assert "\n" not in str(e) and len(str(e)) < 1500, str(e)
    else:
        assert isinstance(sheet, PriceSheet)
        assert all(p.price.is_finite() and not p.price.is_signed() for p in sheet.prices.values())


@FUZZ
@given(st.one_of(st.text(max_size=300), mutated(SEEDS), documents(POLICY_KEYS)))
def test_the_policy_loader_gives_groups_or_a_policy_error(text):
    _policy(text)


@FUZZ
@given(st.one_of(st.text(max_size=300), mutated([PRICE_SEED]), documents(PRICE_KEYS)))
def test_the_price_parser_gives_a_sheet_or_a_policy_error(text):
    _prices(text)


@settings(FUZZ, max_examples=200)
@given(st.binary(max_size=400) | mutated(SEEDS + [PRICE_SEED]).map(lambda t: t.encode("utf-8", "surrogatepass")))
def test_files_of_any_bytes_load_or_fail_with_a_policy_error(data):
    with tempfile.TemporaryDirectory() as d:
        f = os.path.join(d, "in.yaml")
        Path(f).write_bytes(data)
        for load in (lambda: load_files([f]), lambda: load_prices(f)):
            try:
                load()
            except CgmanError as e:
                assert "\n" not in str(e), str(e)
