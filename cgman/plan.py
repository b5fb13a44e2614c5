"""Translation: version-neutral Resources -> ordered kernel file writes (SPEC §2). Pure.

``plan()`` is what ``cgman plan`` prints and what ``apply`` reconciles. The only
place besides drivers/ that knows the v1 and v2 file names.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from . import convert
from .model import DEFAULT_CPU_PERIOD_USEC, UNLIMITED, PolicySet, Resources, Unlimited
from .units import format_cpu_list

TYPE_CHECKING = False
if TYPE_CHECKING:           # typing is not imported at run time: ~2 ms of every `cgman run`
    from typing import Callable, Iterable, Literal
    Target = Literal["v1", "v2", "hybrid"]
ROOT = "."                     # the cgman root group itself, in Write.cgroup
RESOURCE_CONTROLLERS = ("cpu", "cpuset", "memory", "io", "pids")
# Enabled in every inner v2 group so usage is accounted per child even without limits.
ACCOUNTING_CONTROLLERS = ("cpu", "io", "memory", "pids")
V1_UNLIMITED = "-1"


@dataclass(frozen=True)
class Write:
    """One kernel write: ``value`` to ``file`` of ``cgroup`` (relative to the cgman root)."""

    cgroup: str
    controller: str            # cpu cpuset memory io pids freezer, or "cgroup" for core files
    file: str
    value: str

    def as_dict(self) -> dict[str, str]:
        return {"cgroup": self.cgroup, "controller": self.controller, "file": self.file,
                "value": self.value}


@dataclass(frozen=True)
class Features:
    """Optional kernel files. Explicit targets assume all present; apply probes the host."""

    io_bfq_weight: bool = True     # v2 io.bfq.weight (BFQ scheduler registered)
    io_weight: bool = True         # v2 io.weight (blk-iocost)
    blkio_bfq: bool = True         # v1 blkio.bfq.weight; else legacy CFQ blkio.weight
    memsw: bool = True             # v1 memory.memsw.* (swap accounting)
    memory_swap: bool = True       # v2 memory.swap.max
    v2_available: frozenset[str] = frozenset(RESOURCE_CONTROLLERS)  # in the root's cgroup.controllers
    # Devices with blk-iocost enabled (io.cost.qos "enable=1"); per-device io.weight
    # lines fail with ENOTSUP elsewhere. None: unknown (explicit target), assume all.
    iocost_devices: frozenset[str] | None = None


@dataclass(frozen=True)
class Layout:
    """Which cgroup version serves each controller on a host (pure description)."""

    mode: Target
    v1_controllers: frozenset[str]   # cgman controller names served by v1 hierarchies
    has_unified: bool                # a cgroup2 mount exists (v2, or hybrid's unified)

    def version_of(self, controller: str) -> int:
        """1 or 2: which hierarchy a write for ``controller`` goes to."""
        if controller == "cgroup":
            return 2
        if controller in self.v1_controllers:
            return 1
        if self.has_unified:
            return 2
        from .errors import NotFound
        raise NotFound(f"no cgroup hierarchy on this host holds the {controller} controller "
                       f"(see `cgman doctor`)")

    @classmethod
    def for_target(cls, target: Target) -> "Layout":
        if target == "v2":
            return cls("v2", frozenset(), True)
        every = frozenset(RESOURCE_CONTROLLERS + ("freezer",))
        return cls(target, every, target == "hybrid")


@dataclass
class Plan:
    """The kernel file writes that bring groups to their policy on one target."""

    target: Target
    groups: list[str] = field(default_factory=list)
    writes: list[Write] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, object]:
        return {"target": self.target, "groups": self.groups,
                "writes": [w.as_dict() for w in self.writes], "warnings": self.warnings}


def _bytes(v: int | Unlimited, unlimited: str) -> str:
    return unlimited if isinstance(v, Unlimited) else str(v)


def _count(v: int | Unlimited) -> str:
    return "max" if isinstance(v, Unlimited) else str(v)


@dataclass
class _Translation:
    """The writes and warnings of one cgroup as its controllers' translations add them."""

    cgroup: str
    who: str                       # how warnings name the group
    feat: Features
    formula: convert.WeightFormula
    writes: list[Write] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)

    def write(self, controller: str, file: str, value: str) -> None:
        self.writes.append(Write(self.cgroup, controller, file, value))

    def warn(self, message: str) -> None:
        self.warnings.append(f"{self.who}: {message}")


