"""The agent's server of `cgman run`: a small pre-loaded process that forks one supervisor per run.

`cgman agent` binds the socket (agent/serve_run.py) and starts this module as its own process:

    python -m cgman.cli.served LISTEN_FD PARENT_FD RUN_DIR STATE_DIR ROOT [STOP_AT]

It imports everything the direct path of `cgman run` needs once, then waits. For each
connection from uid 0 (SO_PEERCRED; the socket is 0600 as well) it forks a child before
reading a byte, so a slow or hostile client holds up nobody. The child reads and bounds the
request (cli/wire.py), takes the client's stdin/stdout/stderr, environment and working
directory, tells the client it accepted, and runs the very same code as the direct path
(``cgman.cli.main``) while a thread turns SIGNAL frames into signals to it. It is the run's
supervisor: it waits on the container, records its final usage, and sends the exit status.

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

import array
import os
import select
import signal
import socket
import struct
import sys
import threading
import time
from typing import TYPE_CHECKING, Callable, NamedTuple

from . import wire

if TYPE_CHECKING:
    from ..settings import Settings

REQUEST_TIMEOUT_S = 5.0        # a client has this long to send its whole request
MAX_SUPERVISORS = 4096         # runs served at once; beyond, the client launches by itself
STOP_GAP_S = 0.2               # between the two SIGTERMs that stop a run whose client vanished
_cli_main: Callable[[], None] | None = None     # cgman.cli.main (the function), bound by prewarm()


class Agent(NamedTuple):
    """Whose runs this server takes: the agent's directories and cgroup root."""
    run_dir: str
    state_dir: str
    root: str
    stop_at: str = ""          # fault injection for tests: "request" stops after reading one


class Request(NamedTuple):
    argv: list[bytes]
    environ: list[bytes]
    cwd: bytes
    fds: list[int]


class Declined(Exception):
    """A request answered with DECLINED(reason): the client launches by itself."""


def _say(text: str) -> None:
    """One line to the agent's log (logging stays unconfigured: a served `-v` configures it)."""
    try:
        os.write(2, f"cgman agent: {text}\n".encode(errors="replace"))
    except OSError:
        pass


# ---------------------------------------------------------------------------- the server
def prewarm(root: str, state_dir: str | None = None) -> None:
    """Import what a run needs, open cgman-init's memfd, probe the host once (which compiles
    glob's patterns), load the default device program (the BPF verifier's few ms) and the
    default seccomp program (from the state dir's cache, 1-2 ms), so that no fork pays for
    them again."""
    import glob, resource  # noqa: F401,E401
    from . import commands, common, logs, options, runcmd, thin  # noqa: F401
    from .. import _secure, drivers  # noqa: F401
    from ..accounting import ledger, usage  # noqa: F401
    from ..containers import collect, launch, lifecycle, rootfs, spec  # noqa: F401
    from ..reconcile import status  # noqa: F401
    from ..security import devices, init
    from ..state import applied, records  # noqa: F401
    thin.IN_AGENT = True
    global _cli_main
    from . import main as cli_main        # the function: cli.main the module (typer) is not loaded yet
    _cli_main = cli_main
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


def serve(listen_fd: int, parent_fd: int, agent: Agent) -> None:
    """Accept and fork until the agent's end of ``parent_fd`` closes."""
    listener = socket.socket(fileno=listen_fd)
    listener.setblocking(False)
    poller = select.poll()
    poller.register(listener.fileno(), select.POLLIN)
    poller.register(parent_fd, select.POLLIN)
    children: set[int] = set()
    while True:
        events = dict(poller.poll(1000))
        _reap(children)
        if parent_fd in events:
            break                                   # the agent stopped or died
        if listener.fileno() in events:
            _accept_all(listener, parent_fd, agent, children)
    _say(f"run server stopping; {len(children)} supervisor(s) keep their containers")


def _reap(children: set[int]) -> None:
    for pid in list(children):
        try:
            done, _ = os.waitpid(pid, os.WNOHANG)
        except ChildProcessError:
            done = pid
        if done:
            children.discard(pid)


