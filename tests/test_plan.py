"""SPEC §2 translation table, row by row, on v1, v2 and hybrid layouts: exact write lists and
warnings, and the apply order (subtree_control top-down, freezer last). Pure."""

from __future__ import annotations

import json

import pytest

from cgman import convert
from cgman.model import (UNLIMITED, CpuLimits, Group, IODevice, IOLimits, Location, MemoryLimits,
                         PidsLimits, PolicySet, Resources)
from cgman.plan import ROOT, Features, Layout, Write, plan

Ki, Mi, Gi = 1 << 10, 1 << 20, 1 << 30
LOC = Location("p.yaml", 3, 3)


def group(path: str, formula: str = "oci", container: Resources | None = None, **res) -> Group:
    return Group(path=path, tenant=path.split("/")[0], resources=Resources(**res), location=LOC,
                 formula=formula, container=container)


def writes(p) -> list[tuple[str, str, str, str]]:
    return [(w.cgroup, w.controller, w.file, w.value) for w in p.writes]


def one(target: str, feat: Features | None = None, formula: str = "oci", **res):
    """Plan a single top-level group "g"; return (its writes as (controller, file, value), plan)."""
    p = plan(PolicySet((group("g", formula, **res),)), Layout.for_target(target), feat)
    own = [(c, f, v) for cg, c, f, v in writes(p) if cg == "g"]
    return own, p


V2_ROOT = (ROOT, "cgroup", "cgroup.subtree_control", "+cpu +memory +io +pids")
V2_ROOT_CPUSET = (ROOT, "cgroup", "cgroup.subtree_control", "+cpu +cpuset +memory +io +pids")

