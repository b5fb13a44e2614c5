"""Live view of groups: limits as the kernel holds them, and current usage, read through
drivers/reads.py like a bill's."""

from __future__ import annotations

from typing import Any

from ..drivers import Host
from ..drivers.reads import live_limits
from ..errors import NotFound


def status(host: Host, path: str = ".") -> list[dict[str, Any]]:
    """One record per group at and below ``path``, parents first."""
    if not host.exists(path):
        raise NotFound(f"no group {path!r} under the cgman root {host.root!r} "
                       f"(run `cgman apply` first, or check --cgroup-root)")
    return [r for r in (_row(host, cg, cg) for cg in host.walk(path)) if r is not None]


def unit_status(host: Host, root: str, path: str = ".") -> list[dict[str, Any]]:
    """The same for the systemd driver's groups: ``host`` is rooted at the root slice's cgroup
    (``cgman.slice``); each slice below it is a group, each scope a container, shown by the
    names cgman gave them; a container's row is its payload (its keeper is cgman's, not its)."""
    from ..drivers.systemd.units import PAYLOAD, member_name, slice_dir
    top = slice_dir(root, path)
    if not host.exists(top):
        raise NotFound(f"no slice for group {path!r} under the root slice {host.root!r} "
                       f"(run `cgman apply --cgroup-driver systemd` first, or check --cgroup-root)")
    out: list[dict[str, Any]] = []
    todo = [(path, top)]
    while todo:
        group, where = todo.pop()
        row = _row(host, group, where)
        if row is not None:
            out.append(row)
        for child in reversed(host.children(where)):
            name = f"{group}/{member_name(child)}" if group != "." else member_name(child)
            below = f"{where}/{child}" if where != "." else child
            if child.endswith(".slice"):
                todo.append((name, below))
            elif child.endswith(".scope") and (r := _row(host, name, f"{below}/{PAYLOAD}")) is not None:
                out.append(r)
    return out


def _row(host: Host, group: str, cg: str) -> dict[str, Any] | None:
    """``group``'s row, read from the cgroup ``cg``; None if it vanished while we walked."""
    try:
        u = host.usage(cg)
    except NotFound:
        return None
    return {
        "group": group, "depth": 0 if group == "." else group.count("/") + 1,
        "procs": len(host.procs(cg)),
        "frozen": u.frozen,
        "cpu_usage_seconds": None if u.cpu_usage_usec is None else u.cpu_usage_usec / 1e6,
        "memory_bytes": u.memory_bytes, "pids": u.pids,
        "limits": live_limits(host, cg),
    }