def _cpu_v1(out: _Translation, res: Resources) -> None:
    cpu = res.cpu
    if cpu.weight is not None or cpu.shares is not None:
        shares = cpu.shares if cpu.shares is not None else \
            convert.weight_to_shares(cpu.weight or 100, out.formula)
        out.write("cpu", "cpu.shares", str(shares))
    if cpu.max_cpus is not None:
        period = cpu.period_usec or DEFAULT_CPU_PERIOD_USEC
        quota = convert.cpu_quota_usec(cpu.max_cpus, period)
        out.write("cpu", "cpu.cfs_period_us", str(period))
        out.write("cpu", "cpu.cfs_quota_us", V1_UNLIMITED if quota is None else str(quota))


def _cpu_v2(out: _Translation, res: Resources) -> None:
    cpu = res.cpu
    weight = convert.cpu_weight(cpu.weight, cpu.shares, out.formula)
    if weight is not None:
        out.write("cpu", "cpu.weight", str(weight))
    if cpu.max_cpus is not None:
        period = cpu.period_usec or DEFAULT_CPU_PERIOD_USEC
        quota = convert.cpu_quota_usec(cpu.max_cpus, period)
        out.write("cpu", "cpu.max", f"{'max' if quota is None else quota} {period}")


def _cpuset(out: _Translation, res: Resources) -> None:
    """The same files on v1 and v2."""
    if res.cpu.cpus is not None:
        out.write("cpuset", "cpuset.cpus", format_cpu_list(res.cpu.cpus))
    if res.cpu.mems is not None:
        out.write("cpuset", "cpuset.mems", format_cpu_list(res.cpu.mems))


def _memory_v1(out: _Translation, res: Resources) -> None:
    mem = res.memory
    if mem.max_bytes is not None:
        out.write("memory", "memory.limit_in_bytes", _bytes(mem.max_bytes, V1_UNLIMITED))
    if mem.swap_bytes is not None:
        if not out.feat.memsw:
            out.warn("memory.swap is not enforceable: swap accounting is off (boot with swapaccount=1)")
        elif mem.max_bytes is not None:
            # v1 limits memory+swap together: memsw = memory.max + swap
            memsw: int | Unlimited = UNLIMITED if isinstance(mem.max_bytes, Unlimited) or \
                isinstance(mem.swap_bytes, Unlimited) else mem.max_bytes + mem.swap_bytes
            out.write("memory", "memory.memsw.limit_in_bytes", _bytes(memsw, V1_UNLIMITED))
    if mem.low_bytes is not None:
        out.write("memory", "memory.soft_limit_in_bytes", _bytes(mem.low_bytes, V1_UNLIMITED))
    if mem.high_bytes is not None:
        out.warn("memory.high is not enforceable on cgroup v1 (ignored)")
    if mem.min_bytes is not None:
        out.warn("memory.min is not enforceable on cgroup v1 (ignored)")


def _memory_v2(out: _Translation, res: Resources) -> None:
    mem = res.memory
    for key, file in (("min_bytes", "memory.min"), ("low_bytes", "memory.low"),
                      ("high_bytes", "memory.high"), ("max_bytes", "memory.max")):
        val = getattr(mem, key)
        if val is not None:
            out.write("memory", file, _bytes(val, "max"))
    if mem.swap_bytes is not None:
        if out.feat.memory_swap:
            out.write("memory", "memory.swap.max", _bytes(mem.swap_bytes, "max"))
        else:
            out.warn("memory.swap is not enforceable: the kernel has no swap accounting "
                     "(memory.swap.max is missing)")


