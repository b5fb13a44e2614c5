"""cgroup v2 driver: one unified tree, cgroup.freeze confirmed through cgroup.events."""

from __future__ import annotations

import time

from ..errors import CgroupIOError, FreezeTimeout, NotFound
from . import formats as fmt
from .cgfs import CgroupTree


class V2Driver:
    version = 2

    def __init__(self, mount: str, root: str) -> None:
        self.t = CgroupTree(mount, root)

    def hierarchies(self) -> list[CgroupTree]:
        return [self.t]

    def create(self, path: str) -> bool:
        return self.t.mkdir(path)

    def remove(self, path: str) -> None:
        self.t.rmdir(path)

    def exists(self, path: str) -> bool:
        return self.t.exists(path)

    def read(self, path: str, controller: str, file: str) -> str:
        return self.t.read(path, file)

    def write(self, path: str, controller: str, file: str, value: str) -> None:
        self.t.write(path, file, value)

    def has_file(self, path: str, controller: str, file: str) -> bool:
        return self.t.exists(path, file)

    def children(self, path: str) -> list[str]:
        return self.t.children(path)

    def procs(self, path: str) -> set[int]:
        try:
            return {int(x) for x in self.t.read(path, "cgroup.procs").split()}
        except NotFound:
            return set()

    def attach(self, path: str, pid: int) -> None:
        self.t.write(path, "cgroup.procs", str(pid))

    def events(self, path: str) -> dict[str, int]:
        """cgroup.events: ``populated`` and ``frozen``, 0 or 1."""
        return {k: int(v) for k, v in fmt.flat_keyed(self.t.read(path, "cgroup.events")).items() if v.isdigit()}

    def _set_freeze(self, path: str, frozen: bool, timeout_s: float) -> bool:
        self.t.write(path, "cgroup.freeze", "1" if frozen else "0")
        deadline = time.monotonic() + timeout_s
        delay = 0.0005
        parent = path.rsplit("/", 1)[0] if "/" in path else ("." if path != "." else None)
        while True:
            if self.events(path).get("frozen") == int(frozen):
                return True
            # Thawing under a frozen ancestor: our own flag is cleared, which is all
            # this group can do; it runs again when the ancestor thaws.
            if not frozen and parent is not None and self.events(parent).get("frozen") == 1:
                return True
            if time.monotonic() >= deadline:
                return False
            time.sleep(delay)
            delay = min(delay * 2, 0.05)

    def freeze(self, path: str, timeout_s: float) -> None:
        """Freeze and wait until cgroup.events reports ``frozen 1``; thaw on failure."""
        try:
            ok = self._set_freeze(path, True, timeout_s)
        except BaseException:
            self._thaw_quietly(path)
            raise
        if not ok:
            self._thaw_quietly(path)
            raise FreezeTimeout(f"{self.t.path(path)} did not report frozen within {timeout_s:g}s; "
                                f"it was thawed again")

    def _thaw_quietly(self, path: str) -> None:
        try:
            self.t.write(path, "cgroup.freeze", "0")
        except Exception:  # best effort: the original error is what matters
            pass

    def thaw(self, path: str, timeout_s: float) -> None:
        if not self._set_freeze(path, False, timeout_s):
            raise CgroupIOError(self.t.path(path), "cgroup.freeze", "0", 0,
                                "still frozen: is a parent group frozen?")

    def is_frozen(self, path: str) -> bool | None:
        """Effective state (a frozen ancestor freezes this group too)."""
        return bool(self.events(path).get("frozen", 0))

    def self_frozen(self, path: str) -> bool | None:
        """This group's own flag, which is what a policy's ``frozen`` sets."""
        return self.t.read(path, "cgroup.freeze").strip() == "1"

    def kill(self, path: str) -> bool:
        """SIGKILL the whole subtree via cgroup.kill (Linux 5.14+). False if unsupported."""
        if not self.t.exists(path, "cgroup.kill"):
            return False
        self.t.write(path, "cgroup.kill", "1")
        return True
