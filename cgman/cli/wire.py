"""The served-run wire protocol (version 1) between `cgman run` and the agent's server.

One stream connection per run, on the root-only socket of state/agentsock.py:

    client -> server  one request: HEADER (magic, version, body length) + body, sent with
                      exactly three file descriptors (stdin, stdout, stderr) as SCM_RIGHTS.
                      Body: three string lists (argv, environment "K=V", [cwd]); a list is a
                      u32 count, then per item a u32 length and the bytes.
    server -> client  ACCEPTED(pid of the supervisor) or DECLINED(reason); after ACCEPTED,
                      EXITED(code) once the run is over (the code the direct path exits with).
    client -> server  SIGNAL(signum), any number of times after ACCEPTED.

Every frame after the request is FRAME: one type byte and a u32. A server must treat a
request as hostile: each bound below is checked before anything is allocated or acted on,
and a request that breaks one is dropped (or, if it is only too large, DECLINED so that the
client launches by itself). A DECLINED client runs the direct path; nothing was started.
The client is the C front (cgman/_client.c), built from these definitions (cli/thin.py); the
Python encoder here is the benchmark's and the tests'.
"""

from __future__ import annotations

import _socket
import struct

MAGIC = b"CGMR"
VERSION = 1
HEADER = struct.Struct("!4sBxxxI")           # magic, version, body length
FRAME = struct.Struct("!cI")                 # type, value
MAX_BODY_BYTES = 4 << 20                     # argv + environment; Linux's own exec limit is near 2 MiB
MAX_ITEMS = 1 << 16                          # strings in one list
MAX_STRING_BYTES = 128 << 10                 # MAX_ARG_STRLEN
MAX_CWD_BYTES = 4096                         # PATH_MAX
N_FDS = 3                                    # stdin, stdout, stderr

ACCEPTED, DECLINED, EXITED, SIGNAL = b"A", b"D", b"X", b"S"
# Why a server declined (the client says so under -v and launches by itself).
DECLINE_REASONS = {1: "it speaks another protocol version", 2: "the request is larger than it takes",
                   3: "the run names another run dir, state dir or cgroup root than the agent's",
                   4: "it serves too many runs at once", 5: "it cannot enter the working directory",
                   6: "it is stopping"}
VERSION_MISMATCH, TOO_LARGE, OTHER_DIRS, BUSY, NO_CWD, STOPPING = 1, 2, 3, 4, 5, 6


class BadRequest(ValueError):
    """A request that breaks the protocol; the server drops the connection."""


class TooLarge(BadRequest):
    """A well-formed request beyond a bound (strings in a list, a string's length): the server
    declines it (TOO_LARGE), and the client launches by itself, as it would without an agent."""


def encode_request(argv: list[bytes], environ: list[bytes], cwd: bytes) -> bytes:
    """HEADER + body for one run (the caller checks nothing: the server bounds it all)."""
    parts: list[bytes] = []
    for strings in (argv, environ, [cwd]):
        parts.append(struct.pack("!I", len(strings)))
        for s in strings:
            parts.append(struct.pack("!I", len(s)))
            parts.append(s)
    body = b"".join(parts)
    return HEADER.pack(MAGIC, VERSION, len(body)) + body


def decode_header(data: bytes) -> int:
    """The body length the header announces. Raises BadRequest on a foreign magic; the
    caller compares the version (which it answers) and the length (which it may decline)."""
    magic, _version, length = HEADER.unpack(data)
    if magic != MAGIC:
        raise BadRequest("not a cgman run request")
    return length


def header_version(data: bytes) -> int:
    return HEADER.unpack(data)[1]


def decode_body(body: bytes) -> tuple[list[bytes], list[bytes], bytes]:
    """(argv, environment, cwd) from a body, every bound checked; BadRequest otherwise (TooLarge
    for a well-formed body beyond a bound)."""
    lists: list[list[bytes]] = []
    pos = 0
    for _ in range(3):
        count, pos = _u32(body, pos)
        if count > MAX_ITEMS:
            raise TooLarge(f"{count} strings in one list (at most {MAX_ITEMS})")
        items = []
        for _ in range(count):
            size, pos = _u32(body, pos)
            if pos + size > len(body):
                raise BadRequest("a string longer than the request")
            if size > MAX_STRING_BYTES:
                raise TooLarge(f"a string of {size} bytes (at most {MAX_STRING_BYTES})")
            s = body[pos:pos + size]
            if b"\0" in s:
                raise BadRequest("a string with a NUL byte")
            items.append(s)
            pos += size
        lists.append(items)
    if pos != len(body):
        raise BadRequest("bytes after the request")
    argv, environ, cwd = lists
    if not argv or len(cwd) != 1 or not cwd[0].startswith(b"/") or len(cwd[0]) > MAX_CWD_BYTES:
        raise BadRequest("no argv, or a working directory that is not one absolute path")
    if any(b"=" not in e[1:] for e in environ):
        raise BadRequest("an environment entry without KEY=")
    return argv, environ, cwd[0]


def read_frame(conn: "_socket.socket") -> tuple[bytes, int] | None:
    """The next FRAME from ``conn`` (a socket); None at the end of the stream or on an error.
    A signal handler that returns does not interrupt it (PEP 475: recv is retried)."""
    data = b""
    while len(data) < FRAME.size:
        try:
            chunk = conn.recv(FRAME.size - len(data))
        except OSError:
            return None
        if not chunk:
            return None
        data += chunk
    kind, value = FRAME.unpack(data)
    return kind, value


def _u32(body: bytes, pos: int) -> tuple[int, int]:
    if pos + 4 > len(body):
        raise BadRequest("the request ends inside a length")
    return struct.unpack_from("!I", body, pos)[0], pos + 4
