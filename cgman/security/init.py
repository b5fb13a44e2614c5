"""cgman-init, the container's PID 1, from a sealed memfd (runc's answer to CVE-2019-5736).

The binary (cgman/_init.c, built static by setup.py) is copied once per process into a
memfd that is then sealed against writes, growth, shrinking and further seal changes. The
launch helper execs that fd, so inside the container /proc/1/exe is an anonymous,
immutable file: opening it for writing cannot reach any file of the host, and a later
container of the same process gets the same untouched copy.
"""

from __future__ import annotations

import fcntl
import os

from ..errors import LaunchError

BINARY = os.path.join(os.path.dirname(os.path.dirname(__file__)), "cgman-init")
MAX_BYTES = 4 << 20
_SEALS = fcntl.F_SEAL_SEAL | fcntl.F_SEAL_SHRINK | fcntl.F_SEAL_GROW | fcntl.F_SEAL_WRITE
_FD: list[int] = []


def memfd() -> int:
    """The sealed memfd of cgman-init (created on first use, kept for the life of the process)."""
    if _FD:
        return _FD[0]
    try:
        with open(BINARY, "rb") as f:
            data = f.read(MAX_BYTES + 1)
    except OSError as e:
        raise LaunchError(f"cgman's container init {BINARY} is missing ({e.strerror}); reinstall with "
                          f"`pip install -e .` (needs a C compiler with static libc, e.g. musl-tools)") from None
    if len(data) > MAX_BYTES or not data.startswith(b"\x7fELF"):
        raise LaunchError(f"{BINARY} is not cgman's init (not a small ELF executable); reinstall cgman")
    fd = os.memfd_create("cgman-init", os.MFD_CLOEXEC | os.MFD_ALLOW_SEALING)
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view):]
        fcntl.fcntl(fd, fcntl.F_ADD_SEALS, _SEALS)
    except BaseException:
        os.close(fd)
        raise
    _FD.append(fd)
    return fd
