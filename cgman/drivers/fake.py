"""An in-memory driver that records writes (crun's "disabled" manager, with memory).

For pure-logic tests of apply, rollback and prune: it can be told to fail a
given write with a given errno. It is never used instead of a real-kernel test
of the same path; the contract suite runs the same checks over it and the real
drivers so the two cannot drift apart.
"""

from __future__ import annotations

import errno as _errno

from ..errors import CgroupIOError, FreezeTimeout, NotFound
from .cgfs import split_path

V1_DEFAULTS = {
    "cpu.shares": "1024", "cpu.cfs_period_us": "100000", "cpu.cfs_quota_us": "-1",
    "cpuset.cpus": "", "cpuset.mems": "", "memory.limit_in_bytes": "9223372036854771712",
    "memory.memsw.limit_in_bytes": "9223372036854771712",
    "memory.soft_limit_in_bytes": "9223372036854771712", "pids.max": "max",
    "blkio.bfq.weight": "100", "freezer.state": "THAWED", "cgroup.procs": "",
}
V2_DEFAULTS = {
    "cpu.weight": "100", "cpu.max": "max 100000", "cpuset.cpus": "", "cpuset.mems": "",
    "memory.max": "max", "memory.high": "max", "memory.low": "0", "memory.min": "0",
    "memory.swap.max": "max", "io.max": "", "io.weight": "default 100", "io.bfq.weight": "default 100",
    "pids.max": "max", "cgroup.subtree_control": "", "cgroup.freeze": "0", "cgroup.procs": "",
    "cgroup.events": "populated 0\nfrozen 0\n", "cgroup.max.descendants": "max",
}


class _FakeTree:
    """Stands in for CgroupTree where callers only need ``mount`` and ``path()``."""

    def __init__(self, mount: str, root: str) -> None:
        self.mount, self.root = mount, root

    def path(self, rel: str = ".", file: str = "") -> str:
        parts = [self.mount, self.root, *split_path(rel)] + ([file] if file else [])
        return "/".join(parts)


class FakeDriver:
    """Groups and files in dicts. ``fail[(path, file)] = errno`` makes that write fail."""

    def __init__(self, version: int = 2, root: str = "cgman") -> None:
        self.version = version
        self.tree = _FakeTree(f"/fake/v{version}", root)
        self.files: dict[str, dict[str, str]] = {}
        self.writes: list[tuple[str, str, str]] = []
        self.fail: dict[tuple[str, str], int] = {}

    def hierarchies(self) -> list:  # type: ignore[type-arg]
        return [self.tree]

    def _key(self, path: str) -> str:
        return "/".join(split_path(path)) or "."

    def _group(self, path: str) -> dict[str, str]:
        try:
            return self.files[self._key(path)]
        except KeyError:
            raise NotFound(f"no cgroup {self.tree.path(path)}") from None

    def create(self, path: str) -> bool:
        key = self._key(path)
        if key in self.files:
            return False
        parent = key.rsplit("/", 1)[0] if "/" in key else "."
        if key != "." and parent not in self.files:
            raise CgroupIOError(self.tree.path(parent), "", None, _errno.ENOENT, "parent missing")
        self.files[key] = dict(V1_DEFAULTS if self.version == 1 else V2_DEFAULTS)
        return True

    def remove(self, path: str) -> None:
        key = self._key(path)
        if key not in self.files:
            return
        if self.children(path) or self.files[key]["cgroup.procs"].strip():
            raise CgroupIOError(self.tree.path(path), "", None, _errno.EBUSY,
                                "group still has processes or child groups")
        del self.files[key]

    def exists(self, path: str) -> bool:
        return self._key(path) in self.files

    def read(self, path: str, controller: str, file: str) -> str:
        g = self._group(path)
        if file not in g:
            raise CgroupIOError(self.tree.path(path), file, None, _errno.ENOENT, "no such file")
        return g[file] + ("\n" if g[file] and not g[file].endswith("\n") else "")

    def write(self, path: str, controller: str, file: str, value: str) -> None:
        g = self._group(path)
        err = self.fail.get((self._key(path), file))
        if err:
            raise CgroupIOError(self.tree.path(path), file, value, err)
        if file not in g:
            raise CgroupIOError(self.tree.path(path), file, value, _errno.ENOENT, "no such file")
        self.writes.append((self._key(path), file, value))
        if file == "cgroup.subtree_control":
            have = g[file].split()
            for tok in value.split():
                name = tok[1:]
                if tok[0] == "+" and name not in have:
                    have.append(name)
                elif tok[0] == "-" and name in have:
                    have.remove(name)
            g[file] = " ".join(have)
        elif file in ("io.max", "io.weight", "io.bfq.weight") or file.startswith("blkio.throttle."):
            key, _, rest = value.partition(" ")
            lines = dict(ln.split(" ", 1) for ln in g[file].splitlines() if " " in ln)
            if file == "io.max":
                old = dict(kv.split("=") for kv in lines.get(key, "").split())
                old.update(kv.split("=", 1) for kv in rest.split())  # type: ignore[misc]
                rest = " ".join(f"{k}={old.get(k, 'max')}" for k in ("rbps", "wbps", "riops", "wiops"))
            if rest in ("0", "default") and key != "default":
                lines.pop(key, None)
            else:
                lines[key] = rest
            g[file] = "\n".join(f"{k} {v}" for k, v in lines.items())
        elif file == "cgroup.freeze":
            g[file] = value
            g["cgroup.events"] = f"populated 0\nfrozen {value}\n"
        else:
            g[file] = value

    def has_file(self, path: str, controller: str, file: str) -> bool:
        return self.exists(path) and file in self._group(path)

    def children(self, path: str) -> list[str]:
        key = self._key(path)
        prefix = "" if key == "." else key + "/"
        return sorted(k[len(prefix):] for k in self.files
                      if k != "." and k.startswith(prefix) and "/" not in k[len(prefix):])

    def procs(self, path: str) -> set[int]:
        if not self.exists(path):
            return set()
        return {int(x) for x in self._group(path)["cgroup.procs"].split()}

    def attach(self, path: str, pid: int) -> None:
        g = self._group(path)
        g["cgroup.procs"] = (g["cgroup.procs"] + f" {pid}").strip()

    def freeze(self, path: str, timeout_s: float) -> None:
        if (self._key(path), "freeze") in self.fail:
            raise FreezeTimeout(f"{self.tree.path(path)} did not freeze; it was thawed again")
        self.write(path, "freezer", *(("freezer.state", "FROZEN") if self.version == 1
                                      else ("cgroup.freeze", "1")))

    def thaw(self, path: str, timeout_s: float) -> None:
        self.write(path, "freezer", *(("freezer.state", "THAWED") if self.version == 1
                                      else ("cgroup.freeze", "0")))

    def is_frozen(self, path: str) -> bool | None:
        g = self._group(path)
        return g["freezer.state"] != "THAWED" if self.version == 1 else g["cgroup.freeze"] == "1"

    def self_frozen(self, path: str) -> bool | None:
        return self.is_frozen(path)

    def kill(self, path: str) -> bool:
        self._group(path)["cgroup.procs"] = ""
        return True
