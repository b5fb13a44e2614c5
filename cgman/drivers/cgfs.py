"""Confined file I/O beneath one cgroup hierarchy's cgman root.

Every path is walked one component at a time with O_NOFOLLOW from a descriptor
of the mount, so no name, symlink or ``..`` can lead outside the root (the
effect of runc's openat2 RESOLVE_BENEATH, which Python does not expose).
Reads take the same walk as writes: this module is the only code that opens
cgroup files. Errors carry the directory, file, value and errno.
"""

from __future__ import annotations

import errno
import functools
import os
import re
from _thread import get_ident as _thread_id     # threading itself is not on the direct path

from .. import lazylog
from ..errors import CgmanError, CgroupIOError, NotFound, PermissionDenied, UnsafePath

log = lazylog.getLogger(__name__)   # logging only if a record is shown (lazylog.py)
_COMPONENT = re.compile(r"^[A-Za-z0-9_@:][A-Za-z0-9_.@:\\-]{0,254}$")
_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
_READ_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC


def split_path(rel: str) -> list[str]:
    """Validate a group path relative to the root ("." is the root itself)."""
    return list(_split(rel))


@functools.lru_cache(maxsize=4096)
def _split(rel: str) -> tuple[str, ...]:
    # Cached: the same few paths are validated on every operation of a launch.
    if rel in ("", "."):
        return ()
    parts = rel.split("/")
    for p in parts:
        if p in ("", ".", "..") or not _COMPONENT.fullmatch(p):
            raise UnsafePath(f"refusing cgroup name {rel!r}: each part must be a plain name "
                             f"(no '/', '..' or leading '.')")
    return tuple(parts)


