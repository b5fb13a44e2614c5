"""The exporter's C path (cgman/_fastread.c) held to the Python reads of drivers/, without
cgroups: the same kernel-shaped files go through C and through drivers/statfiles.py and
must give the same values, slot by slot; whole scrapes of fixture trees give the same text
by either path; and the tables C and Python share are checked name by name, as written in
_fastread.c (whether or not it is built) and as built."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from cgman.drivers import statfiles
from cgman.exporter import fast

from .kernel_files import CPU_PRESSURE_BEFORE_5_13, HYBRID_UNIFIED, V1, V2
from .test_reads import LEAF, ROOT, V2_VALUES, fixture_host

C = fast.module()
needs_c = pytest.mark.skipif(C is None, reason="cgman._fastread is not built (scripts/setup.sh builds it)")

# (parser name, text): every C kind on every shape of its file that tests hold
SAMPLES = [
    ("v2_cpu_stat", V2["cpu.stat"]), ("v2_cpu_stat", HYBRID_UNIFIED["cpu.stat"]),
    ("v1_cpuacct_usage", V1["cpuacct.usage"]), ("v1_cpuacct_stat", V1["cpuacct.stat"]),
    ("v1_cpu_stat", V1["cpu.stat"]), ("memory_bytes", V2["memory.current"]),
    ("memory_bytes", V1["memory.usage_in_bytes"]), ("v1_memory_stat", V1["memory.stat"]),
    ("v2_memory_stat", V2["memory.stat"]), ("v1_memory_stat_rss", V1["memory.stat"]),
    ("v2_memory_stat_rss", V2["memory.stat"]), ("oom_kills", V1["memory.oom_control"]),
    ("oom_kills", V2["memory.events"]), ("v1_blkio_bytes", V1["blkio.throttle.io_service_bytes_recursive"]),
    ("v1_blkio_ops", V1["blkio.throttle.io_serviced_recursive"]), ("v2_io_stat", V2["io.stat"]),
    ("pids", V2["pids.current"]), ("v1_freezer", V1["freezer.state"]), ("v1_freezer", "THAWED\n"),
    ("v2_events", V2["cgroup.events"]), ("v2_events", HYBRID_UNIFIED["cgroup.events"]),
    ("psi_cpu", V2["cpu.pressure"]), ("psi_cpu", CPU_PRESSURE_BEFORE_5_13),
    ("psi_memory", V2["memory.pressure"]), ("psi_io", V2["io.pressure"]),
]


def source_tables() -> tuple[list[str], list[str]]:
    """SLOTS and KINDS as cgman/_fastread.c writes them (its X-macro tables), read from the
    source, so that the tables are held to Python whether or not the C helper is built."""
    src = (Path(fast.__file__).parent.parent / "_fastread.c").read_text()

    def table(name: str) -> list[str]:
        m = re.search(rf"^#define {name}\(X\)((?:.*\\\n)*.*)$", src, re.M)
        assert m, f"no {name} in _fastread.c"
        return re.findall(r'X\(\s*\w+\s*,\s*"([^"]*)"\s*\)', m.group(1))
    return table("SLOT_TABLE"), table("KIND_TABLE")


def test_every_c_kind_has_samples():
    assert set(source_tables()[1][1:]) == {name for name, _ in SAMPLES}


def test_each_parser_yields_the_values_statfiles_says():
    """statfiles.YIELDS, by which status and ps choose the files to open, is what each parser
    gives on every shape of its file (no more, no less)."""
    got: dict[statfiles.Parser, set[str]] = {p: set() for p in statfiles.PARSERS.values()}
    for kind, text in [*SAMPLES, ("memory_peak", V2["memory.peak"])]:
        out: statfiles.Values = {}
        statfiles.PARSERS[kind](text, out)
        got[statfiles.PARSERS[kind]] |= set(out)
    assert {n: got[p] for n, p in statfiles.PARSERS.items()} == \
        {n: set(statfiles.YIELDS[p]) for n, p in statfiles.PARSERS.items()}


def _c_values(tmp_path: Path, kind: str, text: str) -> dict[str, int]:
    """read_parse of one file of ``kind``: the value slots it filled (-1: absent)."""
    f = tmp_path / "file"
    f.write_text(text)
    fd = os.open(f, os.O_RDONLY)
    try:
        raw = C.read_parse([fd], bytes([C.KINDS.index(kind)]), 1)
    finally:
        os.close(fd)
    slots = memoryview(raw).cast("q")
    return {name: slots[i] for i, name in enumerate(C.SLOTS) if not name.startswith("_") and slots[i] >= 0}


@needs_c
@pytest.mark.parametrize("kind, text", SAMPLES, ids=[f"{k}-{i}" for i, (k, _) in enumerate(SAMPLES)])
def test_c_parses_each_file_as_the_python_parser_does(tmp_path, kind, text):
    py: statfiles.Values = {}
    statfiles.PARSERS[kind](text, py)
    got = _c_values(tmp_path, kind, text)
    if "memory_bytes" in py:                 # C derives the working set after a container's files
        assert got.pop("memory_working_set_bytes") == statfiles.finalize(dict(py))["memory_working_set_bytes"]
    assert got == py


# ------------------------------------------------------------------ shared tables
def test_the_c_tables_match_what_python_uses():
    slots, kinds = source_tables()
    assert len(slots) > 20 and len(kinds) > 15                 # the tables were found and read
    assert fast.mismatches(slots, kinds) == []


def test_the_c_build_is_of_these_sources():
    """A stale build (other tables than _fastread.c's) would make the exporter parse in Python."""
    if C is None:
        pytest.skip("cgman._fastread is not built")
    assert (list(C.SLOTS), list(C.KINDS)) == source_tables(), "rebuild it: pip install -e ."
    assert fast.MISMATCHES == [] and fast.module() is C
    assert fast.SLOTS == C.SLOTS and fast.NSLOTS == C.NSLOTS == len(C.SLOTS)
    assert {fast.KIND[statfiles.PARSERS[k]] for k in C.KINDS[1:]} == set(range(1, len(C.KINDS)))


@pytest.mark.parametrize("plant, named", [
    (lambda s, k: (s[:s.index("pids")] + s[s.index("pids") + 1:], k), "slot 'pids' is used by Python"),
    (lambda s, k: (s[:s.index("_info") + 1] + ["extra"] + s[s.index("_info") + 1:], k), "record slots"),
    (lambda s, k: (s[:s.index("_info")] + ["_start_usec", "_info"] + s[s.index("_start_usec") + 1:], k),
     "record slots"),
    (lambda s, k: (s, k + ["v3_cpu_stat"]), "C kind 'v3_cpu_stat' has no parser"),
    (lambda s, k: (s, [n for n in k if n != "psi_io"]), "parser 'psi_io' of drivers/statfiles.py has no C kind"),
    (lambda s, k: (s, k[1:]), "kind 0 must be 'skip'")])
def test_a_mismatch_of_the_tables_is_named(plant, named):
    slots, kinds = source_tables()
    assert fast.mismatches(slots, kinds) == []
    found = fast.mismatches(*plant(slots, kinds))
    assert any(named in m for m in found), found


_STALE = """
import logging, sys
import cgman._fastread as m
{plant}
logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(message)s")
from cgman.exporter import fast
from cgman.exporter.collector import Collector
from cgman.drivers.detect import HostInfo
col = Collector(HostInfo("v2", {{}}, {unified!r}, frozenset()), {run!r}, {state!r})
print(fast.module(), fast.module(), col._fast)
"""


@needs_c
@pytest.mark.parametrize("plant, named", [
    ("del m.SLOTS, m.KINDS", "exports no SLOTS/KINDS table"),
    ("del m.KINDS", "exports no KINDS table"),
    ("m.KINDS = tuple(k for k in m.KINDS if k != 'psi_io')", "parser 'psi_io' of drivers/statfiles.py has no C kind")])
def test_a_stale_c_build_is_not_used_and_says_so_once(tmp_path, plant, named):
    """A _fastread built from other sources (its tables absent or different): the exporter parses
    in Python, and says why, once, and how to rebuild it."""
    from .conftest import REPO
    info = fixture_host(tmp_path, "v2").info
    code = _STALE.format(plant=plant, unified=info.unified, run=str(tmp_path / "run"), state=str(tmp_path / "state"))
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, timeout=60)
    assert p.returncode == 0, p.stderr
    assert p.stdout.split() == ["None", "None", "None"]           # neither module() nor a collector uses it
    warnings = [ln for ln in p.stderr.splitlines() if ln.startswith("WARNING")]
    assert len(warnings) == 1, p.stderr
    assert named in warnings[0] and "pip install -e ." in warnings[0]


