"""The usage ledger: one row per finished container, in SQLite (WAL) in the state dir.

Written exactly once per container id (``INSERT OR IGNORE`` on the primary key) by
whoever waits on the container, after its last process exited and before its cgroup is
removed. A trigger keeps per-tenant totals in the same transaction, so the exporter's
tenant counters cost one small query however long the ledger grows, and they only
ever grow: rows are never updated or deleted by cgman.

Errors are one line naming the file and what to do; a caller that cannot write keeps
the usage in the container's run record (``ledger_pending``) and ``cgman gc`` writes it
later, so a locked or broken ledger loses nothing.
"""

from __future__ import annotations

import os
import sqlite3
import stat
import time
from contextlib import contextmanager
from dataclasses import asdict, dataclass, fields

from ..errors import CgmanError

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any, Iterator

LEDGER_FILE = "ledger.db"
SCHEMA_VERSION = 1
BUSY_TIMEOUT_S = 10.0        # how long to wait for a lock, unless CGMAN_LEDGER_TIMEOUT says (tests shorten it)

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS containers (
    id TEXT PRIMARY KEY,
    name TEXT NOT NULL,
    tenant TEXT NOT NULL,
    grp TEXT NOT NULL,
    cgroup_root TEXT NOT NULL,
    started REAL NOT NULL,
    ended REAL NOT NULL,
    exit_code INTEGER,
    exit_reason TEXT,
    cpu_usage_usec INTEGER NOT NULL,
    cpu_user_usec INTEGER,
    cpu_system_usec INTEGER,
    memory_byte_seconds REAL NOT NULL,
    memory_peak_bytes INTEGER,
    io_read_bytes INTEGER NOT NULL,
    io_write_bytes INTEGER NOT NULL,
    cpu_limit_cpus REAL,
    memory_limit_bytes INTEGER,
    host_cpus REAL NOT NULL,
    host_memory_bytes INTEGER NOT NULL,
    recorded REAL NOT NULL
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS containers_ended ON containers (ended);
CREATE TABLE IF NOT EXISTS tenant_totals (
    tenant TEXT PRIMARY KEY,
    containers INTEGER NOT NULL,
    cpu_usage_usec INTEGER NOT NULL,
    memory_byte_seconds REAL NOT NULL,
    io_read_bytes INTEGER NOT NULL,
    io_write_bytes INTEGER NOT NULL
);
CREATE TRIGGER IF NOT EXISTS containers_tenant_totals AFTER INSERT ON containers BEGIN
    INSERT OR IGNORE INTO tenant_totals VALUES (NEW.tenant, 0, 0, 0.0, 0, 0);
    UPDATE tenant_totals SET
        containers = containers + 1,
        cpu_usage_usec = cpu_usage_usec + NEW.cpu_usage_usec,
        memory_byte_seconds = memory_byte_seconds + NEW.memory_byte_seconds,
        io_read_bytes = io_read_bytes + NEW.io_read_bytes,
        io_write_bytes = io_write_bytes + NEW.io_write_bytes
    WHERE tenant = NEW.tenant;
END;
"""
# What _SCHEMA creates: "CREATE <kind> IF NOT EXISTS <name> ...".
_SCHEMA_NAMES = frozenset(ln.split()[5] for ln in _SCHEMA.splitlines() if ln.startswith("CREATE "))


def _has_schema(db: sqlite3.Connection) -> bool:
    """Whether every table, index and trigger of _SCHEMA is there: then a connection only reads
    (the schema's write transaction costs a commit, fsyncs included, on every run)."""
    names = {r[0] for r in db.execute("SELECT name FROM sqlite_master")}
    return _SCHEMA_NAMES <= names


def _not_regular(mode: int) -> str:
    return "it is a symlink" if stat.S_ISLNK(mode) else "not a regular file"


_URI_SAFE = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_.-~/")


def _uri_quote(path: str) -> str:
    """``urllib.parse.quote(path)`` (tests/test_ledger.py compares them), without importing
    urllib (~1 ms of every `cgman run`)."""
    return "".join(c if c in _URI_SAFE else "".join(f"%{b:02X}" for b in c.encode("utf-8", "surrogateescape"))
                   for c in path)


class LedgerError(CgmanError):
    """The ledger cannot be opened, read or written (locked, corrupt, not writable)."""


class LedgerNotReady(LedgerError):
    """A reader found the ledger file before its first writer created the schema: it is empty."""


@dataclass(frozen=True)
class Entry:
    """One finished container's usage: the ledger row (SPEC §6).

    ``cpu_limit_cpus`` / ``memory_limit_bytes`` are the effective allocation (the
    tightest limit on the container's path, None: unlimited); ``host_*`` is the host's
    capacity when it ran, which allocation billing uses for an unlimited container."""

    id: str
    name: str
    tenant: str
    grp: str
    cgroup_root: str
    started: float
    ended: float
    exit_code: int | None
    exit_reason: str | None
    cpu_usage_usec: int
    cpu_user_usec: int | None
    cpu_system_usec: int | None
    memory_byte_seconds: float
    memory_peak_bytes: int | None
    io_read_bytes: int
    io_write_bytes: int
    cpu_limit_cpus: float | None
    memory_limit_bytes: int | None
    host_cpus: float
    host_memory_bytes: int
    recorded: float = 0.0

    @property
    def duration_s(self) -> float:
        return max(0.0, self.ended - self.started)


@dataclass(frozen=True)
class TenantTotals:
    """Per-tenant sums over every recorded container (the ledger's tenant_totals table)."""

    tenant: str
    containers: int
    cpu_usage_usec: int
    memory_byte_seconds: float
    io_read_bytes: int
    io_write_bytes: int


_COLUMNS = [f.name for f in fields(Entry)]


def ledger_path(state: str) -> str:
    return os.path.join(state, LEDGER_FILE)


class Ledger:
    """The ledger at ``path``. Opens lazily; one connection per instance (not thread-shared).
    ``busy_timeout_s``: how long to wait for another process's lock (None: BUSY_TIMEOUT_S)."""

    def __init__(self, path: str, *, readonly: bool = False, busy_timeout_s: float | None = None) -> None:
        self.path = path
        self.readonly = readonly
        self.busy_timeout_s = BUSY_TIMEOUT_S if busy_timeout_s is None else busy_timeout_s
        self._db: sqlite3.Connection | None = None
        self._file: tuple[int, int] | None = None     # (st_dev, st_ino) of the file it opened

    # ------------------------------------------------------------------ connection
    @contextmanager
    def transaction(self, doing: str) -> Iterator[sqlite3.Connection]:
        """BEGIN IMMEDIATE ... COMMIT, rolled back on any error; a SQLite error becomes the
        LedgerError that says what to do (``doing``: what was being done, for that line)."""
        db = self.connect()
        try:
            db.execute("BEGIN IMMEDIATE")
            try:
                yield db
                db.execute("COMMIT")
            except BaseException:
                db.execute("ROLLBACK")
                raise
        except sqlite3.Error as e:
            raise self.error(e, doing) from e

    def error(self, e: sqlite3.Error, doing: str) -> LedgerError:
        """A SQLite error while ``doing`` something, as one line with what to do."""
        msg = str(e)
        if "locked" in msg or "busy" in msg:
            return LedgerError(f"ledger {self.path} is locked: another process held it for more than "
                               f"{self.busy_timeout_s:g}s while {doing}; find it with `fuser {self.path}` "
                               f"(usage not yet written stays in the container records; `cgman gc` "
                               f"writes it later)")
        if "not a database" in msg or "malformed" in msg or "corrupt" in msg:
            return LedgerError(f"ledger {self.path} is corrupt ({msg}) while {doing}: move it aside "
                               f"and check it with `sqlite3 FILE 'PRAGMA integrity_check'`; cgman "
                               f"starts a new ledger, and usage not yet written waits in the container "
                               f"records for `cgman gc`")
        if "unable to open" in msg or "readonly" in msg or "read-only" in msg:
            return LedgerError(f"ledger {self.path}: {msg} while {doing}: check that the state dir "
                               f"exists and is writable (--state-dir, CGMAN_STATE_DIR)")
        return LedgerError(f"ledger {self.path}: {msg} while {doing}")

    def connect(self) -> sqlite3.Connection:
        if self._db is not None:
            return self._db
        self._prepare()
        # A file: URI with the path percent-quoted: a '?' or '#' in the state dir is part of
        # the name, not the start of URI parameters (mode=ro must not be overridable).
        uri = f"file:{_uri_quote(os.path.abspath(self.path))}?mode={'ro' if self.readonly else 'rwc'}"
        try:
            db = sqlite3.connect(uri, uri=True, timeout=self.busy_timeout_s, isolation_level=None,
                                 check_same_thread=False)
            try:
                if not self.readonly:
                    mode = db.execute("PRAGMA journal_mode=WAL").fetchone()[0]
                    if mode.lower() != "wal":
                        raise LedgerError(f"ledger {self.path}: cannot switch to WAL mode (got {mode}); "
                                          f"is the state dir on a filesystem without shared memory?")
                    # Every commit reaches the disk: a bill must survive a power cut.
                    db.execute("PRAGMA synchronous=FULL")
                    if not _has_schema(db):
                        # One transaction: a reader sees no schema or all of it, never half.
                        db.executescript(f"BEGIN IMMEDIATE;{_SCHEMA}INSERT OR IGNORE INTO meta VALUES "
                                         f"('schema_version', '{SCHEMA_VERSION}');COMMIT;")
                elif not db.execute("SELECT 1 FROM sqlite_master WHERE name='meta'").fetchone():
                    db.close()
                    raise LedgerNotReady(f"ledger {self.path} is being created")
                version = db.execute("SELECT value FROM meta WHERE key='schema_version'").fetchone()
            except BaseException:
                db.close()
                raise
        except sqlite3.Error as e:
            raise self.error(e, "opening it") from e
        if version is None or str(version[0]) != str(SCHEMA_VERSION):
            db.close()
            raise LedgerError(f"ledger {self.path} has schema version {version and version[0]}, "
                              f"this cgman reads version {SCHEMA_VERSION}")
        self._db = db
        return db

    def _prepare(self) -> None:
        """Check the state dir (safedir.py) and the ledger's files before SQLite opens them by
        path: no link among them, and the ledger 0600 (its -wal and -shm take its mode), so
        neither another user nor a container reads the tenants' rows."""
        from ..state.safedir import SafeDir, UnsafeDir
        d = SafeDir(os.path.dirname(os.path.abspath(self.path)), "state dir",
                    "--state-dir (CGMAN_STATE_DIR)", mode=0o711)
        name = os.path.basename(self.path)
        try:
            dfd = d.fd(create=not self.readonly)
            for suffix in ("-wal", "-shm", "-journal"):
                try:
                    mode = os.stat(name + suffix, dir_fd=dfd, follow_symlinks=False).st_mode
                    if not stat.S_ISREG(mode):
                        raise UnsafeDir(f"refusing {self.path}{suffix}: {_not_regular(mode)}; remove it")
                except FileNotFoundError:
                    pass
            fd = _open_path(d, dfd, name, create=not self.readonly)
        except FileNotFoundError:
            raise LedgerError(f"no ledger at {self.path}: no container has finished under this "
                              f"state dir yet (--state-dir, CGMAN_STATE_DIR)") from None
        except CgmanError as e:         # an unsafe state dir, or one that cannot be made
            raise LedgerError(str(e)) from None
        except OSError as e:
            raise LedgerError(f"ledger {self.path}: {e.strerror}; check that the state dir is writable "
                              f"(--state-dir, CGMAN_STATE_DIR)") from None
        finally:
            d.close()                # the ledger's own O_PATH fd is all that is needed from here
        try:
            st = os.fstat(fd)
            self._file = (st.st_dev, st.st_ino)
            if not stat.S_ISREG(st.st_mode):
                raise LedgerError(f"refusing {self.path}: {_not_regular(st.st_mode)}; remove it")
            if st.st_mode & 0o077 and st.st_uid == os.geteuid():
                os.chmod(f"/proc/self/fd/{fd}", 0o600)      # a ledger of an older cgman was 0644
        except OSError as e:         # a read-only or immutable file: said as a ledger error
            raise LedgerError(f"ledger {self.path}: {e.strerror} while making it private (0600); "
                              f"check the state dir's filesystem (--state-dir, CGMAN_STATE_DIR)") from None
        finally:
            os.close(fd)

    def close(self) -> None:
        if self._db is not None:
            self._db.close()
            self._db = None

    def is_still_the_file(self) -> bool:
        """Whether it is open and the file at its path is still the one it opened (an operator
        may have moved the ledger aside: the rows must go to the file at the path)."""
        try:
            st = os.stat(self.path, follow_symlinks=False)
        except OSError:
            return False
        return self._db is not None and self._file == (st.st_dev, st.st_ino)

    def set_busy_timeout(self, seconds: float | None) -> bool:
        """Wait up to ``seconds`` (None: BUSY_TIMEOUT_S) for another process's lock from now on;
        False if the open connection would not take it."""
        self.busy_timeout_s = BUSY_TIMEOUT_S if seconds is None else seconds
        try:
            self.connect().execute(f"PRAGMA busy_timeout = {int(self.busy_timeout_s * 1000)}")
        except (sqlite3.Error, LedgerError):
            return False
        return True

    def __enter__(self) -> "Ledger":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ------------------------------------------------------------------ writes
    def record(self, e: Entry) -> bool:
        """Commit ``e``; True if it was new, False if this container id was already recorded."""
        db = self.connect()
        row = asdict(e)
        row["recorded"] = time.time()
        try:
            cur = db.execute(f"INSERT INTO containers ({', '.join(_COLUMNS)}) "
                             f"VALUES ({', '.join('?' * len(_COLUMNS))}) ON CONFLICT(id) DO NOTHING",
                             [row[c] for c in _COLUMNS])
        except sqlite3.Error as err:
            raise self.error(err, f"recording container {e.name} ({e.id})") from err
        return cur.rowcount == 1

    # ------------------------------------------------------------------ reads
    def entries(self, since: float | None = None, until: float | None = None) -> list[Entry]:
        """Rows whose container ended in [since, until), oldest first."""
        db = self.connect()
        q = f"SELECT {', '.join(_COLUMNS)} FROM containers"
        args: list[Any] = []
        cond = []
        if since is not None:
            cond.append("ended >= ?")
            args.append(since)
        if until is not None:
            cond.append("ended < ?")
            args.append(until)
        if cond:
            q += " WHERE " + " AND ".join(cond)
        q += " ORDER BY ended, id"
        try:
            return [Entry(*r) for r in db.execute(q, args)]
        except sqlite3.Error as err:
            raise self.error(err, "reading containers") from err

    def tenant_totals(self) -> dict[str, TenantTotals]:
        """Per-tenant sums over every recorded container (maintained by a trigger)."""
        db = self.connect()
        try:
            return {r[0]: TenantTotals(*r) for r in db.execute(
                "SELECT tenant, containers, cpu_usage_usec, memory_byte_seconds, io_read_bytes, "
                "io_write_bytes FROM tenant_totals")}
        except sqlite3.Error as err:
            raise self.error(err, "reading tenant totals") from err

    def recorded_ids(self, ids: list[str]) -> set[str]:
        """Which of ``ids`` are already in the ledger (one query, however many)."""
        if not ids:
            return set()
        db = self.connect()
        try:
            return {r[0] for r in db.execute(
                "SELECT id FROM containers WHERE id IN (SELECT value FROM json_each(?))",
                (_json_list(ids),))}
        except sqlite3.Error as err:
            raise self.error(err, "looking up containers") from err

    def totals_and_recorded(self, ids: list[str]) -> tuple[dict[str, TenantTotals], set[str]]:
        """``tenant_totals()`` and ``recorded_ids(ids)`` from one snapshot: a container
        committed between two separate queries would be counted by neither or by both."""
        db = self.connect()
        try:
            db.execute("BEGIN")
            try:
                return self.tenant_totals(), self.recorded_ids(ids)
            finally:
                db.execute("COMMIT")
        except sqlite3.Error as err:
            raise self.error(err, "reading tenant totals") from err

    def __iter__(self) -> Iterator[Entry]:
        return iter(self.entries())


def _open_path(d: Any, dfd: int, name: str, create: bool) -> int:
    """An O_PATH fd of the ledger file (created 0600 when missing and ``create``).

    O_PATH, not a read or write open: closing any other fd of a file drops every POSIX lock
    the process holds on it (fcntl(2)), and SQLite's locks are POSIX locks. A process that
    keeps one connection open (the agent's shipper) while another Ledger of the same file
    is prepared (the exporter's) would lose its locks, and another process could then take
    the WAL for unused and delete it under the open connection. Closing an O_PATH fd drops
    no locks, and a file just created with O_EXCL has no connection yet."""
    while True:
        try:
            return os.open(name, os.O_PATH | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=dfd)
        except FileNotFoundError:
            if not create:
                raise
        try:
            return int(d.open(name, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o600))
        except FileExistsError:
            continue            # created by another process meanwhile: open that one


def _json_list(items: list[str]) -> str:
    import json
    return json.dumps(items)