class CgroupTree:
    """The cgman root (``root``, relative) inside one mounted hierarchy (``mount``)."""

    def __init__(self, mount: str, root: str) -> None:
        self.mount = mount
        self.root = root
        self._root_parts = split_path(root)
        self._mfd: int | None = None
        if not self._root_parts:
            raise UnsafePath("the cgman root must be a named group below the mount, not the mount")

    def __repr__(self) -> str:
        return f"CgroupTree({self.mount!r}, {self.root!r})"

    def path(self, rel: str = ".", file: str = "") -> str:
        parts = [self.mount, *self._root_parts, *split_path(rel)]
        return os.path.join(*parts, file) if file else os.path.join(*parts)

    # --------------------------------------------------------------------- directories
    def _cached_mount_fd(self) -> int:
        # The mount itself never goes away (cgman never unmounts), so one descriptor of it is
        # kept: resolving /sys/fs/cgroup/<controller> is the dearest step of every walk.
        if self._mfd is None:
            try:
                self._mfd = os.open(self.mount, _DIR_FLAGS)
            except OSError as e:
                raise CgroupIOError(self.mount, "", None, e.errno or 0,
                                    f"cannot open the cgroup mount: {e.strerror}") from None
        return self._mfd

    def close(self) -> None:
        """Release the kept descriptor of the mount (a later call opens it again)."""
        if self._mfd is not None:
            os.close(self._mfd)
            self._mfd = None

    def _mount_fd(self) -> int:
        """A descriptor of the mount that the caller owns (and closes)."""
        return os.dup(self._cached_mount_fd())

    def _open(self, rel: str) -> int:
        try:
            return self._walk(self._root_parts + split_path(rel), self.path(rel))
        except OSError as e:
            raise self._err(rel, "", None, e) from None

    def _walk(self, parts: list[str], where: str) -> int:
        kept = _KEPT.get(_thread_id()) if _KEPT else None
        if kept is not None:       # inside KeptWalks: by the mount's path (a descriptor's number is reused)
            return _walk_kept(kept, self._cached_mount_fd(), self.mount, tuple(parts), where)
        return _walk(self._cached_mount_fd(), parts, where)

    def open_dir(self, rel: str) -> int:
        """A directory fd of ``rel`` (walked without following symlinks); the caller closes it."""
        return self._open(rel)

    def exists(self, rel: str = ".", file: str = "") -> bool:
        try:
            fd = self._open(rel)
        except NotFound:
            return False
        try:
            if file:
                os.stat(file, dir_fd=fd, follow_symlinks=False)
            return True
        except FileNotFoundError:
            return False
        finally:
            os.close(fd)

    def mkdir(self, rel: str) -> bool:
        """Create the group (its parent must exist). True if it was created now."""
        parts = split_path(rel)
        parent = "/".join(parts[:-1]) or "."
        if not parts:     # the root itself: create each missing component of it
            return self._mkdir_root()
        fd = self._open(parent)
        try:
            os.mkdir(parts[-1], 0o755, dir_fd=fd)
            if log.isEnabledFor(lazylog.DEBUG):
                log.debug("mkdir %s", self.path(rel))
            return True
        except FileExistsError:
            return False
        except OSError as e:
            raise self._err(rel, "", None, e) from None
        finally:
            os.close(fd)

    def _mkdir_root(self) -> bool:
        fd = self._mount_fd()
        created = False
        try:
            for part in self._root_parts:
                try:
                    os.mkdir(part, 0o755, dir_fd=fd)
                    created = True
                    log.debug("mkdir %s/%s", self.mount, part)
                except FileExistsError:
                    pass
                nfd = os.open(part, _DIR_FLAGS, dir_fd=fd)
                os.close(fd)
                fd = nfd
        except OSError as e:
            raise self._err(".", "", None, e) from None
        finally:
            os.close(fd)
        return created

    def rmdir(self, rel: str) -> None:
        parts = split_path(rel)
        if not parts:
            fd = self._mount_fd()
            parent_parts, name = self._root_parts[:-1], self._root_parts[-1]
            try:
                for part in parent_parts:
                    nfd = os.open(part, _DIR_FLAGS, dir_fd=fd)
                    os.close(fd)
                    fd = nfd
            except OSError as e:
                os.close(fd)
                if e.errno == errno.ENOENT:
                    return
                raise self._err(".", "", None, e) from None
        else:
            fd = self._open("/".join(parts[:-1]) or ".")
            name = parts[-1]
        try:
            os.rmdir(name, dir_fd=fd)
            if log.isEnabledFor(lazylog.DEBUG):
                log.debug("rmdir %s", self.path(rel))
        except FileNotFoundError:
            pass
        except OSError as e:
            if e.errno == errno.EBUSY:
                raise CgroupIOError(self.path(rel), "", None, e.errno,
                                    "group still has processes or child groups") from None
            raise self._err(rel, "", None, e) from None
        finally:
            os.close(fd)
            _forget_kept(self.mount, self._root_parts + parts)

    def children(self, rel: str = ".") -> list[str]:
        """Names of child groups, sorted."""
        try:
            fd = self._open(rel)
        except NotFound:
            return []
        try:
            with os.scandir(fd) as it:
                return sorted(e.name for e in it if e.is_dir(follow_symlinks=False))
        finally:
            os.close(fd)

    # --------------------------------------------------------------------------- files
    def read(self, rel: str, file: str) -> str:
        fd = self._open(rel)
        try:
            return _read_at(fd, file)
        except OSError as e:
            raise self._err(rel, file, None, e) from None
        finally:
            os.close(fd)

    def read_files(self, rel: str, files: list[str]) -> list[str | None]:
        """Each of ``files`` of group ``rel`` in one walk; None for a file that is missing or
        unreadable here (a kernel without PSI, say). NotFound if the group does not exist."""
        fd = self._open(rel)
        out: list[str | None] = []
        try:
            for file in files:
                try:
                    out.append(_read_at(fd, file))
                except OSError:
                    out.append(None)
        finally:
            os.close(fd)
        return out

    def open_for_reading(self, rel: str, files: list[str]) -> list[int]:
        """Read-only descriptors of ``files`` of group ``rel``, opened in one walk, for a caller
        that keeps them and re-reads them with pread (the exporter: cgroupfs regenerates a
        file on each read from offset 0). -1 for a file this kernel lacks; NotFound if the
        group is gone; the caller closes the rest."""
        fd = self._open(rel)
        fds: list[int] = []
        try:
            for file in files:
                try:
                    fds.append(_open_at(fd, file))
                except FileNotFoundError:
                    fds.append(-1)
                except OSError as e:
                    raise self._err(rel, file, None, e) from None
            if -1 in fds and not self.exists(rel):      # removed while we opened
                raise NotFound(f"no cgroup {self.path(rel)}")
        except BaseException:
            for f in fds:
                if f >= 0:
                    os.close(f)
            raise
        finally:
            os.close(fd)
        return fds

    def read_above(self, file: str) -> str:
        """``file`` of the directory that holds the cgman root: the one place above its tree
        that cgman reads (what it may enable, what a new v1 cpuset inherits); never written."""
        return _read_below(self._cached_mount_fd(), self._root_parts[:-1], file,
                           os.path.join(self.mount, *self._root_parts[:-1]))

    def open_for_writing(self, rel: str, file: str, value: str | None = None) -> int:
        """A write-only descriptor of ``file`` of group ``rel`` (never created); the caller
        writes and closes it. ``value``: what will be written, for the error message."""
        fd = self._open(rel)
        try:
            return os.open(file, os.O_WRONLY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=fd)
        except OSError as e:
            raise self._err(rel, file, value, e) from None
        finally:
            os.close(fd)

    def write(self, rel: str, file: str, value: str) -> None:
        """One value, one write(2); never creates files."""
        ffd = self.open_for_writing(rel, file, value)
        try:
            if log.isEnabledFor(lazylog.DEBUG):
                log.debug("write %s = %r", self.path(rel, file), value)
            os.write(ffd, value.encode())
        except OSError as e:
            raise self._err(rel, file, value, e) from None
        finally:
            os.close(ffd)

    def _err(self, rel: str, file: str, value: str | None, e: OSError) -> Exception:
        # As root, EACCES/EPERM is the kernel refusing a value (v1 cpusets), not a permission.
        if e.errno in (errno.EACCES, errno.EPERM) and os.geteuid() != 0 and \
                file not in ("cgroup.procs", "freezer.state"):
            return PermissionDenied(f"permission denied on {self.path(rel, file)}")
        if e.errno == errno.ENOENT and file:
            return CgroupIOError(self.path(rel), file, value, e.errno,
                                 "the kernel has no such file here: is the controller available "
                                 "and enabled for this group? (see `cgman doctor`)")
        return CgroupIOError(self.path(rel), file, value, e.errno or 0, e.strerror or str(e))


