"""One container's security settings: its group's launch policy plus the run's flags.

The operator decides in the policy; whoever may run in a group cannot lift its rules:
``--privileged``, ``--cap-add`` of a capability the group does not grant, ``--device`` of a
node it does not list, and ``--security-opt`` that loosens seccomp or no_new_privs are
refused unless the group says ``allow_privileged: true``. Dropping more is always allowed.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field

from ..errors import LaunchError
from ..model import SecurityPolicy
from . import caps as C
from . import seccomp as S
from .devices import DEFAULT as DEFAULT_DEVICES
from .devices import DeviceRule, from_path

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

# runc's lists (libcontainer/specconv): paths a container must not read, and must not write.
MASKED_PATHS = ("/proc/acpi", "/proc/kcore", "/proc/keys", "/proc/latency_stats", "/proc/timer_list",
                "/proc/timer_stats", "/proc/sched_debug", "/proc/scsi", "/sys/firmware",
                "/sys/devices/virtual/powercap")
READONLY_PATHS = ("/proc/bus", "/proc/fs", "/proc/irq", "/proc/sys", "/proc/sysrq-trigger")


@dataclass(frozen=True)
class RunSecurity:
    """The run's flags: --privileged, --cap-add/--cap-drop, --device, --security-opt."""

    privileged: bool = False
    cap_add: tuple[str, ...] = ()
    cap_drop: tuple[str, ...] = ()
    devices: tuple[tuple[str, str], ...] = ()          # (path, access)
    seccomp: str | None = None
    no_new_privileges: bool | None = None
    volumes: tuple[tuple[str, bool], ...] = ()         # (path, readonly)


def volume_path(path: str) -> str:
    """An absolute host path for a volume, symlinks resolved (the bind follows them anyway, so
    what is checked is what is mounted). ValueError if it does not exist."""
    if not path.startswith("/"):
        raise ValueError(f"{path[:80]!r}: give an absolute path")
    real = os.path.realpath(path)
    if not os.path.exists(real):
        raise ValueError(f"{path[:80]}: no such file or directory on this host")
    if real == "/":
        raise ValueError("/ cannot be a volume: the whole host would be writable (that is --privileged)")
    return real


def _within(path: str, parent: str) -> bool:
    return path == parent or path.startswith(parent.rstrip("/") + "/")


@dataclass(frozen=True)
class Security:
    """What the launch applies. ``privileged`` means none of the rest."""

    privileged: bool = False
    caps: frozenset[str] = C.DEFAULT
    no_new_privileges: bool = True
    seccomp: str = S.DEFAULT
    devices: tuple[DeviceRule, ...] = field(default=DEFAULT_DEVICES)
    volumes: tuple[tuple[str, bool], ...] = ()         # writable (or read-only) host paths

    def summary(self) -> dict[str, Any]:
        """For the record (`cgman inspect`) and for `cgman exec`, which applies the same."""
        if self.privileged:
            return {"privileged": True}
        return {"privileged": False, "capabilities": sorted(self.caps),
                "no_new_privileges": self.no_new_privileges, "seccomp": self.seccomp,
                "devices": [d.as_dict() for d in self.devices], "cgroupfs": "read-only, own cgroup only",
                "host_filesystem": "read-only but for volumes (without a root of its own)",
                "volumes": [{"path": p, "readonly": ro} for p, ro in self.volumes],
                "masked_paths": list(MASKED_PATHS), "readonly_paths": list(READONLY_PATHS)}


def _refuse(group: str, what: str, how: str) -> LaunchError:
    return LaunchError(f"{what}: group {group} does not allow it; the operator can, in its policy, "
                       f"with {how} or launch.allow_privileged: true")


