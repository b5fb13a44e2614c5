"""The mount steps a container's first process performs in its own mount namespace.

Pure: builds a list of operations for cgman._spawn to run in the child between
unshare and exec, so no mount is ever visible on the host and none is left
behind (the namespace takes them all when its last process exits). Only the
overlay's upper and work directories live on the host, in the state dir.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

# <sys/mount.h>
MS_RDONLY, MS_NOSUID, MS_NODEV, MS_NOEXEC = 1, 2, 4, 8
MS_BIND, MS_REC, MS_PRIVATE = 4096, 16384, 1 << 18
# cgman/_spawn.c
OP_MOUNT, OP_MKDIR, OP_TOUCH, OP_PIVOT, OP_CHDIR, OP_UMOUNT, OP_SYMLINK = range(1, 8)

DEVICES = ("null", "zero", "full", "random", "urandom", "tty")

Op = tuple


@dataclass(frozen=True)
class Overlay:
    lower: tuple[str, ...]       # bottom first, as written in the policy: [base, web]
    upper: str
    work: str
    merged: str

    def options(self, userns: bool) -> str:
        # overlayfs takes the topmost lower first; ':' and ',' would split the list.
        for d in (*self.lower, self.upper, self.work):
            if ":" in d or "," in d:
                raise ValueError(f"layer path {d!r} contains ':' or ',', which overlayfs cannot take")
        opts = f"lowerdir={':'.join(reversed(self.lower))},upperdir={self.upper},workdir={self.work}"
        # In a user namespace overlayfs must keep its metadata in user.* xattrs.
        return opts + (",userxattr" if userns else "")


def _b(s: str) -> bytes:
    return os.fsencode(s)


def mount_ops(*, root: str | None, overlay: Overlay | None, pid_ns: bool, net_ns: bool,
              ipc_ns: bool, userns: bool) -> list[Op]:
    """Operations for a container: private propagation, the new root (bind or overlay),
    a minimal /dev, /proc of the new pid namespace, /sys when it has its own netns."""
    ops: list[Op] = [(OP_MOUNT, None, b"/", None, MS_REC | MS_PRIVATE)]
    if overlay is not None:
        root = overlay.merged
        ops.append((OP_MOUNT, b"overlay", _b(root), b"overlay", 0, _b(overlay.options(userns))))
    elif root is not None:
        ops.append((OP_MOUNT, _b(root), _b(root), None, MS_BIND | MS_REC))   # pivot_root needs a mount
    if root is None:
        if pid_ns:   # the host's /proc shows the host's pids: remount it for the new namespace
            ops.append((OP_MOUNT, b"proc", b"/proc", b"proc", MS_NOSUID | MS_NODEV | MS_NOEXEC))
        return ops
    r = root.rstrip("/")
    dev = f"{r}/dev"
    ops += [(OP_MKDIR, _b(dev)),
            (OP_MOUNT, b"tmpfs", _b(dev), b"tmpfs", MS_NOSUID, b"mode=755,size=65536k")]
    for name in DEVICES:
        ops += [(OP_TOUCH, _b(f"{dev}/{name}")),
                (OP_MOUNT, _b(f"/dev/{name}"), _b(f"{dev}/{name}"), None, MS_BIND)]
    for link, target in (("fd", "/proc/self/fd"), ("stdin", "/proc/self/fd/0"),
                         ("stdout", "/proc/self/fd/1"), ("stderr", "/proc/self/fd/2")):
        ops.append((OP_SYMLINK, _b(target), _b(f"{dev}/{link}")))
    if ipc_ns:
        ops += [(OP_MKDIR, _b(f"{dev}/shm")),
                (OP_MOUNT, b"shm", _b(f"{dev}/shm"), b"tmpfs", MS_NOSUID | MS_NODEV | MS_NOEXEC,
                 b"mode=1777,size=65536k")]
    ops += [(OP_MKDIR, _b(f"{r}/proc")), (OP_MKDIR, _b(f"{r}/sys"))]
    if net_ns:       # sysfs shows the mounting process's netns: only safe with its own
        ops.append((OP_MOUNT, b"sysfs", _b(f"{r}/sys"), b"sysfs",
                    MS_RDONLY | MS_NOSUID | MS_NODEV | MS_NOEXEC))
    # A proc of the container's pid namespace (or the host's, without one), mounted while the
    # host's /proc is still visible: in a user namespace the kernel only allows a new proc
    # mount next to a fully visible one (mount_too_revealing).
    ops.append((OP_MOUNT, b"proc", _b(f"{r}/proc"), b"proc", MS_NOSUID | MS_NODEV | MS_NOEXEC))
    ops.append((OP_PIVOT, _b(r)))
    return ops