# ------------------------------------------------------------------ the table
# (id, resources, formula, v2 writes, v1 writes); hybrid must equal v1 (every controller is on v1).
ROWS = [
    # cpu.weight w -> v2 cpu.weight = w ; v1 cpu.shares = weight_to_shares(w)
    ("cpu_weight_default", dict(cpu=CpuLimits(weight=100)), "oci",
     [("cpu", "cpu.weight", "100")], [("cpu", "cpu.shares", "1024")]),
    ("cpu_weight_min", dict(cpu=CpuLimits(weight=1)), "oci",
     [("cpu", "cpu.weight", "1")], [("cpu", "cpu.shares", "2")]),
    ("cpu_weight_max", dict(cpu=CpuLimits(weight=10000)), "oci",
     [("cpu", "cpu.weight", "10000")], [("cpu", "cpu.shares", "262144")]),
    ("cpu_weight_300_oci", dict(cpu=CpuLimits(weight=300)), "oci",
     [("cpu", "cpu.weight", "300")], [("cpu", "cpu.shares", str(convert.weight_to_shares(300, "oci")))]),
    ("cpu_weight_300_systemd", dict(cpu=CpuLimits(weight=300)), "systemd",
     [("cpu", "cpu.weight", "300")], [("cpu", "cpu.shares", "3072")]),
    # cpu.shares s -> v2 cpu.weight = shares_to_weight(s) ; v1 cpu.shares = s
    ("cpu_shares_default", dict(cpu=CpuLimits(shares=1024)), "oci",
     [("cpu", "cpu.weight", "100")], [("cpu", "cpu.shares", "1024")]),
    ("cpu_shares_min", dict(cpu=CpuLimits(shares=2)), "oci",
     [("cpu", "cpu.weight", "1")], [("cpu", "cpu.shares", "2")]),
    ("cpu_shares_max", dict(cpu=CpuLimits(shares=262144)), "oci",
     [("cpu", "cpu.weight", "10000")], [("cpu", "cpu.shares", "262144")]),
    ("cpu_shares_512_oci", dict(cpu=CpuLimits(shares=512)), "oci",
     [("cpu", "cpu.weight", str(convert.shares_to_weight(512, "oci")))], [("cpu", "cpu.shares", "512")]),
    ("cpu_shares_512_systemd", dict(cpu=CpuLimits(shares=512)), "systemd",
     [("cpu", "cpu.weight", "50")], [("cpu", "cpu.shares", "512")]),
    # cpu.max c, period p
    ("cpu_max_1.5", dict(cpu=CpuLimits(max_cpus=1.5, period_usec=100_000)), "oci",
     [("cpu", "cpu.max", "150000 100000")],
     [("cpu", "cpu.cfs_period_us", "100000"), ("cpu", "cpu.cfs_quota_us", "150000")]),
    ("cpu_max_default_period", dict(cpu=CpuLimits(max_cpus=2.0)), "oci",
     [("cpu", "cpu.max", "200000 100000")],
     [("cpu", "cpu.cfs_period_us", "100000"), ("cpu", "cpu.cfs_quota_us", "200000")]),
    ("cpu_max_period_50ms", dict(cpu=CpuLimits(max_cpus=0.5, period_usec=50_000)), "oci",
     [("cpu", "cpu.max", "25000 50000")],
     [("cpu", "cpu.cfs_period_us", "50000"), ("cpu", "cpu.cfs_quota_us", "25000")]),
    ("cpu_max_unlimited", dict(cpu=CpuLimits(max_cpus=UNLIMITED, period_usec=100_000)), "oci",
     [("cpu", "cpu.max", "max 100000")],
     [("cpu", "cpu.cfs_period_us", "100000"), ("cpu", "cpu.cfs_quota_us", "-1")]),
    ("cpu_max_unlimited_period_1s", dict(cpu=CpuLimits(max_cpus=UNLIMITED, period_usec=1_000_000)), "oci",
     [("cpu", "cpu.max", "max 1000000")],
     [("cpu", "cpu.cfs_period_us", "1000000"), ("cpu", "cpu.cfs_quota_us", "-1")]),
    ("cpu_weight_and_max", dict(cpu=CpuLimits(weight=200, max_cpus=1.0, period_usec=100_000)), "oci",
     [("cpu", "cpu.weight", "200"), ("cpu", "cpu.max", "100000 100000")],
     [("cpu", "cpu.shares", str(convert.weight_to_shares(200))), ("cpu", "cpu.cfs_period_us", "100000"),
      ("cpu", "cpu.cfs_quota_us", "100000")]),
    # cpu.cpus / cpu.mems
    ("cpuset_cpus", dict(cpu=CpuLimits(cpus=frozenset({0, 1, 2, 5}))), "oci",
     [("cpuset", "cpuset.cpus", "0-2,5")], [("cpuset", "cpuset.cpus", "0-2,5")]),
    ("cpuset_mems", dict(cpu=CpuLimits(mems=frozenset({0}))), "oci",
     [("cpuset", "cpuset.mems", "0")], [("cpuset", "cpuset.mems", "0")]),
    ("cpuset_both", dict(cpu=CpuLimits(cpus=frozenset({0, 1}), mems=frozenset({0, 1}))), "oci",
     [("cpuset", "cpuset.cpus", "0-1"), ("cpuset", "cpuset.mems", "0-1")],
     [("cpuset", "cpuset.cpus", "0-1"), ("cpuset", "cpuset.mems", "0-1")]),
    # memory.max
    ("memory_max", dict(memory=MemoryLimits(max_bytes=Gi)), "oci",
     [("memory", "memory.max", str(Gi))], [("memory", "memory.limit_in_bytes", str(Gi))]),
    ("memory_max_unlimited", dict(memory=MemoryLimits(max_bytes=UNLIMITED)), "oci",
     [("memory", "memory.max", "max")], [("memory", "memory.limit_in_bytes", "-1")]),
    ("memory_max_zero", dict(memory=MemoryLimits(max_bytes=0)), "oci",
     [("memory", "memory.max", "0")], [("memory", "memory.limit_in_bytes", "0")]),
    # memory.high (v1: nothing, a warning)
    ("memory_high", dict(memory=MemoryLimits(high_bytes=1800 * Mi)), "oci",
     [("memory", "memory.high", str(1800 * Mi))], []),
    ("memory_high_unlimited", dict(memory=MemoryLimits(high_bytes=UNLIMITED)), "oci",
     [("memory", "memory.high", "max")], []),
    # memory.low -> v1 soft limit
    ("memory_low", dict(memory=MemoryLimits(low_bytes=256 * Mi)), "oci",
     [("memory", "memory.low", str(256 * Mi))], [("memory", "memory.soft_limit_in_bytes", str(256 * Mi))]),
    ("memory_low_unlimited", dict(memory=MemoryLimits(low_bytes=UNLIMITED)), "oci",
     [("memory", "memory.low", "max")], [("memory", "memory.soft_limit_in_bytes", "-1")]),
    # memory.min (v1: nothing, a warning)
    ("memory_min", dict(memory=MemoryLimits(min_bytes=64 * Mi)), "oci",
     [("memory", "memory.min", str(64 * Mi))], []),
    # memory.swap x -> v2 memory.swap.max = x ; v1 memsw = max + x, right after the limit
    ("memory_swap", dict(memory=MemoryLimits(max_bytes=Gi, swap_bytes=512 * Mi)), "oci",
     [("memory", "memory.max", str(Gi)), ("memory", "memory.swap.max", str(512 * Mi))],
     [("memory", "memory.limit_in_bytes", str(Gi)), ("memory", "memory.memsw.limit_in_bytes", str(Gi + 512 * Mi))]),
    ("memory_swap_zero", dict(memory=MemoryLimits(max_bytes=2 * Gi, swap_bytes=0)), "oci",
     [("memory", "memory.max", str(2 * Gi)), ("memory", "memory.swap.max", "0")],
     [("memory", "memory.limit_in_bytes", str(2 * Gi)), ("memory", "memory.memsw.limit_in_bytes", str(2 * Gi))]),
    ("memory_swap_unlimited", dict(memory=MemoryLimits(max_bytes=Gi, swap_bytes=UNLIMITED)), "oci",
     [("memory", "memory.max", str(Gi)), ("memory", "memory.swap.max", "max")],
     [("memory", "memory.limit_in_bytes", str(Gi)), ("memory", "memory.memsw.limit_in_bytes", "-1")]),
    ("memory_both_unlimited", dict(memory=MemoryLimits(max_bytes=UNLIMITED, swap_bytes=UNLIMITED)), "oci",
     [("memory", "memory.max", "max"), ("memory", "memory.swap.max", "max")],
     [("memory", "memory.limit_in_bytes", "-1"), ("memory", "memory.memsw.limit_in_bytes", "-1")]),
    ("memory_all", dict(memory=MemoryLimits(max_bytes=4 * Gi, high_bytes=3 * Gi, low_bytes=Gi, min_bytes=512 * Mi,
                                            swap_bytes=Gi)), "oci",
     [("memory", "memory.min", str(512 * Mi)), ("memory", "memory.low", str(Gi)),
      ("memory", "memory.high", str(3 * Gi)), ("memory", "memory.max", str(4 * Gi)),
      ("memory", "memory.swap.max", str(Gi))],
     [("memory", "memory.limit_in_bytes", str(4 * Gi)), ("memory", "memory.memsw.limit_in_bytes", str(5 * Gi)),
      ("memory", "memory.soft_limit_in_bytes", str(Gi))]),
    # io.weight w -> v2 io.bfq.weight = bfq(w) and io.weight = w ; v1 blkio.bfq.weight = bfq(w)
    ("io_weight_200", dict(io=IOLimits(weight=200)), "oci",
     [("io", "io.bfq.weight", "default 109"), ("io", "io.weight", "default 200")],
     [("io", "blkio.bfq.weight", "109")]),
    ("io_weight_min", dict(io=IOLimits(weight=1)), "oci",
     [("io", "io.bfq.weight", "default 1"), ("io", "io.weight", "default 1")], [("io", "blkio.bfq.weight", "1")]),
    ("io_weight_100", dict(io=IOLimits(weight=100)), "oci",
     [("io", "io.bfq.weight", "default 100"), ("io", "io.weight", "default 100")],
     [("io", "blkio.bfq.weight", "100")]),
    ("io_weight_max", dict(io=IOLimits(weight=10000)), "oci",
     [("io", "io.bfq.weight", "default 1000"), ("io", "io.weight", "default 10000")],
     [("io", "blkio.bfq.weight", "1000")]),
    # io.devices weight -> "MAJ:MIN v" lines
    ("io_device_weight", dict(io=IOLimits(devices=(IODevice("8:0", weight=500),))), "oci",
     [("io", "io.bfq.weight", "8:0 136"), ("io", "io.weight", "8:0 500")],
     [("io", "blkio.bfq.weight_device", "8:0 136")]),
    # io.devices rbps/wbps/riops/wiops
    ("io_device_throttle", dict(io=IOLimits(devices=(IODevice("254:0", rbps=50 * Mi, wbps=20 * Mi, riops=2000,
                                                              wiops=1000),))), "oci",
     [("io", "io.max", f"254:0 rbps={50 * Mi} wbps={20 * Mi} riops=2000 wiops=1000")],
     [("io", "blkio.throttle.read_bps_device", f"254:0 {50 * Mi}"),
      ("io", "blkio.throttle.write_bps_device", f"254:0 {20 * Mi}"),
      ("io", "blkio.throttle.read_iops_device", "254:0 2000"),
      ("io", "blkio.throttle.write_iops_device", "254:0 1000")]),
    ("io_device_one_throttle", dict(io=IOLimits(devices=(IODevice("8:16", wiops=7),))), "oci",
     [("io", "io.max", "8:16 wiops=7")], [("io", "blkio.throttle.write_iops_device", "8:16 7")]),
    ("io_device_throttle_unlimited", dict(io=IOLimits(devices=(IODevice("8:0", rbps=UNLIMITED, riops=UNLIMITED),))),
     "oci",
     [("io", "io.max", "8:0 rbps=max riops=max")],
     [("io", "blkio.throttle.read_bps_device", "8:0 0"), ("io", "blkio.throttle.read_iops_device", "8:0 0")]),
    ("io_weights_before_throttles",
     dict(io=IOLimits(weight=300, devices=(IODevice("8:0", weight=50, rbps=Ki), IODevice("8:16", wbps=Mi)))), "oci",
     [("io", "io.bfq.weight", "default 118"), ("io", "io.weight", "default 300"),
      ("io", "io.bfq.weight", "8:0 50"), ("io", "io.weight", "8:0 50"),
      ("io", "io.max", f"8:0 rbps={Ki}"), ("io", "io.max", f"8:16 wbps={Mi}")],
     [("io", "blkio.bfq.weight", "118"), ("io", "blkio.bfq.weight_device", "8:0 50"),
      ("io", "blkio.throttle.read_bps_device", f"8:0 {Ki}"),
      ("io", "blkio.throttle.write_bps_device", f"8:16 {Mi}")]),
    # pids.max
    ("pids_max", dict(pids=PidsLimits(max=512)), "oci", [("pids", "pids.max", "512")], [("pids", "pids.max", "512")]),
    ("pids_max_zero", dict(pids=PidsLimits(max=0)), "oci", [("pids", "pids.max", "0")], [("pids", "pids.max", "0")]),
    ("pids_max_unlimited", dict(pids=PidsLimits(max=UNLIMITED)), "oci",
     [("pids", "pids.max", "max")], [("pids", "pids.max", "max")]),
    # frozen
    ("frozen_true", dict(frozen=True), "oci",
     [("cgroup", "cgroup.freeze", "1")], [("freezer", "freezer.state", "FROZEN")]),
    ("frozen_false", dict(frozen=False), "oci",
     [("cgroup", "cgroup.freeze", "0")], [("freezer", "freezer.state", "THAWED")]),
    # nothing set: nothing written for the group
    ("empty", dict(), "oci", [], []),
]
ROW_IDS = [r[0] for r in ROWS]


