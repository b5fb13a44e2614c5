"""The fleet ledger: every node's ledger rows in one PostgreSQL database (docs/fleet.md).

``outbox`` keeps, in each node's SQLite ledger, which rows the central database has
acknowledged; ``shipper`` is the agent's thread that sends the rest; ``db`` is the only
place that talks to PostgreSQL (psycopg); ``schema`` is the central schema and its
forward migrations. Billing reads the central rows as ``FleetEntry``: a ledger row plus
the node it came from, so `cgman usage --by node` can group by it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ..accounting.ledger import Entry


@dataclass(frozen=True)
class FleetEntry(Entry):
    """A ledger row as the central database holds it: with its node's name."""

    node: str = ""


def check_node(name: str) -> str:
    """``name`` if it is a valid node name (as a host name: 1-253 of A-Z a-z 0-9 _ . -)."""
    import re

    from ..errors import CgmanError, shown
    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,252}", name):
        raise CgmanError(f"--node {shown(name)}: a node name is 1-253 of A-Z a-z 0-9 _ . - starting with a "
                         f"letter or digit (default: the host name)")
    return name


def shipper(url: str, node: str | None, state_dir: str, stop_at: str = "") -> "Any":
    """The agent's Shipper for --ledger-url/--node (node default: the host name)."""
    import socket

    from .shipper import Shipper
    return Shipper(url, check_node(node or socket.gethostname()), state_dir, stop_at=stop_at)
