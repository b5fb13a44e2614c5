"""The node's SQLite ledger as the fleet's outbox.

A trigger appends every new ledger row's id to ``fleet_outbox`` in the same transaction
that commits the row, so the order of ``seq`` is commit order (SQLite has one writer at a
time): whoever has seen ``seq`` N has seen every row before it. Created the first time a
node ships, with the rows already in the ledger queued in that same transaction, so no
row can slip between the backfill and the trigger.

``meta`` keeps the high-water mark per central database (``fleet_acked:<ledger id>``):
every row up to it is in that database. Pointing a node at a new database therefore ships
its whole ledger again, and a resend is harmless (the central key is (node, id)). A row
the database refused is kept in ``fleet_refused`` with the reason and retried, so one bad
row neither blocks the rows behind it nor disappears. ``fleet_instance`` (random, made
once) tells two nodes that claim the same node name apart.
"""

from __future__ import annotations

import os
import sqlite3
import time
from dataclasses import dataclass, fields
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from ..accounting.ledger import Entry, Ledger

_OUTBOX = (
    "CREATE TABLE IF NOT EXISTS fleet_outbox (seq INTEGER PRIMARY KEY AUTOINCREMENT, id TEXT NOT NULL UNIQUE)",
    "CREATE TRIGGER IF NOT EXISTS containers_fleet_outbox AFTER INSERT ON containers BEGIN "
    "INSERT OR IGNORE INTO fleet_outbox (id) VALUES (NEW.id); END",
    "CREATE TABLE IF NOT EXISTS fleet_refused (target TEXT NOT NULL, id TEXT NOT NULL, reason TEXT NOT NULL, "
    "first REAL NOT NULL, last REAL NOT NULL, attempts INTEGER NOT NULL, PRIMARY KEY (target, id))",
)


@dataclass(frozen=True)
class Waiting:
    """Rows committed locally and not yet in the central database (refused ones included)."""

    rows: int
    refused: int
    oldest_recorded: float | None


class Outbox:
    """Every query here reads its rows to the end (fetchall): a statement left open (a bare
    fetchone) keeps SQLite's read snapshot, and the thread would never see new rows.

    The outbox of ``ledger`` towards the central database whose id is ``target``."""

    def __init__(self, ledger: Ledger, target: str) -> None:
        self.ledger, self.target = ledger, target
        self._acked_key = f"fleet_acked:{target}"
        self._cols = ", ".join(f"c.{f.name}" for f in _entry_fields())

    def _db(self) -> sqlite3.Connection:
        return self.ledger.connect()

    def prepare(self) -> str:
        """Create the outbox (queueing the rows already there) once; this ledger's instance id."""
        with self.ledger.transaction("preparing the fleet outbox") as db:
            new = not db.execute("SELECT 1 FROM sqlite_master WHERE name = 'fleet_outbox'").fetchall()
            for stmt in _OUTBOX:
                db.execute(stmt)
            if new:
                db.execute("INSERT OR IGNORE INTO fleet_outbox (id) SELECT id FROM containers "
                           "ORDER BY recorded, id")
            db.execute("INSERT OR IGNORE INTO meta VALUES ('fleet_instance', ?)", (os.urandom(16).hex(),))
            row = db.execute("SELECT value FROM meta WHERE key = 'fleet_instance'").fetchall()[0]
        return str(row[0])

    def acked(self) -> int:
        rows = self._db().execute("SELECT value FROM meta WHERE key = ?", (self._acked_key,)).fetchall()
        return int(rows[0][0]) if rows else 0

    def batch(self, limit: int) -> list[tuple[int, Entry]]:
        """Up to ``limit`` rows after the high-water mark, in commit order, with their seq."""
        from ..accounting.ledger import Entry
        try:
            rows = self._db().execute(
                f"SELECT o.seq, {self._cols} FROM fleet_outbox o JOIN containers c ON c.id = o.id "
                f"WHERE o.seq > ? ORDER BY o.seq LIMIT ?", (self.acked(), limit)).fetchall()
        except sqlite3.Error as e:
            raise self.ledger.error(e, "reading rows to ship") from e
        return [(r[0], Entry(*r[1:])) for r in rows]

    def ack(self, seq: int, refused: dict[str, str] | None = None) -> list[str]:
        """Everything up to ``seq`` is settled: in the database, or kept in fleet_refused with
        its reason (``refused``: id -> reason). One transaction. Returns the ids newly refused."""
        now = time.time()
        fresh = []
        with self.ledger.transaction("marking rows shipped") as db:
            for id_, reason in (refused or {}).items():
                cur = db.execute("INSERT OR IGNORE INTO fleet_refused VALUES (?, ?, ?, ?, ?, 1)",
                                 (self.target, id_, reason, now, now))
                if cur.rowcount == 1:
                    fresh.append(id_)
            db.execute("INSERT OR REPLACE INTO meta VALUES (?, ?)", (self._acked_key, str(seq)))
        return fresh

    def refused(self, limit: int) -> list[tuple[Entry, str, int]]:
        """Rows the database refused before (to retry), oldest refusal first."""
        from ..accounting.ledger import Entry
        rows = self._db().execute(
            f"SELECT {self._cols}, r.reason, r.attempts FROM fleet_refused r JOIN containers c ON c.id = r.id "
            f"WHERE r.target = ? ORDER BY r.first, r.id LIMIT ?", (self.target, limit)).fetchall()
        return [(Entry(*r[:-2]), r[-2], r[-1]) for r in rows]

    def retried(self, accepted: list[str], still: dict[str, str]) -> None:
        """After a retry: drop the accepted rows from fleet_refused, count another attempt for the rest."""
        now = time.time()
        with self.ledger.transaction("updating refused rows") as db:
            for id_ in accepted:
                db.execute("DELETE FROM fleet_refused WHERE target = ? AND id = ?", (self.target, id_))
            for id_, reason in still.items():
                db.execute("UPDATE fleet_refused SET reason = ?, last = ?, attempts = attempts + 1 "
                           "WHERE target = ? AND id = ?", (reason, now, self.target, id_))

    def waiting(self) -> Waiting:
        """How many rows wait (queued after the mark, or refused) and when the oldest was recorded."""
        db = self._db()
        try:
            n, oldest = db.execute("SELECT count(*), min(c.recorded) FROM fleet_outbox o JOIN containers c "
                                   "ON c.id = o.id WHERE o.seq > ?", (self.acked(),)).fetchall()[0]
            m, oldest_r = db.execute("SELECT count(*), min(c.recorded) FROM fleet_refused r JOIN containers c "
                                     "ON c.id = r.id WHERE r.target = ?", (self.target,)).fetchall()[0]
        except sqlite3.Error as e:
            raise self.ledger.error(e, "counting rows to ship") from e
        both = [t for t in (oldest, oldest_r) if t is not None]
        return Waiting(rows=int(n) + int(m), refused=int(m), oldest_recorded=min(both) if both else None)


def _entry_fields() -> list:
    from ..accounting.ledger import Entry
    return list(fields(Entry))
