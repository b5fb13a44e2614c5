"""Reading operator-supplied files (policy files, price sheets) within bounds.

Every such file is treated as hostile input: it must be a regular file (a FIFO would
block a read for ever, /dev/zero would fill memory), and at most ``max_input_bytes``
of it is read. Symlinks are followed (a ConfigMap mounts its files as links), but the
file finally opened is checked with fstat, so a link to a device is refused too.

The limits are plain values here; the CLI resolves them from its flags and
environment (CGMAN_MAX_INPUT_BYTES, CGMAN_MAX_GROUPS) and passes them down.
"""

from __future__ import annotations

import os
import stat
from dataclasses import dataclass

from .errors import PolicyError

DEFAULT_MAX_INPUT_BYTES = 4 << 20
DEFAULT_MAX_GROUPS = 10_000
#: Nodes a document may reach through YAML aliases (as yaml.v3 refuses "excessive aliasing").
MAX_ALIAS_NODES = 100_000
#: Levels of children: below this the cgroup path outgrows PATH_MAX long before the kernel minds.
MAX_GROUP_DEPTH = 32


@dataclass(frozen=True)
class Limits:
    """Bounds on one load of policy files or a price sheet."""

    max_input_bytes: int = DEFAULT_MAX_INPUT_BYTES
    max_groups: int = DEFAULT_MAX_GROUPS
    max_alias_nodes: int = MAX_ALIAS_NODES
    max_group_depth: int = MAX_GROUP_DEPTH


DEFAULT_LIMITS = Limits()


def _kind(mode: int) -> str:
    for test, name in ((stat.S_ISDIR, "a directory"), (stat.S_ISFIFO, "a FIFO"),
                       (stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device"),
                       (stat.S_ISSOCK, "a socket")):
        if test(mode):
            return name
    return "not a regular file"


def read_input(path: str | os.PathLike[str], max_bytes: int, what: str = "") -> bytes:
    """The bytes of the regular file ``path``; PolicyError if it is something else, cannot
    be read, or holds more than ``max_bytes``. Never blocks on a FIFO or device."""
    file = os.fspath(path)
    cannot = f"cannot read {what}:" if what else "cannot read:"
    what = what or "file"
    try:
        st = os.stat(file)          # refuse a device or FIFO before opening it at all
        if not stat.S_ISREG(st.st_mode):
            raise PolicyError(f"{what} is {_kind(st.st_mode)}; give a regular file", file)
        # O_NONBLOCK: if the path was swapped for a FIFO since the stat, open must not wait for a writer.
        fd = os.open(file, os.O_RDONLY | os.O_CLOEXEC | os.O_NONBLOCK | os.O_NOCTTY)
    except OSError as e:
        raise PolicyError(f"{cannot} {e.strerror}", file) from None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise PolicyError(f"{what} is {_kind(st.st_mode)}; give a regular file", file)
        if st.st_size > max_bytes:
            raise PolicyError(_too_big(what, st.st_size, max_bytes), file)
        chunks: list[bytes] = []
        left = max_bytes + 1          # one byte more tells a file that grew past the limit
        while left > 0:
            chunk = os.read(fd, min(left, 1 << 20))
            if not chunk:
                break
            chunks.append(chunk)
            left -= len(chunk)
    except OSError as e:
        raise PolicyError(f"{cannot} {e.strerror}", file) from None
    finally:
        os.close(fd)
    data = b"".join(chunks)
    if len(data) > max_bytes:
        raise PolicyError(_too_big(what, None, max_bytes), file)
    return data


def _too_big(what: str, size: int | None, limit: int) -> str:
    has = f"{size} bytes" if size is not None else "more"
    return (f"{what} is too large ({has}; the limit is {limit} bytes): split it, "
            f"or raise CGMAN_MAX_INPUT_BYTES")


def decode(data: bytes, file: str, what: str = "") -> str:
    """UTF-8 text of ``data``; PolicyError naming the byte offset otherwise."""
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as e:
        subject = f"{what} is not" if what else "not"
        raise PolicyError(f"{subject} UTF-8 text ({e.reason} at byte {e.start})", file) from None
