"""Where cgman's log records go: the one logging set-up (STYLE.md: only the CLI configures handlers).

One line per record on stderr, in one format family, ``cgman[ COMPONENT]: LEVEL: message``,
with the logger's name before the message under -v. A command shows warnings; the agent,
whose log is its journal, also what it applied and collected (INFO); -v shows everything,
every cgroup write included (DEBUG).
"""

from __future__ import annotations

import logging
from typing import Optional

QUIET_LEVEL = {"agent": logging.INFO}          # the level without -v; WARNING for the rest


def setup(verbose: bool, component: Optional[str] = None) -> None:
    """Configure the root logger for a command (component None), `exporter` or `agent`;
    replaces an earlier set-up (the typer callback's, when a server starts after it)."""
    prefix = f"cgman {component}" if component else "cgman"
    name = "%(name)s: " if verbose else ""
    logging.basicConfig(level=logging.DEBUG if verbose else QUIET_LEVEL.get(component or "", logging.WARNING),
                        format=f"{prefix}: %(levelname)s: {name}%(message)s", force=True)