class KeptWalks:
    """From its creation to close() (or the end of a ``with`` block), every directory a
    CgroupTree walks in this thread is kept open, by mount path and components, and a later
    walk starts from the deepest one kept: a launch walks the same root, group and leaf in
    every hierarchy ~25 times (85 opens, ~0.2 ms here; ~40 with this). For a short stretch
    only: a directory that CgroupTree.rmdir removes is dropped, but one removed or renamed by
    anyone else stays kept until the close. Another thread never sees them, nor does a forked
    child (it closes its copies)."""

    def __init__(self) -> None:
        self.thread = _thread_id()
        self.open = self.thread not in _KEPT         # nested: the outer one keeps them
        if self.open:
            _KEPT[self.thread] = {}

    def close(self) -> None:
        if self.open:
            self.open = False
            for fd in _KEPT.pop(self.thread).values():
                os.close(fd)

    def __enter__(self) -> "KeptWalks":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


_KEPT: dict[int, dict[tuple[str, tuple[str, ...]], int]] = {}   # thread -> {(mount path, parts): dir fd}


def _forget_kept(mount: str, parts: list[str]) -> None:
    """A directory just removed, and what was below it: no kept walk may start there again."""
    kept = _KEPT.get(_thread_id()) if _KEPT else None
    if kept:
        n = len(parts)
        for key in [k for k in kept if k[0] == mount and k[1][:n] == tuple(parts)]:
            os.close(kept.pop(key))


