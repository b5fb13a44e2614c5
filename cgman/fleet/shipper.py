"""The agent's shipping thread: the node's ledger rows, in commit order, to PostgreSQL.

Each round reads up to BATCH rows after the high-water mark (outbox.py), inserts them in
one transaction (``ON CONFLICT (node, id) DO NOTHING``), and only then moves the mark.
A crash between the two sends the batch again, which stores nothing twice. Launches
never wait for this thread: containers commit to SQLite; the thread follows.

- The database is down or unreachable: nothing moves, the rows wait, the thread retries
  with backoff (1 s doubling to BACKOFF_MAX_S), and the health metrics say how many rows
  wait and for how long.
- The database refuses a batch (a constraint, a value out of range): each row is sent
  alone to find the ones it refuses; the others are stored, the refused ones are logged
  (container, reason) and kept in the outbox, retried every REFUSED_RETRY_S.
"""

from __future__ import annotations

import logging
import os
import signal
import threading
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Iterator

from .db import FleetError, FleetUnreachable, RowRefused, check, connect, describe, insert, register

if TYPE_CHECKING:
    from ..accounting.ledger import Entry
    from .outbox import Outbox

log = logging.getLogger("cgman.fleet")
BATCH = 1000
BACKOFF_MAX_S = 15.0
REFUSED_RETRY_S = 5.0


@dataclass
class ShipHealth:
    """Served with the agent's metrics as cgman_agent_ledger_*."""

    up: int = 0
    shipped: int = 0
    resent: int = 0
    errors: int = 0
    waiting: int = 0
    refused: int = 0
    oldest_waiting_age_s: float = 0.0
    last_shipped: float = 0.0

    def metrics(self) -> Iterator[tuple[str, str, str, float]]:
        yield ("cgman_agent_ledger_up", "gauge", "1 if the last attempt to reach the central ledger "
               "(--ledger-url) succeeded.", self.up)
        yield ("cgman_agent_ledger_rows_shipped", "counter", "Ledger rows the central ledger stored.",
               self.shipped)
        yield ("cgman_agent_ledger_rows_resent", "counter", "Rows sent again that the central ledger already "
               "had (a batch in flight when the agent or the database stopped).", self.resent)
        yield ("cgman_agent_ledger_ship_errors", "counter", "Shipping rounds that failed (unreachable, "
               "refused); the rows stayed in the outbox.", self.errors)
        yield ("cgman_agent_ledger_rows_waiting", "gauge", "Rows committed to this node's ledger and not yet "
               "in the central ledger (refused ones included).", self.waiting)
        yield ("cgman_agent_ledger_rows_refused", "gauge", "Rows the central ledger refused (see the log for "
               "why); they stay in the outbox and are retried.", self.refused)
        yield ("cgman_agent_ledger_oldest_waiting_age_seconds", "gauge", "How long the oldest waiting row has "
               "been in this node's ledger (0: none waits).", self.oldest_waiting_age_s)
        yield ("cgman_agent_ledger_last_shipped_timestamp_seconds", "gauge", "When rows were last stored "
               "centrally (0: not yet).", self.last_shipped)


