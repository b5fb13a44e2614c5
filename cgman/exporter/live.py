"""What a scrape needs of each container's record, and the records of one run dir.

Records are parsed again only when one changes: each is keyed by its file's inode and
mtime (records are replaced by rename, so a change always shows).
"""

from __future__ import annotations

import json
import math
import os
import struct
from dataclasses import dataclass
from typing import Any

from ..drivers.cgfs import split_path
from ..drivers.formats import UNLIMITED_V1
from ..errors import UnsafePath
from .cadvisor import image as _image
from .cadvisor import nonneg_int as _int
from .fast import pack_record


def escape(v: str) -> str:
    """A label value as the text format writes it."""
    if "\\" in v or '"' in v or "\n" in v:
        v = v.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")
    return v


def _num(v: Any) -> float | int | None:
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        return None
    return v


@dataclass
class Live:
    """What a scrape needs of one container's record."""

    id: str
    name: str
    tenant: str
    labels: str                    # '{container="…",group="…",tenant="…"}'
    labels_b: bytes
    record_slots: bytes            # its values for the C renderer (fast.RECORD_SLOTS)
    root: str                      # the cgman root and the group below it, both validated
    cgroup: str
    state: str
    started: float | None
    memory_byte_seconds: float
    limits: dict[str, float | int]
    final_usage: dict[str, Any] | None
    ledger_pending: bool
    # What --compat cadvisor adds (exporter/cadvisor.py)
    group: str = ""
    cgroup_path: str = ""          # below the mount, as cAdvisor's id: /<cgman root>/<group>/<name>
    image: str = "host"            # the rootfs, or host: never empty (dashboards select image!="")
    memory_peak_bytes: int | None = None
    cpu_period_usec: int | None = None


def _limits(lim: dict[str, Any]) -> dict[str, float | int]:
    out: dict[str, float | int] = {}
    for key in ("cpu_max_cpus", "memory_max_bytes", "pids_max"):
        v = _num(lim.get(key))
        if v is not None and 0 <= v < UNLIMITED_V1:     # the kernel's "max" is a huge number on v1
            out[key] = v
    return out


def live_from(d: dict[str, Any]) -> Live:
    """A record's JSON as a scrape uses it. KeyError, TypeError, UnsafePath (a cgroup that is
    not a plain path below the root)… for a record that is not one."""
    root, cg = d["cgroup_root"], d["cgroup"]
    if not isinstance(root, str) or not isinstance(cg, str):
        raise TypeError("cgroup_root and cgroup must be strings")
    if not split_path(root.strip("/")):
        raise UnsafePath(f"record {d.get('name')!r}: no cgman root")
    split_path(cg)
    lim = d.get("limits") or {}
    limits = _limits(lim)
    labels = f'{{container="{escape(d["name"])}",group="{escape(d["group"])}",tenant="{escape(d["tenant"])}"}}'
    started = d.get("started")
    if not isinstance(started, (int, float)) or isinstance(started, bool) or not math.isfinite(started):
        started = None              # hostile or broken: no start time, as for a record without one
    final_usage = d.get("final_usage")
    if not isinstance(final_usage, dict):
        final_usage = None
    record_slots = pack_record({
        "_info": 1, "_start_usec": -1 if started is None else round(started * 1e6),
        "_memory_byte_seconds": round(float(d.get("memory_byte_seconds") or 0.0)),
        "_limit_ucpus": round(limits["cpu_max_cpus"] * 1e6) if "cpu_max_cpus" in limits else -1,
        "_limit_memory_bytes": int(limits["memory_max_bytes"]) if "memory_max_bytes" in limits else -1,
        "_limit_pids": int(limits["pids_max"]) if "pids_max" in limits else -1})
    return Live(
        id=d["id"], name=d["name"], tenant=d["tenant"], labels=labels, labels_b=labels.encode(),
        record_slots=record_slots, root=root.strip("/"), cgroup=cg,
        state=d.get("state", ""), started=started,
        memory_byte_seconds=float(d.get("memory_byte_seconds") or 0.0),
        limits=limits, final_usage=final_usage, ledger_pending=bool(d.get("ledger_pending")),
        group=d["group"], cgroup_path="/" + "/".join(p for p in (root.strip("/"), cg) if p),
        image=_image(d.get("rootfs")), memory_peak_bytes=_int(d.get("memory_peak_bytes")),
        cpu_period_usec=_int(lim.get("cpu_period_usec")))


class Records:
    """The container records of one run dir, each parsed again only when it changed."""

    def __init__(self, run_dir: str) -> None:
        self.containers_dir = os.path.join(run_dir, "containers")
        self._cache: dict[str, tuple[tuple[int, int], Live]] = {}

    def scan(self) -> list[Live]:
        """Every readable record now; one being written or removed is left for the next scan."""
        out: list[Live] = []
        seen: dict[str, tuple[tuple[int, int], Live]] = {}
        try:
            names = os.listdir(self.containers_dir)
        except FileNotFoundError:
            names = []
        base = self.containers_dir + "/"
        for n in names:
            path = base + n + "/record.json"
            try:
                st = os.stat(path)
            except OSError:
                continue              # being created or removed
            key = (st.st_ino, st.st_mtime_ns)
            hit = self._cache.get(n)
            if hit is not None and hit[0] == key:
                live = hit[1]
            else:
                try:
                    with open(path, "rb") as f:
                        live = live_from(json.loads(f.read()))
                except (OSError, ValueError, KeyError, TypeError, OverflowError, struct.error, UnsafePath):
                    continue          # half-written by an old cgman, removed meanwhile, or not a record
            seen[n] = (key, live)
            out.append(live)
        self._cache = seen
        return out
