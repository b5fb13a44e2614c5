"""Live view of groups: limits as the kernel holds them, and current usage."""

from __future__ import annotations

from typing import Any

from ..drivers import Host
from ..errors import CgmanError, NotFound
from ..plan import Write

_UNLIMITED_V1 = 1 << 62


def _read(host: Host, path: str, controller: str, file: str) -> str | None:
    try:
        return host.read(Write(path, controller, file, "")).strip()
    except CgmanError:          # file or controller absent on this host
        return None


def _bytes(v: str | None) -> int | str | None:
    if v is None:
        return None
    if v in ("max", "-1"):
        return "max"
    n = int(v)
    return "max" if n >= _UNLIMITED_V1 else n


def live_limits(host: Host, path: str) -> dict[str, Any]:
    """The main limits of ``path`` as read back from the kernel (None: not readable here)."""
    v = host.layout.version_of
    out: dict[str, Any] = {}
    if v("memory") == 1:
        out["memory_max_bytes"] = _bytes(_read(host, path, "memory", "memory.limit_in_bytes"))
    else:
        out["memory_max_bytes"] = _bytes(_read(host, path, "memory", "memory.max"))
    if v("cpu") == 1:
        quota, period = _read(host, path, "cpu", "cpu.cfs_quota_us"), \
            _read(host, path, "cpu", "cpu.cfs_period_us")
        shares = _read(host, path, "cpu", "cpu.shares")
        out["cpu_max"] = None if quota is None or period is None else \
            ("max" if quota == "-1" else round(int(quota) / int(period), 3))
        out["cpu_shares"] = int(shares) if shares else None
    else:
        cm = _read(host, path, "cpu", "cpu.max")
        if cm:
            q, p = cm.split()
            out["cpu_max"] = "max" if q == "max" else round(int(q) / int(p), 3)
        else:
            out["cpu_max"] = None
        w = _read(host, path, "cpu", "cpu.weight")
        out["cpu_weight"] = int(w) if w else None
    pm = _read(host, path, "pids", "pids.max")
    out["pids_max"] = None if pm is None else ("max" if pm == "max" else int(pm))
    return out


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