class Shipper:
    """Ship the ledger in ``state_dir`` to ``url`` as ``node``. ``stop_at`` is the crash tests'
    fault hook (given by tests/agent_crashpoint.py; the CLI gives none): ship-mid:N stops inside
    the N-th batch's transaction, ship-acked:N after its commit and before the mark moves."""

    def __init__(self, url: str, node: str, state_dir: str, *, interval_s: float = 1.0,
                 batch: int = BATCH, stop_at: str = "") -> None:
        self.url, self.node, self.state_dir = url, node, state_dir
        self.interval_s, self.batch_rows, self.stop_at = interval_s, batch, stop_at
        self.health = ShipHealth()
        self._conn: Any = None
        self._outbox: Outbox | None = None
        self._instance: str | None = None
        self._stop = threading.Event()
        self._batches = 0
        self._next_refused = 0.0
        self._ledger: Any = None

    # -- connection ----------------------------------------------------------

    def _local(self) -> Any:
        if self._ledger is None:
            from ..accounting.ledger import Ledger, ledger_path
            self._ledger = Ledger(ledger_path(self.state_dir))
        return self._ledger

    def open(self) -> None:
        """Connect, check the schema, claim the node name. FleetError if a person must act;
        FleetUnreachable if the database is just not there now (the caller carries on)."""
        if self._conn is not None:
            return
        from .outbox import Outbox
        if self._instance is None:
            self._instance = Outbox(self._local(), "").prepare()
        conn = connect(self.url, f"agent {self.node}")
        try:
            central = check(conn, self.url)
            register(conn, self.url, self.node, self._instance)
        except BaseException:
            conn.close()
            raise
        self._conn = conn
        if self._outbox is None or self._outbox.target != central.ledger_id:
            self._outbox = Outbox(self._local(), central.ledger_id)
        self.health.up = 1
        log.info("shipping the ledger to %s as node %s", describe(self.url), self.node)

    def _drop(self) -> None:
        if self._conn is not None:
            try:
                self._conn.close()
            except Exception:       # a dead socket: closing it is best effort
                pass
            self._conn = None
        self.health.up = 0

    # -- one round -----------------------------------------------------------

    def _stop_here(self, point: str) -> None:
        log.warning("stopping at %s (the crash tests' fault hook)", point)
        for h in logging.getLogger().handlers:
            h.flush()
        os.kill(os.getpid(), signal.SIGSTOP)

    def _hook(self, point: str) -> bool:
        kind, _, n = self.stop_at.partition(":")
        return kind == point and n.isdigit() and int(n) == self._batches

    def _send(self, rows: list[Entry], pause: Any = None) -> tuple[int, dict[str, str]]:
        """Store ``rows``; (how many were new, {id: reason} of those refused)."""
        from ..accounting.billing import BadLedgerRow, check_entry
        bad: dict[str, str] = {}
        good = []
        for e in rows:
            try:
                check_entry(e, "local ledger")
                good.append(e)
            except BadLedgerRow as err:
                bad[e.id] = str(err)
        try:
            return insert(self._conn, self.url, self.node, good, pause), bad
        except RowRefused:
            pass
        new = 0
        for e in good:                     # find the rows the database refuses
            try:
                new += insert(self._conn, self.url, self.node, [e])
            except RowRefused as err:
                bad[e.id] = str(err)
        return new, bad

    def ship_once(self) -> bool:
        """One round: a batch after the mark, then due retries. True if more rows are ready."""
        self.open()
        assert self._outbox is not None
        rows = self._outbox.batch(self.batch_rows)
        if rows:
            self._batches += 1
            pause = (lambda _n: self._stop_here("ship-mid")) if self._hook("ship-mid") else None
            new, bad = self._send([e for _, e in rows], pause)
            if self._hook("ship-acked"):
                self._stop_here("ship-acked")
            for id_ in self._outbox.ack(rows[-1][0], bad):
                log.error("the central ledger refused container %s: %s; it stays in this node's ledger "
                          "and is retried every %gs", id_, bad[id_], REFUSED_RETRY_S)
            self._count(new, len(rows) - len(bad) - new)
        if time.monotonic() >= self._next_refused:
            self._retry_refused()
        return len(rows) == self.batch_rows

    def _count(self, new: int, resent: int) -> None:
        self.health.shipped += new
        self.health.resent += resent
        if new:
            self.health.last_shipped = time.time()

    def _retry_refused(self) -> None:
        assert self._outbox is not None
        self._next_refused = time.monotonic() + REFUSED_RETRY_S
        again = self._outbox.refused(self.batch_rows)
        if not again:
            return
        accepted, still = [], {}
        for e, _reason, attempts in again:
            new, bad = self._send([e])
            if e.id in bad:
                still[e.id] = bad[e.id]
                if attempts % 60 == 0:
                    log.error("container %s is still refused after %d attempts: %s", e.id, attempts, bad[e.id])
            else:
                accepted.append(e.id)
                self._count(new, 1 - new)
                log.info("the central ledger accepted container %s on attempt %d", e.id, attempts + 1)
        self._outbox.retried(accepted, still)

    def _measure(self) -> None:
        if self._outbox is None:
            return
        w = self._outbox.waiting()
        self.health.waiting, self.health.refused = w.rows, w.refused
        self.health.oldest_waiting_age_s = max(0.0, time.time() - w.oldest_recorded) if w.oldest_recorded else 0.0

    # -- loop ----------------------------------------------------------------

    def run(self) -> None:
        """Ship until stop(); never raises (the agent must outlive any database trouble)."""
        backoff = 1.0
        while not self._stop.is_set():
            more = False
            try:
                more = self.ship_once()
                backoff = 1.0
                wait = 0.0 if more else self.interval_s
            except FleetUnreachable as e:
                self._fail(f"{e} (rows wait in the local ledger; retrying in {backoff:g}s)")
                wait, backoff = backoff, min(BACKOFF_MAX_S, backoff * 2)
            except FleetError as e:
                self._fail(f"{e} (retrying in {BACKOFF_MAX_S:g}s)")
                wait = BACKOFF_MAX_S
            except Exception as e:         # the local ledger locked, a bug: log, keep the agent alive
                self._fail(f"shipping failed: {e} (retrying in {BACKOFF_MAX_S:g}s)")
                wait = BACKOFF_MAX_S
            try:
                self._measure()
            except Exception as e:
                log.debug("cannot count waiting rows: %s", e)
            if wait:
                self._stop.wait(wait)

    def _fail(self, msg: str) -> None:
        if self.health.up or not self.health.errors:
            log.error("%s", msg)
        else:
            log.debug("%s", msg)
        self.health.errors += 1
        self._drop()

    def stop(self) -> None:
        self._stop.set()

    def close(self) -> None:
        self._drop()
        if self._ledger is not None:
            self._ledger.close()