def test_an_unbuilt_c_helper_is_the_quiet_slow_path(tmp_path):
    from .conftest import REPO
    code = ("import sys, logging; sys.modules['cgman._fastread'] = None; logging.basicConfig()\n"
            "from cgman.exporter import fast; print(fast.module())")
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, timeout=60)
    assert (p.returncode, p.stdout.strip(), p.stderr) == (0, "None", "")


# ------------------------------------------------------------------ whole scrapes
def _record(run: Path, name: str, cgroup: str, root: str = ROOT, **fields: object) -> None:
    d = run / "containers" / name
    d.mkdir(parents=True)
    (d / "record.json").write_text(json.dumps({
        "id": f"id-{name}", "name": name, "tenant": "acme", "group": "grp", "cgroup_root": root,
        "cgroup": cgroup, "state": "running", "started": 1700000000.25, "memory_byte_seconds": 12.5,
        "limits": {"cpu_max_cpus": 0.5, "memory_max_bytes": 64 << 20, "pids_max": 16}, **fields}))


def _scrape(host, tmp_path: Path, *, c_scrape: bool, compat: str | None = None):
    from cgman.exporter.collector import Collector
    col = Collector(host.info, str(tmp_path / "run"), str(tmp_path / "state"), c_scrape=c_scrape, compat=compat)
    try:
        return col.collect(), col.read_errors
    finally:
        col.close()


