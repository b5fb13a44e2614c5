"""The factory: one ``Host`` routes each controller to the v1 or v2 driver that holds it.

Only this module imports both drivers. On a hybrid host a group exists in every
managed v1 hierarchy and in the unified one (for freeze, kill and cpu.stat).
"""

from __future__ import annotations

import errno
import os
import signal
import time
from functools import cached_property

from .. import lazylog
from ..errors import Busy, CgroupIOError, FreezeTimeout, NotFound
from ..plan import Features, Layout, Write
from . import reads
from .base import Driver, Usage
from .cgfs import split_path
from .detect import HostInfo, detect, probe_features
from .v1 import V1Driver
from .v2 import V2Driver

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

__all__ = ["Host", "open_host", "HostInfo", "Usage", "split_path"]
DEFAULT_ROOT = "cgman"
log = lazylog.getLogger(__name__)   # logging only if a record is shown (lazylog.py)
MANAGED_V1 = ("cpu", "cpuacct", "cpuset", "memory", "io", "pids", "freezer", "devices")


def cgroup_root(explicit: str | None = None) -> str:
    """The cgroup root the command names (--cgroup-root, $CGMAN_CGROUP_ROOT), else "cgman"; validated."""
    root = explicit or DEFAULT_ROOT
    split_path(root.strip("/"))
    return root.strip("/")