def _drop_all_kept() -> None:
    """In a forked child: the parent's kept directories are not its own (and a thread of the
    child may get the parent launcher's thread id)."""
    for walks in _KEPT.values():
        for fd in walks.values():
            os.close(fd)
    _KEPT.clear()


os.register_at_fork(after_in_child=_drop_all_kept)


def _walk(mfd: int, parts: list[str], where: str) -> int:
    """A new descriptor of the directory ``parts`` below the mount ``mfd`` (the caller closes
    it), walked without following symlinks. NotFound, UnsafePath, or the OSError."""
    fd = mfd
    try:
        for part in parts:
            nfd = os.open(part, _DIR_FLAGS, dir_fd=fd)
            if fd != mfd:
                os.close(fd)
            fd = nfd
    except OSError as e:
        if fd != mfd:
            os.close(fd)
        raise _walk_error(e, where) from None
    return fd if fd != mfd else os.dup(mfd)


def _walk_kept(kept: dict[tuple[str, tuple[str, ...]], int], mfd: int, mount: str, parts: tuple[str, ...],
               where: str) -> int:
    """_walk from the deepest directory of ``parts`` kept for ``mount``, keeping each one it opens."""
    start, fd = 0, mfd
    for i in range(len(parts), 0, -1):
        if (mount, parts[:i]) in kept:
            start, fd = i, kept[(mount, parts[:i])]
            break
    for i in range(start, len(parts)):
        try:
            fd = os.open(parts[i], _DIR_FLAGS, dir_fd=fd)
        except OSError as e:
            raise _walk_error(e, where) from None
        kept[(mount, parts[:i + 1])] = fd
    return os.dup(fd)


def _walk_error(e: OSError, where: str) -> OSError | CgmanError:
    if e.errno == errno.ENOENT:
        return NotFound(f"no cgroup {where}")
    if e.errno in (errno.ELOOP, errno.ENOTDIR):
        return UnsafePath(f"refusing {where}: a symlink or non-directory in the path")
    return e


def _open_at(dirfd: int, file: str) -> int:
    """A read-only descriptor of ``file`` in the directory ``dirfd``, never through a symlink:
    every read of a cgroup file opens it here."""
    return os.open(file, _READ_FLAGS, dir_fd=dirfd)


def _read_at(dirfd: int, file: str) -> str:
    """The whole of ``file`` in the directory ``dirfd`` (_open_at, read, close); the OSError."""
    ffd = _open_at(dirfd, file)
    try:
        chunks = []
        while b := os.read(ffd, 65536):
            chunks.append(b)
        return b"".join(chunks).decode()
    finally:
        os.close(ffd)


def _read_below(mfd: int, parts: list[str], file: str, where: str) -> str:
    """``file`` of the directory ``parts`` below the mount ``mfd`` (named ``where`` in errors)."""
    try:
        fd = _walk(mfd, parts, where)
    except OSError as e:
        raise CgroupIOError(where, "", None, e.errno or 0, e.strerror or str(e)) from None
    try:
        return _read_at(fd, file)
    except OSError as e:
        raise CgroupIOError(where, file, None, e.errno or 0, e.strerror or str(e)) from None
    finally:
        os.close(fd)


def read_in_hierarchy(mount: str, rel: str, file: str) -> str:
    """``file`` of the directory ``rel`` below the hierarchy's ``mount`` ("." the top), walked
    like every other read, for the files read before a cgman root is bound or above it: what
    the hierarchy offers, what the root's parent delegates."""
    try:
        mfd = os.open(mount, _DIR_FLAGS)
    except OSError as e:
        raise CgroupIOError(mount, "", None, e.errno or 0, f"cannot open the cgroup mount: {e.strerror}") from None
    try:
        return _read_below(mfd, split_path(rel), file, os.path.join(mount, *split_path(rel)))
    finally:
        os.close(mfd)
