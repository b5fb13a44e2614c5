"""`cgman run` as a thin client of a running `cgman agent` (as chg is to Mercurial's server).

A cold Python process cannot launch as fast as runc: its start-up alone is half of runc's
launch. So when the agent of this cgroup root listens on its socket (state/agentsock.py), this
client hands it the whole command line, environment, working directory and its stdin, stdout
and stderr (SCM_RIGHTS: a terminal stays the container's terminal), relays the signals that
the direct path forwards, and exits with the status the agent's supervisor reports. The agent
runs the very same code as the direct path (cli/served.py), so output, errors and exit codes
are the same. No agent, a non-root user, a declined request: ``run_served`` returns None and
the caller launches by itself (the direct path).

Imports are only C modules and wire.py: ``socket`` and ``signal`` would pull in enum (~3 ms).
"""

from __future__ import annotations

import _signal
import _socket
import os
import sys

from ..state.agentsock import socket_path
from . import wire

# Set in the agent's own server: a served run must not try to serve itself.
IN_AGENT = False
# The signals the direct path forwards to the container (containers/lifecycle.FORWARDED).
FORWARDED = (_signal.SIGINT, _signal.SIGTERM, _signal.SIGHUP, _signal.SIGQUIT, _signal.SIGUSR1, _signal.SIGUSR2)
_STDIO_FDS = wire.struct.pack("3i", 0, 1, 2)     # SCM_RIGHTS payload (array would import collections)
# The defaults of records.run_dir and drivers.cgroup_root (a test keeps them in step).
DEFAULT_RUN_DIR, DEFAULT_ROOT = "/run/cgman", "cgman"


# The options of `cgman [GLOBAL...] run` that take no value (cli/options.py's GLOBAL and RUN
# tables: a test keeps this in step). Every other option takes one, so the workload is the first
# word after the command that is neither an option nor an option's value.
FLAGS = frozenset({"-v", "--verbose", "--detach", "-d", "--userns", "--init", "--no-init", "--rm", "--privileged"})


def global_values(argv: list[str]) -> tuple[dict[str, str], bool]:
    """The valued global options (--run-dir, --cgroup-root, --state-dir) on a command line,
    and whether -v was given. Only words before the workload are options; the last one wins."""
    values: dict[str, str] = {}
    verbose, command_seen, i = False, False, 0
    while i < len(argv) and argv[i] != "--":
        key, eq, value = argv[i].partition("=")
        if not key.startswith("-") or key == "-":
            if command_seen:
                break                       # the workload's first word: the rest is its own
            command_seen, i = True, i + 1
        elif key in FLAGS:
            verbose, i = verbose or key in ("-v", "--verbose"), i + 1
        else:
            if key in ("--run-dir", "--cgroup-root", "--state-dir"):
                values[key] = value if eq else argv[i + 1] if i + 1 < len(argv) else ""
            i += 1 if eq else 2
    return values, verbose


def where(argv: list[str], environ: "os._Environ[str] | dict[str, str]") -> tuple[str, bool]:
    """(the agent socket this command line would use, whether -v was given)."""
    values, verbose = global_values(argv)
    run = values.get("--run-dir") or environ.get("CGMAN_RUN_DIR") or DEFAULT_RUN_DIR
    root = (values.get("--cgroup-root") or environ.get("CGMAN_CGROUP_ROOT") or DEFAULT_ROOT).strip("/")
    return socket_path(run, root), verbose


def run_served(argv: list[str]) -> "int | None":
    """Run ``cgman ARGV`` through the agent: its exit code, or None to launch here."""
    if IN_AGENT:
        return None
    path, verbose = where(argv, os.environ)
    try:
        conn = _socket.socket(_socket.AF_UNIX, _socket.SOCK_STREAM | _socket.SOCK_CLOEXEC)
    except OSError:
        return None
    try:
        return _served(conn, path, argv, verbose)
    finally:
        conn.close()


def _served(conn: "_socket.socket", path: str, argv: list[str], verbose: bool) -> "int | None":
    try:
        conn.connect(path)
        request = wire.encode_request([os.fsencode(a) for a in sys.argv[:1] + argv],
                                      [k + b"=" + v for k, v in os.environb.items()], os.getcwdb())
        sent = conn.sendmsg([request], [(_socket.SOL_SOCKET, _socket.SCM_RIGHTS, _STDIO_FDS)])
        if sent < len(request):
            conn.sendall(request[sent:])
    except OSError as e:     # no agent, not root (the socket is 0600), a closed stdio fd
        if verbose:
            _say(f"run: launching here (no agent serves {path}: {e.strerror or e})")
        return None
    kind, value = wire.read_frame(conn) or (b"", 0)
    if kind == wire.DECLINED:
        if verbose:
            _say(f"run: launching here (the agent at {path} declined: "
                 f"{wire.DECLINE_REASONS.get(value, f'reason {value}')})")
        return None
    if kind != wire.ACCEPTED:
        return _lost(path, "before it started the run; nothing was started")
    if verbose:
        _say(f"run: served by the agent at {path} (its supervisor of this run is pid {value})")
    return _relay(conn, path, value)


def _relay(conn: "_socket.socket", path: str, supervisor_pid: int) -> int:
    """Forward signals until the supervisor reports the exit status."""
    def forward(signum: int, _frame: object) -> None:
        try:
            conn.sendall(wire.FRAME.pack(wire.SIGNAL, signum))
        except OSError:
            pass
    for s in FORWARDED:
        _signal.signal(s, forward)
    kind, value = wire.read_frame(conn) or (b"", 0)
    if kind != wire.EXITED:
        return _lost(path, f"while it ran (its supervisor, pid {supervisor_pid}, is gone; `cgman ps` "
                           f"shows the container, `cgman gc` collects it)")
    return value


def _lost(path: str, when: str) -> int:
    print(f"cgman: error: the agent at {path} closed the connection {when}", file=sys.stderr)
    return 1


def _say(text: str) -> None:
    print(f"cgman: {text}", file=sys.stderr, flush=True)
