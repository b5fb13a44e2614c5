"""The mount steps a container's first process performs in its own mount namespace.

Pure: builds a list of operations for cgman._spawn to run in the child between
unshare and exec, so no mount is ever visible on the host and none is left
behind (the namespace takes them all when its last process exits). Only the
overlay's upper and work directories live on the host, in the state dir.
"""

from __future__ import annotations

import functools
import os
from dataclasses import dataclass

# <sys/mount.h> and the helper's operations, from the helper itself (one source of truth).
from .._spawn import (MS_BIND, MS_NOATIME, MS_NODEV, MS_NODIRATIME, MS_NOEXEC, MS_NOSUID, MS_PRIVATE, MS_RDONLY,
                      MS_REC, MS_RELATIME, MS_REMOUNT, MS_STRICTATIME, OP_BIND_HELD, OP_CHDIR, OP_HOLD, OP_MKDIR,
                      OP_MOUNT, OP_OPTIONAL, OP_OVERLAY_HELD, OP_PIVOT, OP_RDONLY_TREE, OP_SYMLINK, OP_TOLERANT,
                      OP_TOUCH)

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Iterable


DEVICES = ("null", "zero", "full", "random", "urandom", "tty")

Op = tuple


@dataclass(frozen=True)
class Overlay:
    """An overlay root: read-only layers under a writable upper directory, mounted at merged."""

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


@dataclass(frozen=True)
class CgroupView:
    """A cgroup mount of the host as the container will see it."""

    mountpoint: str                # e.g. /sys/fs/cgroup/memory
    leaf: str | None               # the container's own cgroup there (host path), if it has one
    flags: int                     # per-mount flags to keep (nosuid, nodev, noexec, atime)


_FLAG_OPTS = {"nosuid": MS_NOSUID, "nodev": MS_NODEV, "noexec": MS_NOEXEC, "noatime": MS_NOATIME,
              "nodiratime": MS_NODIRATIME, "relatime": MS_RELATIME, "strictatime": MS_STRICTATIME}


def mount_flags(options: Iterable[str]) -> int:
    """The flags a read-only remount must repeat: in a user namespace the kernel refuses to
    change the locked ones (nosuid, nodev, noexec, atime) of a mount copied from the host."""
    if isinstance(options, frozenset):      # a Mount's: the same few sets at every launch
        return _set_flags(options)
    return sum(f for o, f in _FLAG_OPTS.items() if o in options)


@functools.lru_cache(maxsize=256)
def _set_flags(options: frozenset[str]) -> int:
    return sum(f for o, f in _FLAG_OPTS.items() if o in options)


def _ro(target: str, flags: int, optional: bool = False) -> Op:
    return (OP_MOUNT | (OP_OPTIONAL if optional else 0), None, _b(target), None,
            MS_REMOUNT | MS_BIND | MS_RDONLY | flags)


def _cgroup_ops(views: list[CgroupView], prefix: str, tmpfs_flags: int | None, all_ro: bool = False) -> list[Op]:
    """Each cgroup mount replaced by a read-only bind of the container's own cgroup (or made
    read-only where it has none). ``tmpfs_flags``: the v1 tmpfs holding the hierarchies.
    ``all_ro``: every mount is read-only already, and a bind keeps its source's read-only flag."""
    ops: list[Op] = []
    for v in views:
        target = prefix + v.mountpoint
        if prefix and tmpfs_flags is not None:
            ops.append((OP_MKDIR, _b(target)))
        if v.leaf is not None:
            ops.append((OP_MOUNT, _b(v.leaf), _b(target), None, MS_BIND))
        elif prefix:
            continue               # a new root shows only the hierarchies the container is in
        if not all_ro:
            ops.append(_ro(target, v.flags))
    if tmpfs_flags is not None and not all_ro:
        ops.append(_ro(prefix + "/sys/fs/cgroup", tmpfs_flags))
    return ops


@dataclass(frozen=True)
class HostView:
    """What a container without a root of its own sees of the host: every mount read-only,
    private /tmp, /var/tmp, /dev/shm and /dev/pts, and the volumes it may write."""

    mounts: tuple[tuple[str, int], ...]          # (mountpoint, per-mount flags), mountinfo order
    setattr: bool = True                         # the kernel has mount_setattr (5.12+): one call for all
    volumes: tuple[tuple[str, bool, int, bool], ...] = ()    # (path, read-only, flags, is a directory)
    ipc_ns: bool = True
    userns: bool = False


