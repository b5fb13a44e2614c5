"""One served run, in its supervisor: the request read and bounded, the client's world taken,
the run itself (the very code of the direct path), signals relayed, the exit code sent.

The run server (served.py) forks the supervisor; this is what the supervisor does with its
connection (see served.py for why a fork per run).
"""

from __future__ import annotations

import array
import os
import signal
import socket
import sys
import threading
import time
from typing import TYPE_CHECKING, Callable, NamedTuple

from . import wire

if TYPE_CHECKING:
    from ..settings import Settings

REQUEST_TIMEOUT_S = 5.0        # a client has this long to send its whole request
STOP_GAP_S = 0.2               # between the two SIGTERMs that stop a run whose client vanished
_cli_main: list[Callable[[], None]] = []        # cgman.cli.main (the function), bound by use_cli()


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


def say(text: str) -> None:
    """One line to the agent's log (logging stays unconfigured: a served `-v` configures it)."""
    try:
        os.write(2, f"cgman agent: {text}\n".encode(errors="replace"))
    except OSError:
        pass


def use_cli(main: Callable[[], None]) -> None:
    """The function that runs a command line: cgman.cli.main (bound once, by the server)."""
    _cli_main[:] = [main]


def handle(conn: socket.socket, agent: Agent) -> int:
    """Serve one connection in a fresh child; returns this process's exit code."""
    try:
        req = receive(conn)
    except Declined as d:
        send(conn, wire.DECLINED, d.args[0])
        return 0
    except (wire.BadRequest, OSError) as e:
        say(f"dropped a run request: {e}")
        return 1
    try:
        _take_client_world(req, agent)
    except Declined as d:
        for fd in req.fds:
            os.close(fd)
        send(conn, wire.DECLINED, d.args[0])
        return 0
    if agent.stop_at == "request":
        say(f"stopping at request (pid {os.getpid()})")
        os.kill(os.getpid(), signal.SIGSTOP)
    _take_stdio(req.fds)
    conn.settimeout(None)
    os.register_at_fork(after_in_child=conn.close)     # `run -d` forks its own supervisor
    send(conn, wire.ACCEPTED, os.getpid())
    done = threading.Event()
    threading.Thread(target=_relay_signals, args=(conn, threading.get_ident(), done), daemon=True).start()
    code = run_cli([os.fsdecode(a) for a in req.argv])
    done.set()
    send(conn, wire.EXITED, code)
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
        try:
            argv, environ, cwd = wire.decode_body(_read(conn, length, deadline))
        except wire.TooLarge:
            raise Declined(wire.TOO_LARGE) from None
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
    environ: dict[bytes, bytes] = {}
    for entry in req.environ:         # a key given twice: its first value, as getenv(3) and python read it
        key, _, value = entry.partition(b"=")
        environ.setdefault(key, value)
    os.environb.clear()
    os.environb.update(environ)
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
    assert _cli_main, "use_cli() first"
    sys.argv = argv
    code: object = 0
    try:
        _cli_main[0]()
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
    from ..containers.signals import FORWARDED
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


def send(conn: socket.socket, kind: bytes, value: int) -> None:
    try:
        conn.sendall(wire.FRAME.pack(kind, value))
    except OSError:
        pass            # the client is gone; it learns nothing more
