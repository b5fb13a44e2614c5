"""How kernel files read back (drivers/kfiles.py): "already satisfied" and undo values. Pure."""

from __future__ import annotations

import pytest

from cgman.drivers import kfiles
from cgman.drivers.kfiles import satisfied, undo_value

PAGE = kfiles.PAGE
V1_MAX = "9223372036854771712"          # what v1 memory files read after writing -1 (4 KiB pages)
MEMORY_FILES = sorted(kfiles.MEMORY_FILES)


def test_page_size_is_sane():
    assert PAGE >= 4096 and PAGE & (PAGE - 1) == 0


# ------------------------------------------------------------------ memory
@pytest.mark.parametrize("file", MEMORY_FILES)
@pytest.mark.parametrize("desired, live, ok", [
    (str(1 << 30), str(1 << 30), True),
    (str(1 << 30), f"{1 << 30}\n", True),
    (str(1 << 30), str((1 << 30) + PAGE), False),
    (str(1 << 30), str((1 << 30) - PAGE), False),
    # the kernel rounds down to whole pages
    (str(PAGE * 10 + 1), str(PAGE * 10), True),
    (str(PAGE * 11 - 1), str(PAGE * 10), True),
    (str(PAGE * 11), str(PAGE * 10), False),
    ("1000000", str(1000000 // PAGE * PAGE), True),
    ("1", "0", True),
    ("0", "0", True),
    ("0", str(PAGE), False),
    # unlimited: max, -1 and the page-rounded LONG_MAX are all the same
    ("max", "max", True),
    ("max", "max\n", True),
    ("-1", "max", True),
    ("max", "-1", True),
    ("-1", V1_MAX, True),
    ("max", V1_MAX, True),
    ("-1", "9223372036854775807", True),
    ("-1", "9223372036854710272", True),   # LONG_MAX rounded to 64 KiB pages
    ("max", str(1 << 30), False),
    ("-1", str(1 << 30), False),
    (str(1 << 30), "max", False),
    (str(1 << 30), V1_MAX, False),
    ("0", "max", False),
    # unreadable values are never "satisfied"
    ("max", "", False),
    ("garbage", "max", False),
    ("1Gi", str(1 << 30), False),
])
def test_memory_satisfied(file, desired, live, ok):
    assert satisfied(file, desired, live) is ok


@pytest.mark.parametrize("file", MEMORY_FILES)
@pytest.mark.parametrize("live", [V1_MAX, "max", "1073741824", "0"])
def test_memory_undo_restores_live(file, live):
    assert undo_value(file, "12345", live + "\n") == live


def test_memory_files_cover_both_versions():
    assert kfiles.MEMORY_FILES == {
        "memory.limit_in_bytes", "memory.memsw.limit_in_bytes", "memory.soft_limit_in_bytes",
        "memory.max", "memory.high", "memory.low", "memory.min", "memory.swap.max"}


# ------------------------------------------------------------------ cpuset
@pytest.mark.parametrize("file", ["cpuset.cpus", "cpuset.mems"])
@pytest.mark.parametrize("desired, live, ok", [
    ("0,1", "0-1", True),
    ("0-1", "0-1\n", True),
    ("0-1", "0,1", True),
    ("0-3,6", "0-3,6\n", True),
    ("6,0-3", "0-3,6", True),
    ("0,1,2,3", "0-3", True),
    ("0", "0", True),
    ("0-1", "0-2", False),
    ("0-2", "0-1", False),
    ("0", "1", False),
    ("0", "", False),            # empty cpuset (a fresh v1 group) does not satisfy anything
    ("0", "\n", False),
    ("", "", False),             # not a cpu list: never satisfied
    ("x", "0", False),
])
def test_cpuset_satisfied(file, desired, live, ok):
    assert satisfied(file, desired, live) is ok


@pytest.mark.parametrize("live", ["0-3", "", "0,2"])
def test_cpuset_undo(live):
    assert undo_value("cpuset.cpus", "0-1", live + "\n") == live


# ------------------------------------------------------------------ cgroup.subtree_control
@pytest.mark.parametrize("desired, live, ok", [
    ("+cpu +memory", "cpu memory", True),
    ("+cpu +memory", "cpu io memory pids\n", True),
    ("+memory +cpu", "cpu memory", True),
    ("+cpu +memory", "cpu", False),
    ("+cpu", "", False),
    ("+cpu", "cpuset", False),    # whole names, not prefixes
    ("+cpuset", "cpu", False),
    ("", "", True),
])
def test_subtree_control_satisfied(desired, live, ok):
    assert satisfied("cgroup.subtree_control", desired, live) is ok


@pytest.mark.parametrize("desired, live, undo", [
    ("+cpu +memory +io", "cpu", "-io -memory"),          # reverse order, only what was added
    ("+cpu +memory", "", "-memory -cpu"),
    ("+cpu +memory", "cpu memory", ""),
    ("+cpu +cpuset +pids", "cpuset\n", "-pids -cpu"),
])
def test_subtree_control_undo(desired, live, undo):
    assert undo_value("cgroup.subtree_control", desired, live) == undo


# ------------------------------------------------------------------ io.max (per key)
IO_MAX_LIVE = "8:0 rbps=1048576 wbps=max riops=2000 wiops=max\n254:0 rbps=max wbps=max riops=max wiops=7\n"


@pytest.mark.parametrize("desired, live, ok", [
    ("8:0 rbps=1048576", IO_MAX_LIVE, True),
    ("8:0 rbps=1048576 riops=2000", IO_MAX_LIVE, True),
    ("8:0 rbps=1048576 wbps=max riops=2000 wiops=max", IO_MAX_LIVE, True),
    ("8:0 wbps=max", IO_MAX_LIVE, True),
    ("8:0 rbps=2097152", IO_MAX_LIVE, False),
    ("8:0 rbps=1048576 riops=1000", IO_MAX_LIVE, False),
    ("8:0 wbps=5", IO_MAX_LIVE, False),
    ("254:0 wiops=7", IO_MAX_LIVE, True),
    ("254:0 rbps=max", IO_MAX_LIVE, True),
    ("254:0 wiops=8", IO_MAX_LIVE, False),
    # a device the kernel does not list has every limit at max
    ("8:16 rbps=max", IO_MAX_LIVE, True),
    ("8:16 rbps=max wiops=max", "", True),
    ("8:16 rbps=1", IO_MAX_LIVE, False),
    ("8:16 rbps=1", "", False),
])
def test_io_max_satisfied(desired, live, ok):
    assert satisfied("io.max", desired, live) is ok


@pytest.mark.parametrize("desired, live, undo", [
    ("8:0 rbps=1", IO_MAX_LIVE, "8:0 rbps=1048576"),
    ("8:0 wbps=5 riops=1", IO_MAX_LIVE, "8:0 wbps=max riops=2000"),
    ("254:0 wiops=1 rbps=2", IO_MAX_LIVE, "254:0 wiops=7 rbps=max"),
    ("8:16 rbps=1 wbps=2", IO_MAX_LIVE, "8:16 rbps=max wbps=max"),
    ("8:16 riops=1", "", "8:16 riops=max"),
])
def test_io_max_undo(desired, live, undo):
    assert undo_value("io.max", desired, live) == undo


# ------------------------------------------------------------------ weights: "default N" and device lines
WEIGHT_LIVE = "default 100\n8:0 300\n"


@pytest.mark.parametrize("file", ["io.weight", "io.bfq.weight", "blkio.bfq.weight_device",
                                  "blkio.weight_device"])
@pytest.mark.parametrize("desired, live, ok", [
    ("default 100", WEIGHT_LIVE, True),
    ("default 200", WEIGHT_LIVE, False),
    ("8:0 300", WEIGHT_LIVE, True),
    ("8:0 301", WEIGHT_LIVE, False),
    ("8:16 300", WEIGHT_LIVE, False),        # no line for 8:16
    ("8:16 default", WEIGHT_LIVE, True),     # "default" for a device = no line of its own
    ("8:0 default", WEIGHT_LIVE, False),
    ("default 100", "default 100", True),
    ("default 100", "", False),
])
def test_weight_files_satisfied(file, desired, live, ok):
    assert satisfied(file, desired, live) is ok


@pytest.mark.parametrize("file", ["io.weight", "io.bfq.weight", "blkio.bfq.weight_device",
                                  "blkio.weight_device"])
@pytest.mark.parametrize("desired, undo", [
    ("default 500", "default 100"),
    ("8:0 50", "8:0 300"),
    ("8:16 50", "8:16 default"),             # the device had no line: remove ours
])
def test_weight_files_undo(file, desired, undo):
    assert undo_value(file, desired, WEIGHT_LIVE) == undo


# ------------------------------------------------------------------ blkio.throttle.*: 0 means absent
THROTTLE_FILES = ["blkio.throttle.read_bps_device", "blkio.throttle.write_bps_device",
                  "blkio.throttle.read_iops_device", "blkio.throttle.write_iops_device"]
THROTTLE_LIVE = "8:0 1048576\n254:0 2000\n"


@pytest.mark.parametrize("file", THROTTLE_FILES)
@pytest.mark.parametrize("desired, live, ok", [
    ("8:0 1048576", THROTTLE_LIVE, True),
    ("254:0 2000", THROTTLE_LIVE, True),
    ("8:0 1048577", THROTTLE_LIVE, False),
    ("8:16 1048576", THROTTLE_LIVE, False),
    ("8:16 0", THROTTLE_LIVE, True),          # 0 = no rule, and there is none
    ("8:16 0", "", True),
    ("8:0 0", THROTTLE_LIVE, False),          # 0 = no rule, but there is one
    ("8:0 1048576", "", False),
])
def test_throttle_satisfied(file, desired, live, ok):
    assert satisfied(file, desired, live) is ok


@pytest.mark.parametrize("file", THROTTLE_FILES)
@pytest.mark.parametrize("desired, live, undo", [
    ("8:0 5", THROTTLE_LIVE, "8:0 1048576"),
    ("254:0 0", THROTTLE_LIVE, "254:0 2000"),
    ("8:16 5", THROTTLE_LIVE, "8:16 0"),       # no rule before: 0 removes ours
    ("8:16 5", "", "8:16 0"),
])
def test_throttle_undo(file, desired, live, undo):
    assert undo_value(file, desired, live) == undo


# ------------------------------------------------------------------ scalar files
@pytest.mark.parametrize("file, desired, live, ok", [
    ("cpu.weight", "100", "100\n", True),
    ("cpu.weight", "100", "1000\n", False),
    ("cpu.shares", "1024", "1024\n", True),
    ("cpu.shares", "1024", "1025", False),
    ("cpu.max", "150000 100000", "150000 100000\n", True),
    ("cpu.max", "max 100000", "max 100000\n", True),
    ("cpu.max", "max 100000", "max 50000\n", False),
    ("cpu.max", "150000 100000", "100000 150000", False),
    ("cpu.cfs_quota_us", "-1", "-1\n", True),
    ("cpu.cfs_quota_us", "150000", "-1\n", False),
    ("cpu.cfs_period_us", "100000", "100000\n", True),
    ("pids.max", "max", "max\n", True),
    ("pids.max", "512", "max\n", False),
    ("pids.max", "512", "512", True),
    ("blkio.bfq.weight", "109", "109\n", True),   # the v1 legacy file is a plain number
    ("blkio.bfq.weight", "109", "100\n", False),
    ("blkio.weight", "20", "20\n", True),
    ("cgroup.freeze", "1", "1\n", True),
    ("cgroup.freeze", "1", "0\n", False),
    ("freezer.state", "FROZEN", "FROZEN\n", True),
    ("freezer.state", "FROZEN", "FREEZING\n", False),
    ("freezer.state", "THAWED", "FROZEN", False),
])
def test_scalar_satisfied(file, desired, live, ok):
    assert satisfied(file, desired, live) is ok


@pytest.mark.parametrize("file, live", [
    ("cpu.weight", "100"), ("cpu.max", "max 100000"), ("pids.max", "max"), ("cpu.shares", "1024"),
    ("freezer.state", "THAWED"), ("cpu.cfs_quota_us", "-1"),
])
def test_scalar_undo_restores_live(file, live):
    assert undo_value(file, "something else", f"{live}\n") == live
