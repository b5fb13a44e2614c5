"""Delegation checks for `cgman doctor`: where this process sits, who may write the cgman root.

Rules they follow (kernel Documentation/admin-guide/cgroup-v2.rst "Delegation", systemd
docs/CGROUP_DELEGATION.md):
- a cgroup is delegated by handing its directory and its cgroup.procs, cgroup.subtree_control and
  cgroup.threads files to the delegatee (systemd does this for a `Delegate=yes` unit with `User=`);
  the limit files in it stay the parent's;
- systemd owns every cgroup outside the subtrees it delegated;
- on cgroup v2 a cgroup that holds processes cannot enable controllers for its children (the
  no-internal-processes rule; the root cgroup is exempt).

Every input (/proc, the effective ids, the systemctl binary) can be overridden so tests feed
fixtures, as psutil's PROCFS_PATH; the environment is the caller's to give (the CLI's own).
"""

from __future__ import annotations

import os
import shutil
import subprocess
from typing import Iterable, Mapping

from .check import Check

DELEGATED_FILES = ("cgroup.procs", "cgroup.subtree_control", "cgroup.threads")
SYSTEMD_HIERARCHY = "name=systemd"
UNIFIED_HIERARCHY = ""                  # the `0::PATH` line of /proc/PID/cgroup
DOC = "docs/operations.md"


def parse_proc_cgroup(text: str) -> dict[str, str]:
    """/proc/PID/cgroup as {hierarchy: path}: "cpu,cpuacct", "name=systemd", "" for cgroup2."""
    out = {}
    for line in text.splitlines():
        parts = line.split(":", 2)
        if len(parts) == 3:
            out[parts[1]] = parts[2]
    return out


def unit_of(path: str) -> tuple[str, str] | None:
    """(unit, its cgroup) for the deepest .service or .scope in ``path``, else None.

    Only a hint: systemd does not promise this mapping (CGROUP_DELEGATION.md), so what the
    unit's Delegate= says is asked from systemctl, never guessed from the name."""
    parts = path.strip("/").split("/") if path.strip("/") else []
    for i in range(len(parts) - 1, -1, -1):
        if parts[i].endswith((".service", ".scope")):
            return parts[i], "/" + "/".join(parts[:i + 1])
    return None


def unit_delegate(unit: str, systemctl: str = "systemctl", timeout_s: float = 5.0) -> tuple[bool | None, str]:
    """(Delegate= of ``unit``, why unknown): True/False from `systemctl show`, None when it can't tell."""
    exe = shutil.which(systemctl)
    if exe is None:
        return None, f"{systemctl} not found"
    try:
        p = subprocess.run([exe, "show", "-p", "Delegate", "--value", unit], capture_output=True, text=True,
                           timeout=timeout_s)
    except subprocess.TimeoutExpired:
        return None, f"systemctl show timed out after {timeout_s:g}s"
    except OSError as e:
        return None, f"cannot run {exe}: {e.strerror}"
    value = p.stdout.strip()
    if p.returncode != 0 or value not in ("yes", "no"):
        why = (p.stderr.strip().splitlines() or [value or f"exit status {p.returncode}"])[-1]
        return None, f"systemctl show failed: {why}"
    return value == "yes", ""


def writable_by(st: os.stat_result, euid: int, gids: Iterable[int]) -> bool:
    """The kernel's permission check for a write, from a stat: owner, then group, then others."""
    if euid == 0:
        return True
    if st.st_uid == euid:
        return bool(st.st_mode & 0o200)
    if st.st_gid in set(gids):
        return bool(st.st_mode & 0o020)
    return bool(st.st_mode & 0o002)


def _inside(path: str, top: str) -> bool:
    return path == top or path.startswith(top.rstrip("/") + "/")


def delegation_checks(unified: str | None, root: str, *, v2_controllers: bool, procfs: str = "/proc",
                      euid: int | None = None, gids: Iterable[int] | None = None,
                      environ: Mapping[str, str] | None = None, systemctl: str = "systemctl") -> list[Check]:
    """Three checks: the systemd unit this process runs in, write access to the cgroup v2 root
    (kernel delegation rules), and whether the cgman root lies inside a delegated subtree.

    ``v2_controllers``: some resource controller lives on the cgroup2 hierarchy (pure v2), so the
    no-internal-processes rule applies to the groups above cgman's leaves. ``environ``: the
    command's environment (INVOCATION_ID there says systemd started it); None: not looked at."""
    euid = os.geteuid() if euid is None else euid
    gids = set(os.getgroups()) | {os.getegid()} if gids is None else set(gids)
    environ = {} if environ is None else environ
    src = os.path.join(procfs, "self", "cgroup")
    try:
        with open(src, encoding="utf-8") as f:
            cgroups = parse_proc_cgroup(f.read())
    except OSError as e:
        return [Check("systemd unit", False, f"cannot read {src}: {e.strerror}",
                      "mount /proc (doctor reads this process's cgroup from it)", warn=True)]
    mine = cgroups.get(SYSTEMD_HIERARCHY) or cgroups.get(UNIFIED_HIERARCHY)
    if mine is None:
        return [Check("systemd unit", False, f"{src} names no cgroup2 or name=systemd hierarchy",
                      "mount cgroup2 (or systemd's name=systemd hierarchy) at /sys/fs/cgroup", warn=True)]
    out, unit, delegate = _unit_check(mine, environ, systemctl)
    checks = [out]
    if unified is not None:
        checks.append(_v2_access_check(unified, root, euid, gids))
    here = cgroups.get(UNIFIED_HIERARCHY, mine) if unified is not None else mine
    checks.append(_placement_check("/" + root.strip("/"), here, unit, delegate, euid,
                                   v2_controllers and unified is not None))
    return checks


