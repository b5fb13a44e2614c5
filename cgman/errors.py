"""The one exception tree of cgman. Every error carries the facts an operator needs."""

from __future__ import annotations

import errno as _errno
import os


class CgmanError(Exception):
    """Root of every error cgman raises on purpose; the CLI prints it as one line."""

    hint: str = ""

    def __str__(self) -> str:
        msg = super().__str__()
        return f"{msg} ({self.hint})" if self.hint else msg


class PolicyError(CgmanError):
    """A policy file is invalid. Names the file, line, column and key path."""

    def __init__(self, message: str, file: str = "<input>", line: int = 0,
                 column: int = 0, key: str = "") -> None:
        self.message, self.file, self.line, self.column, self.key = message, file, line, column, key
        super().__init__(self._render())

    def _render(self) -> str:
        # Backstop: a value echoed whole (a 4 MiB key, a long path) must not flood the log line.
        file, key, message = clip(self.file, 300), clip(self.key, 200), clip(self.message, 400)
        where = f"{file}:{self.line}:{self.column}" if self.line else file
        text = f"{where}: {key}: {message}" if key else f"{where}: {message}"
        return _one_line(text)


SHOWN_CHARS = 80


def clip(text: str, limit: int = SHOWN_CHARS) -> str:
    """``text`` cut to ``limit`` characters with '…' and the original length when longer."""
    if len(text) <= limit:
        return text
    return f"{text[:limit]}… ({len(text)} characters)"


def shown(value: object, limit: int = SHOWN_CHARS) -> str:
    """A value from user input as it appears in an error: repr, cut to ``limit`` characters."""
    if isinstance(value, int) and not isinstance(value, bool) and value.bit_length() > 256:
        return f"<an integer of about {int(value.bit_length() * 0.30103)} digits>"
    if isinstance(value, str) and len(value) > limit:
        return f"{value[:limit]!r}… ({len(value)} characters)"
    text = repr(value)
    return clip(text, limit)


def _one_line(text: str) -> str:
    """Errors are one line (SPEC §4): escape control characters from user input."""
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)


class NotFound(CgmanError):
    """A group, container or file that the command needs does not exist."""


class UnsafePath(CgmanError):
    """A name would escape the cgman root (`/`, `..`, a symlink)."""


class PermissionDenied(CgmanError):
    """The kernel refused access; usually not root or not delegated."""

    hint = "run as root, or delegate the cgroup root to this user (see `cgman doctor`)"


class Busy(CgmanError):
    """A group cannot be changed or removed because of live processes or children."""


class FreezeTimeout(CgmanError):
    """A freeze did not complete in time; the group was thawed again."""


class CgroupIOError(CgmanError):
    """A cgroup file read or write failed. Carries the directory, file, value and errno."""

    def __init__(self, directory: str, file: str, value: str | None, err: int,
                 reason: str = "") -> None:
        self.directory, self.file, self.value, self.errno = directory, file, value, err
        self.reason = reason or os.strerror(err)
        op = f"write {value!r} to" if value is not None else "read"
        super().__init__(f"cannot {op} {directory}/{file}: {self.reason}"
                         f" [{_errno.errorcode.get(err, err)}]")


class LaunchError(CgmanError):
    """A container could not be started (its setup failed before the workload ran).

    ``exit_code`` follows the shells and Docker: 127 command not found, 126 not executable.
    """

    def __init__(self, message: str, exit_code: int = 1) -> None:
        super().__init__(message)
        self.exit_code = exit_code
