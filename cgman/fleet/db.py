"""The central ledger in PostgreSQL (psycopg 3): connect, migrate, register a node, insert
rows, read rows for a bill. The only module that imports psycopg.

Errors become ``FleetError`` with one line that names the database (never the password)
and says what to do. ``FleetUnreachable`` marks the ones worth waiting out (the server
is down or restarting, the network is out); the rest (a wrong password, a missing
database or schema, a refused privilege) need a person.
"""

from __future__ import annotations

import socket
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Iterator, NamedTuple, Sequence

from ..errors import CgmanError
from . import schema

if TYPE_CHECKING:
    import psycopg

    from ..accounting.ledger import Entry

CONNECT_TIMEOUT_S = 5
STATEMENT_TIMEOUT_MS = 30000
INIT_HINT = "run `cgman fleet init --ledger-url ADMIN_URL` once as the database owner (docs/fleet.md)"
# libpq's texts for a server that is not there (yet): wait and retry, never give up on rows.
_TRANSIENT = ("connection refused", "no such file or directory", "timeout expired", "could not receive",
              "server closed the connection", "the database system is starting up",
              "the database system is shutting down", "terminating connection", "connection timed out",
              "no route to host", "network is unreachable", "consuming input failed", "server conn crashed",
              "the database system is in recovery mode", "connection is lost", "connection is closed")


class FleetError(CgmanError):
    """The central ledger refused or failed an operation."""


class FleetUnreachable(FleetError):
    """The database cannot be reached now: the operation is worth retrying later."""


class DuplicateNode(FleetError):
    """Another node already registered this node name."""


class RowRefused(FleetError):
    """The database refused one row (a constraint, a type): the row stays to be retried."""


def describe(url: str) -> str:
    """The database in words for messages: user@host/dbname, without the password."""
    try:
        from psycopg.conninfo import conninfo_to_dict
        d = conninfo_to_dict(url)
    except Exception:
        return "the --ledger-url database (the URL does not parse)"
    host = str(d.get("host") or "localhost")
    return f"postgresql {d.get('user') or '(default user)'}@{host}/{d.get('dbname') or '(default db)'}"


def _translate(e: Exception, url: str, doing: str) -> FleetError:
    import psycopg
    where = describe(url)
    msg = " ".join(str(e).split())
    low = msg.lower()
    if isinstance(e, psycopg.ProgrammingError) and getattr(e, "sqlstate", None) is None:
        return FleetError(f"--ledger-url: {msg[:200]}: expected postgresql://USER@HOST/DBNAME "
                          f"(or ?host=/socket/dir for a Unix socket); the password belongs in ~/.pgpass")
    if "password authentication failed" in low or "no password supplied" in low \
            or "authentication failed" in low:
        return FleetError(f"{where}: authentication failed while {doing}: check the user and its password "
                          f"(PGPASSFILE/~/.pgpass, or the URL in CGMAN_LEDGER_URL)")
    if "does not exist" in low and ("database" in low or "role" in low):
        return FleetError(f"{where}: {msg[:200]} while {doing}: fix the URL or create it (docs/fleet.md)")
    if "could not translate host name" in low or "name or service not known" in low:
        return FleetError(f"{where}: unknown host while {doing}: fix the host in --ledger-url")
    sqlstate = getattr(e, "sqlstate", None) or ""
    if sqlstate == "42P01" or sqlstate == "3F000":
        return FleetError(f"{where}: no cgman schema while {doing}: {INIT_HINT}")
    if sqlstate == "42501":
        return FleetError(f"{where}: permission denied while {doing} ({msg[:160]}): grant the login role "
                          f"{schema.AGENT_ROLE} (agents) or {schema.BILLING_ROLE} (billing); docs/fleet.md")
    if isinstance(e, psycopg.OperationalError) and (any(t in low for t in _TRANSIENT) or not sqlstate
                                                     or sqlstate.startswith(("08", "57"))):
        return FleetUnreachable(f"{where}: unreachable while {doing}: {msg[:200]}")
    return FleetError(f"{where}: {msg[:300]} while {doing}")