def _accept_all(listener: socket.socket, parent_fd: int, agent: Agent, children: set[int]) -> None:
    while True:
        try:
            conn, _ = listener.accept()
        except (BlockingIOError, InterruptedError):
            return
        except OSError as e:         # EMFILE and the like: the client sees the connection end
            _say(f"run server cannot accept: {e.strerror}")
            return
        with conn:
            pid, uid, _gid = struct.unpack("3i", conn.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, 12))
            if uid != 0:
                _say(f"refused a run from uid {uid} (pid {pid}): only root may launch containers")
                continue
            if len(children) >= MAX_SUPERVISORS:
                _send(conn, wire.DECLINED, wire.BUSY)
                continue
            refresh(agent)
            child = os.fork()
            if child == 0:
                code = 1
                try:
                    listener.close()
                    os.close(parent_fd)
                    os.setsid()
                    code = handle(conn, agent)
                except BaseException:
                    import traceback
                    traceback.print_exc()      # the agent's log, or the client's stderr once taken
                finally:
                    os._exit(code)
            children.add(child)


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


# --------------------------------------------------------------------------- one run
def handle(conn: socket.socket, agent: Agent) -> int:
    """Serve one connection in a fresh child; returns this process's exit code."""
    try:
        req = receive(conn)
    except Declined as d:
        _send(conn, wire.DECLINED, d.args[0])
        return 0
    except (wire.BadRequest, OSError) as e:
        _say(f"dropped a run request: {e}")
        return 1
    try:
        _take_client_world(req, agent)
    except Declined as d:
        for fd in req.fds:
            os.close(fd)
        _send(conn, wire.DECLINED, d.args[0])
        return 0
    if agent.stop_at == "request":
        _say(f"stopping at request (pid {os.getpid()})")
        os.kill(os.getpid(), signal.SIGSTOP)
    _take_stdio(req.fds)
    conn.settimeout(None)
    os.register_at_fork(after_in_child=conn.close)     # `run -d` forks its own supervisor
    _send(conn, wire.ACCEPTED, os.getpid())
    done = threading.Event()
    threading.Thread(target=_relay_signals, args=(conn, threading.get_ident(), done), daemon=True).start()
    code = run_cli([os.fsdecode(a) for a in req.argv])
    done.set()
    _send(conn, wire.EXITED, code)
    return 0


def receive(conn: socket.socket) -> Request:
    """Read one request within REQUEST_TIMEOUT_S; every fd received is closed on any error."""
    deadline = time.monotonic() + REQUEST_TIMEOUT_S
    fds: list[int] = []
    try:
        conn.settimeout(REQUEST_TIMEOUT_S)
        data, anc, flags, _ = conn.recvmsg(wire.HEADER.size, socket.CMSG_SPACE(4 * (wire.N_FDS + 1)),
                                           socket.MSG_CMSG_CLOEXEC)
        for level, kind, payload in anc:
            if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
                fds += array.array("i", payload[:len(payload) - len(payload) % 4])
        if flags & socket.MSG_CTRUNC or len(fds) != wire.N_FDS:
            raise wire.BadRequest(f"expected {wire.N_FDS} file descriptors (stdin, stdout, stderr)")
        data += _read(conn, wire.HEADER.size - len(data), deadline)
        length = wire.decode_header(data)
        if wire.header_version(data) != wire.VERSION:
            raise Declined(wire.VERSION_MISMATCH)
        if length > wire.MAX_BODY_BYTES:
            raise Declined(wire.TOO_LARGE)
        argv, environ, cwd = wire.decode_body(_read(conn, length, deadline))
        return Request(argv, environ, cwd, fds)
    except BaseException:
        for fd in fds:
            os.close(fd)
        raise


