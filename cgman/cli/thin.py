"""What the `cgman` command's C front (cgman/_client.c) is built from: one source for both sides.

A cold Python process cannot launch as fast as runc: its start-up alone is half of runc's
launch (~10 ms of ~25). So the installed `cgman` is a small C program, as Mercurial's chg is to
its command server. For `cgman [GLOBAL...] run ...` it finds the socket of a running agent of
that cgroup root (state/agentsock.py) and hands it the whole command line, environment,
working directory and its stdin, stdout and stderr (SCM_RIGHTS: a terminal stays the
container's terminal); it relays the signals the direct path forwards and exits with the
status the agent's supervisor reports. The agent runs the very same code as the direct path
(cli/served.py), so output, errors and exit codes are the same. Anything else (no agent, a
non-root user, a declined request, any other command) it hands to the Python CLI next to it
(``CLI_SCRIPT``, bin/cgman-cli) by exec: same pid, same arguments.

Every name, number and message the C front shares with Python is here or in wire.py, and
``header()`` writes them as the C header the build compiles the front with (setup.py), so the
two sides cannot drift apart. Nothing here is imported on a launch path.
"""

from __future__ import annotations

from ..containers.signals import FORWARDED
from ..drivers import DEFAULT_ROOT
from ..settings import CGROUP_ROOT_ENV, RUN_DIR_ENV
from ..state import agentsock
from ..state.records import RUN_DIR
from . import wire
from .options import FLAG, GLOBAL, RUN

CLI_SCRIPT = "cgman-cli"          # the Python CLI, installed next to the front (pyproject script-files)
BUILD_MARK = "cgman-front-build:"  # before digest() in the built front
# The global options that name where the agent listens (the rest of GLOBAL is -v).
WHERE_OPTIONS = ("--run-dir", "--cgroup-root")


def flags() -> list[str]:
    """The options of `cgman [GLOBAL...] run` that take no value. Every other option takes one,
    so the workload is the first word after the command that is neither an option nor an
    option's value (the front reads no further: the rest is the workload's own)."""
    return sorted(name for table in (GLOBAL, RUN) for name, o in table.items() if o.arity == FLAG)


def verbose_flags() -> list[str]:
    return sorted(name for name, o in GLOBAL.items() if o.dest == "verbose")


def messages() -> dict[str, str]:
    """The front's words (printf formats), all in one place."""
    return {
        "NO_AGENT": "cgman: run: launching here (no agent serves %s: %s)\n",
        "DECLINED": "cgman: run: launching here (the agent at %s declined: %s)\n",
        "DECLINED_UNNAMED": "cgman: run: launching here (the agent at %s declined: reason %u)\n",
        "CLOSED_STDIO": "cgman: run: launching here (file descriptor %d, its stdin, stdout or stderr, "
                        "is closed)\n",
        "NOT_ROOTS": "cgman: run: launching here (the socket %s is served by uid %u, not by root)\n",
        "NO_SOCKET": "cgman: run: launching here (no agent socket: the cgroup root is empty or the "
                     "socket's path too long)\n",
        "SERVED": "cgman: run: served by the agent at %s (its supervisor of this run is pid %u)\n",
        "LOST_BEFORE": "cgman: error: the agent at %s closed the connection before it started the run; "
                       "nothing was started\n",
        "LOST_WHILE": "cgman: error: the agent at %s closed the connection while it ran (its supervisor, "
                      "pid %u, is gone; `cgman ps` shows the container, `cgman gc` collects it)\n",
        "NO_CLI": "cgman: error: cannot run %s: %s; reinstall cgman (pip install) so that it lies next "
                  "to this program\n",
    }


def _c_string(s: str) -> str:
    out = s.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")
    assert out.isascii(), s
    return f'"{out}"'


def _c_strings(items: list[str]) -> str:
    return "{" + ", ".join(_c_string(s) for s in items) + ", 0}"


def header() -> str:
    """The C header of the front (cgman/_client.c), from the Python definitions. Its last line
    puts ``digest()`` into the built program, where a test looks for it: a front built from
    other definitions or another _client.c (an editable install not rebuilt) is caught."""
    body = _definitions()
    build = f'static const char CG_BUILD[] __attribute__((used)) = "{BUILD_MARK}{digest(body)}";\n'
    return body.replace("#endif\n", build + "#endif\n")


def digest(definitions: str | None = None) -> str:
    """16 hex digits of what the front is built from: its header's definitions and its source."""
    import hashlib
    from pathlib import Path
    source = (Path(__file__).resolve().parents[1] / "_client.c").read_bytes()
    text = _definitions() if definitions is None else definitions
    return hashlib.sha256(text.encode() + source).hexdigest()[:16]


def _definitions() -> str:
    reasons = [wire.DECLINE_REASONS.get(i, "") for i in range(max(wire.DECLINE_REASONS) + 1)]
    lines = [
        "/* Generated by cgman/cli/thin.py (header()) at build time: do not edit. */",
        "#ifndef CGMAN_CLIENT_H", "#define CGMAN_CLIENT_H",
        f"#define CG_MAGIC {_c_string(wire.MAGIC.decode())}",
        f"#define CG_VERSION {wire.VERSION}",
        f"#define CG_HEADER_SIZE {wire.HEADER.size}",
        f"#define CG_FRAME_SIZE {wire.FRAME.size}",
        f"#define CG_N_FDS {wire.N_FDS}",
        *(f"#define CG_{k} '{getattr(wire, k).decode()}'" for k in ("ACCEPTED", "DECLINED", "EXITED", "SIGNAL")),
        f"static const char *const CG_DECLINE_REASONS[] = {_c_strings(reasons)};",
        f"#define CG_N_DECLINE_REASONS {len(reasons)}",
        f"static const char *const CG_FLAGS[] = {_c_strings(flags())};",
        f"static const char *const CG_VERBOSE[] = {_c_strings(verbose_flags())};",
        f"#define CG_RUN_DIR_OPTION {_c_string(WHERE_OPTIONS[0])}",
        f"#define CG_ROOT_OPTION {_c_string(WHERE_OPTIONS[1])}",
        f"#define CG_RUN_DIR_ENV {_c_string(RUN_DIR_ENV)}",
        f"#define CG_ROOT_ENV {_c_string(CGROUP_ROOT_ENV)}",
        f"#define CG_DEFAULT_RUN_DIR {_c_string(RUN_DIR)}",
        f"#define CG_DEFAULT_ROOT {_c_string(DEFAULT_ROOT)}",
        f"#define CG_SOCKET_PREFIX {_c_string(agentsock.PREFIX)}",
        f"#define CG_SOCKET_SUFFIX {_c_string(agentsock.SUFFIX)}",
        f"#define CG_ROOT_SEPARATOR_AS '{agentsock.SEPARATOR_AS}'",
        f"#define CG_CLI_SCRIPT {_c_string(CLI_SCRIPT)}",
        "static const int CG_FORWARDED[] = {" + ", ".join(str(int(s)) for s in FORWARDED) + ", 0};",
        *(f"#define CG_MSG_{k} {_c_string(v)}" for k, v in messages().items()),
        "#endif", "",
    ]
    return "\n".join(lines)


if __name__ == "__main__":       # setup.py: python -m cgman.cli.thin > header
    import sys
    sys.stdout.write(header())
