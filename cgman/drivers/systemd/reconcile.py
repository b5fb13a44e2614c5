"""Apply policies through systemd: one transient slice per group, its limits as unit properties.

A reconcile, like the cgroupfs driver's: the properties systemd reports are compared with the
policy's and only those that differ are set (drift correction is the same call). Everything that
can be refused without touching systemd is refused first, all or nothing: a value systemd cannot
express (units.UnitError) and a unit name that is not cgman's (a clash). A D-Bus error half-way
leaves the units set so far; running apply again converges.
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass, field
from typing import Any, Protocol

from ...model import PolicySet, Resources
from .units import DESCRIPTION, INFINITY, Prop, SliceUnit, UnitError, format_bitmask, parent_slice, \
    properties, scope_name, unit_plan


class Bus(Protocol):
    def unit(self, name: str) -> dict[str, Any] | None: ...
    def start_transient(self, name: str, props: Any, extra: Any = ()) -> None: ...
    def set_properties(self, name: str, props: Any) -> None: ...
    def freeze(self, name: str, frozen: bool) -> None: ...


@dataclass
class UnitResult:
    created: list[str] = field(default_factory=list)
    changes: list[str] = field(default_factory=list)          # "unit: Prop was X, set Y"
    unchanged: int = 0
    warnings: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return {"driver": "systemd", "created": self.created, "changes": self.changes,
                "unchanged": self.unchanged, "warnings": self.warnings}


def live_value(p: Prop, live: Any) -> str:
    """systemd's value of ``p`` rendered as ``p.render()`` renders the wanted one."""
    if live is None:
        return "-"
    if p.signature == "ay":
        return format_bitmask(bytes(live))
    if p.signature == "a(st)":
        return " ".join(f"{path} {v}" for path, v in sorted(live))
    if p.signature == "t":
        return "infinity" if live == INFINITY else str(live)
    if p.signature == "b":
        return "yes" if live else "no"
    return str(live)


def _wanted(p: Prop) -> str:
    return " ".join(f"{path} {v}" for path, v in sorted(p.value)) if p.signature == "a(st)" else p.render()


def check_owner(name: str, live: dict[str, Any] | None, what: str) -> None:
    """A unit of that name that cgman did not make is a clash: refuse, touch nothing. systemd
    also loads a slice that has no file (a parent, or one only asked about): that one is free
    while inactive, and someone else's once active."""
    if live is None or live.get("LoadState") == "not-found":
        return
    ours = bool(live.get("Transient")) and str(live.get("Description", "")).startswith(DESCRIPTION)
    if ours or not (live.get("FragmentPath") or live.get("Transient") or live.get("ActiveState") == "active"):
        return
    where = live.get("FragmentPath") or ("a transient unit" if live.get("Transient") else "an active unit")
    raise UnitError(f"{what}: the unit {name} already exists and is not cgman's ({where}): rename the "
                    f"group, or pick another --cgroup-root")


def apply_units(policies: PolicySet, root: str, bus: Bus, *, dry_run: bool = False,
                sysfs: str = "/sys") -> UnitResult:
    """Make systemd's slices match ``policies``: translate and check every name first, then
    create missing slices (parents first), set differing properties, freeze or thaw."""
    plan = unit_plan(policies, root)
    plan.units = [_with_device_paths(u, sysfs) for u in plan.units]
    live = {u.name: bus.unit(u.name) for u in plan.units}
    for u in plan.units:
        check_owner(u.name, live[u.name], f"group {u.group}")
    out = UnitResult(warnings=list(plan.warnings))
    for u in plan.units:
        state = live[u.name]
        if state is None or state.get("ActiveState") != "active":
            out.created.append(u.name)
            if not dry_run:
                bus.start_transient(u.name, u.props, extra=[("Description", "s", DESCRIPTION + u.group)])
        else:
            _set_differing(u, state, bus, out, dry_run)
        if u.frozen is not None:
            _freeze_differing(u, state, bus, out, dry_run)
    return out


def _freeze_differing(u: SliceUnit, state: dict[str, Any] | None, bus: Bus, out: UnitResult,
                      dry_run: bool) -> None:
    """Freeze or thaw the slice where systemd's FreezerState differs (a new slice runs), and
    say so, as any other property that changes."""
    want = "frozen" if u.frozen else "running"
    have = (state or {}).get("FreezerState") or "running"
    if have == want:
        out.unchanged += 1
        return
    out.changes.append(f"{u.name}: FreezerState was {have}, set {want}")
    if not dry_run:
        bus.freeze(u.name, bool(u.frozen))


def device_path(path: str, sysfs: str = "/sys") -> str:
    """systemd takes IO limits per device *path*; /dev/block/MAJ:MIN is udev's link, so where it is
    missing the kernel's own name (/sys/dev/block/MAJ:MIN/uevent DEVNAME) is used instead."""
    if not path.startswith("/dev/block/") or os.path.exists(path):
        return path
    majmin = path[len("/dev/block/"):]
    try:
        with open(os.path.join(sysfs, "dev", "block", majmin, "uevent"), encoding="utf-8") as f:
            name = next(line[8:].strip() for line in f if line.startswith("DEVNAME="))
    except (OSError, StopIteration):
        raise UnitError(f"io.devices {majmin}: systemd takes a device path, and no block device {majmin} "
                        f"exists here: write the device as /dev/NAME") from None
    return f"/dev/{name}"


def _device_paths(props: Any, sysfs: str) -> tuple[Prop, ...]:
    return tuple(dataclasses.replace(p, value=tuple((device_path(d, sysfs), v) for d, v in p.value))
                 if p.signature == "a(st)" else p for p in props)


def _with_device_paths(u: SliceUnit, sysfs: str) -> SliceUnit:
    return dataclasses.replace(u, props=_device_paths(u.props, sysfs))


def _set_differing(u: SliceUnit, state: dict[str, Any], bus: Bus, out: UnitResult, dry_run: bool) -> None:
    differ = [p for p in u.props if live_value(p, state.get(p.name)) != _wanted(p)]
    out.unchanged += len(u.props) - len(differ)
    for p in differ:
        out.changes.append(f"{u.name}: {p.name} was {live_value(p, state.get(p.name))}, set {p.render()}")
    if differ and not dry_run:
        bus.set_properties(u.name, differ)


def start_scope(bus: Bus, root: str, group: str, container: str, pid: int, res: Resources,
                formula: Any = "oci") -> str:
    """A container as a transient scope of its group's slice, holding ``pid``, with its limits."""
    name = scope_name(root, group, container)
    check_owner(name, bus.unit(name), f"container {container}")
    props = _device_paths(properties(res, formula, who=f"container {container}"), "/sys")
    bus.start_transient(name, props, extra=[("Slice", "s", parent_slice(root, f"{group}/{container}")),
                                            ("PIDs", "au", [pid]),
                                            ("Description", "s", f"{DESCRIPTION}{group} container {container}")])
    return name