@pytest.mark.parametrize("rid, res, formula, v2, v1", ROWS, ids=ROW_IDS)
def test_row_v2(rid, res, formula, v2, v1):
    own, p = one("v2", formula=formula, **res)
    assert own == v2
    uses_cpuset = "cpu" in res and (res["cpu"].cpus is not None or res["cpu"].mems is not None)
    assert writes(p) == [V2_ROOT_CPUSET if uses_cpuset else V2_ROOT] + [("g", *w) for w in v2]


@pytest.mark.parametrize("target", ["v1", "hybrid"])
@pytest.mark.parametrize("rid, res, formula, v2, v1", ROWS, ids=ROW_IDS)
def test_row_v1_and_hybrid(target, rid, res, formula, v2, v1):
    own, p = one(target, formula=formula, **res)
    assert own == v1
    assert writes(p) == [("g", *w) for w in v1]     # no subtree_control on v1 hierarchies


def test_weight_and_shares_values_in_the_table_are_the_spec_ones():
    # Guard the rows that call convert: the SPEC anchors and the systemd formula.
    assert convert.weight_to_shares(300, "oci") == 4058
    assert convert.weight_to_shares(200, "oci") == 2451
    assert convert.shares_to_weight(512, "oci") == 59
    assert convert.bfq_weight(300) == 118 and convert.bfq_weight(500) == 136


