"""Apply policies through systemd: one transient slice per group, its limits as unit properties.

A reconcile, like the cgroupfs driver's: the properties systemd reports are compared with the
policy's and only those that differ are set (drift correction is the same call). Everything that
can be refused without touching systemd is refused first, all or nothing: a value systemd cannot
express (units.UnitPlanError) and a unit name that is not cgman's (a clash). A D-Bus call that
fails half-way (systemd refuses a value, a unit vanishes) is rolled back as the cgroupfs driver's
kernel write is: the properties this apply changed get the values it read back, the slices it
created are stopped, a freeze is undone, and the error says so in one line (ApplyRolledBack).
"""

from __future__ import annotations

import dataclasses
import logging
import os
from dataclasses import dataclass, field
from typing import Any, Callable, Protocol

from ...errors import Busy, CgmanError
from ...model import PolicySet, Resources
from .units import DESCRIPTION, Prop, SliceUnit, UnitPlanError, parent_slice, properties, render_value, \
    scope_name, slice_name, UnitPlan, unit_plan

log = logging.getLogger(__name__)


class Bus(Protocol):
    def unit(self, name: str) -> dict[str, Any] | None: ...
    def start_transient(self, name: str, props: Any, extra: Any = ()) -> None: ...
    def set_properties(self, name: str, props: Any) -> None: ...
    def freeze(self, name: str, frozen: bool) -> None: ...
    def stop(self, name: str) -> None: ...
    def slices(self) -> list[tuple[str, str, str]]: ...
    def members(self, name: str) -> list[str]: ...


class ApplyRolledBack(CgmanError):
    """systemd refused a call half-way through an apply; what this apply changed was undone."""


@dataclass(frozen=True)
class UnitChange:
    """One property (or FreezerState) set on one unit, with systemd's value before."""
    unit: str
    prop: str
    old: str
    new: str

    def __str__(self) -> str:
        return f"{self.unit}: {self.prop} was {self.old}, set {self.new}"


@dataclass
class UnitResult:
    """What an apply through systemd did: slices created, properties changed, slices pruned."""

    created: list[str] = field(default_factory=list)
    changes: list[UnitChange] = field(default_factory=list)
    unchanged: int = 0
    wanted: dict[tuple[str, str], str] = field(default_factory=dict)    # (unit, property) -> the plan's value
    pruned: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return {"driver": "systemd", "created": self.created, "changes": [str(c) for c in self.changes],
                "unchanged": self.unchanged, "pruned": self.pruned}


def live_value(p: Prop, live: Any) -> str:
    """systemd's value of ``p`` rendered as ``p.render()`` renders the wanted one."""
    return "-" if live is None else render_value(p.signature, live)


def differing(u: SliceUnit, state: dict[str, Any]) -> list[Prop]:
    """The properties of ``u`` whose value systemd reports differs from the plan's."""
    return [p for p in u.props if live_value(p, state.get(p.name)) != p.render()]


def _then(call: Callable[[], object], done: str) -> Callable[[], str]:
    """An undo step: ``call``, then what it did (for the rollback's report)."""
    def step() -> str:
        call()
        return done
    return step


def ours(live: dict[str, Any] | None) -> bool:
    """A transient unit cgman made: its Description starts with cgman's mark."""
    return live is not None and bool(live.get("Transient")) and str(live.get("Description", "")).startswith(DESCRIPTION)


def check_owner(name: str, live: dict[str, Any] | None, what: str) -> None:
    """A unit of that name that cgman did not make is a clash: refuse, touch nothing. systemd
    also loads a slice that has no file (a parent, or one only asked about): that one is free
    while inactive, and someone else's once active."""
    if live is None or live.get("LoadState") == "not-found":
        return
    if ours(live) or not (live.get("FragmentPath") or live.get("Transient") or live.get("ActiveState") == "active"):
        return
    where = live.get("FragmentPath") or ("a transient unit" if live.get("Transient") else "an active unit")
    raise UnitPlanError(f"{what}: the unit {name} already exists and is not cgman's ({where}): rename the "
                        f"group, or pick another --cgroup-root")