_PRIVATE_TMP = ("/tmp", "/var/tmp")
_TMP_UPPER, _TMP_WORK = "/tmp/.cgman-upper", "/tmp/.cgman-work"


def _tmp_ops(held: int, userns: bool) -> list[Op]:
    """/tmp and /var/tmp: the container's own. /tmp is an overlay whose lower layer is the
    host's /tmp (read through, so programs kept there still run) and whose upper layer is a
    private tmpfs: writes never reach the host. Where overlayfs refuses (a user namespace on an
    old kernel), the private tmpfs alone remains."""
    ops: list[Op] = [(OP_MOUNT | OP_OPTIONAL, b"tmpfs", _b(t), b"tmpfs", MS_NOSUID | MS_NODEV, b"mode=1777")
                     for t in _PRIVATE_TMP]
    extra = f",upperdir={_TMP_UPPER},workdir={_TMP_WORK}" + (",userxattr" if userns else "")
    ops += [(OP_MKDIR, _b(_TMP_UPPER), None, None, 0o1777), (OP_MKDIR, _b(_TMP_WORK)),
            (OP_OVERLAY_HELD | OP_TOLERANT, str(held).encode(), b"/tmp", None, MS_NOSUID | MS_NODEV, _b(extra))]
    return ops


def _host_view_ops(view: HostView) -> tuple[list[Op], list[Op]]:
    """(before the new /proc, after it). Volume sources and /tmp are held open first: the
    private /tmp would hide a source below it."""
    before: list[Op] = [(OP_HOLD, _b(p)) for p, _, _, _ in view.volumes] + [(OP_HOLD, b"/tmp")]
    if view.setattr:
        before.append((OP_RDONLY_TREE, b"/"))
    else:
        before += [_ro(m, flags, optional=True) for m, flags in view.mounts]
    after: list[Op] = [(OP_MOUNT | OP_OPTIONAL, b"devpts", b"/dev/pts", b"devpts", MS_NOSUID | MS_NOEXEC,
                        b"newinstance,ptmxmode=0666,mode=0620"),
                       (OP_MOUNT | OP_OPTIONAL, b"/dev/pts/ptmx", b"/dev/ptmx", None, MS_BIND)]
    if view.ipc_ns:
        after.append((OP_MOUNT | OP_OPTIONAL, b"shm", b"/dev/shm", b"tmpfs", MS_NOSUID | MS_NODEV,
                      b"mode=1777,size=65536k"))
    after += _tmp_ops(len(view.volumes), view.userns)
    for i, (path, ro, flags, is_dir) in enumerate(view.volumes):
        tmp = next((t for t in _PRIVATE_TMP if path.startswith(t + "/")), None)
        if tmp is not None:           # recreate its place in the private tmpfs
            parts = path[len(tmp) + 1:].split("/")
            dirs = parts if is_dir else parts[:-1]
            after += [(OP_MKDIR, _b("/".join([tmp, *dirs[:k + 1]]))) for k in range(len(dirs))]
            if not is_dir:
                after.append((OP_TOUCH, _b(path)))
        # not MS_REC: a recursive bind of a source below /tmp would copy the private tmpfs too
        after += [(OP_BIND_HELD, str(i).encode(), _b(path), None, MS_BIND),
                  (OP_MOUNT, None, _b(path), None, MS_REMOUNT | MS_BIND | flags | (MS_RDONLY if ro else 0))]
    return before, after