# ------------------------------------------------------------------ feature variants
@pytest.mark.parametrize("target", ["v1", "hybrid"])
@pytest.mark.parametrize("res, expected, warned", [
    (dict(io=IOLimits(weight=200)), [], True),
    (dict(io=IOLimits(weight=10000)), [], True),
    (dict(io=IOLimits(devices=(IODevice("8:0", weight=500, rbps=Ki),))),
     [("io", "blkio.throttle.read_bps_device", f"8:0 {Ki}")], True),
])
def test_v1_without_bfq_weights_are_not_enforceable(target, res, expected, warned):
    # CFQ's blkio.weight is gone since Linux 5.0: without BFQ there is no weight file to write.
    own, p = one(target, Features(blkio_bfq=False), **res)
    assert own == expected
    assert bool([w for w in p.warnings if "not enforceable: no BFQ" in w]) == warned


@pytest.mark.parametrize("feat, expected", [
    (Features(io_bfq_weight=False), [("io", "io.weight", "default 200"), ("io", "io.weight", "8:0 500")]),
    (Features(io_weight=False), [("io", "io.bfq.weight", "default 109"), ("io", "io.bfq.weight", "8:0 136")]),
])
def test_v2_io_weight_where_the_file_exists(feat, expected):
    own, p = one("v2", feat, io=IOLimits(weight=200, devices=(IODevice("8:0", weight=500),)))
    assert own == expected
    assert p.warnings == []


