"""Where cgman's log records go: the one logging set-up (STYLE.md: only the CLI configures handlers).

One line per record on stderr, in one format family, ``cgman[ COMPONENT]: LEVEL: message``,
with the logger's name before the message under -v. A command shows warnings; the agent,
whose log is its journal, also what it applied and collected (INFO); -v shows everything,
every cgroup write included (DEBUG).
"""

from __future__ import annotations

from .. import lazylog

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Optional

QUIET_LEVEL = {"agent": lazylog.INFO}          # the level without -v; WARNING for the rest


def setup(verbose: bool, component: Optional[str] = None) -> None:
    """Configure the root logger for a command (component None), `exporter` or `agent`;
    replaces an earlier set-up (the typer callback's, when a server starts after it)."""
    import logging
    prefix = f"cgman {component}" if component else "cgman"
    name = "%(name)s: " if verbose else ""
    logging.basicConfig(level=_level(verbose, component),
                        format=f"{prefix}: %(levelname)s: {name}%(message)s", force=True)


def _level(verbose: bool, component: Optional[str]) -> int:
    return lazylog.DEBUG if verbose else QUIET_LEVEL.get(component or "", lazylog.WARNING)


def setup_when_needed(verbose: bool) -> None:
    """``setup(verbose)`` for `cgman run`, done before the first record that would be shown:
    the launch path logs through lazylog, so a run that logs nothing never imports logging."""
    lazylog.configure_later(_level(verbose, None), lambda: setup(verbose))
