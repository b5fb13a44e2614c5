"""A throw-away PostgreSQL cluster for the fleet ledger tests (Debian's postgresql package).

initdb and pg_ctl from /usr/lib/postgresql/*/bin run as the unprivileged user `postgres`
on a cluster in a fresh temporary directory. The server listens only on a Unix socket in
that directory (listen_addresses=''), asks every client for a password (scram-sha-256),
and is stopped and its directory removed when the session ends, also on failure.
"""

from __future__ import annotations

import glob
import os
import pwd
import secrets
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from typing import Iterator

import pytest

ADMIN = "cgman_admin"
DB = "cgman"


def _bin(name: str) -> str:
    found = sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"))
    if not found:
        pytest.fail(f"{name} not found: install Debian's postgresql package (scripts/setup.sh does)")
    return found[-1]


@dataclass
class Cluster:
    dir: str
    password: str

    @property
    def data(self) -> str:
        return os.path.join(self.dir, "data")

    @property
    def log(self) -> str:
        return os.path.join(self.dir, "server.log")

    def url(self, user: str = ADMIN, password: str | None = None, db: str = DB) -> str:
        pw = self.password if password is None else password
        return f"postgresql://{user}:{pw}@/{db}?host={self.dir}"

    def _pg_ctl(self, *args: str) -> None:
        p = subprocess.run([_bin("pg_ctl"), "-D", self.data, "-l", self.log, "-w", "-t", "60", *args],
                           user="postgres", capture_output=True, text=True, timeout=90, cwd=self.dir)
        assert p.returncode == 0, f"pg_ctl {args[0]} failed:\n{p.stdout}\n{p.stderr}\n{self.tail()}"

    def start(self) -> None:
        self._pg_ctl("start", "-o", f"-c listen_addresses='' -c unix_socket_directories='{self.dir}' "
                                    f"-c fsync=off -c max_connections=40")

    def stop(self) -> None:
        self._pg_ctl("stop", "-m", "fast")

    def running(self) -> bool:
        return subprocess.run([_bin("pg_ctl"), "-D", self.data, "status"], user="postgres",
                              capture_output=True, cwd=self.dir).returncode == 0

    def tail(self, n: int = 2000) -> str:
        try:
            with open(self.log, errors="replace") as f:
                return f.read()[-n:]
        except OSError:
            return ""

    def sql(self, text: str, user: str = ADMIN, password: str | None = None, db: str = DB) -> list[tuple]:
        import psycopg
        with psycopg.connect(self.url(user, password, db), autocommit=True) as c:
            cur = c.execute(text)
            return cur.fetchall() if cur.description else []


def start_cluster() -> Iterator[Cluster]:
    pw = pwd.getpwnam("postgres")
    d = tempfile.mkdtemp(prefix="cgman-pg-")
    os.chown(d, pw.pw_uid, pw.pw_gid)
    c = Cluster(d, secrets.token_hex(12))
    try:
        pwfile = os.path.join(d, "pw")
        with open(pwfile, "w") as f:
            f.write(c.password)
        os.chown(pwfile, pw.pw_uid, pw.pw_gid)
        p = subprocess.run([_bin("initdb"), "-D", c.data, "-U", ADMIN, f"--pwfile={pwfile}",
                            "--auth-local=scram-sha-256", "--auth-host=reject", "-E", "UTF8", "--no-instructions"],
                           user="postgres", capture_output=True, text=True, timeout=120, cwd=d)
        os.unlink(pwfile)
        assert p.returncode == 0, f"initdb failed:\n{p.stdout}\n{p.stderr}"
        c.start()
        c.sql(f"CREATE DATABASE {DB}", db="postgres")
        yield c
    finally:
        try:
            if os.path.exists(os.path.join(c.data, "postmaster.pid")):
                c.stop()
        finally:
            shutil.rmtree(d, ignore_errors=True)


@pytest.fixture(scope="session")
def postgres() -> Iterator[Cluster]:
    """One throw-away cluster for the session (database `cgman`, superuser cgman_admin)."""
    yield from start_cluster()


def fresh_db(c: Cluster, *, init: bool = True) -> str:
    """A new empty database (and with ``init`` the cgman schema, as `cgman fleet init` makes it)."""
    name = f"fleet_{secrets.token_hex(4)}"
    c.sql(f"CREATE DATABASE {name}", db="postgres")
    if init:
        from cgman.fleet.db import init as do_init
        do_init(c.url(db=name), "test")
    return name


def login_role(c: Cluster, name: str, group: str, password: str = "pw-" + "x" * 8) -> str:
    """A login role in ``group`` (cgman_agent or cgman_billing), made once per cluster."""
    c.sql(f"DO $$ BEGIN IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = '{name}') THEN "
          f"CREATE ROLE {name} LOGIN PASSWORD '{password}' IN ROLE {group}; END IF; END $$", db="postgres")
    return password