def apply_units(policies: PolicySet, root: str, bus: Bus, *, dry_run: bool = False, prune: bool = False,
                force: bool = False, sysfs: str = "/sys") -> UnitResult:
    """Make systemd's slices match ``policies``: translate and check every name first, then
    create missing slices (parents first), set differing properties, freeze or thaw. A call that
    fails undoes this apply's earlier calls (ApplyRolledBack). ``prune`` then stops cgman's slices
    the files no longer name (prune_units), checked before anything is applied."""
    plan = _plan(policies, root, sysfs)
    live = {u.name: bus.unit(u.name) for u in plan.units}
    for u in plan.units:
        check_owner(u.name, live[u.name], f"group {u.group}")
    doomed = prunable(policies, root, bus, force=force) if prune else []
    out = UnitResult(wanted={(u.name, p.name): p.render() for u in plan.units for p in u.props})
    out.wanted.update({(u.name, "FreezerState"): "frozen" if u.frozen else "running"
                       for u in plan.units if u.frozen is not None})
    undo: list[Callable[[], str]] = []
    top = slice_name(root)                # systemd starts the root slice as the first one's parent
    if plan.units and not dry_run and (bus.unit(top) or {}).get("ActiveState") != "active":
        undo.append(_then(lambda: bus.stop(top), f"stopped {top}"))
    try:
        for u in plan.units:
            _apply_unit(u, live[u.name], bus, out, undo, dry_run)
    except BaseException as err:                  # Ctrl-C too: never leave it half-applied
        if dry_run:
            raise
        done = _rollback(undo)
        if not isinstance(err, CgmanError):
            raise
        raise ApplyRolledBack(f"{err}; {done}") from err
    for name in doomed:          # after the sets are in: a stopped slice cannot be rolled back
        if not dry_run:
            bus.stop(name)
    out.pruned = doomed
    return out


def _plan(policies: PolicySet, root: str, sysfs: str) -> UnitPlan:
    plan = unit_plan(policies, root)
    plan.units = [_with_device_paths(u, sysfs) for u in plan.units]
    return plan


def _apply_unit(u: SliceUnit, state: dict[str, Any] | None, bus: Bus, out: UnitResult,
                undo: list[Callable[[], str]], dry_run: bool) -> None:
    if state is None or state.get("ActiveState") != "active":
        if not dry_run:           # undo first: a start that fails waiting may leave the unit
            undo.append(_then(lambda: bus.stop(u.name), f"stopped {u.name}"))
            bus.start_transient(u.name, u.props, extra=[("Description", "s", DESCRIPTION + u.group)])
        out.created.append(u.name)
    else:
        _set_differing(u, state, bus, out, undo, dry_run)
    if u.frozen is not None:
        _freeze_differing(u, state, bus, out, undo, dry_run)


def _rollback(undo: list[Callable[[], str]]) -> str:
    """Undo in reverse order, as much as can be; what was done, in words for one line."""
    failed = 0
    for step in reversed(undo):
        try:
            log.info("rollback: %s", step())
        except CgmanError as e:
            failed += 1
            log.error("rollback step failed: %s", e)
    if not undo:
        return "nothing had been changed"
    if failed:
        return f"rolled back {len(undo) - failed} of {len(undo)} change(s); {failed} could NOT be undone " \
               f"(run apply again, or `cgman diff --cgroup-driver systemd`)"
    return f"rolled back {len(undo)} change(s), nothing was applied"


def _freeze_differing(u: SliceUnit, state: dict[str, Any] | None, bus: Bus, out: UnitResult,
                      undo: list[Callable[[], str]], dry_run: bool) -> None:
    """Freeze or thaw the slice where systemd's FreezerState differs (a new slice runs), and
    say so, as any other property that changes."""
    want = "frozen" if u.frozen else "running"
    have = (state or {}).get("FreezerState") or "running"
    if have == want:
        out.unchanged += 1
        return
    if not dry_run:
        bus.freeze(u.name, bool(u.frozen))
        undo.append(_then(lambda: bus.freeze(u.name, have == "frozen"), f"{u.name}: FreezerState {have} again"))
    out.changes.append(UnitChange(u.name, "FreezerState", have, want))


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
        raise UnitPlanError(f"io.devices {majmin}: systemd takes a device path, and no block device {majmin} "
                        f"exists here: write the device as /dev/NAME") from None
    return f"/dev/{name}"


def _device_paths(props: Any, sysfs: str) -> tuple[Prop, ...]:
    return tuple(dataclasses.replace(p, value=tuple((device_path(d, sysfs), v) for d, v in p.value))
                 if p.signature == "a(st)" else p for p in props)


def _with_device_paths(u: SliceUnit, sysfs: str) -> SliceUnit:
    return dataclasses.replace(u, props=_device_paths(u.props, sysfs))


def _set_differing(u: SliceUnit, state: dict[str, Any], bus: Bus, out: UnitResult,
                   undo: list[Callable[[], str]], dry_run: bool) -> None:
    differ = differing(u, state)
    out.unchanged += len(u.props) - len(differ)
    changes = [UnitChange(u.name, p.name, live_value(p, state.get(p.name)), p.render()) for p in differ]
    if differ and not dry_run:
        old = [_as_sent(p, state.get(p.name)) for p in differ]
        bus.set_properties(u.name, sendable(differ))
        undo.append(_then(lambda: bus.set_properties(u.name, sendable(old)),
                          f"{u.name}: restored {', '.join(p.name for p in old)}"))
    out.changes += changes