def test_v2_io_weight_without_bfq_or_iocost_warns():
    feat = Features(io_bfq_weight=False, io_weight=False)
    own, p = one("v2", feat, io=IOLimits(weight=200, devices=(IODevice("8:0", weight=500, rbps=Mi),)))
    assert own == [("io", "io.max", f"8:0 rbps={Mi}")]          # throttles still apply
    assert len(p.warnings) == 2                                 # the default and the device weight
    for w in p.warnings:
        assert w.startswith("g (p.yaml:3:3): io.weight is not enforceable")
        assert "bfq" in w


def test_v2_no_bfq_no_iocost_without_weights_is_silent():
    _, p = one("v2", Features(io_bfq_weight=False, io_weight=False),
               io=IOLimits(devices=(IODevice("8:0", rbps=Mi),)))
    assert p.warnings == []


@pytest.mark.parametrize("target", ["v1", "hybrid"])
def test_v1_memsw_without_swap_accounting_warns(target):
    own, p = one(target, Features(memsw=False), memory=MemoryLimits(max_bytes=Gi, swap_bytes=0))
    assert own == [("memory", "memory.limit_in_bytes", str(Gi))]
    assert p.warnings == ["g (p.yaml:3:3): memory.swap is not enforceable: swap accounting is off "
                          "(boot with swapaccount=1)"]


def test_v2_without_memory_swap_max_warns():
    own, p = one("v2", Features(memory_swap=False), memory=MemoryLimits(max_bytes=Gi, swap_bytes=0))
    assert own == [("memory", "memory.max", str(Gi))]
    assert len(p.warnings) == 1 and "memory.swap is not enforceable" in p.warnings[0]