def connect(url: str, purpose: str) -> "psycopg.Connection[Any]":
    """A connection (autocommit off) or FleetError. ``purpose`` names it in pg_stat_activity."""
    try:
        import psycopg
    except ImportError:
        raise FleetError("--ledger-url needs psycopg: pip install 'cgman[postgres]'") from None
    try:
        conn = psycopg.connect(url, connect_timeout=CONNECT_TIMEOUT_S, application_name=f"cgman {purpose}",
                               options=f"-c statement_timeout={STATEMENT_TIMEOUT_MS}")
    except psycopg.Error as e:
        raise _translate(e, url, "connecting") from None
    return conn


@dataclass(frozen=True)
class Central:
    """What a node learns from the database at start: its id (the high-water mark's key)."""

    ledger_id: str
    version: int


def check(conn: "psycopg.Connection[Any]", url: str) -> Central:
    """The schema's version and the ledger's id; FleetError if this cgman cannot use it."""
    import psycopg
    try:
        with conn.transaction():
            row = conn.execute("SELECT max(version) FROM cgman.schema_version").fetchone()
            lid = conn.execute("SELECT value FROM cgman.meta WHERE key = 'ledger_id'").fetchone()
    except psycopg.Error as e:
        raise _translate(e, url, "reading the schema version") from None
    version = int(row[0]) if row and row[0] is not None else 0
    if version > schema.VERSION:
        raise FleetError(f"{describe(url)} has cgman schema version {version}, this cgman knows up to "
                         f"{schema.VERSION}: upgrade cgman on this machine")
    if version < schema.VERSION or lid is None:
        raise FleetError(f"{describe(url)} has cgman schema version {version}, this cgman needs "
                         f"{schema.VERSION}: {INIT_HINT}")
    return Central(ledger_id=str(lid[0]), version=version)


def init(url: str, cgman_version: str) -> list[int]:
    """Create or migrate the schema and (re)grant the roles; the versions applied."""
    import psycopg
    conn = connect(url, "fleet init")
    applied: list[int] = []
    try:
        with conn.transaction():
            conn.execute("SELECT pg_advisory_xact_lock(hashtext('cgman schema'))")
            conn.execute(schema.CREATE_VERSION_TABLE)
            row = conn.execute("SELECT coalesce(max(version), 0) FROM cgman.schema_version").fetchone()
            have = int(row[0]) if row else 0
            if have > schema.VERSION:
                raise FleetError(f"{describe(url)} has cgman schema version {have}, this cgman knows up to "
                                 f"{schema.VERSION}: use a newer cgman for `fleet init`")
            for v in range(have, schema.VERSION):
                conn.execute(schema.MIGRATIONS[v])
                conn.execute("INSERT INTO cgman.schema_version (version, cgman) VALUES (%s, %s)",
                             (v + 1, cgman_version))
                applied.append(v + 1)
            conn.execute(schema.role_sql())
            conn.execute(schema.GRANTS)
    except psycopg.Error as e:
        raise _translate(e, url, "creating the cgman schema") from None
    finally:
        conn.close()
    return applied


def register(conn: "psycopg.Connection[Any]", url: str, node: str, instance: str) -> None:
    """Claim ``node`` for this node's local ledger (``instance``); DuplicateNode if another has it."""
    import psycopg
    try:
        with conn.transaction():
            conn.execute("INSERT INTO cgman.nodes (node, instance, hostname) VALUES (%s, %s, %s) "
                         "ON CONFLICT (node) DO NOTHING", (node, instance, socket.gethostname()))
            row = conn.execute("SELECT instance, hostname, registered FROM cgman.nodes WHERE node = %s",
                               (node,)).fetchone()
    except psycopg.errors.CheckViolation:
        raise FleetError(f"--node {node!r}: a node name is 1-253 of A-Z a-z 0-9 _ . - "
                         f"(starting with a letter or digit)") from None
    except psycopg.Error as e:
        raise _translate(e, url, f"registering node {node}") from None
    if row is None or row[0] != instance:
        other = f"host {row[1]}, registered {row[2]:%Y-%m-%d %H:%M}" if row else "unknown"
        raise DuplicateNode(f"node name {node!r} is already taken in {describe(url)} by another node "
                            f"({other}): give this agent its own --node NAME; if it is this machine "
                            f"with a new state dir, docs/fleet.md says how to hand the name over")


