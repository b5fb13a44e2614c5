"""The agent's server of `cgman run`: a small pre-loaded process that forks one supervisor per run.

`cgman agent` binds the socket (agent/serve_run.py) and starts this module as its own process:

    python -m cgman.cli.served LISTEN_FD PARENT_FD RUN_DIR STATE_DIR ROOT [STOP_AT]

It imports everything the direct path of `cgman run` needs once, then keeps one child, the
spare supervisor, forked ahead of the next request: the fork (~2 ms of a run) is off the
client's path. The spare takes the next connection from uid 0 (SO_PEERCRED; the socket is 0600
as well), tells the server, which forks the next spare, and serves the connection
(supervise.py): it reads and bounds the request (cli/wire.py), takes the client's
stdin/stdout/stderr, environment and working directory, tells the client it accepted, and
runs the very same code as the direct path (``cgman.cli.main``) while a thread turns SIGNAL
frames into signals to it. It is the run's supervisor: it waits on the container, records its
final usage, and sends the exit status. Then it tells the server which pages of memory its run
wrote, and the next spare copies those while it waits (warmpages.py: ~5 ms of a run). While
it waits it also opens the ledger (accounting/ahead.py: ~1 ms) and makes its container's
network namespace (containers/netns_ahead.py: ~0.5 ms). A slow
or hostile client holds up only its own supervisor. Without a spare (MAX_SUPERVISORS reached,
or a fork that failed) the server accepts itself: BUSY, or a supervisor forked per connection.

Why a forked process per run and not the agent itself: the container's PID 1 dies with the
process that waits on it (PR_SET_PDEATHSIG; containers/lifecycle.py), and a container must
outlive an agent restart or SIGKILL. Each supervisor is in its own session, so neither a
Ctrl-C at the agent's terminal nor the end of this server reaches it; it is the same
supervisor `run -d` forks today, so ps/stop/rm/gc need nothing new. Why not fork the agent:
this process is small and single-threaded (a fork of a threaded process can inherit a held
lock), so its fork and the launch's clone copy fewer page tables. When the agent goes, its
end of PARENT_FD closes and this server exits; the supervisors it forked run on.
"""

from __future__ import annotations

import os
import select
import socket
import struct
import sys
import time
from typing import NamedTuple

from ..accounting import ahead, ledger
from ..containers import netns_ahead
from . import supervise, warmpages, wire
from .supervise import Agent, handle, say, send

MAX_SUPERVISORS = 4096         # runs served at once; beyond, the client launches by itself
RELEARN_EVERY = 64             # every so many spares, one copies nothing and reports what its run wrote
SPARE_BACKOFF_S = 1.0          # no spare for this long after one died before its request (or a failed fork)
SPARE_EXIT_WAIT_S = 1.0        # at the end, how long the server waits for its spare to go


def prewarm(root: str, state_dir: str | None = None) -> None:
    """Import what a run needs, open cgman-init's memfd, probe the host once (which compiles
    glob's patterns), load the default device program (the BPF verifier's few ms) and the
    default seccomp program (from the state dir's cache, 1-2 ms), so that no fork pays for
    them again."""
    import glob, resource  # noqa: F401,E401
    from . import commands, common, logs, options, runcmd  # noqa: F401
    from .. import _secure, drivers  # noqa: F401
    from ..accounting import ledger, usage  # noqa: F401
    from ..containers import collect, launch, lifecycle, rootfs, spec  # noqa: F401
    from ..reconcile import status  # noqa: F401
    from ..security import devices, init
    from ..state import applied, records  # noqa: F401
    from .. import cli
    cli.IN_AGENT = True
    from . import main as cli_main        # the function: cli.main the module (typer) is not loaded yet
    supervise.use_cli(cli_main)
    try:
        init.memfd()
        host = drivers.open_host(root)
        _ = host.features
        if host.v2 is not None:          # confine_devices attaches it to each cgroup2 leaf
            devices.program_fd(devices.DEFAULT)
        from ..containers.confine import spawn_security
        from ..drivers.detect import read_mounts
        from ..security.resolve import Security
        spawn_security(Security(), state_dir)
        read_mounts()                    # each fork then hands its child a fresh watch (detect.py)
    except Exception:        # a run reports it in its own words
        pass


class Spare(NamedTuple):
    """The supervisor forked ahead of the next request: its pid, and the read end of the pipe
    on which it says that it took one (a byte; end of file if it died)."""
    pid: int
    taken: int


