"""The option tables of the typer-free paths and the one parser that reads them.

Importing typer and letting it parse costs ~300 ms, more than a whole launch, and a
long-running server should not carry typer, click and rich in its memory (~15 MB; the
exporter's budget is 35 MB). So `cgman run`, `cgman exporter` and `cgman agent` are
parsed here, by table, when they can be. Each table lists exactly the options of the
typer command of the same name, with the same destination, arity and environment
variable (tests/test_cli_fast.py checks every table against the typer definitions).
The parser gives up, returning None, on anything else (--help, a typo, a missing
value): typer then handles the command line as usual, with its help and usage errors.

The global options are one table too: the parser reads them before or after the
command, and ``hoist`` moves them in front of it for typer, which wants them first.
"""

from __future__ import annotations

from collections import namedtuple

from ..settings import CGROUP_DRIVER_ENV, CGROUP_ROOT_ENV, POLICY_DIR_ENV, RUN_DIR_ENV, STATE_DIR_ENV

TYPE_CHECKING = False
if TYPE_CHECKING:           # typing is not imported at run time: ~2 ms of every `cgman run`
    from typing import Any, Mapping, Optional

FLAG, VALUE, MULTI = "flag", "value", "multi"      # no argument; one argument; one argument, repeatable


# A namedtuple: no dataclass (~0.5 ms) and no typing.NamedTuple (typing: ~2 ms) on every `cgman run`.
class Opt(namedtuple("Opt", ["dest", "arity", "const", "envvar"], defaults=(VALUE, True, None))):
    """One option name: where its value goes (``dest``, the typer parameter's name) and how it
    is read (``arity``); ``const``: what a FLAG stores (False for --no-x); ``envvar``: read
    when the option is not given, as typer does."""

    __slots__ = ()


Table = dict[str, Opt]


def opt(*names: str, dest: str, arity: str = VALUE, const: Any = True, envvar: str | None = None) -> Table:
    """Table rows for one option spelled several ways (--policy, -p)."""
    return {n: Opt(dest, arity, const, envvar) for n in names}


GLOBAL: Table = {
    **opt("-v", "--verbose", dest="verbose", arity=FLAG),
    **opt("--cgroup-root", dest="cgroup_root", envvar=CGROUP_ROOT_ENV),
    **opt("--run-dir", dest="run_dir", envvar=RUN_DIR_ENV),
    **opt("--state-dir", dest="state_dir", envvar=STATE_DIR_ENV),
}
RUN: Table = {
    **opt("--policy", "-p", dest="policy"), **opt("--name", dest="name"),
    **opt("--detach", "-d", dest="detach", arity=FLAG),
    **opt("--cpus", dest="cpus"), **opt("--memory", "-m", dest="memory"), **opt("--pids", dest="pids"),
    **opt("--hostname", dest="hostname"), **opt("--network", dest="network"),
    **opt("--rootfs", dest="rootfs"), **opt("--layer", dest="layer", arity=MULTI), **opt("--image", dest="image"),
    **opt("--userns", dest="userns", arity=FLAG),
    **opt("--init", dest="init", arity=FLAG), **opt("--no-init", dest="init", arity=FLAG, const=False),
    **opt("--env", "-e", dest="env", arity=MULTI), **opt("--timeout", dest="timeout"),
    **opt("--rm", dest="rm", arity=FLAG), **opt("--file", "-f", dest="files", arity=MULTI),
    **opt("--privileged", dest="privileged", arity=FLAG),
    **opt("--cap-add", dest="cap_add", arity=MULTI), **opt("--cap-drop", dest="cap_drop", arity=MULTI),
    **opt("--device", dest="device", arity=MULTI), **opt("--security-opt", dest="security_opt", arity=MULTI),
    **opt("--volume", dest="volume", arity=MULTI),
    **opt("--cgroup-driver", dest="cgroup_driver"),     # CGMAN_CGROUP_DRIVER: read by Settings.resolve
}
# The HTTP server's options, the same for `exporter` and `agent`.
HTTP: Table = {
    **opt("--listen", "-l", dest="listen", envvar="CGMAN_EXPORTER_LISTEN"),
    **opt("--web-config", dest="web_config"),
    **opt("--gzip", dest="gzip", arity=FLAG), **opt("--no-gzip", dest="gzip", arity=FLAG, const=False),
    **opt("--pressure", dest="pressure", arity=FLAG),
    **opt("--no-pressure", dest="pressure", arity=FLAG, const=False),
    **opt("--compat", dest="compat"),
    **opt("--max-connections", dest="max_connections"), **opt("--max-requests", dest="max_requests"),
    **opt("--header-timeout", dest="header_timeout"), **opt("--idle-timeout", dest="idle_timeout"),
}
EXPORTER: Table = {**HTTP, **opt("--read-threads", dest="read_threads")}
AGENT: Table = {
    **HTTP,
    **opt("--policy-dir", dest="policy_dir", envvar=POLICY_DIR_ENV),
    **opt("--ledger-url", dest="ledger_url", envvar="CGMAN_LEDGER_URL"), **opt("--node", dest="node"),
    **opt("--interval", dest="interval"),
    **opt("--prune", dest="prune", arity=FLAG), **opt("--poll", dest="poll", arity=FLAG),
    **opt("--cgroup-driver", dest="cgroup_driver", envvar=CGROUP_DRIVER_ENV),
}
COMMANDS: dict[str, Table] = {"run": RUN, "exporter": EXPORTER, "agent": AGENT}
ARGUMENTS = {"run": "command"}          # where a command's words go (run's workload); others take none
REQUIRED = {"run": ("policy",)}         # typer says what is missing