def resolve(group: str, pol: SecurityPolicy, run: RunSecurity) -> Security:
    """The settings for a container of ``group``; LaunchError for what the group does not allow."""
    allowed = pol.allow_privileged
    if run.privileged and not allowed:
        raise _refuse(group, "--privileged", "launch.privileged: true")
    if pol.privileged or run.privileged:
        return Security(privileged=True)
    try:
        group_caps = C.apply(C.DEFAULT, pol.cap_add, pol.cap_drop)
        add, drop = [C.normalize(c) for c in run.cap_add], [C.normalize(c) for c in run.cap_drop]
    except ValueError as e:
        raise LaunchError(f"--cap-add/--cap-drop: {e}") from None
    caps = C.apply(group_caps, add, drop)
    extra = sorted(caps - group_caps)
    if extra and not allowed:
        raise _refuse(group, f"--cap-add {' '.join(extra)}", f"launch.capabilities.add: [{', '.join(extra)}]")
    nnp = pol.no_new_privileges if run.no_new_privileges is None else run.no_new_privileges
    if pol.no_new_privileges and not nnp and not allowed:
        raise _refuse(group, "--security-opt no-new-privileges=false", "launch.no_new_privileges: false")
    profile = run.seccomp or pol.seccomp
    if profile != pol.seccomp and not allowed:
        raise _refuse(group, f"--security-opt seccomp={profile}", f"launch.seccomp: {profile}")
    listed = {(d.path, d.access) for d in pol.devices}
    devices = list(DEFAULT_DEVICES)
    for path, access in [(d.path, d.access) for d in pol.devices] + list(run.devices):
        if (path, access) not in listed and not allowed:
            raise _refuse(group, f"--device {path}:{access}", f"launch.devices: [{{path: {path}, access: {access}}}]")
        try:
            devices.append(from_path(path, access))
        except ValueError as e:
            raise LaunchError(f"--device: {e}") from None
    return Security(caps=caps, no_new_privileges=nnp, seccomp=profile, devices=tuple(devices),
                    volumes=_volumes(group, pol, run))


def _volumes(group: str, pol: SecurityPolicy, run: RunSecurity) -> tuple[tuple[str, bool], ...]:
    """The group's volumes plus the run's; a run's must lie within one of the group's, no less
    read-only, unless the group allows privileges."""
    out = {v.path: v.readonly for v in pol.volumes}
    for path, ro in run.volumes:
        try:
            real = volume_path(path)
        except ValueError as e:
            raise LaunchError(f"--volume: {e}") from None
        if not pol.allow_privileged and not any(_within(real, v.path) and (ro or not v.readonly)
                                                for v in pol.volumes):
            raise _refuse(group, f"--volume {real}{':ro' if ro else ''}",
                          f"launch.volumes: [{{path: {real}}}]")
        out[real] = ro
    return tuple(sorted(out.items()))


_SUMMARY_KEYS = {"privileged", "capabilities", "no_new_privileges", "seccomp", "devices", "cgroupfs",
                 "masked_paths", "readonly_paths", "host_filesystem", "volumes"}


def check_summary(v: Any) -> str:
    """'' if ``v`` is a summary cgman would have written (None: a record from before issue 11);
    else what is wrong (for the run dir's record checks)."""
    if v is None:
        return ""
    if not isinstance(v, dict) or not set(v) <= _SUMMARY_KEYS or not isinstance(v.get("privileged"), bool):
        return "not a security summary"
    if v["privileged"]:
        return "" if set(v) == {"privileged"} else "a privileged summary has no other keys"
    caps = v.get("capabilities")
    if not isinstance(caps, list) or not all(isinstance(c, str) and c in C.ALL for c in caps):
        return "capabilities: not a list of capability names"
    prof = v.get("seccomp")
    if not isinstance(prof, str) or len(prof) > 4096 or not (prof in (S.DEFAULT, S.UNCONFINED)
                                                              or prof.startswith("/")):
        return "seccomp: not default, unconfined or an absolute path"
    if not isinstance(v.get("no_new_privileges"), bool):
        return "no_new_privileges: not true or false"
    for k in ("devices", "masked_paths", "readonly_paths", "volumes"):
        if not isinstance(v.get(k, []), list) or len(v.get(k, [])) > 1024:
            return f"{k}: not a list"
    return ""


def from_summary(d: Any) -> Security:
    """The settings a record says its container runs with (for `cgman exec`), checked like input."""
    if not isinstance(d, dict) or d.get("privileged") is True:
        if isinstance(d, dict) and set(d) == {"privileged"}:
            return Security(privileged=True)
        return Security()          # unknown or damaged: the defaults, never less
    try:
        caps = frozenset(C.normalize(c) for c in d.get("capabilities", [])) - {"ALL"}
    except (ValueError, TypeError):
        caps = C.DEFAULT
    profile = d.get("seccomp")
    if not isinstance(profile, str) or not (profile in (S.DEFAULT, S.UNCONFINED) or profile.startswith("/")):
        profile = S.DEFAULT
    return Security(caps=caps, no_new_privileges=d.get("no_new_privileges") is not False, seccomp=profile)
