"""Pure translation for the systemd cgroup driver: policy groups -> slice units and their
properties, as `systemctl set-property` and org.freedesktop.systemd1 spell them.

| policy | unit property (D-Bus signature) | what systemd writes (v2) |
|---|---|---|
| cpu.weight w / cpu.shares s | CPUWeight (t) = w / shares_to_weight(s) | cpu.weight |
| cpu.max c, period p | CPUQuotaPerSecUSec (t) = round(c·10⁶), CPUQuotaPeriodUSec (t) = p | cpu.max "c·p p" |
| cpu.cpus / cpu.mems | AllowedCPUs / AllowedMemoryNodes (ay, a CPU bitmask) | cpuset.cpus / .mems |
| memory.max/high/low/min/swap | MemoryMax/High/Low/Min/SwapMax (t; max = 2⁶⁴−1) | memory.* |
| io.weight w | IOWeight (t) | io.weight, io.bfq.weight = bfq(w) |
| io.devices weight, rbps/wbps, riops/wiops | IODeviceWeight, IORead/WriteBandwidthMax, | io.weight / io.max |
|   (a MAJ:MIN becomes /dev/block/MAJ:MIN) | IORead/WriteIOPSMax (a(st): device path, value) | |
| pids.max | TasksMax (t) | pids.max |
| frozen | FreezeUnit / ThawUnit (a method, not a property) | cgroup.freeze |

Unit names: a group `acme/web` under the root `cgman` is `cgman-acme-web.slice` (systemd nests
slices by the dashes in their names); a dash inside a name is escaped as systemd-escape does
(`noisy-neighbour` -> `noisy\\x2dneighbour`). A container `c1` of that group is the scope
`cgman-acme-web-c1.scope` in that slice. What systemd cannot express is an error here, before
anything is applied (UnitPlanError).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

from ... import convert
from ...errors import CgmanError
from ...model import DEFAULT_CPU_PERIOD_USEC, Group, PolicySet, Resources, Unlimited
from ...units import format_cpu_list

INFINITY = 2**64 - 1                       # systemd's "infinity" for uint64 properties
MIN_QUOTA_USEC = 1000                      # systemd writes at least 1 ms of quota per period
DESCRIPTION = "cgman group "               # marks units cgman made (unit name clashes)


class UnitPlanError(CgmanError):
    """A policy value systemd cannot express, or a name it cannot carry."""


@dataclass(frozen=True)
class Prop:
    """One unit property: its D-Bus name, signature and value."""
    name: str
    signature: str
    value: Any

    def render(self) -> str:
        return render_value(self.signature, self.value)


def render_value(signature: str, value: Any) -> str:
    """A value of a property of that D-Bus signature as `systemctl show` would print it (a device
    list sorted): the one rendering of both the wanted value and systemd's, so they compare."""
    if signature == "t":
        return "infinity" if value == INFINITY else str(value)
    if signature == "ay":
        return format_bitmask(bytes(value))
    if signature == "a(st)":
        return " ".join(f"{path} {v}" for path, v in sorted(value))
    if signature == "b":
        return "yes" if value else "no"
    return str(value)


@dataclass(frozen=True)
class SliceUnit:
    """The slice of one policy group, with the properties its policy sets."""
    group: str
    name: str
    parent: str                       # the parent slice's unit name ("-.slice" for the top)
    props: tuple[Prop, ...] = ()
    frozen: bool | None = None


@dataclass
class UnitPlan:
    """The slices and unit properties that express a policy set under systemd."""

    target: str = "systemd"
    units: list[SliceUnit] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return {"target": self.target, "units": [
            {"group": u.group, "unit": u.name, "slice": u.parent, "frozen": u.frozen,
             "properties": {p.name: p.render() for p in u.props}} for u in self.units]}


def escape(name: str) -> str:
    """One path component as systemd-escape writes it: a dash would split the slice name."""
    out = []
    for i, ch in enumerate(name):
        if ch.isascii() and (ch.isalnum() or ch in ":_" or (ch == "." and i > 0)):
            out.append(ch)
        else:
            out.append(f"\\x{ord(ch):02x}")
    return "".join(out)


def unescape(part: str) -> str:
    """escape() undone: ``\\xHH`` back to its character."""
    import re
    return re.sub(r"\\x([0-9a-f]{2})", lambda m: chr(int(m.group(1), 16)), part)