_INSERT_COLS: tuple[tuple[str, str], ...] = (
    ("id", "text"), ("name", "text"), ("tenant", "text"), ("grp", "text"), ("cgroup_root", "text"),
    ("started", "float8"), ("ended", "float8"), ("exit_code", "int8"), ("exit_reason", "text"),
    ("cpu_usage_usec", "int8"), ("cpu_user_usec", "int8"), ("cpu_system_usec", "int8"),
    ("memory_byte_seconds", "float8"), ("memory_peak_bytes", "int8"), ("io_read_bytes", "int8"),
    ("io_write_bytes", "int8"), ("cpu_limit_cpus", "float8"), ("memory_limit_bytes", "int8"),
    ("host_cpus", "float8"), ("host_memory_bytes", "int8"), ("recorded", "float8"))
_INSERT = (f"INSERT INTO cgman.ledger (node, {', '.join(c for c, _ in _INSERT_COLS)}) "
           f"SELECT %s, * FROM unnest({', '.join(f'%s::{t}[]' for _, t in _INSERT_COLS)}) "
           f"ON CONFLICT DO NOTHING")        # naming (node, id) would need SELECT on them: agents only insert


def _column(rows: Sequence[Entry], col: str, kind: str) -> list[Any]:
    vals = [getattr(r, col) for r in rows]
    if kind == "float8":                   # SQLite may hand back 3 for 3.0: one array type
        return [None if v is None else float(v) for v in vals]
    return vals


def insert(conn: "psycopg.Connection[Any]", url: str, node: str, rows: Sequence[Entry],
           pause: Any = None) -> int:
    """Insert ``rows`` for ``node`` in one transaction; how many were new (the rest were
    there already: a resend). RowRefused if the database refuses one of them (then none
    of them is stored). ``pause(n_sent)`` is the crash tests' hook between two statements."""
    import psycopg
    halves = [rows[:len(rows) // 2], rows[len(rows) // 2:]] if pause is not None else [rows]
    new = 0
    try:
        with conn.transaction():
            for i, part in enumerate(halves):
                if i and pause is not None:
                    pause(len(halves[0]))
                if part:
                    cur = conn.execute(_INSERT, [node, *(_column(part, c, k) for c, k in _INSERT_COLS)])
                    new += max(cur.rowcount, 0)
    except (psycopg.errors.IntegrityError, psycopg.errors.DataError) as e:
        raise RowRefused(" ".join(str(e).split())[:300]) from None
    except psycopg.Error as e:
        raise _translate(e, url, f"shipping {len(rows)} rows") from None
    return new


def entries(conn: "psycopg.Connection[Any]", url: str, since: float | None,
            until: float | None) -> Iterator[Entry]:
    """Rows whose container ended in [since, until) (fleet.FleetEntry, with their node),
    streamed with a server-side cursor so a big period does not sit in memory twice."""
    import psycopg

    from . import FleetEntry
    cols = ", ".join(c for c, _ in _INSERT_COLS)
    cond, args = [], []
    if since is not None:
        cond.append("ended >= %s")
        args.append(since)
    if until is not None:
        cond.append("ended < %s")
        args.append(until)
    where = f" WHERE {' AND '.join(cond)}" if cond else ""
    try:
        with conn.transaction(), conn.cursor(name="cgman_bill", binary=True) as cur:
            cur.itersize = 20000
            cur.execute(f"SELECT {cols}, node FROM cgman.ledger{where}", args)
            for r in cur:
                yield FleetEntry(*r)
    except psycopg.Error as e:
        raise _translate(e, url, "reading the fleet ledger") from None


class NodeSummary(NamedTuple):
    node: str
    hostname: str
    registered: str
    rows: int
    last_ended: str | None


def node_summary(url: str) -> list[NodeSummary]:
    """Per registered node: its host, when it registered, rows stored, the newest end time."""
    import psycopg
    conn = connect(url, "fleet nodes")
    try:
        check(conn, url)
        with conn.transaction():
            rows = conn.execute(
                "SELECT n.node, n.hostname, n.registered, count(l.id), max(l.ended) FROM cgman.nodes n "
                "LEFT JOIN cgman.ledger l ON l.node = n.node GROUP BY n.node ORDER BY n.node").fetchall()
    except psycopg.Error as e:
        raise _translate(e, url, "listing nodes") from None
    finally:
        conn.close()
    from datetime import datetime
    return [NodeSummary(r[0], r[1], r[2].isoformat(timespec="seconds"), int(r[3]),
                        datetime.fromtimestamp(r[4]).astimezone().isoformat(timespec="seconds") if r[4] else None)
            for r in rows]
