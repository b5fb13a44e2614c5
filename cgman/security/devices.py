"""Which device nodes a container may use: the default allow list and the policy's additions.

One rule list, two renderings: v1 ``devices.allow`` lines, and the tuples that
cgman._secure turns into the v2 BPF device program.
"""

from __future__ import annotations

import os
import stat
from dataclasses import dataclass

ANY = -1


@dataclass(frozen=True)
class DeviceRule:
    """One device a container may use: kind, major:minor (ANY: every) and access."""

    kind: str            # "c" or "b"
    major: int           # ANY: every major
    minor: int           # ANY: every minor
    access: str          # a subset of "rwm"
    path: str = ""       # what the operator named, for display

    def v1_line(self) -> str:
        num = lambda n: "*" if n == ANY else str(n)   # noqa: E731
        return f"{self.kind} {num(self.major)}:{num(self.minor)} {self.access}"

    def bpf(self) -> tuple[int, int, int, int]:
        from .._secure import ACC_MKNOD, ACC_READ, ACC_WRITE, DEV_BLOCK, DEV_CHAR
        kind = DEV_CHAR if self.kind == "c" else DEV_BLOCK
        bits = {"m": ACC_MKNOD, "r": ACC_READ, "w": ACC_WRITE}
        return (kind, self.major, self.minor, sum(bits[a] for a in set(self.access)))

    def as_dict(self) -> dict[str, object]:
        return {"path": self.path, "rule": self.v1_line()}


# runc's and Podman's standard set, less mknod: null, zero, full, random, urandom, tty, ptmx, pts.
DEFAULT = (DeviceRule("c", 1, 3, "rwm", "/dev/null"), DeviceRule("c", 1, 5, "rwm", "/dev/zero"),
           DeviceRule("c", 1, 7, "rwm", "/dev/full"), DeviceRule("c", 1, 8, "rwm", "/dev/random"),
           DeviceRule("c", 1, 9, "rwm", "/dev/urandom"), DeviceRule("c", 5, 0, "rwm", "/dev/tty"),
           DeviceRule("c", 5, 2, "rwm", "/dev/ptmx"), DeviceRule("c", 136, ANY, "rwm", "/dev/pts/*"))


_PROGRAMS: dict[tuple[tuple[int, int, int, int], ...], int] = {}


def program_fd(rules: tuple[DeviceRule, ...]) -> int:
    """The loaded v2 device program for ``rules``: loaded once per process (the verifier is
    most of its cost), then attached to each container's cgroup. OSError if the kernel refuses."""
    key = tuple(r.bpf() for r in rules)
    if key not in _PROGRAMS:
        from .._secure import load_device_filter
        _PROGRAMS[key] = load_device_filter(list(key))
    return _PROGRAMS[key]


def check_access(access: str) -> str:
    if not access or any(a not in "rwm" for a in access) or len(set(access)) != len(access):
        raise ValueError(f"access must be a combination of r, w and m, not {access[:20]!r}")
    return access


def from_path(path: str, access: str = "rwm") -> DeviceRule:
    """The rule for a device node on this host, e.g. /dev/fuse. ValueError if it is none."""
    check_access(access)
    if not path.startswith("/dev/") or "/../" in path or path.endswith("/.."):
        raise ValueError(f"{path[:80]!r}: give a device node under /dev, e.g. /dev/fuse")
    try:
        st = os.stat(path)
    except OSError as e:
        raise ValueError(f"{path}: {e.strerror} (no such device on this host?)") from None
    if stat.S_ISCHR(st.st_mode):
        kind = "c"
    elif stat.S_ISBLK(st.st_mode):
        kind = "b"
    else:
        raise ValueError(f"{path} is not a device node")
    return DeviceRule(kind, os.major(st.st_rdev), os.minor(st.st_rdev), access, path)