def _read(conn: socket.socket, size: int, deadline: float) -> bytes:
    chunks, got = [], 0
    while got < size:
        left = deadline - time.monotonic()
        if left <= 0:
            raise wire.BadRequest(f"the request did not arrive within {REQUEST_TIMEOUT_S:g}s")
        conn.settimeout(left)
        chunk = conn.recv(min(size - got, 1 << 20))
        if not chunk:
            raise wire.BadRequest("the client went away in the middle of its request")
        chunks.append(chunk)
        got += len(chunk)
    return b"".join(chunks)


def _take_client_world(req: Request, agent: Agent) -> None:
    """The client's environment and working directory; DECLINED if its run is not ours."""
    from ..drivers import cgroup_root
    from ..errors import CgmanError
    from ..state.records import run_dir, state_dir
    os.environb.clear()
    os.environb.update(e.split(b"=", 1) for e in req.environ)   # type: ignore[misc]
    try:          # the client's flags and environment
        settings = client_settings([os.fsdecode(a) for a in req.argv[1:]], os.environ)
        root = cgroup_root(settings.cgroup_root)
    except CgmanError:           # a bad root or variable: the direct path says so in its words
        raise Declined(wire.OTHER_DIRS) from None
    mine = (os.path.realpath(agent.run_dir), os.path.realpath(agent.state_dir), agent.root)
    theirs = (os.path.realpath(run_dir(settings.run_dir)), os.path.realpath(state_dir(settings.state_dir)), root)
    if theirs != mine:
        raise Declined(wire.OTHER_DIRS)
    try:
        os.chdir(req.cwd)
    except OSError:
        raise Declined(wire.NO_CWD) from None


def client_settings(words: list[str], environ: "os._Environ[str] | dict[str, str]") -> "Settings":
    """The Settings of `cgman WORDS` as its direct path reads them: by the option tables, which
    stop at the workload, or as typer reads the line they give up on (globals hoisted)."""
    from .common import resolve_settings
    from .options import globals_of, hoist, parse
    opts = parse(words, "run", environ)
    return resolve_settings(opts if opts is not None else globals_of(hoist(words)), environ)


def _take_stdio(fds: list[int]) -> None:
    """The client's stdin, stdout and stderr become this process's (and the container's)."""
    for target, fd in enumerate(fds):
        os.dup2(fd, target)
        os.close(fd)
    sys.stdin = open(0, "r", closefd=False)
    sys.stdout = open(1, "w", buffering=1 if os.isatty(1) else -1, closefd=False)
    sys.stderr = open(2, "w", buffering=1, closefd=False, errors="backslashreplace")


def run_cli(argv: list[str]) -> int:
    """``cgman ARGV`` exactly as the direct path runs it; its exit code."""
    assert _cli_main is not None, "prewarm() first"
    sys.argv = argv
    code: object = 0
    try:
        _cli_main()
    except SystemExit as e:
        code = e.code
    except KeyboardInterrupt:
        code = 130
    except BaseException:
        import traceback
        traceback.print_exc()
        code = 1
    if code is None:
        code = 0
    elif not isinstance(code, int):
        print(code, file=sys.stderr)          # as the interpreter does with sys.exit("text")
        code = 1
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):
            pass
    return code & 0xFF


def _relay_signals(conn: socket.socket, main_thread: int, done: threading.Event) -> None:
    """SIGNAL frames become signals to the main thread (which forwards them to the container,
    as the direct path forwards its own). A client gone before the end stops the run, as a
    `cgman run` killed in the direct path takes its container along: SIGTERM, then again
    (the second escalates to SIGKILL)."""
    from ..containers.lifecycle import FORWARDED
    while True:
        frame = wire.read_frame(conn)
        if frame is None:
            break
        kind, value = frame
        if kind == wire.SIGNAL and value in FORWARDED:
            signal.pthread_kill(main_thread, value)
    for _ in range(2):
        if done.is_set():
            return
        signal.pthread_kill(main_thread, signal.SIGTERM)
        done.wait(STOP_GAP_S)


def _send(conn: socket.socket, kind: bytes, value: int) -> None:
    try:
        conn.sendall(wire.FRAME.pack(kind, value))
    except OSError:
        pass            # the client is gone; it learns nothing more


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
