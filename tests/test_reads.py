"""The read home under drivers/: one parser per kernel file format (formats.py), the table of
files per host (statfiles.py), and the reads status and the bill share (reads.py).

Pure tables first; then whole reads on fixture trees (regular files laid out as cgroupfs lays
them out, read through the same confined walk); last, on the real kernel, `cgman status` and a
container's bill reading the same numbers.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from cgman.drivers import Host, formats, statfiles
from cgman.drivers.detect import HostInfo
from cgman.drivers.reads import live_limits, memory_bytes, read_stats, usage

from .kernel_files import CPU_PRESSURE_BEFORE_5_13, HYBRID_UNIFIED, V1, V2

TICK = statfiles._TICK_USEC
ROOT, LEAF = "root", "grp/leaf"


# ------------------------------------------------------------------------- formats
@pytest.mark.parametrize("text, want", [
    ("max\n", None), ("-1\n", None), ("9223372036854771712\n", None), (f"{1 << 62}\n", None),
    (f"{(1 << 62) - 1}\n", (1 << 62) - 1), ("0\n", 0), ("536870912\n", 536870912), ("16", 16)])
def test_a_limit_reads_as_a_number_or_none_for_no_limit(text, want):
    assert formats.limit(text) == want


@pytest.mark.parametrize("text", ["", "lots\n", "1.5\n"])
def test_a_limit_that_is_no_number_is_an_error(text):
    with pytest.raises(ValueError):
        formats.limit(text)


@pytest.mark.parametrize("text, want", [("max 100000\n", (None, 100000)), ("50000 100000\n", (50000, 100000)),
                                        ("1000 1000", (1000, 1000))])
def test_cpu_max(text, want):
    assert formats.cpu_max(text) == want


def test_single_values():
    assert formats.single_int("9579106662323\n") == 9579106662323
    assert formats.single_value("THAWED\n") == "THAWED"
    assert [formats.v1_frozen(s) for s in ("THAWED\n", "FREEZING\n", "FROZEN\n")] == [False, True, True]


def test_flat_keyed_keeps_values_as_written():
    assert formats.flat_keyed("default 100\n8:0 200\n") == {"default": "100", "8:0": "200"}
    assert formats.flat_keyed(V2["memory.events"])["oom_kill"] == "1"
    assert formats.flat_keyed("") == {}


@pytest.mark.parametrize("text, key, want", [
    (V2["memory.stat"], "file", 4096000), (V2["memory.stat"], "anon", 1052672),       # not file_mapped, anon_thp
    (V2["memory.events"], "oom_kill", 1), (V1["memory.stat"], "total_rss", 110592),
    (V1["memory.stat"], "inactive_file", 4096), ("xfile 5\nfile 7", "file", 7),
    (V2["memory.stat"], "missing", None), (V2["cpu.pressure"], "avg10", None)])
def test_one_key_of_a_flat_keyed_file(text, key, want):
    assert formats.flat_keyed_int(text, key) == want


_KEY = st.from_regex(r"[a-z][a-z_.]{0,12}", fullmatch=True)


@given(st.dictionaries(_KEY, st.integers(min_value=0, max_value=2**63 - 1), max_size=12))
def test_both_flat_keyed_parsers_read_the_same_file_the_same_way(values):
    text = "".join(f"{k} {v}\n" for k, v in values.items())
    assert formats.flat_keyed(text) == {k: str(v) for k, v in values.items()}
    for k, v in values.items():
        assert formats.flat_keyed_int(text, k) == v


def test_nested_keyed():
    io = formats.nested_keyed(V2["io.stat"])
    assert io["254:0"]["rbytes"] == "2101248" and io["8:0"]["wios"] == "0"
    psi = formats.nested_keyed(V2["memory.pressure"])
    assert psi["full"] == {"avg10": "0.50", "avg60": "0.10", "avg300": "0.00", "total": "40000"}
    assert formats.sub_keys("rbps=1048576 wiops=max") == {"rbps": "1048576", "wiops": "max"}


@pytest.mark.parametrize("text, key, sub, want", [
    (V2["memory.pressure"], "some", "total", 81234), (V2["memory.pressure"], "full", "total", 40000),
    (CPU_PRESSURE_BEFORE_5_13, "full", "total", None),
    (V2["io.stat"], "8:0", "rbytes", 1000), (V2["io.stat"], "254:0", "dios", 0), (V2["io.stat"], "8:0", "bytes", None),
    ("xsome total=1\nsome a=2 total=3", "some", "total", 3)])
def test_one_sub_key_of_a_nested_keyed_file(text, key, sub, want):
    assert formats.nested_keyed_int(text, key, sub) == want


def test_a_sub_key_that_is_no_integer_is_an_error():
    with pytest.raises(ValueError):                  # "0.50": an error, never a guess
        formats.nested_keyed_int(V2["memory.pressure"], "full", "avg10")


@given(st.dictionaries(_KEY, st.dictionaries(_KEY, st.integers(min_value=0, max_value=2**63 - 1), max_size=5),
                       max_size=6))
def test_both_nested_keyed_parsers_read_the_same_file_the_same_way(values):
    text = "".join(f"{k} " + " ".join(f"{s}={v}" for s, v in subs.items()) + "\n" for k, subs in values.items())
    assert formats.nested_keyed(text) == {k: {s: str(v) for s, v in subs.items()} for k, subs in values.items()}
    for k, subs in values.items():
        for s, v in subs.items():
            assert formats.nested_keyed_int(text, k, s) == v


def test_v1_blkio_sums_reads_and_writes_of_every_device():
    assert formats.v1_blkio_totals(V1["blkio.throttle.io_service_bytes_recursive"]) == (4196, 8192)
    assert formats.v1_blkio_totals(V1["blkio.throttle.io_serviced_recursive"]) == (4, 2)
    assert formats.v1_blkio_totals("Total 0\n") == (0, 0)


# --------------------------------------------------------------------- fixture trees
def _lay(mount: Path, files: dict[str, str], top: dict[str, str] | None = None) -> None:
    """The files of a group at <mount>/root/grp/leaf (and of its ancestors, empty), and
    ``top`` at the mount itself (the kernel's root group)."""
    for rel in (ROOT, f"{ROOT}/grp", f"{ROOT}/{LEAF}"):
        (mount / rel).mkdir(parents=True, exist_ok=True)
    for name, text in files.items():
        (mount / ROOT / LEAF / name).write_text(text)
    for name, text in (top or {}).items():
        (mount / name).write_text(text)


def fixture_host(tmp_path: Path, mode: str) -> Host:
    """A Host over fixture hierarchies shaped like a v2, hybrid or v1 host's."""
    unified = tmp_path / "unified"
    v1 = {c: tmp_path / d for c, d in (("cpu", "cpu"), ("cpuacct", "cpuacct"), ("memory", "memory"),
                                       ("io", "blkio"), ("pids", "pids"), ("freezer", "freezer"))}
    if mode == "v2":
        _lay(unified, V2, {"cpu.pressure": ""})
        info = HostInfo("v2", {}, str(unified), frozenset({"cpu", "memory", "io", "pids"}))
    else:
        for ctl, mount in v1.items():
            _lay(mount, {f: t for f, t in V1.items() if f.split(".")[0] in (ctl, "blkio" if ctl == "io" else "")})
        if mode == "hybrid":
            _lay(unified, HYBRID_UNIFIED, {"cpu.pressure": ""})
        info = HostInfo(mode, {c: str(m) for c, m in v1.items()},  # type: ignore[arg-type]
                        str(unified) if mode == "hybrid" else None, frozenset())
    return Host(info, ROOT)


V2_VALUES = {"cpu_usage_usec": 1234567, "cpu_user_usec": 1000000, "cpu_system_usec": 234567,
             "cpu_throttled_usec": 35000, "memory_bytes": 5459968, "memory_working_set_bytes": 5459968 - 2048000,
             "memory_oom_kills": 1, "io_read_bytes": 2102248, "io_write_bytes": 4096, "io_read_ops": 41,
             "io_write_ops": 1, "pids": 3, "frozen": 0, "psi_cpu_some_usec": 3273, "psi_cpu_full_usec": 3249,
             "psi_memory_some_usec": 81234, "psi_memory_full_usec": 40000, "psi_io_some_usec": 17,
             "psi_io_full_usec": 5}
V1_VALUES = {"cpu_usage_usec": 9579106662, "cpu_user_usec": 770182 * TICK, "cpu_system_usec": 187728 * TICK,
             "cpu_throttled_usec": 35000, "memory_bytes": 200704, "memory_working_set_bytes": 200704 - 8192,
             "memory_oom_kills": 2, "io_read_bytes": 4196, "io_write_bytes": 8192, "io_read_ops": 4,
             "io_write_ops": 2, "pids": 2, "frozen": 1}
# hybrid: CPU time from the unified cpu.stat (µs), the rest from v1; PSI from the unified tree.
HYBRID_VALUES = {**V1_VALUES, "cpu_usage_usec": 968, "cpu_user_usec": 968, "cpu_system_usec": 0,
                 **{k: v for k, v in V2_VALUES.items() if k.startswith("psi_")}}


@pytest.mark.parametrize("mode, want", [("v2", V2_VALUES), ("hybrid", HYBRID_VALUES), ("v1", V1_VALUES)])
def test_every_value_of_a_group_is_read_from_the_hierarchy_that_has_it(tmp_path, mode, want):
    host = fixture_host(tmp_path, mode)
    assert read_stats(host, LEAF) == want
    final = read_stats(host, LEAF, final=True)
    assert final == {**want, "memory_peak_bytes": 6291456 if mode == "v2" else 262144}
    assert memory_bytes(host, LEAF) == want["memory_bytes"]
    u = usage(host, LEAF)
    assert (u.cpu_usage_usec, u.memory_bytes, u.pids, u.frozen) == \
        (want["cpu_usage_usec"], want["memory_bytes"], want["pids"], mode != "v2")   # v1 FREEZING: frozen


def opened_files(monkeypatch) -> list[str]:
    """The names of the cgroup files opened from now on (every open goes through cgfs._open_at)."""
    from cgman.drivers import cgfs
    opened: list[str] = []
    real = cgfs._open_at
    monkeypatch.setattr(cgfs, "_open_at", lambda dirfd, file: opened.append(file) or real(dirfd, file))
    return opened


@pytest.mark.parametrize("mode, status_files", [
    ("v2", ["cpu.stat", "memory.current", "pids.current", "cgroup.events"]),
    ("hybrid", ["cpu.stat", "memory.usage_in_bytes", "pids.current", "freezer.state"]),
    ("v1", ["cpuacct.usage", "memory.usage_in_bytes", "pids.current", "freezer.state"])])
def test_status_and_ps_open_only_the_files_whose_values_they_show(tmp_path, monkeypatch, mode, status_files):
    """Not the whole stat table (7 files on v2, 10 on v1): one file per value shown."""
    from cgman.containers.manage import PS_VALUES
    host = fixture_host(tmp_path, mode)
    opened = opened_files(monkeypatch)
    u = host.usage(LEAF)
    assert opened == status_files
    assert (u.cpu_usage_usec, u.memory_bytes, u.pids) == tuple(read_stats(host, LEAF)[k]   # type: ignore[index]
                                                              for k in ("cpu_usage_usec", "memory_bytes", "pids"))
    opened.clear()
    u = host.usage(LEAF, PS_VALUES)
    assert opened == status_files[:2] and u.pids is None and u.frozen is None
    assert u.memory_bytes == read_stats(host, LEAF)["memory_bytes"]          # type: ignore[index]


def test_a_reader_of_a_derived_value_reads_what_it_is_derived_from(tmp_path):
    host = fixture_host(tmp_path, "v2")
    files = statfiles.files_for(host.info, ["memory_working_set_bytes"])
    assert [f.file for f in files] == ["memory.current", "memory.stat"]
    assert [f.file for f in statfiles.files_for(host.info, ["psi_io_full_usec", "memory_peak_bytes"])] == \
        ["memory.peak", "io.pressure"]


def test_a_missing_file_leaves_its_values_out_and_a_missing_group_is_none(tmp_path):
    host = fixture_host(tmp_path, "v2")
    os.unlink(tmp_path / "unified" / ROOT / LEAF / "io.pressure")
    (tmp_path / "unified" / ROOT / LEAF / "cpu.pressure").write_text(CPU_PRESSURE_BEFORE_5_13)
    values = read_stats(host, LEAF)
    assert values is not None and "psi_io_some_usec" not in values and "psi_cpu_full_usec" not in values
    assert values["psi_cpu_some_usec"] == 3273 and values["pids"] == 3
    assert read_stats(host, "grp/gone") is None and memory_bytes(host, "grp/gone") is None


def test_pressure_files_are_read_only_where_the_kernel_has_them(tmp_path):
    host = fixture_host(tmp_path, "v2")
    names = [f.file for f in statfiles.stat_files(host.info)]
    assert names[-3:] == ["cpu.pressure", "memory.pressure", "io.pressure"]
    # asked not to, it leaves them out where the kernel has them too
    assert not any(f.file.endswith(".pressure") for f in statfiles.stat_files(host.info, pressure=False))
    os.unlink(tmp_path / "unified" / "cpu.pressure")       # a kernel without PSI
    assert not any(f.file.endswith(".pressure") for f in statfiles.stat_files(host.info))


def test_a_symlinked_group_is_not_read(tmp_path):
    host = fixture_host(tmp_path, "v2")
    leaf = tmp_path / "unified" / ROOT / LEAF
    os.rename(leaf, tmp_path / "elsewhere")
    os.symlink(tmp_path / "elsewhere", leaf)
    assert read_stats(host, LEAF) is None


@pytest.mark.parametrize("mode, files, want", [
    ("v2", {"memory.max": "max\n", "cpu.max": "50000 100000\n", "cpu.weight": "100\n", "pids.max": "16\n"},
     {"memory_max_bytes": "max", "cpu_max": 0.5, "cpu_weight": 100, "pids_max": 16}),
    ("v1", {"memory.limit_in_bytes": "9223372036854771712\n", "cpu.cfs_quota_us": "-1\n",
            "cpu.cfs_period_us": "100000\n", "cpu.shares": "1024\n", "pids.max": "max\n"},
     {"memory_max_bytes": "max", "cpu_max": "max", "cpu_shares": 1024, "pids_max": "max"}),
    ("v1", {"memory.limit_in_bytes": "536870912\n", "cpu.cfs_quota_us": "150000\n",
            "cpu.cfs_period_us": "100000\n"},
     {"memory_max_bytes": 536870912, "cpu_max": 1.5, "cpu_shares": None, "pids_max": None})])
def test_limits_read_back(tmp_path, mode, files, want):
    host = fixture_host(tmp_path, mode)
    for name, text in files.items():
        mount = host.info.unified if mode == "v2" else host.info.v1_mounts[name.split(".")[0]]
        Path(mount, ROOT, LEAF, name).write_text(text)
    assert live_limits(host, LEAF) == want


def test_a_bill_takes_the_tightest_limit_on_the_path(tmp_path):
    from cgman.accounting.usage import effective_limits
    host = fixture_host(tmp_path, "v2")
    mount = Path(host.info.unified or "")
    for rel, mem, cpu in ((ROOT, "1073741824", "max 100000"), (f"{ROOT}/grp", "536870912", "200000 100000"),
                          (f"{ROOT}/{LEAF}", "max", "50000 100000")):
        (mount / rel / "memory.max").write_text(mem + "\n")
        (mount / rel / "cpu.max").write_text(cpu + "\n")
    lim = effective_limits(host, LEAF)
    assert (lim["memory_limit_bytes"], lim["cpu_limit_cpus"]) == (536870912, 0.5)


# ---------------------------------------------------------------------- real kernel
@pytest.mark.kernel
@pytest.mark.cgroup2
def test_status_and_the_bill_read_the_same_numbers(host, tmp_path, monkeypatch):
    """A finished group's counters rest: what `cgman status` shows is what a bill records."""
    from cgman.accounting.usage import effective_limits
    from cgman.policy import load_files
    from cgman.reconcile.apply import apply
    from cgman.reconcile.status import status
    policy = tmp_path / "p.yaml"
    policy.write_text("version: 1\npolicies:\n  g: {memory: {max: 256Mi}, pids: {max: 64}}\n")
    apply(load_files([policy]), host)
    # It waits for a line on stdin, so that all of its work happens inside the group.
    p = subprocess.Popen(["sh", "-c", "read go; i=0; while [ $i -lt 20000 ]; do i=$((i+1)); done"],
                         stdin=subprocess.PIPE)
    try:
        host.attach("g", p.pid)
        p.communicate(b"go\n", timeout=120)
    finally:
        p.kill()
        p.wait()
    from cgman.containers.manage import PS_VALUES
    opened = opened_files(monkeypatch)
    row = status(host, "g")[0]
    table = {f.file for f in statfiles.stat_files(host.info, final=True)}
    shown = sorted(f.file for f in statfiles.files_for(host.info, ["cpu_usage_usec", "memory_bytes", "pids",
                                                                   "frozen"]))
    assert sorted(f for f in opened if f in table) == shown and len(shown) == 4, opened
    opened.clear()
    host.usage("g", PS_VALUES)
    assert len(opened) == 2, opened
    bill = read_stats(host, "g", final=True)
    assert bill is not None and bill["cpu_usage_usec"] > 10_000          # the loop's CPU time was counted
    assert row["cpu_usage_seconds"] * 1e6 == pytest.approx(bill["cpu_usage_usec"], abs=0.5)
    assert (row["memory_bytes"], row["pids"], row["frozen"]) == (bill["memory_bytes"], bill["pids"], False)
    assert (row["limits"]["memory_max_bytes"], row["limits"]["pids_max"]) == (256 << 20, 64)
    assert effective_limits(host, "g")["memory_limit_bytes"] == 256 << 20
