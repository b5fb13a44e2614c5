"""Files beneath a directory cgman owns (run dir, state dir, bridge lease dir), without
following symlinks.

The directory itself is checked once, when first used: it must be a directory owned by
root or by us and writable by nobody else, since whoever can write it can plant a link
(``containers -> /etc``) that root would then follow. cgman creates it (and its missing
parents) itself, mode 0700 (0711 where a user-namespaced container must pass through it).
Beneath it every path is walked one component at a time with O_NOFOLLOW from the
directory's descriptor, as drivers/cgfs.py does for cgroupfs, so a link planted in it is
refused rather than followed, and every file is created 0600.
"""

from __future__ import annotations

import errno
import fcntl
import os
import stat
import time
from contextlib import contextmanager

from ..errors import Busy, CgmanError

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Iterator

_DIR = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
MAX_READ = 4 << 20      # records, leases: a few KiB; a bigger file is not ours


class UnsafeDir(CgmanError):
    """A run, state or lease dir that another user could write, or a link planted in one."""


class SafeDir:
    """One trusted directory: ``what`` names it in errors, ``flag`` is how to pick another."""

    def __init__(self, path: str, what: str, flag: str, mode: int = 0o700) -> None:
        self.path = os.path.abspath(path)
        self.what, self.flag, self.mode = what, flag, mode
        self._fd: int | None = None

    def fd(self, create: bool = True) -> int:
        """The directory's descriptor, after the ownership check (created if ``create``)."""
        if self._fd is not None:            # inherited across fork: still the same directory
            return self._fd
        if create:
            try:
                os.makedirs(self.path, mode=self.mode, exist_ok=True)
            except OSError as e:
                raise CgmanError(f"cannot create the {self.what} {self.path}: {e.strerror}; "
                                 f"run as root or pick another {self.flag}") from None
        self._check_link()
        try:
            fd = os.open(self.path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        except FileNotFoundError:
            raise
        except OSError as e:
            raise CgmanError(f"cannot open the {self.what} {self.path}: {e.strerror}") from None
        st = os.fstat(fd)
        problem = ""
        if st.st_uid not in (0, os.geteuid()):
            problem = f"is owned by uid {st.st_uid}"
        elif st.st_mode & (stat.S_IWGRP | stat.S_IWOTH):
            problem = f"is writable by group or others (mode {stat.S_IMODE(st.st_mode):04o})"
        if problem:
            os.close(fd)
            raise UnsafeDir(f"the {self.what} {self.path} {problem}: another user could plant links "
                            f"in it; fix with `chown root:root {self.path} && chmod "
                            f"{self.mode:04o} {self.path}`, or pick another {self.flag}")
        self._fd = fd
        return fd

    def close(self) -> None:
        """Close the directory's descriptor (a SafeDir made for one use; fd() opens it again)."""
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None

    def _check_link(self) -> None:
        try:
            st = os.lstat(self.path)
        except FileNotFoundError:
            return
        if stat.S_ISLNK(st.st_mode) and st.st_uid not in (0, os.geteuid()):
            raise UnsafeDir(f"the {self.what} {self.path} is a symlink owned by uid {st.st_uid}: "
                            f"remove it, or pick another {self.flag}")

    def exists(self) -> bool:
        return os.path.isdir(self.path)

    def join(self, rel: str) -> str:
        return os.path.join(self.path, rel)

    # ------------------------------------------------------------------ walking
    def _parts(self, rel: str) -> list[str]:
        parts = rel.split("/")
        if any(p in ("", ".", "..") for p in parts):
            raise UnsafeDir(f"refusing {self.join(rel)}: not a plain path beneath the {self.what}")
        return parts

    def _parent(self, rel: str, create: bool = False, dir_mode: int = 0o700) -> tuple[int, str]:
        """(fd of the directory that holds ``rel``'s last component, that component)."""
        parts = self._parts(rel)
        fd = os.dup(self.fd())
        try:
            for p in parts[:-1]:
                if create:
                    try:
                        os.mkdir(p, dir_mode, dir_fd=fd)
                    except FileExistsError:
                        pass
                nfd = self._open_dir(p, fd, rel)
                os.close(fd)
                fd = nfd
        except BaseException:
            os.close(fd)
            raise
        return fd, parts[-1]

    def _open_dir(self, name: str, dir_fd: int, rel: str) -> int:
        try:
            return os.open(name, _DIR, dir_fd=dir_fd)
        except OSError as e:
            if e.errno in (errno.ELOOP, errno.ENOTDIR):
                raise UnsafeDir(f"refusing {self.join(rel)}: a symlink or non-directory in the path "
                                f"(remove it; cgman never follows links in its {self.what})") from None
            raise

    def open(self, rel: str, flags: int, mode: int = 0o600, create_dirs: bool = False) -> int:
        """An fd of the regular file ``rel`` (never through a link); FileNotFoundError as open(2)."""
        dfd, name = self._parent(rel, create_dirs)
        try:
            try:
                fd = os.open(name, flags | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK, mode, dir_fd=dfd)
            except OSError as e:
                if e.errno == errno.ELOOP:
                    raise UnsafeDir(f"refusing {self.join(rel)}: it is a symlink (remove it; cgman "
                                    f"never follows links in its {self.what})") from None
                raise
        finally:
            os.close(dfd)
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            os.close(fd)
            raise UnsafeDir(f"refusing {self.join(rel)}: not a regular file")
        os.set_blocking(fd, True)
        return fd

    def open_dir(self, rel: str) -> int:
        """An fd of directory ``rel`` (never through a link); the caller closes it."""
        dfd, name = self._parent(rel)
        try:
            return self._open_dir(name, dfd, rel)
        finally:
            os.close(dfd)

    def read(self, rel: str, limit: int = MAX_READ) -> bytes:
        fd = self.open(rel, os.O_RDONLY)
        try:
            data = os.read(fd, limit + 1)
            while len(data) <= limit and (chunk := os.read(fd, limit + 1 - len(data))):
                data += chunk
        finally:
            os.close(fd)
        if len(data) > limit:
            raise UnsafeDir(f"refusing {self.join(rel)}: larger than {limit} bytes")
        return data

    def write_atomic(self, rel: str, data: bytes, fsync: bool = False, create_dirs: bool = False) -> None:
        """Replace ``rel`` by rename of a fresh 0600 file (a reader sees the old or the new)."""
        dfd, name = self._parent(rel, create_dirs)
        tmp = f".{name}.{os.getpid()}.tmp"
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW | os.O_CLOEXEC,
                         0o600, dir_fd=dfd)
            try:
                os.write(fd, data)
                if fsync:
                    os.fsync(fd)
            finally:
                os.close(fd)
            os.replace(tmp, name, src_dir_fd=dfd, dst_dir_fd=dfd)
        finally:
            os.close(dfd)

    def mkdir(self, rel: str, mode: int = 0o700, parents: bool = True) -> None:
        """Create directory ``rel``; FileExistsError if it is there (the name claim)."""
        dfd, name = self._parent(rel, create=parents, dir_mode=mode)
        try:
            os.mkdir(name, mode, dir_fd=dfd)
        finally:
            os.close(dfd)

    def isdir(self, rel: str) -> bool:
        try:
            dfd, name = self._parent(rel)
        except (FileNotFoundError, UnsafeDir):
            return False
        try:
            return stat.S_ISDIR(os.stat(name, dir_fd=dfd, follow_symlinks=False).st_mode)
        except FileNotFoundError:
            return False
        finally:
            os.close(dfd)

    def listdir(self, rel: str) -> list[str]:
        """Names in directory ``rel`` ([] if it is missing)."""
        try:
            dfd, name = self._parent(rel)
        except FileNotFoundError:
            return []
        try:
            fd = self._open_dir(name, dfd, rel)
        except FileNotFoundError:
            return []
        finally:
            os.close(dfd)
        try:
            return os.listdir(fd)
        finally:
            os.close(fd)

    def remove(self, rel: str) -> None:
        """Remove ``rel`` and everything under it, never following a link (a link goes itself)."""
        if not self.exists():
            return
        try:
            dfd, name = self._parent(rel)
        except (FileNotFoundError, UnsafeDir):
            return
        try:
            st = os.stat(name, dir_fd=dfd, follow_symlinks=False)
            if stat.S_ISDIR(st.st_mode):
                _remove_dir(name, dfd)
            else:
                os.unlink(name, dir_fd=dfd)
        except FileNotFoundError:
            pass
        finally:
            os.close(dfd)

    @contextmanager
    def lock(self, rel: str, timeout_s: float = 30.0, missing_ok: bool = False) -> Iterator[None]:
        """An exclusive flock on file ``rel`` (created 0600; released if the holder dies).
        ``missing_ok``: a missing directory above it means nothing is left to protect."""
        try:
            fd = self.open(rel, os.O_RDWR | os.O_CREAT, create_dirs=not missing_ok)
        except FileNotFoundError:
            if not missing_ok:
                raise
            yield
            return
        try:
            deadline = time.monotonic() + timeout_s
            while True:
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    break
                except OSError as e:
                    if e.errno not in (errno.EWOULDBLOCK, errno.EAGAIN) or time.monotonic() > deadline:
                        raise Busy(f"{self.join(rel)} is held by another cgman for {timeout_s:g}s; "
                                   f"is one stuck?") from None
                    time.sleep(0.01)
            yield
        finally:
            os.close(fd)


def _remove_dir(name: str, dfd: int) -> None:
    """Directory ``name`` of ``dfd`` and what is in it, never following a link. A flat one (a
    container's record dir) by unlink and rmdir; one with directories inside by shutil.rmtree,
    whose import (~3 ms) every `cgman run --rm` would otherwise pay."""
    try:
        fd = os.open(name, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=dfd)
    except NotADirectoryError:
        os.unlink(name, dir_fd=dfd)          # replaced by a file or a link since the stat
        return
    try:
        with os.scandir(fd) as entries:
            for e in entries:
                if e.is_dir(follow_symlinks=False):
                    break
                try:
                    os.unlink(e.name, dir_fd=fd)
                except FileNotFoundError:
                    pass
            else:
                os.rmdir(name, dir_fd=dfd)
                return
    except OSError:
        pass                                 # e.g. ENOTEMPTY: something appeared; rmtree takes it
    finally:
        os.close(fd)
    import shutil
    shutil.rmtree(name, dir_fd=dfd, ignore_errors=True)