class Host:
    def __init__(self, info: HostInfo, root: str) -> None:
        self.info, self.root = info, root
        mounts = {c: m for c, m in info.v1_mounts.items() if c in MANAGED_V1}
        self.v1 = V1Driver(mounts, root) if mounts else None
        self.v2 = V2Driver(info.unified, root) if info.unified else None
        self.layout: Layout = info.layout

    @classmethod
    def with_drivers(cls, layout: Layout, root: str, *, v1: Any = None, v2: Any = None,
                     features: Features | None = None) -> "Host":
        """A Host over given drivers (the fake one, in tests) instead of detected mounts."""
        h = cls.__new__(cls)
        h.info = HostInfo(layout.mode, {}, "/fake" if v2 is not None else None)
        h.root, h.v1, h.v2, h.layout = root, v1, v2, layout
        if features is not None:
            h.__dict__["features"] = features
        return h

    @cached_property
    def features(self) -> Features:
        return probe_features(self.info, self.root)

    @property
    def drivers(self) -> list[Driver]:
        return [d for d in (self.v1, self.v2) if d is not None]

    def driver_for(self, controller: str) -> Driver:
        d = self.v1 if self.layout.version_of(controller) == 1 else self.v2
        if d is None:
            raise NotFound(f"no cgroup hierarchy holds the {controller} controller")
        return d

    # ------------------------------------------------------------------------ groups
    def create(self, path: str) -> bool:
        created = False
        for d in self.drivers:
            created = d.create(path) or created
        return created

    def remove(self, path: str) -> None:
        for d in self.drivers:
            d.remove(path)

    def exists(self, path: str) -> bool:
        return any(d.exists(path) for d in self.drivers)

    def children(self, path: str) -> list[str]:
        names: set[str] = set()
        for d in self.drivers:
            names.update(d.children(path))
        return sorted(names)

    def walk(self, path: str = ".") -> list[str]:
        """``path`` and its descendants, parents first."""
        out = [path]
        for c in self.children(path):
            out.extend(self.walk(c if path == "." else f"{path}/{c}"))
        return out

    def procs(self, path: str, recursive: bool = False) -> set[int]:
        pids: set[int] = set()
        for p in (self.walk(path) if recursive else [path]):
            for d in self.drivers:
                pids |= d.procs(p)
        return pids

    def attach(self, path: str, pid: int) -> None:
        """Move ``pid`` into ``path`` in every hierarchy (processes live in leaves)."""
        if self.children(path):
            raise Busy(f"cannot place a process in {path}: it has child groups, and processes "
                       f"may live only in leaf groups; pick one of: {', '.join(self.children(path))}")
        for d in self.drivers:
            try:
                d.attach(path, pid)
            except CgroupIOError as e:
                if e.errno == errno.EBUSY:
                    raise Busy(f"cannot place a process in {path}: it has controllers enabled for "
                               f"child groups (a group with a container: block hosts containers, "
                               f"not processes); use a leaf group") from None
                raise

    # ------------------------------------------------------------------------- files
    def read(self, w: Write) -> str:
        return self.driver_for(w.controller).read(w.cgroup, w.controller, w.file)

    def has_file(self, w: Write) -> bool:
        return self.driver_for(w.controller).has_file(w.cgroup, w.controller, w.file)

    def write(self, w: Write) -> None:
        try:
            self.driver_for(w.controller).write(w.cgroup, w.controller, w.file, w.value)
        except CgroupIOError as e:
            raise self._explain(w, e) from None

    def _explain(self, w: Write, e: CgroupIOError) -> CgroupIOError:
        """Turn the kernel's terse errno into what to do next."""
        reason = e.reason
        if e.errno == errno.EBUSY and w.file in ("memory.limit_in_bytes", "memory.max",
                                                  "memory.memsw.limit_in_bytes"):
            usage = self._try_read(w, "memory.usage_in_bytes" if self.layout.version_of("memory") == 1
                                   else "memory.current")
            reason = (f"cannot set limit {w.value}: current usage {usage} bytes is higher and "
                      f"could not be reclaimed; raise the limit or stop some processes")
        elif e.errno == errno.EBUSY and w.file == "cgroup.subtree_control":
            reason = ("the group has processes of its own; processes may live only in leaf "
                      "groups: move them to a child group first")
        elif e.errno == errno.EBUSY and w.file in ("cpuset.cpus", "cpuset.mems"):
            reason = (f"cannot narrow {w.file} to {w.value}: a child group still uses CPUs or nodes "
                      f"outside it (cgroup v1 cpusets nest): narrow the children first")
        elif e.errno in (errno.EINVAL, errno.ERANGE, errno.EACCES) and w.file in ("cpuset.cpus", "cpuset.mems"):
            parent = w.cgroup.rsplit("/", 1)[0] if "/" in w.cgroup else "."
            have = self._try_read(Write(parent, w.controller, w.file, ""), w.file)
            reason = f"{w.value} is not within the parent's {w.file} ({have or 'empty'})"
        elif e.errno == errno.EINVAL and w.file == "cpu.cfs_quota_us":
            reason = "invalid quota: on cgroup v1 a child's quota may not exceed its parent's"
        elif e.errno == errno.EINVAL and w.file == "memory.memsw.limit_in_bytes":
            reason = "memory+swap limit must not be below memory.limit_in_bytes"
        elif e.errno in (errno.EOPNOTSUPP, errno.ENOTSUP) and w.file == "io.weight":
            reason = "blk-iocost is not enabled for this device (see io.cost.qos); use BFQ weights instead"
        elif e.errno in (errno.EOPNOTSUPP, errno.ENOTSUP) and "weight" in w.file:
            reason = "the device does not use the BFQ scheduler (echo bfq > /sys/block/DEV/queue/scheduler)"
        return CgroupIOError(e.directory, e.file, e.value, e.errno, reason)

    def _try_read(self, w: Write, file: str) -> str:
        try:
            return self.driver_for(w.controller).read(w.cgroup, w.controller, file).strip()
        except Exception:
            return "?"

    # ----------------------------------------------------------------------- control
    def _freezer(self) -> Driver:
        return self.driver_for("freezer")

    def freeze(self, path: str, timeout_s: float = 10.0) -> None:
        self._freezer().freeze(path, timeout_s)

    def thaw(self, path: str, timeout_s: float = 10.0) -> None:
        self._freezer().thaw(path, timeout_s)

    def is_frozen(self, path: str) -> bool | None:
        return self._freezer().is_frozen(path)

    def self_frozen(self, path: str) -> bool | None:
        return self._freezer().self_frozen(path)

    def kill(self, path: str, sig: int = signal.SIGKILL, timeout_s: float = 10.0) -> int:
        """Signal every process in ``path`` and below; for SIGKILL wait until empty.

        v2: cgroup.kill kills atomically, no fork race. v1 (and v1-only tasks on
        hybrid): freeze so nothing forks, signal every task, thaw so frozen tasks
        can die (as runc does), until empty. Returns how many were signalled.
        """
        victims = self.procs(path, recursive=True)
        if not victims:
            return 0
        deadline = time.monotonic() + timeout_s
        if sig == signal.SIGKILL and self.v2 is not None and self.v2.exists(path) and self.v2.kill(path):
            try:
                return self._wait_empty(path, min(1.0, timeout_s), len(victims))
            except Busy:
                pass        # tasks that live only in v1 hierarchies: signal them below
        sent: set[int] = set()
        can_freeze = sig == signal.SIGKILL and self.v1 is not None \
            and "freezer" in self.layout.v1_controllers
        while True:
            pids = self.procs(path, recursive=True)
            if not pids or (sig != signal.SIGKILL and pids <= sent):
                break
            if can_freeze:
                try:
                    self.freeze(path, max(0.05, min(1.0, deadline - time.monotonic())))
                except FreezeTimeout as e:        # runc too signals anyway
                    log.warning("kill %s: %s; signalling anyway", path, e)
            for pid in pids:
                try:
                    os.kill(pid, sig)
                    sent.add(pid)
                except ProcessLookupError:
                    pass
            if can_freeze:
                self.thaw(path, max(0.05, deadline - time.monotonic()))
            if sig != signal.SIGKILL:
                break
            if time.monotonic() >= deadline:
                raise Busy(f"{path}: {len(pids)} processes still alive after {timeout_s:g}s "
                           f"(is an ancestor group frozen? thaw it first)")
            time.sleep(0.005)
        if sig == signal.SIGKILL:
            self._wait_empty(path, max(0.1, deadline - time.monotonic()), len(sent))
        return len(victims | sent)

    def _wait_empty(self, path: str, timeout_s: float, n: int) -> int:
        deadline = time.monotonic() + timeout_s
        while self.procs(path, recursive=True):
            if time.monotonic() >= deadline:
                raise Busy(f"{path}: processes still alive {timeout_s:g}s after SIGKILL")
            time.sleep(0.002)
        return n

    def usage(self, path: str, values: tuple[str, ...] = reads.USAGE_VALUES) -> Usage:
        """What ``cgman status`` and ``cgman ps`` show of a group, reading only the files
        that hold ``values`` (drivers/reads.py)."""
        return reads.usage(self, path, values)


def open_host(root: str | None = None, mountinfo: str | None = None) -> Host:
    """Detect the host's hierarchies and bind a Host to the cgman root (no I/O beyond detection)."""
    info = detect(mountinfo) if mountinfo else detect()
    if not info.v1_mounts and not info.unified:
        raise NotFound("no cgroup hierarchy is mounted (see /proc/self/mountinfo)")
    return Host(info, cgroup_root(root))