def _unit_check(mine: str, environ: Mapping[str, str], systemctl: str
                ) -> tuple[Check, tuple[str, str] | None, bool | None]:
    unit = unit_of(mine)
    started = " (INVOCATION_ID is set: started by systemd)" if environ.get("INVOCATION_ID") else ""
    if unit is None:
        return Check("systemd unit", True, f"cgroup {mine}: not inside a systemd service or scope{started}"), \
            None, None
    name = unit[0]
    delegate, why = unit_delegate(name, systemctl)
    if delegate is True:
        return Check("systemd unit", True, f"cgroup {mine}: in {name}, Delegate=yes"), unit, True
    if delegate is None:
        return Check("systemd unit", False, f"cgroup {mine}: in {name}; its Delegate= is unknown ({why})",
                     f"check with `systemctl show -p Delegate {name}`; the agent's unit needs Delegate=yes "
                     f"(packaging/systemd/cgman-agent.service)", warn=True), unit, None
    if name.endswith(".scope"):       # a login session or a transient scope: fine for a top-level root
        return Check("systemd unit", True, f"cgroup {mine}: in {name} (Delegate=no; a session, not the "
                     "agent's unit)"), unit, False
    return Check("systemd unit", False, f"cgroup {mine}: in {name}, Delegate=no: systemd may rewrite "
                 "the controllers cgman relies on", f"add Delegate=yes to [Service] of {name} (as in "
                 "packaging/systemd/cgman-agent.service), then `systemctl daemon-reload` and restart it",
                 warn=True), unit, False


def _v2_access_check(unified: str, root: str, euid: int, gids: set[int]) -> Check:
    """Kernel delegation: the delegatee owns the directory and its procs/subtree_control/threads."""
    target = os.path.join(unified, root.strip("/"))
    while target != unified and not os.path.isdir(target):
        target = os.path.dirname(target)
    what = "the cgman root" if target == os.path.join(unified, root.strip("/")) else \
        "the nearest existing parent of the cgman root"
    if euid == 0:
        return Check("cgroup v2 delegation", True, f"uid 0 may create and manage {target} ({what}); "
                     "the kernel's delegation rules bind other users")
    denied = []
    for path in [target] + [os.path.join(target, f) for f in DELEGATED_FILES]:
        try:
            st = os.stat(path)
        except FileNotFoundError:
            if path.endswith("cgroup.threads"):      # kernels before 4.14 have none
                continue
            denied.append(f"{path} (missing)")
            continue
        except OSError as e:
            denied.append(f"{path} ({e.strerror})")
            continue
        if not writable_by(st, euid, gids):
            denied.append(path)
    if not denied:
        return Check("cgroup v2 delegation", True, f"uid {euid} owns {target} ({what}) and its "
                     + ", ".join(DELEGATED_FILES))
    return Check("cgroup v2 delegation", False, f"uid {euid} cannot write " + ", ".join(denied)
                 + f" ({what})", f"run as root, or delegate it: chown {euid} {target} "
                 + " ".join(os.path.join(target, f) for f in DELEGATED_FILES)
                 + " (what systemd does for a unit with User= and Delegate=yes); see " + DOC)