@needs_c
@pytest.mark.parametrize("mode", ["v2", "hybrid", "v1"])
@pytest.mark.parametrize("compat", [None, "cadvisor"])
def test_the_c_and_the_python_scrape_of_the_same_files_are_the_same_text(tmp_path, mode, compat):
    host = fixture_host(tmp_path, mode)
    _record(tmp_path / "run", "leaf", LEAF)
    c_text, c_errors = _scrape(host, tmp_path, c_scrape=True, compat=compat)
    py_text, py_errors = _scrape(host, tmp_path, c_scrape=False, compat=compat)
    assert (c_errors, py_errors) == (0, 0)
    c_lines = [ln for ln in c_text.splitlines() if not ln.startswith("container_last_seen")]
    assert c_lines == [ln for ln in py_text.splitlines() if not ln.startswith("container_last_seen")]
    labels = '{container="leaf",group="grp",tenant="acme"}'
    assert f"cgman_memory_usage_bytes{labels} {5459968 if mode == 'v2' else 200704}" in c_lines
    assert f"cgman_limit_cpu_cpus{labels} 0.5" in c_lines


def test_a_scrape_shows_the_values_drivers_read(tmp_path):
    from cgman.drivers.reads import read_stats
    from cgman.exporter.metrics import CONTAINER
    host = fixture_host(tmp_path, "v2")
    _record(tmp_path / "run", "leaf", LEAF)
    text, _ = _scrape(host, tmp_path, c_scrape=C is not None)
    values = read_stats(host, LEAF)
    assert values == V2_VALUES
    labels = '{container="leaf",group="grp",tenant="acme"}'
    for m in CONTAINER:
        v = values[m.key]
        shown = f"{v // 10**6}.{v % 10**6:06d}".rstrip("0").rstrip(".") if m.div else str(v)   # µs as seconds
        assert f"{m.name}{labels} {shown}\n" in text, m.name


@pytest.mark.parametrize("c_scrape", [True, False])
def test_a_scrape_reads_nothing_outside_the_root(tmp_path, c_scrape):
    """A record naming a path out of the root is no container; a group that is a symlink is not
    followed (a read error, the rest of the scrape stands)."""
    if c_scrape and C is None:
        pytest.skip("cgman._fastread is not built")
    host = fixture_host(tmp_path, "v2")
    mount = Path(host.info.unified or "")
    _record(tmp_path / "run", "leaf", LEAF)
    _record(tmp_path / "run", "escape", "../../outside")
    _record(tmp_path / "run", "escape-root", "leaf", root="../outside")
    (mount / "outside").mkdir()
    for name, text in V2.items():
        (mount / "outside" / name).write_text(text)
    (mount / ROOT / "grp" / "linked").symlink_to(mount / "outside")
    _record(tmp_path / "run", "linked", "grp/linked")
    text, errors = _scrape(host, tmp_path, c_scrape=c_scrape)
    assert 'container="leaf"' in text
    assert 'container="escape' not in text and 'container="linked"' not in text
    assert errors == 1                       # the symlink; the two bad records are not containers


@pytest.mark.parametrize("c_scrape", [True, False])
@pytest.mark.parametrize("compat", [None, "cadvisor"])
def test_a_record_with_a_broken_start_or_final_usage_fails_no_scrape(tmp_path, c_scrape, compat):
    """A record is hostile input: a start time that is not a number, or a final usage that is not
    a mapping, costs that container its start-time sample, never the scrape."""
    if c_scrape and C is None:
        pytest.skip("cgman._fastread is not built")
    host = fixture_host(tmp_path, "v2")
    _record(tmp_path / "run", "leaf", LEAF)
    _record(tmp_path / "run", "odd-start", LEAF, started="x")
    _record(tmp_path / "run", "odd-usage", LEAF, state="exited", ledger_pending=True, final_usage=[1])
    text, _ = _scrape(host, tmp_path, c_scrape=c_scrape, compat=compat)
    assert 'container="leaf"' in text and 'container="odd-start"' in text