def _io_v1(out: _Translation, res: Resources) -> None:
    io, bfq = res.io, out.feat.blkio_bfq
    if io.weight is not None:
        if bfq:
            out.write("io", "blkio.bfq.weight", str(convert.bfq_weight(io.weight)))
        else:   # CFQ's blkio.weight is gone since Linux 5.0: nothing left to write
            out.warn("io.weight is not enforceable: no BFQ on this cgroup v1 host (modprobe bfq)")
    for d in io.devices:
        if d.weight is not None and bfq:
            out.write("io", "blkio.bfq.weight_device", f"{d.device} {convert.bfq_weight(d.weight)}")
        elif d.weight is not None:
            out.warn(f"io weight for {d.device} is not enforceable: no BFQ on this cgroup v1 host "
                     f"(modprobe bfq)")
        for key, file in (("rbps", "read_bps"), ("wbps", "write_bps"),
                          ("riops", "read_iops"), ("wiops", "write_iops")):
            val = getattr(d, key)
            if val is not None:   # v1 throttle: 0 removes the rule (= unlimited)
                out.write("io", f"blkio.throttle.{file}_device", f"{d.device} {_bytes(val, '0')}")


def _io_v2(out: _Translation, res: Resources) -> None:
    io = res.io
    weights: list[tuple[str | None, int | None]] = [(None, io.weight)]
    weights += [(d.device, d.weight) for d in io.devices]
    for device, weight in weights:
        if weight is not None:
            _io_weight_v2(out, device, weight)
    for d in io.devices:
        parts = [f"{k}={_count(getattr(d, k))}" for k in ("rbps", "wbps", "riops", "wiops")
                 if getattr(d, k) is not None]
        if parts:
            out.write("io", "io.max", f"{d.device} {' '.join(parts)}")


def _io_weight_v2(out: _Translation, device: str | None, weight: int) -> None:
    """One weight (``device`` None: the default) to BFQ's file and blk-iocost's, where present."""
    feat = out.feat
    prefix = f"{device} " if device else "default "
    wrote = False
    if feat.io_bfq_weight:
        out.write("io", "io.bfq.weight", prefix + str(convert.bfq_weight(weight)))
        wrote = True
    if feat.io_weight and (device is None or feat.iocost_devices is None
                           or device in feat.iocost_devices):
        out.write("io", "io.weight", prefix + str(weight))
        wrote = True
    elif feat.io_weight and wrote:
        out.warn(f"io.weight for {device} is left to BFQ only: blk-iocost is not "
                 f"enabled on that device (io.cost.qos)")
    if not wrote:
        out.warn("io.weight is not enforceable: neither BFQ nor io.cost "
                 "is available (echo bfq > /sys/block/DEV/queue/scheduler)")


def _pids(out: _Translation, res: Resources) -> None:
    """The same file on v1 and v2."""
    if res.pids.max is not None:
        out.write("pids", "pids.max", _count(res.pids.max))


if TYPE_CHECKING:
    _Translate = Callable[[_Translation, Resources], None]
# One translation per controller and cgroup version (as runc's fs/ and fs2/ setMemory, setCpu...);
# translate() runs them in RESOURCE_CONTROLLERS order. cpuset and pids write the same files on
# both versions, so they never ask the layout which version holds them.
_PER_VERSION: dict[tuple[str, int], _Translate] = {
    ("cpu", 1): _cpu_v1, ("cpu", 2): _cpu_v2,
    ("memory", 1): _memory_v1, ("memory", 2): _memory_v2,
    ("io", 1): _io_v1, ("io", 2): _io_v2,
}
_SAME_ON_BOTH: dict[str, _Translate] = {"cpuset": _cpuset, "pids": _pids}


def translate(cgroup: str, res: Resources, layout: Layout, feat: Features,
              formula: convert.WeightFormula = "oci", *, who: str = "") -> tuple[list[Write], list[str]]:
    """Resources of one cgroup -> (writes in apply order, warnings). Freezing not included."""
    out = _Translation(cgroup, who or cgroup, feat, formula)
    used = controllers_used(res)
    for controller in RESOURCE_CONTROLLERS:
        if controller not in used:
            continue
        same = _SAME_ON_BOTH.get(controller)
        if same is not None:
            same(out, res)
        else:
            _PER_VERSION[controller, layout.version_of(controller)](out, res)
    return out.writes, out.warnings


