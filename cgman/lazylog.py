"""Loggers that import `logging` when a record is made that would be shown, not at import.

`logging` costs ~3 ms (it imports traceback, threading, string and weakref) of a direct
`cgman run`, which logs nothing unless something goes wrong or -v asks for it. A module on
the launch path writes ``log = lazylog.getLogger(__name__)`` instead of
``logging.getLogger(__name__)``; the stand-in decides whether a record would be shown as
logging would, and hands every shown one to the real logger of that name:

- while a command's set-up is deferred (``configure_later``, the CLI's), a record at or
  above the level that set-up configures runs the set-up first; one below it is dropped; an
  import of `logging` by anything runs it too (for modules that log through logging itself);
- with nothing deferred, before anything imported `logging`, nothing configured it either:
  below WARNING is dropped (its default level), the rest goes to its last-resort handler;
- once `logging` is imported, by anyone, the real logger decides everything.
"""

from __future__ import annotations

import sys

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any, Callable

DEBUG, INFO, WARNING, ERROR = 10, 20, 30, 40
_deferred: list[tuple[int, Callable[[], None]]] = []     # (level, set-up) the command deferred


def configure_later(level: int, configure: Callable[[], None]) -> None:
    """Run ``configure`` (which sets the root level to ``level``) before the first record at
    or above ``level``, or as soon as anything imports `logging` (a module that logs through
    it directly: its records get the command's format too); at once if `logging` is imported
    already (nothing would be saved)."""
    if "logging" in sys.modules:
        _deferred.clear()
        configure()
        return
    _deferred[:] = [(level, configure)]
    if _WhenImported not in sys.meta_path:      # type: ignore[comparison-overlap]
        sys.meta_path.insert(0, _WhenImported)  # type: ignore[arg-type]


class _WhenImported:
    """Runs a deferred set-up right after `logging` is imported (_importhook.py)."""

    @staticmethod
    def find_spec(name: str, path: object = None, target: object = None) -> object:
        if name != "logging" or not _deferred:
            return None
        from ._importhook import spec_with_hooks
        return spec_with_hooks(_WhenImported, name, path, target, before=lambda: None,
                               after=lambda _module: _configure_now())


def _configure_now() -> None:
    while _deferred:
        _, configure = _deferred.pop()
        configure()


class Logger:
    """Stands in for ``logging.getLogger(name)``: the methods the launch path uses."""

    __slots__ = ("name", "_real")

    def __init__(self, name: str) -> None:
        self.name = name
        self._real: Any = None            # logging's logger of this name, once logging is loaded

    def isEnabledFor(self, level: int) -> bool:
        if _deferred:
            return level >= _deferred[0][0]
        if self._real is None:
            if "logging" not in sys.modules:
                return level >= WARNING
            import logging
            self._real = logging.getLogger(self.name)
        return bool(self._real.isEnabledFor(level))

    def log(self, level: int, msg: object, *args: object, **kw: Any) -> None:
        self._emit(level, msg, args, kw)

    def debug(self, msg: object, *args: object, **kw: Any) -> None:
        self._emit(DEBUG, msg, args, kw)

    def info(self, msg: object, *args: object, **kw: Any) -> None:
        self._emit(INFO, msg, args, kw)

    def warning(self, msg: object, *args: object, **kw: Any) -> None:
        self._emit(WARNING, msg, args, kw)

    def error(self, msg: object, *args: object, **kw: Any) -> None:
        self._emit(ERROR, msg, args, kw)

    def _emit(self, level: int, msg: object, args: tuple[object, ...], kw: dict[str, Any]) -> None:
        if not self.isEnabledFor(level):
            return
        _configure_now()
        if self._real is None:
            import logging
            self._real = logging.getLogger(self.name)
        kw["stacklevel"] = kw.get("stacklevel", 1) + 2      # the caller's line, not this file's
        self._real.log(level, msg, *args, **kw)


def getLogger(name: str) -> Logger:     # noqa: N802 (logging's name)
    return Logger(name)