def command_of(argv: list[str]) -> Optional[str]:
    """The command word of `[GLOBAL...] COMMAND ...`, or None (no command, or --help first)."""
    at = _command_at(argv)
    return None if at is None else argv[at]


def _command_at(argv: list[str]) -> Optional[int]:
    i = 0
    while i < len(argv):
        key, eq, _ = _split(argv[i])
        if key not in GLOBAL:
            return None if argv[i].startswith("-") else i
        i += 2 if GLOBAL[key].arity != FLAG and not eq else 1
    return None


def globals_of(argv: list[str]) -> dict[str, Any]:
    """The global options in front of the command (after ``hoist``, all of them)."""
    end = _command_at(argv)
    head = argv[:len(argv) if end is None else end]
    opts: dict[str, Any] = {}
    i = 0
    while i < len(head):
        step = _read(head[i], head[i + 1:], GLOBAL, opts)
        if step is None:
            break
        i += step
    return opts


def parse(argv: list[str], command: str, environ: Optional[Mapping[str, str]] = None) -> Optional[dict[str, Any]]:
    """Options of `[GLOBAL...] COMMAND [OPTIONS...] [--] [WORDS...]` by the tables, with
    ``environ`` filling options not given; None to leave the command line to typer."""
    at = _command_at(argv)
    if at is None or argv[at] != command:
        return None
    table = {**COMMANDS[command], **GLOBAL}
    opts: dict[str, Any] = {o.dest: [] for o in table.values() if o.arity == MULTI}
    words: list[str] = []
    i = 0
    while i < len(argv):
        a = argv[i]
        if i == at:
            i += 1
            continue
        if i > at and (a == "--" or not a.startswith("-") or a == "-"):
            if command not in ARGUMENTS:
                return None
            words = argv[i + 1:] if a == "--" else argv[i:]    # the words start at the first non-option
            break
        step = _read(a, argv[i + 1:], GLOBAL if i < at else table, opts)
        if step is None:
            return None                           # --help, -h, typos, a missing value: typer explains
        i += step
    if any(r not in opts for r in REQUIRED.get(command, ())):
        return None
    if command in ARGUMENTS:
        opts[ARGUMENTS[command]] = words
    for o in table.values():
        if o.envvar and o.dest not in opts and environ and environ.get(o.envvar):
            opts[o.dest] = environ[o.envvar]
    return opts


def _split(word: str) -> tuple[str, str, str]:
    """--name=value -> (--name, =, value); short options take no inline value."""
    return word.partition("=") if word.startswith("--") else (word, "", "")


def _read(word: str, rest: list[str], table: Table, opts: dict[str, Any]) -> Optional[int]:
    """Store one option (its value from ``word`` or the next word); how many words it took."""
    key, eq, inline = _split(word)
    o = table.get(key)
    if o is None or (o.arity == FLAG and eq):
        return None
    if o.arity == FLAG:
        opts[o.dest] = o.const
        return 1
    if not eq and not rest:
        return None
    value = inline if eq else rest[0]
    if o.arity == MULTI:
        opts[o.dest].append(value)
    else:
        opts[o.dest] = value
    return 1 if eq else 2


def hoist(argv: list[str]) -> list[str]:
    """Global options moved in front of the command (`cgman apply --cgroup-root X f.yaml`), as
    typer wants them. Only words before a `--` are looked at: `attach g -- cmd -v` keeps its -v."""
    cut = argv.index("--") if "--" in argv else len(argv)
    head, moved = [], []
    i = 0
    while i < cut:
        key, eq, _ = _split(argv[i])
        o = GLOBAL.get(key)
        if o is not None and (o.arity == FLAG or eq):
            moved.append(argv[i])
        elif o is not None and i + 1 < cut:
            moved += argv[i:i + 2]
            i += 1
        else:
            head.append(argv[i])
        i += 1
    return moved + head + argv[cut:]