def controllers_used(res: Resources) -> set[str]:
    """Controllers a Resources value needs (for v2 subtree_control)."""
    out: set[str] = set()
    c = res.cpu
    if c.weight is not None or c.shares is not None or c.max_cpus is not None:
        out.add("cpu")
    if c.cpus is not None or c.mems is not None:
        out.add("cpuset")
    if any(v is not None for v in vars(res.memory).values()):
        out.add("memory")
    if res.io.weight is not None or res.io.devices:
        out.add("io")
    if res.pids.max is not None:
        out.add("pids")
    return out


def freeze_write(cgroup: str, frozen: bool, layout: Layout) -> Write:
    """The write that freezes or thaws ``cgroup`` (apply confirms it through control)."""
    if "freezer" in layout.v1_controllers:
        return Write(cgroup, "freezer", "freezer.state", "FROZEN" if frozen else "THAWED")
    return Write(cgroup, "cgroup", "cgroup.freeze", "1" if frozen else "0")


def plan(policies: PolicySet, layout: Layout, feat: Features | None = None) -> Plan:
    """Every write needed to make the cgman root match ``policies``, in apply order.

    Order (SPEC §2): per group, parents before children; on v2 a group's
    ``cgroup.subtree_control`` is written before any child file; freezer
    changes come last so limits land before a group stops.
    """
    feat = feat or Features()
    out = Plan(target=layout.mode, groups=[g.path for g in policies.groups])
    v2_used = [c for c in RESOURCE_CONTROLLERS if layout.version_of(c) == 2] \
        if layout.has_unified else []
    needs: dict[str, set[str]] = {}       # controllers needed below each inner group
    for g in policies.groups:
        used = controllers_used(g.resources) | (controllers_used(g.container) if g.container else set())
        for anc in ancestors(g.path):
            needs.setdefault(anc, set()).update(used)
        if g.container is not None:        # containers are children of g
            needs.setdefault(g.path, set()).update(used)
    parents = {g.parent for g in policies.groups if g.parent}
    inner = [ROOT] + [g.path for g in policies.groups if g.path in parents or g.container]
    enable: dict[str, list[str]] = {}
    for cg in inner:
        wanted = needs.get(cg, set()) | set(ACCOUNTING_CONTROLLERS)
        ctl = [c for c in v2_used if c in wanted and c in feat.v2_available]
        missing = sorted(c for c in needs.get(cg, set()) if c in v2_used and c not in feat.v2_available)
        if missing and cg == ROOT:
            out.warnings.append(f"controllers {', '.join(missing)} are not delegated to the cgman "
                                f"root: their settings will fail (see `cgman doctor`)")
        if ctl:
            enable[cg] = ctl
    if ROOT in enable:
        out.writes.append(subtree_control_write(ROOT, enable[ROOT]))
    freezes: list[Write] = []
    for g in policies.groups:
        writes, warns = translate(g.path, g.resources, layout, feat, g.formula,
                                  who=f"{g.path} ({g.location})")
        out.writes.extend(writes)
        out.warnings.extend(warns)
        if g.path in enable:
            out.writes.append(subtree_control_write(g.path, enable[g.path]))
        if g.resources.frozen is not None:
            freezes.append(freeze_write(g.path, g.resources.frozen, layout))
        if g.container is not None:      # validate container limits translate cleanly
            _, cwarns = translate(g.path + "/<container>", g.container, layout, feat, g.formula)
            out.warnings.extend(cwarns)
    out.writes.extend(freezes)
    return out


def subtree_control_write(cgroup: str, controllers: Iterable[str]) -> Write:
    """The v2 write that enables ``controllers`` for the children of ``cgroup``."""
    return Write(cgroup, "cgroup", "cgroup.subtree_control", " ".join(f"+{c}" for c in controllers))


def ancestors(path: str) -> list[str]:
    """Every group above ``path``, from the cgman root (ROOT) down to its parent."""
    parts = path.split("/")
    return [ROOT] + ["/".join(parts[:i]) for i in range(1, len(parts))]