def _placement_check(root_cg: str, here: str, unit: tuple[str, str] | None, delegate: bool | None,
                     euid: int, v2_controllers: bool) -> Check:
    name = "cgman root placement"
    if v2_controllers and here != "/" and _inside(root_cg, here):
        return Check(name, False, f"{root_cg} lies inside {here}, the cgroup this process runs in: on "
                     "cgroup v2 a cgroup holding processes cannot enable controllers for its children "
                     "(no internal processes); only the agent moves itself into a leaf (supervisor/) first",
                     "run cgman agent in this unit (it moves into supervisor/), use a top-level root (layout "
                     f"(a): the default `cgman`) or one outside this process's cgroup; see {DOC}", warn=True)
    if unit is not None and _inside(root_cg, unit[1]):
        if delegate is True:
            return Check(name, True, f"{root_cg} lies inside {unit[1]}, delegated to {unit[0]}: cgman is "
                         "its only writer")
        return Check(name, False, f"{root_cg} lies inside {unit[1]}, which {unit[0]} does not (knowingly) "
                     "delegate: systemd owns it", f"add Delegate=yes to {unit[0]}, or use a top-level "
                     f"root; see {DOC}", warn=True)
    detail = (f"{root_cg} lies outside any subtree delegated to this process (its cgroup: {here}): a "
              "top-level root, like Docker's cgroupfs driver")
    if euid == 0:
        return Check(name, True, detail + "; as root cgman may manage it")
    return Check(name, False, detail + f"; uid {euid} cannot move processes into it (the kernel wants write "
                 "access to cgroup.procs of the common ancestor)", "run as root, or pick a --cgroup-root "
                 f"inside a subtree delegated to you; see {DOC}", warn=True)


SYSTEMD_BOOTED = "/run/systemd/system"        # exists when systemd is PID 1 (sd_booted())
LAYOUT_B_ROOT = "cgman.slice/cgman-agent.service/payload"


def layout_check(unified: str | None, root: str, *, systemd: bool | None = None,
                 systemctl: str = "systemctl") -> Check:
    """Which layout is in force, (a) a top-level root or (b) a root inside a delegated unit, and
    whether it follows systemd's delegation rules (one writer per cgroup; write only below a
    unit delegated to you; processes only in leaves), with the fix."""
    name, root_cg = "cgroup layout", "/" + root.strip("/")
    systemd = os.path.isdir(SYSTEMD_BOOTED) if systemd is None else systemd
    unit = unit_of(root_cg)
    if unit is None:
        return _layout_a(name, root_cg, systemd)
    uname, unit_cg = unit
    delegate, why = unit_delegate(uname, systemctl)
    if delegate is not True:
        state = "Delegate=no" if delegate is False else f"Delegate= unknown: {why}"
        return Check(name, False, f"(b) root {root_cg} inside {uname} ({state}): systemd owns that cgroup and "
                     "may rewrite or remove what cgman writes", f"add Delegate=yes to [Service] of {uname} "
                     f"(as packaging/systemd/cgman-agent.service has), or use a top-level root; see {DOC}")
    if unified is None:
        return Check(name, False, f"(b) root {root_cg} inside {uname}: supported on pure cgroup v2 only",
                     f"use a top-level root (layout (a), the default `cgman`) on this host; see {DOC}", warn=True)
    from ..drivers.cgfs import read_in_hierarchy
    from ..errors import CgmanError
    try:
        inner = read_in_hierarchy(unified, unit_cg.strip("/"), "cgroup.procs").split()
    except (CgmanError, OSError):
        return Check(name, False, f"(b) root {root_cg} inside {uname}, which is not running ({unit_cg} is "
                     "missing)", f"systemctl start {uname}: its agent creates the root", warn=True)
    if inner:
        return Check(name, False, f"(b) root {root_cg} inside {uname}, but {unit_cg} holds processes itself "
                     f"({' '.join(inner[:5])}): no internal processes, so its groups cannot get controllers",
                     f"restart {uname}: `cgman agent` moves the unit's processes into {unit_cg}/supervisor")
    return Check(name, True, f"(b) root {root_cg} inside {uname}'s delegated cgroup {unit_cg}, whose processes "
                 f"live in leaves (the agent in {unit_cg}/supervisor, as DelegateSubgroup= does on systemd "
                 ">= 254): follows systemd's rules; stopping the unit stops its containers")


def _layout_a(name: str, root_cg: str, systemd: bool) -> Check:
    slices = [p for p in root_cg.strip("/").split("/") if p.endswith(".slice")]
    if not systemd:
        return Check(name, True, f"(a) top-level root {root_cg}; systemd is not PID 1, so no other manager "
                     "claims the tree")
    if slices:
        return Check(name, False, f"(a) root {root_cg} inside {slices[-1]}, a slice: slices are never "
                     "delegated, systemd owns every cgroup in them", f"use a root inside a Delegate=yes unit "
                     f"({LAYOUT_B_ROOT}) or a top-level one; see {DOC}")
    return Check(name, False, f"(a) top-level root {root_cg} beside systemd's units, as Docker's cgroupfs driver: "
                 "it works (systemd leaves cgroups it did not create alone) but is outside any subtree systemd "
                 "delegated, which its rules ask of a second manager", f"to follow them, move the root into the "
                 f"agent's unit (layout (b)): CGMAN_CGROUP_ROOT={LAYOUT_B_ROOT} in /etc/cgman/agent.env, then "
                 f"systemctl restart cgman-agent; see {DOC}", warn=True)