class Server:
    """The run server's state: its listening socket and the agent's pipe, the supervisors it
    forked, the spare, and the latest list of pages a run wrote (from ``learn_r``)."""

    def __init__(self, listen_fd: int, parent_fd: int, agent: Agent) -> None:
        self.listener = socket.socket(fileno=listen_fd)
        self.listener.setblocking(False)
        self.parent_fd, self.agent = parent_fd, agent
        self.learn_r, self.learn_w = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.learn_r.setblocking(False)
        self.children: set[int] = set()
        self.spare: Spare | None = None
        self.pages, self.spares, self.no_spare_until = b"", 0, 0.0

    def serve(self) -> None:
        """Keep a spare waiting (accepting here only when there is none) until the agent's
        end of ``parent_fd`` closes."""
        while True:
            self._keep_a_spare()
            poller = select.poll()
            poller.register(self.parent_fd, select.POLLIN)
            poller.register(self.learn_r.fileno(), select.POLLIN)
            poller.register(self.spare.taken if self.spare else self.listener.fileno(), select.POLLIN)
            events = dict(poller.poll(1000))
            _reap(self.children)
            if self.learn_r.fileno() in events:
                self.pages = _latest(self.learn_r, self.pages)
            if self.spare is not None and self.spare.taken in events:
                self._spare_done(os.read(self.spare.taken, 1) == b"x")
            elif self.spare is None and self.listener.fileno() in events:
                _accept_all(self)
            if self.parent_fd in events:
                break                                   # the agent stopped or died
        self._let_the_spare_go()
        say(f"run server stopping; {len(self.children)} supervisor(s) keep their containers")

    def _keep_a_spare(self) -> None:
        if self.spare is not None or len(self.children) >= MAX_SUPERVISORS or time.monotonic() < self.no_spare_until:
            return
        refresh(self.agent)
        # A spare that copied pages would report them as its run's: only one that copied
        # nothing reports, so the list stays one run's writes and does not grow run by run.
        learn = not self.pages or self.spares % RELEARN_EVERY == 0
        self.spare = _fork_spare(self, learn)
        if self.spare is not None:
            self.spares += 1
        else:
            self.no_spare_until = time.monotonic() + SPARE_BACKOFF_S

    def _spare_done(self, took: bool) -> None:
        """The spare took a request (a supervisor now) or died before one."""
        assert self.spare is not None
        os.close(self.spare.taken)
        self.children.add(self.spare.pid)           # reaped with the supervisors once it exits
        self.spare = None
        if not took:                                # learn afresh, and not at once
            self.pages, self.no_spare_until = b"", time.monotonic() + SPARE_BACKOFF_S

    def _let_the_spare_go(self) -> None:
        """At the end: a spare that took a request runs on as its supervisor; one that did not
        sees its pipe close and exits (waited for briefly: a unit's stop leaves no spare)."""
        if self.spare is None:
            return
        spare, self.spare = self.spare, None
        ready = select.select([spare.taken], [], [], 0)[0]
        took = bool(ready) and os.read(spare.taken, 1) == b"x"
        os.close(spare.taken)
        if took:
            self.children.add(spare.pid)
            return
        deadline = time.monotonic() + SPARE_EXIT_WAIT_S
        while time.monotonic() < deadline:
            if os.waitpid(spare.pid, os.WNOHANG)[0]:
                return
            time.sleep(0.005)
        self.children.add(spare.pid)                # it took a run as we stopped: it goes on


def serve(listen_fd: int, parent_fd: int, agent: Agent) -> None:
    """Serve runs until the agent's end of ``parent_fd`` closes (Server.serve)."""
    Server(listen_fd, parent_fd, agent).serve()


def _latest(learn_r: socket.socket, pages: bytes) -> bytes:
    """The newest list of written pages a supervisor sent (the one kept so far if none)."""
    while True:
        try:
            report = learn_r.recv(warmpages.MAX_BYTES + 1)
        except (BlockingIOError, InterruptedError):
            return pages
        if report and len(report) <= warmpages.MAX_BYTES and not len(report) % 16:
            pages = report


def _fork_spare(server: Server, learn: bool) -> Spare | None:
    """Fork the spare: it copies the pages the last learning run wrote (``learn``: none, and its
    own run reports what it writes instead), then waits for a connection from root. None if
    the fork fails (the server then accepts and forks per connection for a while)."""
    taken_r, taken_w = os.pipe()
    try:
        pid = os.fork()
    except OSError as e:
        os.close(taken_r)
        os.close(taken_w)
        say(f"cannot fork a spare supervisor: {e.strerror}")
        return None
    if pid != 0:
        os.close(taken_w)
        return Spare(pid, taken_r)
    code = 1
    try:
        os.close(taken_r)
        if not learn:
            try:
                warmpages.populate(server.pages)
            except Exception:            # nothing copied: its run faults as before
                pass
        ahead.open_ahead(ledger.ledger_path(server.agent.state_dir))    # its run's commit uses it
        netns_ahead.prepare()                                           # and its container's network
        conn = _wait_for_request(server.listener, server.parent_fd, taken_w)
        if conn is not None:
            code = _supervise(conn, server, report=learn)
    except BaseException:
        import traceback
        traceback.print_exc()
    finally:
        os._exit(code)


