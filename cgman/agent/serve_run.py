"""The agent's half of served runs: the root-only socket and the run server behind it.

The agent binds ``<run>/agent-<root>.sock`` (state/agentsock.py) 0600, then starts the run
server (cgman/cli/served.py) as a separate, small, single-threaded process and hands it the
listening socket and the read end of a pipe whose write end only the agent holds. The
socket stays the agent's: if the server dies, connections wait in the backlog while a new
one starts. When the agent stops (or is SIGKILLed) the pipe closes and the server exits;
the supervisors it forked keep their containers (see served.py for why). A restarted agent
binds the socket again, replacing the stale path.

The server is started as ``python -m cgman.cli.served`` rather than imported: it runs the
CLI's own `run` code (cli is the layer above the agent) in a process of its own.
"""

from __future__ import annotations

import logging
import os
import socket
import subprocess
import sys
import threading
from typing import Any

from ..state.agentsock import socket_path

log = logging.getLogger("cgman.agent")
RESTART_DELAY_S = 1.0
BACKLOG = 128


class ServedRuns:
    """Serve `cgman run` for one cgroup root until stop()."""

    def __init__(self, run_dir: str, state_dir: str, root: str, stop_at: str = "") -> None:
        self.run_dir, self.state_dir, self.root, self.stop_at = run_dir, state_dir, root, stop_at
        self.path = socket_path(run_dir, root)
        self._listener: socket.socket | None = None
        self._ino: int | None = None
        self._proc: subprocess.Popen[bytes] | None = None
        self._pipe_w = -1
        self._pipe_r = -1
        self._stopping = threading.Event()
        self._watch: threading.Thread | None = None
        self._ledger: Any = None

    def start(self) -> None:
        """Bind the socket and start the server. Raises OSError (the caller logs and goes on
        without serving: `cgman run` then launches by itself)."""
        self._listener = self._bind()
        self._ledger = _hold_ledger(self.state_dir)
        self._pipe_r, self._pipe_w = os.pipe2(os.O_CLOEXEC)
        self._spawn()
        self._watch = threading.Thread(target=self._keep_serving, name="cgman-agent-runs", daemon=True)
        self._watch.start()
        log.info("serving `cgman run` on %s (run server pid %d)", self.path, self.server_pid)

    def _bind(self) -> socket.socket:
        """Listen on a fresh name, 0600, then move it over the path: a client never finds a
        socket that another user could use, and a stale one of a killed agent is replaced."""
        tmp = f"{self.path}.{os.getpid()}.tmp"
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
        try:
            try:
                os.unlink(tmp)
            except FileNotFoundError:
                pass
            s.bind(tmp)
            os.chmod(tmp, 0o600)
            s.listen(BACKLOG)
            os.rename(tmp, self.path)
            self._ino = os.stat(self.path).st_ino
        except BaseException:
            s.close()
            try:
                os.unlink(tmp)
            except OSError:
                pass
            raise
        return s

    def _spawn(self) -> None:
        assert self._listener is not None
        # Its environment is only where cgman is: each served run takes its client's.
        package_parent = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
        env = {"PYTHONPATH": package_parent}
        fd = self._listener.fileno()
        self._proc = subprocess.Popen(
            [sys.executable, "-m", "cgman.cli.served", str(fd), str(self._pipe_r), self.run_dir, self.state_dir,
             self.root, self.stop_at], pass_fds=(fd, self._pipe_r), stdin=subprocess.DEVNULL,
            start_new_session=True, cwd="/", env=env)

    def _keep_serving(self) -> None:
        """Start the server again if it dies while the agent runs."""
        while not self._stopping.is_set():
            proc = self._proc
            assert proc is not None
            code = proc.wait()
            if self._stopping.wait(RESTART_DELAY_S):
                return
            log.error("the run server (pid %d) exited with %s; starting it again", proc.pid, code)
            try:
                self._spawn()
                log.info("run server pid %d", self.server_pid)
            except OSError as e:
                log.error("cannot start the run server: %s; `cgman run` launches by itself", e)
                return

    @property
    def server_pid(self) -> int | None:
        return self._proc.pid if self._proc is not None else None

    def stop(self) -> None:
        """Close the pipe (the server exits; its supervisors go on) and remove our socket."""
        self._stopping.set()
        if self._pipe_w >= 0:
            os.close(self._pipe_w)
            self._pipe_w = -1
        if self._proc is not None:
            try:
                self._proc.wait(5)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait()
        if self._pipe_r >= 0:
            os.close(self._pipe_r)
            self._pipe_r = -1
        try:
            if self._ino is not None and os.stat(self.path).st_ino == self._ino:
                os.unlink(self.path)       # not one a newer agent bound meanwhile
        except OSError:
            pass
        if self._listener is not None:
            self._listener.close()
            self._listener = None
        if self._ledger is not None:
            self._ledger.close()
            self._ledger = None


def _hold_ledger(state_dir: str) -> Any:
    """The ledger, opened and held while the agent serves. SQLite's last connection to close
    checkpoints the WAL into the database and deletes it: without one held here, every served
    run would be that last one and pay a checkpoint and a fresh WAL (four more fsyncs beside
    its commit's one). None if it cannot be opened (each run then says why in its own words)."""
    from ..accounting.ledger import Ledger, ledger_path
    from ..errors import CgmanError
    ledger = Ledger(ledger_path(state_dir))
    try:
        ledger.connect()
    except CgmanError as e:
        log.warning("cannot hold the ledger open (%s): each served run checkpoints it", e)
        return None
    return ledger
