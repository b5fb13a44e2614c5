"""A ledger opened ahead of a run (accounting/ahead.py: open_ahead, for_commit), as the agent's
spare supervisor does while it waits: real SQLite files, real forks."""

from __future__ import annotations

import os
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

from cgman.accounting import ahead as A
from cgman.accounting import ledger as L

from .conftest import REPO
from .test_billing import entry


@pytest.fixture(autouse=True)
def no_ledger_ahead():
    """Each test starts and ends with no ledger opened ahead in this (pytest's) process."""
    def clear() -> None:
        A.close_ahead()
    clear()
    yield
    clear()


def _rows(path: Path) -> list[str]:
    db = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        return [r[0] for r in db.execute("SELECT id FROM containers ORDER BY id")]
    finally:
        db.close()


def _state(tmp_path: Path) -> Path:
    state = tmp_path / "state"
    state.mkdir(mode=0o711)
    return state


def test_the_commit_uses_the_connection_opened_ahead_once(tmp_path):
    path = L.ledger_path(str(_state(tmp_path)))
    A.open_ahead(path)
    ahead = A._AHEAD[0]
    with A.for_commit(path, 7.0) as led:
        assert led is ahead and led.busy_timeout_s == 7.0
        assert led.connect().execute("PRAGMA busy_timeout").fetchone()[0] == 7000
        led.record(entry(id="c1"))
    assert A._AHEAD == [] and ahead._db is None            # used once, closed with the commit
    assert A.for_commit(path) is not ahead
    assert _rows(Path(path)) == ["c1"]


def test_a_ledger_moved_aside_while_open_gets_no_rows(tmp_path):
    """An operator moves a (corrupt) ledger aside, and cgman starts a new one at the path: the
    row must go there, not into the moved file the early connection still holds."""
    state = _state(tmp_path)
    path = L.ledger_path(str(state))
    A.open_ahead(path)
    ahead = A._AHEAD[0]
    aside = tmp_path / "aside"
    aside.mkdir()
    for suffix in ("", "-wal", "-shm"):
        if os.path.exists(path + suffix):
            os.rename(path + suffix, aside / f"ledger.db{suffix}")
    started = subprocess.run([sys.executable, "-c", "import sys; from cgman.accounting.ledger import Ledger\n"
                              "Ledger(sys.argv[1]).connect()", path], cwd=REPO, timeout=60)   # a new one
    assert started.returncode == 0
    with A.for_commit(path) as led:
        assert led is not ahead
        led.record(entry(id="c2"))
    assert ahead._db is None                             # the stale connection is closed
    assert _rows(Path(path)) == ["c2"] and _rows(aside / "ledger.db") == []


def test_another_path_gets_its_own_ledger(tmp_path):
    path = L.ledger_path(str(_state(tmp_path)))
    other = tmp_path / "other"
    other.mkdir(mode=0o711)
    A.open_ahead(path)
    ahead = A._AHEAD[0]
    with A.for_commit(L.ledger_path(str(other))) as led:
        assert led is not ahead and led.path != path


def test_no_connection_opened_ahead_crosses_a_fork(tmp_path):
    """SQLite's state of an open file must not reach a child (a `run -d` supervisor, forked from
    the one that opened the ledger ahead): its locks are per process, so even a connection the
    child opens anew would trust the parent's. The parent closes it before the fork; the child
    opens its own and commits."""
    path = L.ledger_path(str(_state(tmp_path)))
    code = (
        "import os, sys\n"
        "from cgman.accounting import ahead as A, ledger as L\n"
        "from tests.test_billing import entry\n"
        "path = sys.argv[1]\n"
        "A.open_ahead(path)\n"
        "ahead = A._AHEAD[0]\n"
        "pid = os.fork()\n"
        "if pid == 0:\n"
        "    ok = not A._AHEAD and ahead._db is None\n"
        "    with A.for_commit(path) as led:\n"
        "        led.record(entry(id='child'))\n"
        "    os._exit(0 if ok else 1)\n"
        "_, status = os.waitpid(pid, 0)\n"
        "print(os.waitstatus_to_exitcode(status), ahead._db is None)\n")
    p = subprocess.run([sys.executable, "-c", code, path], capture_output=True, text=True, timeout=60, cwd=REPO)
    assert p.stdout.split() == ["0", "True"], p.stdout + p.stderr
    assert _rows(Path(path)) == ["child"]


def test_an_unopenable_ledger_is_left_for_the_commit_to_report(tmp_path):
    (tmp_path / "a-file").write_text("")
    path = L.ledger_path(str(tmp_path / "a-file"))      # a state dir that is a file
    A.open_ahead(path)
    assert A._AHEAD == []
    with pytest.raises(L.LedgerError, match="state dir"):
        A.for_commit(path).record(entry(id="c3"))


def test_opening_ahead_never_waits_for_a_busy_ledger(tmp_path):
    """The spare opens the ledger before it takes its request: a ledger another process holds
    (here a new one whose schema it cannot create yet) must not hold up every served run."""
    import time
    path = L.ledger_path(str(_state(tmp_path)))
    holder = sqlite3.connect(path, isolation_level=None)
    try:
        holder.execute("BEGIN EXCLUSIVE")
        t = time.monotonic()
        A.open_ahead(path)
        assert time.monotonic() - t < 1.0 and A._AHEAD == []     # left for the commit
    finally:
        holder.close()


def test_a_connection_leaves_no_descriptor_behind(tmp_path):
    path = L.ledger_path(str(_state(tmp_path)))
    before = len(os.listdir("/proc/self/fd"))
    for _ in range(20):
        with L.Ledger(path) as led:
            led.connect()
    assert len(os.listdir("/proc/self/fd")) == before


def test_a_ledger_that_cannot_be_made_private_is_a_ledger_error(tmp_path):
    """An old world-readable ledger on a file that refuses chmod (immutable here; read-only
    filesystems alike): a LedgerError, which commit() keeps pending for gc, not a crash."""
    path = L.ledger_path(str(_state(tmp_path)))
    with L.Ledger(path) as led:
        led.connect()
    os.chmod(path, 0o644)
    subprocess.run(["chattr", "+i", path], check=True, timeout=60)
    try:
        with pytest.raises(L.LedgerError, match="making it private"):
            L.Ledger(path).connect()
        A.open_ahead(path)
        assert A._AHEAD == []
    finally:
        subprocess.run(["chattr", "-i", path], check=True)
