"""The ledger opened ahead of a run, for its commit (the agent's spare supervisor: cli/served.py).

A spare is forked ahead of the next `cgman run` and waits; opening the ledger in a fresh fork at
the run's end costs ~1 ms of the run (1.95 ms against 0.92 on a connection opened before, in
forked children of a warm process). So the spare opens it while it waits, and the commit of its
run takes that connection when it is still good:

- only while the file at the path is the one it opened (an operator moves a corrupt ledger aside:
  the row goes to the new one at the path);
- closed before any fork (a `run -d` supervisor): SQLite's state of an open file must not reach a
  child, not even one that opens the file anew (its locks are per process);
- closed at the run's first memory sample (usage.sample): a long run commits on a connection of
  its own, instead of keeping the file open, with the checks of its start, for days.
"""

from __future__ import annotations

import os

from ..errors import CgmanError
from .ledger import Ledger

_AHEAD: list[Ledger] = []          # the ledger this process opened ahead
_HOOKED: list[bool] = []           # whether the hook that closes it before a fork is in


def open_ahead(path: str) -> None:
    """Open the ledger at ``path`` now, for this process's next ``for_commit(path)``. It never
    waits for another process's lock, and an error is left for the commit to meet and report."""
    led = Ledger(path, busy_timeout_s=0)
    try:
        led.connect()
    except (CgmanError, OSError):
        return
    if not _HOOKED:
        os.register_at_fork(before=close_ahead)
        _HOOKED.append(True)
    close_ahead()
    _AHEAD.append(led)


def close_ahead() -> None:
    """Close the ledger opened ahead, if any (before a fork; at a run's first memory sample)."""
    while _AHEAD:
        _AHEAD.pop().close()


def for_commit(path: str, busy_timeout_s: float | None = None) -> Ledger:
    """The Ledger at ``path`` for one commit: the one opened ahead, if any, for this path and
    still the file at it; else a new one."""
    if _AHEAD:
        led = _AHEAD.pop()
        if led.path == path and led.is_still_the_file() and led.set_busy_timeout(busy_timeout_s):
            return led
        led.close()
    return Ledger(path, busy_timeout_s=busy_timeout_s)