def _wait_for_request(listener: socket.socket, parent_fd: int, taken_w: int) -> socket.socket | None:
    """The spare's wait: the next connection from root, once it told the server it took it;
    None when the agent or the server goes first (a connection taken as the server stopped
    is closed: its client says nothing was started)."""
    poller = select.poll()
    poller.register(listener.fileno(), select.POLLIN)
    poller.register(parent_fd, select.POLLIN)
    poller.register(taken_w, 0)                     # POLLERR: the server is gone
    while True:
        events = dict(poller.poll())
        if parent_fd in events or taken_w in events:
            return None
        try:
            conn, _ = listener.accept()
        except (BlockingIOError, InterruptedError):
            continue
        except OSError as e:
            say(f"run server cannot accept: {e.strerror}")
            time.sleep(0.1)
            continue
        if not _from_root(conn):
            conn.close()
            continue
        try:
            os.write(taken_w, b"x")
        except OSError:
            conn.close()
            return None
        os.close(taken_w)
        return conn


def _from_root(conn: socket.socket) -> bool:
    pid, uid, _gid = struct.unpack("3i", conn.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, 12))
    if uid != 0:
        say(f"refused a run from uid {uid} (pid {pid}): only root may launch containers")
    return uid == 0


def _supervise(conn: socket.socket, server: Server, report: bool) -> int:
    """Serve ``conn`` as its run's supervisor; then, if ``report``, send the server the pages
    the run wrote."""
    with conn:
        server.listener.close()
        server.learn_r.close()
        if not report:
            server.learn_w.close()
        os.close(server.parent_fd)
        os.setsid()
        code = handle(conn, server.agent)
    if report:
        try:
            server.learn_w.send(warmpages.written(), socket.MSG_DONTWAIT)
        except OSError:          # the server is gone, or busy with other reports: not needed
            pass
    return code


def _reap(children: set[int]) -> None:
    for pid in list(children):
        try:
            done, _ = os.waitpid(pid, os.WNOHANG)
        except ChildProcessError:
            done = pid
        if done:
            children.discard(pid)


def _accept_all(server: Server) -> None:
    """Without a spare: BUSY at MAX_SUPERVISORS, else fork a supervisor per connection."""
    while True:
        try:
            conn, _ = server.listener.accept()
        except (BlockingIOError, InterruptedError):
            return
        except OSError as e:         # EMFILE and the like: the client sees the connection end
            say(f"run server cannot accept: {e.strerror}")
            return
        with conn:
            if not _from_root(conn):
                continue
            if len(server.children) >= MAX_SUPERVISORS:
                send(conn, wire.DECLINED, wire.BUSY)
                continue
            refresh(server.agent)
            child = os.fork()
            if child == 0:
                code = 1
                try:
                    code = _supervise(conn, server, report=True)
                except BaseException:
                    import traceback
                    traceback.print_exc()      # the agent's log, or the client's stderr once taken
                finally:
                    os._exit(code)
            server.children.add(child)


def refresh(agent: Agent) -> None:
    """Bring what the supervisors inherit up to date before a fork (a stat): the applied groups
    (applied.group_paths). The mount table is brought up to date by every fork (detect.py)."""
    from ..settings import Settings
    from ..state import applied, records
    try:
        applied.group_paths(records.Store(Settings(run_dir=agent.run_dir, state_dir=agent.state_dir,
                                                   cgroup_root=agent.root)), agent.root)
    except Exception:        # a run reports it in its own words
        pass


def main(args: list[str]) -> None:
    listen_fd, parent_fd = int(args[0]), int(args[1])
    agent = Agent(args[2], args[3], args[4], args[5] if len(args) > 5 else "")
    prewarm(agent.root, agent.state_dir)
    refresh(agent)
    # What prewarm made stays out of the cyclic collector's walks: a supervisor's collection
    # would otherwise touch (and so copy, after the fork) every page of it (~3 ms a run).
    import gc
    gc.freeze()
    serve(listen_fd, parent_fd, agent)


if __name__ == "__main__":
    main(sys.argv[1:])