# ------------------------------------------------------------------ v1 warnings
@pytest.mark.parametrize("target", ["v1", "hybrid"])
@pytest.mark.parametrize("mem, what", [
    (MemoryLimits(high_bytes=Gi), ["memory.high"]),
    (MemoryLimits(min_bytes=Gi), ["memory.min"]),
    (MemoryLimits(high_bytes=UNLIMITED, min_bytes=0), ["memory.high", "memory.min"]),
])
def test_v1_warns_memory_high_and_min(target, mem, what):
    own, p = one(target, memory=mem)
    assert own == []
    assert len(p.warnings) == len(what)
    for w, file in zip(p.warnings, what, strict=True):
        assert w.startswith(f"g (p.yaml:3:3): {file} is not enforceable on ")
        assert w.endswith("v1 (ignored)")


@pytest.mark.parametrize("mem", [MemoryLimits(high_bytes=Gi), MemoryLimits(min_bytes=Gi),
                                 MemoryLimits(low_bytes=Gi, max_bytes=Gi)])
def test_v2_memory_never_warns(mem):
    _, p = one("v2", memory=mem)
    assert p.warnings == []


def test_v1_low_and_max_do_not_warn():
    _, p = one("v1", memory=MemoryLimits(low_bytes=Gi, max_bytes=2 * Gi, swap_bytes=Gi))
    assert p.warnings == []


def test_container_limits_are_checked_and_warn_with_their_own_name():
    g = group("acme", container=Resources(memory=MemoryLimits(high_bytes=Gi)))
    p = plan(PolicySet((g,)), Layout.for_target("v1"))
    assert writes(p) == []                                      # container limits are not group writes
    assert p.warnings == ["acme/<container>: memory.high is not enforceable on cgroup v1 (ignored)"]


# ------------------------------------------------------------------ order
TREE = PolicySet((
    group("acme", cpu=CpuLimits(weight=300), memory=MemoryLimits(max_bytes=8 * Gi), frozen=False),
    group("acme/web", cpu=CpuLimits(cpus=frozenset({0, 1})), pids=PidsLimits(max=512), frozen=True),
    group("acme/web/api", memory=MemoryLimits(max_bytes=Gi)),
    group("acme/batch", io=IOLimits(weight=50)),
    group("globex", pids=PidsLimits(max=10), frozen=True),
))

TREE_V2 = [
    (".", "cgroup", "cgroup.subtree_control", "+cpu +cpuset +memory +io +pids"),
    ("acme", "cpu", "cpu.weight", "300"),
    ("acme", "memory", "memory.max", str(8 * Gi)),
    ("acme", "cgroup", "cgroup.subtree_control", "+cpu +cpuset +memory +io +pids"),
    ("acme/web", "cpuset", "cpuset.cpus", "0-1"),
    ("acme/web", "pids", "pids.max", "512"),
    ("acme/web", "cgroup", "cgroup.subtree_control", "+cpu +memory +io +pids"),
    ("acme/web/api", "memory", "memory.max", str(Gi)),
    ("acme/batch", "io", "io.bfq.weight", "default 50"),
    ("acme/batch", "io", "io.weight", "default 50"),
    ("globex", "pids", "pids.max", "10"),
    ("acme", "cgroup", "cgroup.freeze", "0"),
    ("acme/web", "cgroup", "cgroup.freeze", "1"),
    ("globex", "cgroup", "cgroup.freeze", "1"),
]

TREE_V1 = [
    ("acme", "cpu", "cpu.shares", "4058"),
    ("acme", "memory", "memory.limit_in_bytes", str(8 * Gi)),
    ("acme/web", "cpuset", "cpuset.cpus", "0-1"),
    ("acme/web", "pids", "pids.max", "512"),
    ("acme/web/api", "memory", "memory.limit_in_bytes", str(Gi)),
    ("acme/batch", "io", "blkio.bfq.weight", "50"),
    ("globex", "pids", "pids.max", "10"),
    ("acme", "freezer", "freezer.state", "THAWED"),
    ("acme/web", "freezer", "freezer.state", "FROZEN"),
    ("globex", "freezer", "freezer.state", "FROZEN"),
]