def _as_sent(p: Prop, live: Any) -> Prop:
    """systemd's value of ``p`` as a Prop that sets it back."""
    if p.signature == "ay":
        return dataclasses.replace(p, value=bytes(live or b""))
    if p.signature == "a(st)":
        return dataclasses.replace(p, value=tuple((str(d), int(v)) for d, v in live or ()))
    return dataclasses.replace(p, value=live)


def sendable(props: list[Prop]) -> list[Prop]:
    """SetUnitProperties adds a device list's entries to those systemd has; an empty list first
    clears them, so the list set is the whole list (a device dropped from the policy goes)."""
    out: list[Prop] = []
    for p in props:
        out += [dataclasses.replace(p, value=()), p] if p.signature == "a(st)" and p.value else [p]
    return out


def start_scope(bus: Bus, root: str, group: str, container: str, pid: int, res: Resources,
                formula: Any = "oci", *, delegate: bool = False) -> str:
    """A container as a transient scope of its group's slice, holding ``pid``, with its limits.
    ``delegate``: Delegate=yes, so that the cgroups below the scope's own are the caller's."""
    name = scope_name(root, group, container)
    check_owner(name, bus.unit(name), f"container {container}")
    props = _device_paths(properties(res, formula, who=f"container {container}"), "/sys")
    extra = [("Slice", "s", parent_slice(root, f"{group}/{container}")), ("PIDs", "au", [pid]),
             ("Description", "s", f"{DESCRIPTION}{group} container {container}")]
    bus.start_transient(name, props, extra=extra + ([("Delegate", "b", True)] if delegate else []))
    return name


def extra_slices(policies: PolicySet, root: str, bus: Bus) -> list[str]:
    """cgman's active slices under ``root`` that the files no longer name, deepest first. A slice
    cgman did not make is never one, whatever its name."""
    wanted = {u.name for u in unit_plan(policies, root).units}
    prefix = slice_name(root)[:-len(".slice")] + "-"
    named = [n for n, desc, state in bus.slices() if n.startswith(prefix) and n not in wanted
             and state == "active" and desc.startswith(DESCRIPTION)]
    return sorted((n for n in named if ours(bus.unit(n))), key=lambda n: (-n.count("-"), n))


def prune_units(policies: PolicySet, root: str, bus: Bus, *, force: bool = False) -> list[str]:
    """Stop cgman's slices that the files no longer name, deepest first; all or nothing (prunable)."""
    extra = prunable(policies, root, bus, force=force)
    for name in extra:
        bus.stop(name)
    return extra


def prunable(policies: PolicySet, root: str, bus: Bus, *, force: bool = False) -> list[str]:
    """The slices prune would stop, deepest first; Busy if it must not. A slice holding a unit cgman
    did not make is refused even with ``force`` (stopping the slice would stop it); one holding
    cgman's container scopes only with ``force``."""
    extra = extra_slices(policies, root, bus)
    foreign: list[str] = []
    busy: list[str] = []
    for name in extra:
        for m in bus.members(name):
            if m not in extra:
                (busy if ours(bus.unit(m)) else foreign).append(f"{name} holds {m}")
    if foreign:
        raise Busy(f"cannot prune: {', '.join(foreign)}, which cgman did not make: stop it or move it to "
                   f"another slice, then prune again")
    if busy and not force:
        raise Busy(f"cannot prune: {', '.join(busy)} (a running container): stop it first, or use --force")
    return extra


def diff_units(policies: PolicySet, root: str, bus: Bus, sysfs: str = "/sys") -> list[dict[str, str | None]]:
    """Drift: every planned slice that is not active, every property systemd reports otherwise,
    a freeze that differs, and cgman's slices the files no longer name."""
    out: list[dict[str, str | None]] = []
    for u in _plan(policies, root, sysfs).units:
        state = bus.unit(u.name)
        if state is None or state.get("ActiveState") != "active":
            out.append({"unit": u.name, "property": None, "want": "active", "live": None})
            continue
        out += [{"unit": u.name, "property": p.name, "want": p.render(), "live": live_value(p, state.get(p.name))}
                for p in differing(u, state)]
        have, want = state.get("FreezerState") or "running", "frozen" if u.frozen else "running"
        if u.frozen is not None and have != want:
            out.append({"unit": u.name, "property": "FreezerState", "want": want, "live": have})
    out += [{"unit": n, "property": None, "want": None, "live": "not in the files (--prune stops it)"}
            for n in extra_slices(policies, root, bus)]
    return out
