"""Layout (b): the cgman root inside the agent's own delegated unit cgroup.

systemd (docs/CGROUP_DELEGATION.md) hands a `Delegate=yes` unit its cgroup and everything
below it, and starts the unit's processes in that cgroup. On cgroup v2 a cgroup that holds
processes cannot enable controllers for its children (no internal processes), so before
the agent can manage groups beside itself it moves its unit's processes into a leaf,
``supervisor/``, and enables the controllers in the unit cgroup's cgroup.subtree_control:
what `DelegateSubgroup=supervisor` does on systemd >= 254, done by hand for 252 (Debian 12).

These are the only writes cgman makes outside its root, and only inside the cgroup this
process was started in, which its unit delegated to it. A top-level root (layout (a)) and
hosts without cgroup v2 controllers are left exactly as before.
"""

from __future__ import annotations

import logging
import os

from ..drivers.cgfs import CgroupTree
from ..errors import CgmanError
from ..plan import RESOURCE_CONTROLLERS

log = logging.getLogger("cgman.agent")
SUPERVISOR_LEAF = "supervisor"


def own_cgroup(procfs: str = "/proc") -> str | None:
    """This process's cgroup2 path (the `0::` line of /proc/self/cgroup), or None."""
    from ..hostcheck.delegation import UNIFIED_HIERARCHY, parse_proc_cgroup
    try:
        with open(os.path.join(procfs, "self", "cgroup"), encoding="utf-8") as f:
            return parse_proc_cgroup(f.read()).get(UNIFIED_HIERARCHY)
    except OSError:
        return None


def inner_root(root: str, own: str | None) -> str | None:
    """``root`` relative to ``own`` when the cgman root lies strictly below this process's
    cgroup (layout (b)), else None. Refuses a root that is the cgroup itself or the leaf."""
    if own is None or own in ("/", ""):
        return None
    top = own.strip("/")
    if root.strip("/") == top:
        raise CgmanError(f"--cgroup-root {root} is the cgroup this agent runs in: pick a child of it, "
                         f"e.g. {top}/payload (docs/operations.md, layout (b))")
    if not root.strip("/").startswith(top + "/"):
        return None
    rel = root.strip("/")[len(top) + 1:]
    if rel.split("/")[0] == SUPERVISOR_LEAF:
        raise CgmanError(f"--cgroup-root {root}: {top}/{SUPERVISOR_LEAF} is the agent's own leaf; "
                         f"pick another child, e.g. {top}/payload")
    return rel


def enter_supervisor_leaf(unified: str | None, root: str, mode: str, procfs: str = "/proc") -> str | None:
    """On a pure v2 host with the cgman root below this process's cgroup: move every process
    of that cgroup into its leaf supervisor/ and enable the controllers it is offered for its
    children, down to the root's parent. Returns the leaf's cgroup path, or None (layout (a):
    nothing done). Idempotent, so a restarted agent does it again harmlessly."""
    own = own_cgroup(procfs)
    rel = inner_root(root, own)
    if rel is None or unified is None or mode != "v2" or own is None:
        return None
    unit = CgroupTree(unified, own.strip("/"))
    unit.mkdir(SUPERVISOR_LEAF)
    for pid in unit.read(".", "cgroup.procs").split():
        try:
            unit.write(SUPERVISOR_LEAF, "cgroup.procs", pid)
        except CgmanError as e:          # a child that exited meanwhile
            if os.path.exists(os.path.join(procfs, pid)):
                raise
            log.debug("pid %s left before it could be moved: %s", pid, e)
    parts = rel.split("/")
    for depth in range(len(parts)):       # the unit's cgroup, then each group above the root
        here = "/".join(parts[:depth]) or "."
        if depth:
            unit.mkdir(here)
        _enable_controllers(unit, here)
    leaf = f"{own.rstrip('/')}/{SUPERVISOR_LEAF}"
    log.info("cgman root %s lies inside this unit's cgroup %s: the agent runs in %s", root, own, leaf)
    return leaf


def _enable_controllers(unit: CgroupTree, here: str) -> None:
    offered = unit.read(here, "cgroup.controllers").split()
    enabled = unit.read(here, "cgroup.subtree_control").split()
    for c in RESOURCE_CONTROLLERS:
        if c in offered and c not in enabled:
            try:
                unit.write(here, "cgroup.subtree_control", f"+{c}")
            except CgmanError as e:
                raise CgmanError(f"cannot enable {c} for the groups in {unit.path(here)}: {e} (does the "
                                 f"unit still hold processes outside {SUPERVISOR_LEAF}/?)") from None