def member_name(unit: str) -> str:
    """The group or container name a slice or scope below the root carries: its last
    dash-separated part, unescaped (``cgman-acme-no\\x2disy.slice`` -> ``no-isy``)."""
    return unescape(unit.rsplit(".", 1)[0].rsplit("-", 1)[-1])


def slice_name(root: str, group: str = ".") -> str:
    """The slice of ``group`` ("." is the cgman root itself) under the root ``root``."""
    if not root or "/" in root.strip("/"):
        raise UnitPlanError(f"--cgroup-root {root}: the systemd driver needs a single name (e.g. cgman): "
                        f"it becomes the slice {escape(root.split('/')[-1] or 'cgman')}.slice")
    parts = [root.strip("/")] + ([] if group in (".", "") else group.split("/"))
    name = "-".join(escape(p) for p in parts) + ".slice"
    if len(name) > 255:
        raise UnitPlanError(f"group {group}: its slice name {name[:60]}... is longer than systemd's 255 characters")
    return name


def root_of_slice(name: str) -> str | None:
    """The cgman root whose root slice is ``name`` (``slice_name``'s inverse), or None if no root's is."""
    body = name[:-len(".slice")] if name.endswith(".slice") else ""
    if not body or "-" in body:
        return None
    root = re.sub(r"\\x([0-9a-f]{2})", lambda m: chr(int(m.group(1), 16)), body)
    try:
        return root if slice_name(root) == name else None
    except UnitPlanError:
        return None


def scope_name(root: str, group: str, container: str) -> str:
    """The transient scope of container ``container`` of ``group``."""
    return slice_name(root, group)[:-len(".slice")] + "-" + escape(container) + ".scope"


PAYLOAD = "payload"                        # a container scope's leaf that holds the workload
KEEPER = "keeper"                          # ... and the one that keeps the scope until it is billed


def slice_dir(root: str, group: str = ".") -> str:
    """Where systemd puts the cgroup of ``group``'s slice, relative to the root slice's own cgroup
    (``acme/web`` under ``cgman``: ``cgman-acme.slice/cgman-acme-web.slice``)."""
    parts = [] if group in (".", "") else group.split("/")
    return "/".join(slice_name(root, "/".join(parts[:i + 1])) for i in range(len(parts))) or "."


def scope_dir(root: str, group: str, container: str) -> str:
    """The cgroup of container ``container``'s scope, relative to the root slice's cgroup."""
    above = slice_dir(root, group)
    return f"{above}/{scope_name(root, group, container)}" if above != "." else scope_name(root, group, container)


def scope_placement(root: str, group: str, container: str) -> tuple[str, str]:
    """(cgroup root, cgroup) of a container's workload under this driver: the root slice's cgroup
    (``cgman.slice``) and, relative to it, the ``payload`` leaf of the container's scope."""
    return slice_name(root), f"{scope_dir(root, group, container)}/{PAYLOAD}"


def parent_slice(root: str, group: str) -> str:
    return slice_name(root, group.rsplit("/", 1)[0] if "/" in group else ".")


