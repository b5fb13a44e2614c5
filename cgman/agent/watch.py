"""Wake the agent when its policy directory changes: inotify, else polling.

inotify is reached through libc with ctypes (three calls; no dependency for them).
Polling is the fallback where inotify is missing or out of watches
(fs.inotify.max_user_watches), and on file systems that do not report changes
(NFS, some FUSE): it compares a cheap signature of the directory every second.
Either way the agent re-reads the files by content, so a spurious wake-up costs
one scan and nothing else.
"""

from __future__ import annotations

import ctypes
import errno
import logging
import os
import select
import struct
import time

log = logging.getLogger(__name__)

IN_MODIFY, IN_ATTRIB, IN_CLOSE_WRITE = 0x2, 0x4, 0x8
IN_MOVED_FROM, IN_MOVED_TO, IN_CREATE, IN_DELETE = 0x40, 0x80, 0x100, 0x200
IN_DELETE_SELF, IN_MOVE_SELF, IN_IGNORED = 0x400, 0x800, 0x8000
IN_NONBLOCK, IN_CLOEXEC = os.O_NONBLOCK, os.O_CLOEXEC
MASK = (IN_CLOSE_WRITE | IN_MOVED_FROM | IN_MOVED_TO | IN_CREATE | IN_DELETE | IN_ATTRIB
        | IN_DELETE_SELF | IN_MOVE_SELF)
POLL_S = 1.0
SETTLE_S = 0.1         # editors write a file in steps (truncate, write, rename): wait for quiet
SETTLE_MAX_S = 1.0


class Watcher:
    """``wait(timeout, wake_fd)`` returns True when the directory may have changed."""

    def __init__(self, directory: str, poll: bool = False) -> None:
        self.directory = directory
        self.fd: int | None = None
        self.wd: int | None = None
        self._sig: tuple[object, ...] | None = None
        self.mode = "poll"
        self._real = os.path.realpath(directory)
        if not poll:
            self._open_inotify()
        self._sig = self._signature()

    def _open_inotify(self) -> None:
        try:
            libc = ctypes.CDLL(None, use_errno=True)
            fd = libc.inotify_init1(IN_NONBLOCK | IN_CLOEXEC)
        except (OSError, AttributeError) as e:
            log.warning("inotify unavailable (%s): polling %s every %gs", e, self.directory, POLL_S)
            return
        if fd < 0:
            log.warning("inotify_init1: %s: polling %s every %gs",
                        os.strerror(ctypes.get_errno()), self.directory, POLL_S)
            return
        self._libc, self.fd = libc, fd
        self._add_watch()

    def _add_watch(self) -> None:
        assert self.fd is not None
        wd = self._libc.inotify_add_watch(self.fd, os.fsencode(self.directory), MASK)
        if wd < 0:
            err = ctypes.get_errno()
            self.wd = None
            self.mode = "poll"
            if err != errno.ENOENT:       # a missing dir is normal until it is created: poll for it
                log.warning("inotify_add_watch(%s): %s: polling every %gs", self.directory,
                            os.strerror(err), POLL_S)
            return
        self.wd, self.mode = wd, "inotify"

    def _signature(self) -> tuple[object, ...]:
        """Names, inodes, sizes and mtimes of the directory's entries (polling's change test)."""
        try:
            entries = sorted(os.scandir(self.directory), key=lambda e: e.name)
        except OSError:
            return ("missing",)
        sig: list[object] = []
        for e in entries:
            try:
                st = e.stat()          # follows symlinks: a ConfigMap's ..data swap shows
            except OSError:
                continue
            sig.append((e.name, st.st_ino, st.st_size, st.st_mtime_ns))
        return tuple(sig)

    def _drain(self) -> bool:
        """Read pending events; True if one may concern a policy file (re-watch if the dir went).

        Other names in the directory (an editor's probe file, a log someone keeps there) are
        ignored, so that a busy neighbour cannot keep the agent settling forever. Names
        starting with ".." stay relevant: a ConfigMap swaps its ..data symlink.
        """
        assert self.fd is not None
        got = False
        while True:
            try:
                buf = os.read(self.fd, 65536)
            except BlockingIOError:
                return got
            off = 0
            while off + 16 <= len(buf):
                _wd, mask, _cookie, length = struct.unpack_from("iIII", buf, off)
                name = buf[off + 16:off + 16 + length].rstrip(b"\0")
                off += 16 + length
                if mask & (IN_DELETE_SELF | IN_MOVE_SELF | IN_IGNORED):
                    self.wd, self.mode = None, "poll"      # the dir itself went: poll until it is back
                    got = True
                elif not name or name.endswith((b".yaml", b".yml")) or name.startswith(b".."):
                    got = True

    def wait(self, timeout_s: float, wake_fd: int | None = None) -> bool:
        """Block up to ``timeout_s``; True if the directory may have changed."""
        deadline = time.monotonic() + timeout_s
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                return False
            fds = [f for f in (self.fd if self.mode == "inotify" else None, wake_fd) if f is not None]
            step = left if self.mode == "inotify" else min(left, POLL_S)
            ready, _, _ = select.select(fds, [], [], step)
            if wake_fd is not None and wake_fd in ready:
                return False
            if self.mode == "inotify" and self.fd in ready:
                if self._drain():
                    self._settle(wake_fd)
                    return True
                continue
            if self.mode == "poll":
                if self.fd is not None and self.wd is None and os.path.isdir(self.directory):
                    self._add_watch()          # the dir is back: watch it again
                sig = self._signature()
                if sig != self._sig:
                    self._sig = sig
                    return True

    def _settle(self, wake_fd: int | None) -> None:
        """Swallow the rest of a burst of events (one re-apply per save, not three), for at
        most SETTLE_MAX_S: a writer that never pauses must not hold the agent here."""
        assert self.fd is not None
        deadline = time.monotonic() + SETTLE_MAX_S
        fds = [self.fd] + ([wake_fd] if wake_fd is not None else [])
        while (left := deadline - time.monotonic()) > 0:
            ready = select.select(fds, [], [], min(SETTLE_S, left))[0]
            if not ready or wake_fd in ready:
                break
            self._drain()
        if self.mode == "poll" and self.wd is None and os.path.isdir(self.directory):
            self._add_watch()
        self._sig = self._signature()

    def retarget(self) -> bool:
        """Re-watch if --policy-dir is a symlink that now points elsewhere (inotify watches
        the target it resolved when the watch was added). True if it moved."""
        real = os.path.realpath(self.directory)
        if real == self._real:
            return False
        self._real = real
        if self.fd is not None and self.wd is not None:
            self._libc.inotify_rm_watch(self.fd, self.wd)
            self._add_watch()
        return True

    def close(self) -> None:
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None