def test_tree_v2_exact():
    p = plan(TREE, Layout.for_target("v2"))
    assert writes(p) == TREE_V2
    assert p.warnings == []
    assert p.groups == ["acme", "acme/web", "acme/web/api", "acme/batch", "globex"]
    assert p.target == "v2"


@pytest.mark.parametrize("target", ["v1", "hybrid"])
def test_tree_v1_and_hybrid_exact(target):
    p = plan(TREE, Layout.for_target(target))
    assert writes(p) == TREE_V1
    assert p.warnings == []
    assert p.target == target


def _ancestors(path):
    parts = path.split("/")
    return ["."] + ["/".join(parts[:i]) for i in range(1, len(parts))]


def test_v2_subtree_control_is_written_top_down_before_any_child_write():
    ws = plan(TREE, Layout.for_target("v2")).writes
    enabled: dict[str, set[str]] = {}
    for i, w in enumerate(ws):
        if w.file == "cgroup.subtree_control":
            ctl = {t[1:] for t in w.value.split()}
            if w.cgroup != ".":
                parent = w.cgroup.rsplit("/", 1)[0] if "/" in w.cgroup else "."
                assert ctl <= enabled.get(parent, set()), (i, w)   # a child only enables what its parent did
            enabled[w.cgroup] = ctl
            continue
        if w.controller in ("cgroup", "freezer"):
            continue
        for anc in _ancestors(w.cgroup):
            assert w.controller in enabled.get(anc, set()), (i, w, anc)
    assert ws[0].cgroup == "." and ws[0].file == "cgroup.subtree_control"


@pytest.mark.parametrize("target", ["v1", "v2", "hybrid"])
def test_freezer_writes_come_last(target):
    ws = plan(TREE, Layout.for_target(target)).writes
    kinds = [w.file in ("cgroup.freeze", "freezer.state") for w in ws]
    first = kinds.index(True)
    assert all(kinds[first:]) and not any(kinds[:first])
    assert [w.cgroup for w in ws[first:]] == ["acme", "acme/web", "globex"]   # groups in order


@pytest.mark.parametrize("target", ["v1", "hybrid"])
def test_v1_hierarchies_never_get_subtree_control(target):
    assert not [w for w in plan(TREE, Layout.for_target(target)).writes if w.controller == "cgroup"]


def test_v1_memsw_is_right_after_its_limit():
    # apply swaps this adjacent pair when growing: it must stay adjacent.
    res = dict(memory=MemoryLimits(max_bytes=Gi, swap_bytes=Gi, low_bytes=Mi))
    own, _ = one("v1", **res)
    files = [f for _, f, _ in own]
    i = files.index("memory.limit_in_bytes")
    assert files[i + 1] == "memory.memsw.limit_in_bytes"


def test_v2_group_with_container_enables_controllers_for_its_containers():
    g = group("acme", memory=MemoryLimits(max_bytes=Gi),
              container=Resources(cpu=CpuLimits(max_cpus=0.5), pids=PidsLimits(max=5)))
    p = plan(PolicySet((g,)), Layout.for_target("v2"))
    assert writes(p) == [
        (".", "cgroup", "cgroup.subtree_control", "+cpu +memory +io +pids"),
        ("acme", "memory", "memory.max", str(Gi)),
        ("acme", "cgroup", "cgroup.subtree_control", "+cpu +memory +io +pids"),
    ]


def test_v2_leaf_groups_get_no_subtree_control():
    p = plan(PolicySet((group("a", pids=PidsLimits(max=1)), group("b"))), Layout.for_target("v2"))
    assert [w.cgroup for w in p.writes if w.file == "cgroup.subtree_control"] == ["."]