def cpu_bitmask(cpus: frozenset[int]) -> bytes:
    """systemd's AllowedCPUs= wire format: bit n of byte n//8 is CPU n."""
    out = bytearray((max(cpus) // 8 + 1) if cpus else 0)
    for c in cpus:
        out[c // 8] |= 1 << (c % 8)
    return bytes(out)


def format_bitmask(mask: bytes) -> str:
    """A bitmask as a cpu list ("0-1,3"), as `systemctl show -p AllowedCPUs` prints it."""
    return format_cpu_list({i * 8 + b for i, byte in enumerate(mask) for b in range(8) if byte >> b & 1})


def _u64(value: int | Unlimited) -> int:
    return INFINITY if isinstance(value, Unlimited) else int(value)


def properties(res: Resources, formula: convert.WeightFormula = "oci", *, who: str) -> list[Prop]:
    """The unit properties of one group's or container's limits; UnitPlanError for what systemd
    cannot express. Accounting is switched on, so usage files exist as with the cgroupfs driver."""
    out = [Prop(f"{a}Accounting", "b", True) for a in ("CPU", "Memory", "IO", "Tasks")]
    cpu, mem, io = res.cpu, res.memory, res.io
    weight = convert.cpu_weight(cpu.weight, cpu.shares, formula)
    if weight is not None:
        out.append(Prop("CPUWeight", "t", weight))
    if cpu.max_cpus is not None:
        out += _cpu_quota(cpu.max_cpus, cpu.period_usec, who)
    if cpu.cpus is not None:
        out.append(Prop("AllowedCPUs", "ay", cpu_bitmask(cpu.cpus)))
    if cpu.mems is not None:
        out.append(Prop("AllowedMemoryNodes", "ay", cpu_bitmask(cpu.mems)))
    for key, prop in (("min_bytes", "MemoryMin"), ("low_bytes", "MemoryLow"), ("high_bytes", "MemoryHigh"),
                      ("max_bytes", "MemoryMax"), ("swap_bytes", "MemorySwapMax")):
        if getattr(mem, key) is not None:
            out.append(Prop(prop, "t", _u64(getattr(mem, key))))
    if io.weight is not None:
        out.append(Prop("IOWeight", "t", io.weight))
    out += _io_devices(res, who)
    if res.pids.max is not None:
        out.append(Prop("TasksMax", "t", _u64(res.pids.max)))
    for p in out:
        _check_minimum(p, who)
    return out


# systemd's lower bounds (BUS_DEFINE_SET_CGROUP_LIMIT in src/core/dbus-cgroup.c) where the kernel
# takes 0: a limit of 0 there is an error of SetUnitProperties, caught here before any call.
MINIMUM = {"MemoryMax": ("memory max", "bytes"), "MemoryHigh": ("memory high", "bytes"),
           "TasksMax": ("pids max", "tasks")}


def _check_minimum(p: Prop, who: str) -> None:
    if p.name in MINIMUM and p.value == 0:
        key, what = MINIMUM[p.name]
        raise UnitPlanError(f"{who}: {key} 0, which systemd cannot express ({p.name}= takes 1 {what[:-1]} or more; "
                            f"the cgroupfs driver writes 0): give 1 or more, or `frozen: true` to stop the group")


def _cpu_quota(max_cpus: float | Unlimited, period_usec: int | None, who: str) -> list[Prop]:
    period = period_usec or DEFAULT_CPU_PERIOD_USEC       # the schema holds it to 1ms..1s, as systemd
    if isinstance(max_cpus, Unlimited):
        return [Prop("CPUQuotaPerSecUSec", "t", INFINITY), Prop("CPUQuotaPeriodUSec", "t", period)]
    per_sec = round(max_cpus * 1_000_000)
    quota = convert.cpu_quota_usec(max_cpus, period)      # ValueError below the kernel's 1 ms: policy refused it
    if quota is None or max(per_sec * period // 1_000_000, MIN_QUOTA_USEC) != quota:
        raise UnitPlanError(f"{who}: cpu.max {max_cpus:g} with period {period}us is a quota of {quota}us per period, "
                        f"which systemd cannot express (it writes CPUQuota= in whole microseconds per second, "
                        f"{per_sec * period // 1_000_000}us here): pick a cpu.max that is whole microseconds both "
                        f"per second and per period")
    return [Prop("CPUQuotaPerSecUSec", "t", per_sec), Prop("CPUQuotaPeriodUSec", "t", period)]


def _io_devices(res: Resources, who: str) -> list[Prop]:
    lists: dict[str, list[tuple[str, int]]] = {}
    for d in res.io.devices:
        path = d.device if d.device.startswith("/") else f"/dev/block/{d.device}"
        for key, prop in (("weight", "IODeviceWeight"), ("rbps", "IOReadBandwidthMax"),
                          ("wbps", "IOWriteBandwidthMax"), ("riops", "IOReadIOPSMax"),
                          ("wiops", "IOWriteIOPSMax")):
            v = getattr(d, key)
            if v is not None:
                lists.setdefault(prop, []).append((path, _u64(v)))
    return [Prop(name, "a(st)", tuple(v)) for name, v in lists.items()]


def unit_plan(policies: PolicySet, root: str) -> UnitPlan:
    """Every slice the policies need, parents first, with its properties (pure: no D-Bus)."""
    out = UnitPlan()
    for g in policies.groups:
        out.units.append(_slice(g, root))
        if g.container is not None:          # validate the per-container scope's limits now
            properties(g.container, g.formula, who=f"{g.path}/<container> ({g.location})")
    return out


def _slice(g: Group, root: str) -> SliceUnit:
    props = properties(g.resources, g.formula, who=f"{g.path} ({g.location})")
    return SliceUnit(g.path, slice_name(root, g.path), parent_slice(root, g.path), tuple(props),
                     g.resources.frozen)
