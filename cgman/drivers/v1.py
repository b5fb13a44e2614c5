"""cgroup v1 driver: one directory per controller hierarchy, freezer.state freezing."""

from __future__ import annotations

import errno
import os
import time

from ..errors import CgroupIOError, FreezeTimeout, NotFound
from . import formats as fmt
from .cgfs import CgroupTree

FREEZER_RETRY_S = 0.010


class V1Driver:
    version = 1

    def __init__(self, mounts: dict[str, str], root: str) -> None:
        """``mounts``: cgman controller -> mountpoint (co-mounted controllers share a tree)."""
        trees: dict[str, CgroupTree] = {}
        self._by_ctl: dict[str, CgroupTree] = {}
        for ctl, mnt in mounts.items():
            tree = trees.setdefault(mnt, CgroupTree(mnt, root))
            self._by_ctl[ctl] = tree
        self._trees = list(trees.values())

    def hierarchies(self) -> list[CgroupTree]:
        return list(self._trees)

    def tree(self, controller: str) -> CgroupTree:
        try:
            return self._by_ctl[controller]
        except KeyError:
            raise NotFound(f"the {controller} controller is not mounted on cgroup v1 here") from None

    def create(self, path: str) -> bool:
        created = False
        for t in self._trees:
            if t.mkdir(path):
                created = True
                if t is self._by_ctl.get("cpuset") and path == ".":
                    self._inherit_cpuset(t, path)
                    # From here on the kernel copies cpus/mems into each new child
                    # at mkdir (cpuset's clone_children), saving two writes a group.
                    t.write(path, "cgroup.clone_children", "1")
                elif t is self._by_ctl.get("cpuset"):
                    self._inherit_cpuset(t, path)      # no-op when clone_children did it
        return created

    @staticmethod
    def _inherit_cpuset(t: CgroupTree, path: str) -> None:
        # v1 cpusets start empty and refuse tasks until cpus and mems are set:
        # copy the parent's (the root's parent is outside cgman: read only).
        for f in ("cpuset.cpus", "cpuset.mems"):
            if t.read(path, f).strip():
                continue
            if path == ".":
                value = t.read_above(f).strip()
            else:
                parent = path.rsplit("/", 1)[0] if "/" in path else "."
                value = t.read(parent, f).strip()
            t.write(path, f, value)

    def remove(self, path: str) -> None:
        for t in self._trees:
            t.rmdir(path)

    def exists(self, path: str) -> bool:
        return any(t.exists(path) for t in self._trees)

    def read(self, path: str, controller: str, file: str) -> str:
        return self.tree(controller).read(path, file)

    def write(self, path: str, controller: str, file: str, value: str) -> None:
        self.tree(controller).write(path, file, value)

    def has_file(self, path: str, controller: str, file: str) -> bool:
        return controller in self._by_ctl and self._by_ctl[controller].exists(path, file)

    def children(self, path: str) -> list[str]:
        names: set[str] = set()
        for t in self._trees:
            names.update(t.children(path))
        return sorted(names)

    def procs(self, path: str) -> set[int]:
        pids: set[int] = set()
        for t in self._trees:
            try:
                pids.update(int(x) for x in t.read(path, "cgroup.procs").split())
            except NotFound:
                pass
        return pids

    def attach(self, path: str, pid: int) -> None:
        for t in self._trees:
            t.write(path, "cgroup.procs", str(pid))

    def open_joins(self, path: str) -> list[int]:
        """``tasks`` of ``path`` in every hierarchy, open for writing, for a new process that
        moves itself in by writing 0 (cgman/_spawn.c, join_cgroups, says why). Caller closes."""
        fds: list[int] = []
        try:
            for t in self._trees:
                fds.append(t.open_for_writing(path, "tasks", "0"))
        except BaseException:
            for fd in fds:
                os.close(fd)
            raise
        return fds

    # ------------------------------------------------------------------------ freezer
    def freeze(self, path: str, timeout_s: float) -> None:
        """runc-style: write FROZEN and re-read until the kernel says FROZEN.

        A freeze can sit in FREEZING while a task is in an uninterruptible
        sleep; like runc we periodically thaw and retry so it can make
        progress, and on timeout we thaw so the group is never left half-frozen.
        """
        t = self.tree("freezer")
        deadline = time.monotonic() + timeout_s
        i = 0
        try:
            while True:
                if i % 50 == 49:
                    t.write(path, "freezer.state", "THAWED")
                    time.sleep(FREEZER_RETRY_S)
                t.write(path, "freezer.state", "FROZEN")
                if t.read(path, "freezer.state").strip() == "FROZEN":
                    return
                if time.monotonic() >= deadline:
                    break
                i += 1
                time.sleep(min(0.001 * i, FREEZER_RETRY_S))
        except BaseException:
            self._thaw_quietly(t, path)
            raise
        self._thaw_quietly(t, path)
        raise FreezeTimeout(f"{t.path(path)} did not freeze within {timeout_s:g}s "
                            f"(a task may be stuck in uninterruptible sleep); it was thawed again")

    @staticmethod
    def _thaw_quietly(t: CgroupTree, path: str) -> None:
        try:
            t.write(path, "freezer.state", "THAWED")
        except Exception:  # best effort: the original error is what matters
            pass

    def thaw(self, path: str, timeout_s: float) -> None:
        t = self.tree("freezer")
        deadline = time.monotonic() + timeout_s
        while True:
            t.write(path, "freezer.state", "THAWED")
            if t.read(path, "freezer.state").strip() == "THAWED":
                return
            # under a frozen ancestor our own flag is all we can clear
            if t.read(path, "freezer.self_freezing").strip() == "0" and \
                    t.read(path, "freezer.parent_freezing").strip() == "1":
                return
            if time.monotonic() >= deadline:
                raise CgroupIOError(t.path(path), "freezer.state", "THAWED", errno.ETIMEDOUT,
                                    "still not THAWED: is a parent group frozen?")
            time.sleep(0.005)

    def is_frozen(self, path: str) -> bool | None:
        """Effective state (FREEZING counts: the group is not running freely)."""
        if "freezer" not in self._by_ctl:
            return None
        return fmt.v1_frozen(self.tree("freezer").read(path, "freezer.state"))

    def self_frozen(self, path: str) -> bool | None:
        """This group's own flag (freezer.self_freezing), which a policy's ``frozen`` sets."""
        if "freezer" not in self._by_ctl:
            return None
        return self.tree("freezer").read(path, "freezer.self_freezing").strip() == "1"