def test_v2_cpuset_only_where_needed():
    ps = PolicySet((group("a"), group("a/x", cpu=CpuLimits(mems=frozenset({0}))), group("b"),
                    group("b/y", pids=PidsLimits(max=1))))
    sub = {w.cgroup: w.value for w in plan(ps, Layout.for_target("v2")).writes
           if w.file == "cgroup.subtree_control"}
    assert sub == {".": "+cpu +cpuset +memory +io +pids", "a": "+cpu +cpuset +memory +io +pids",
                   "b": "+cpu +memory +io +pids"}


def test_v2_undelegated_controllers_warn_and_are_not_enabled():
    feat = Features(v2_available=frozenset({"cpu", "memory"}))
    ps = PolicySet((group("a", io=IOLimits(weight=10), pids=PidsLimits(max=3), cpu=CpuLimits(weight=5)),))
    p = plan(ps, Layout.for_target("v2"), feat)
    assert writes(p)[0] == (".", "cgroup", "cgroup.subtree_control", "+cpu +memory")
    assert len(p.warnings) == 1
    assert p.warnings[0].startswith("controllers io, pids are not delegated to the cgman root")


def test_plan_as_dict_is_json():
    p = plan(TREE, Layout.for_target("v1"))
    d = json.loads(json.dumps(p.as_dict()))
    assert d["target"] == "v1"
    assert d["groups"] == p.groups
    assert d["writes"][0] == {"cgroup": "acme", "controller": "cpu", "file": "cpu.shares", "value": "4058"}
    assert len(d["writes"]) == len(TREE_V1)


# ------------------------------------------------------------------ layouts
@pytest.mark.parametrize("target, versions, unified", [
    ("v1", {"cpu": 1, "cpuset": 1, "memory": 1, "io": 1, "pids": 1, "freezer": 1}, False),
    ("hybrid", {"cpu": 1, "cpuset": 1, "memory": 1, "io": 1, "pids": 1, "freezer": 1}, True),
    ("v2", {"cpu": 2, "cpuset": 2, "memory": 2, "io": 2, "pids": 2, "freezer": 2, "cgroup": 2}, True),
])
def test_layout_for_target(target, versions, unified):
    lay = Layout.for_target(target)
    assert lay.mode == target and lay.has_unified is unified
    assert {c: lay.version_of(c) for c in versions} == versions


def test_v1_layout_has_no_hierarchy_for_unknown_controllers():
    from cgman.errors import NotFound
    with pytest.raises(NotFound, match="rdma"):
        Layout.for_target("v1").version_of("rdma")


def test_mixed_layout_routes_per_controller():
    # A hybrid host where memory stayed on v1 and everything else is on the unified hierarchy.
    lay = Layout("hybrid", frozenset({"memory"}), True)
    ps = PolicySet((group("g", cpu=CpuLimits(weight=200), memory=MemoryLimits(max_bytes=Gi), frozen=True),))
    assert writes(plan(ps, lay)) == [
        (".", "cgroup", "cgroup.subtree_control", "+cpu +io +pids"),
        ("g", "cpu", "cpu.weight", "200"),
        ("g", "memory", "memory.limit_in_bytes", str(Gi)),
        ("g", "cgroup", "cgroup.freeze", "1"),
    ]


def test_write_as_dict():
    assert Write("a", "cpu", "cpu.weight", "5").as_dict() == {
        "cgroup": "a", "controller": "cpu", "file": "cpu.weight", "value": "5"}


def test_per_device_io_weight_only_where_blk_iocost_is_enabled():
    res = Resources(io=IOLimits(weight=200, devices=(IODevice("8:0", weight=300),
                                                     IODevice("8:16", weight=400))))
    g = Group(path="g", tenant="g", resources=res, location=Location("f.yaml", 1, 1))
    p = plan(PolicySet(groups=(g,)), Layout.for_target("v2"),
             Features(iocost_devices=frozenset({"8:16"})))
    io_weight = [w.value for w in p.writes if w.file == "io.weight"]
    bfq = [w.value for w in p.writes if w.file == "io.bfq.weight"]
    assert io_weight == ["default 200", "8:16 400"]
    assert bfq == ["default 109", "8:0 118", "8:16 127"]
    assert any("8:0" in x and "blk-iocost" in x for x in p.warnings)
    assert not any("8:16" in x for x in p.warnings)
