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
    out = []
    for cg in host.walk(path):
        try:
            u = host.usage(cg)
        except NotFound:        # vanished while we walked
            continue
        out.append({
            "group": cg, "depth": 0 if cg == "." else cg.count("/") + 1,
            "procs": len(host.procs(cg)),
            "frozen": u.frozen,
            "cpu_usage_seconds": None if u.cpu_usage_usec is None else u.cpu_usage_usec / 1e6,
            "memory_bytes": u.memory_bytes, "pids": u.pids,
            "limits": live_limits(host, cg),
        })
    return out