def protect_ops(*, root: str | None, views: list[CgroupView], tmpfs_flags: int | None,
                sys_flags: int | None, masked: Iterable[str], readonly: Iterable[str],
                host: HostView | None = None) -> tuple[list[Op], list[Op]]:
    """(before the new /proc or pivot_root, after it): without a root of its own, the host
    read-only (``host``); the container's read-only view of its own cgroup; a read-only /sys;
    masked paths (runc's: /dev/null over files, an empty read-only tmpfs over directories) and
    read-only paths. Paths this kernel lacks are skipped."""
    before: list[Op] = []
    after: list[Op] = []
    if root is None:
        all_ro = host is not None and host.setattr
        if host is not None:
            before, after = _host_view_ops(host)
        after += _cgroup_ops(views, "", tmpfs_flags, all_ro)
        if sys_flags is not None and not all_ro:
            after.append(_ro("/sys", sys_flags))
    elif sys_flags is not None:      # with its own netns a new root has a read-only sysfs
        r = root.rstrip("/")
        v1 = tmpfs_flags is not None
        if v1:
            before.append((OP_MOUNT, b"tmpfs", _b(f"{r}/sys/fs/cgroup"), b"tmpfs", MS_NOSUID | MS_NODEV | MS_NOEXEC,
                           b"mode=755,size=64k"))
        before += _cgroup_ops(views, r, MS_NOSUID | MS_NODEV | MS_NOEXEC if v1 else None)
    # A path this kernel lacks here (/proc and /sys are its own, in the container as on the host)
    # is not even tried: each would be a failed mount in the child.
    for p in masked:
        if os.path.isdir(p):
            after.append((OP_MOUNT | OP_OPTIONAL, b"tmpfs", _b(p), b"tmpfs", MS_RDONLY, b"size=0"))
        elif os.path.exists(p):
            after.append((OP_MOUNT | OP_OPTIONAL, b"/dev/null", _b(p), None, MS_BIND))
    for p in filter(os.path.exists, readonly):
        after += [(OP_MOUNT | OP_OPTIONAL, _b(p), _b(p), None, MS_BIND | MS_REC),
                  _ro(p, MS_NOSUID | MS_NODEV | MS_NOEXEC, optional=True)]
    return before, after


def mount_ops(*, root: str | None, overlay: Overlay | None, pid_ns: bool, net_ns: bool,
              ipc_ns: bool, userns: bool, protect: tuple[list[Op], list[Op]] = ([], [])) -> list[Op]:
    """Operations for a container: private propagation, the new root (bind or overlay),
    a minimal /dev, /proc of the new pid namespace, /sys when it has its own netns."""
    ops: list[Op] = [(OP_MOUNT, None, b"/", None, MS_REC | MS_PRIVATE)]
    if overlay is not None:
        root = overlay.merged
        ops.append((OP_MOUNT, b"overlay", _b(root), b"overlay", 0, _b(overlay.options(userns))))
    elif root is not None:
        ops.append((OP_MOUNT, _b(root), _b(root), None, MS_BIND | MS_REC))   # pivot_root needs a mount
    before, after = protect
    if root is None:
        ops += before
        if pid_ns:   # the host's /proc shows the host's pids: remount it for the new namespace
            ops.append((OP_MOUNT, b"proc", b"/proc", b"proc", MS_NOSUID | MS_NODEV | MS_NOEXEC))
        return ops + after
    r = root.rstrip("/")
    dev = f"{r}/dev"
    ops += [(OP_MKDIR, _b(dev)),
            (OP_MOUNT, b"tmpfs", _b(dev), b"tmpfs", MS_NOSUID, b"mode=755,size=65536k")]
    for name in DEVICES:
        ops += [(OP_TOUCH, _b(f"{dev}/{name}")),
                (OP_MOUNT, _b(f"/dev/{name}"), _b(f"{dev}/{name}"), None, MS_BIND)]
    ops += [(OP_MKDIR, _b(f"{dev}/pts")),
            (OP_MOUNT, b"devpts", _b(f"{dev}/pts"), b"devpts", MS_NOSUID | MS_NOEXEC,
             b"newinstance,ptmxmode=0666,mode=0620")]
    for link, target in (("ptmx", "pts/ptmx"), ("fd", "/proc/self/fd"), ("stdin", "/proc/self/fd/0"),
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
    ops += before
    ops.append((OP_PIVOT, _b(r)))
    return ops + after


def workdir_ops(cwd: str) -> list[Op]:
    """After pivot_root: create the working directory (as Docker does for a WORKDIR the image
    lacks; it lands in the container's upper dir) and enter it. Inside the new root, so a
    link in the image resolves there, never on the host."""
    parts = [p for p in cwd.split("/") if p]
    if not cwd.startswith("/") or any(p in (".", "..") for p in parts):
        raise ValueError(f"working directory {cwd!r} must be an absolute path without . or ..")
    ops: list[Op] = [(OP_MKDIR, _b("/" + "/".join(parts[:i + 1]))) for i in range(len(parts))]
    return ops + [(OP_CHDIR, _b("/" + "/".join(parts)))]
