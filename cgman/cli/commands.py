"""The command table: every `cgman` command, the module that holds it, and the typer-free
path of those that have one. As pip's ``commands_dict``, it names modules instead of
importing them: app.py imports only the command a line runs (all of them for --help),
so a command's start-up carries no other command's imports.
"""

from __future__ import annotations

from collections import namedtuple


# A namedtuple: no dataclass (~0.5 ms) and no typing.NamedTuple (typing: ~2 ms) on every `cgman run`.
class Command(namedtuple("Command", ["module", "attr", "group", "context_settings", "fast"],
                         defaults=(False, None, None))):
    """Where a command lives: ``module`` (under cgman.cli) and ``attr``, a function for a
    command or a typer.Typer for a group of subcommands (``group``); typer's
    ``context_settings``, and ``fast``: "module:function" of the typer-free path (the
    option tables of options.py), if it has one."""

    __slots__ = ()


ARGV_AFTER = {"allow_interspersed_args": False}     # options after the first word belong to CMD

# In the order `cgman --help` lists them.
COMMANDS: dict[str, Command] = {
    "validate": Command("policy", "validate"),
    "plan": Command("policy", "plan"),
    "apply": Command("policy", "apply"),
    "diff": Command("policy", "diff"),
    "schema": Command("policy", "schema"),
    "status": Command("groups", "status"),
    "freeze": Command("groups", "freeze"),
    "thaw": Command("groups", "thaw"),
    "resume": Command("groups", "resume"),
    "kill": Command("groups", "kill"),
    "rm": Command("groups", "rm"),
    "attach": Command("groups", "attach"),
    "doctor": Command("doctor", "doctor"),
    "run": Command("containers", "run", context_settings=ARGV_AFTER, fast="runcmd:fast"),
    "exec": Command("containers", "exec_", context_settings=ARGV_AFTER),
    "ps": Command("containers", "ps"),
    "stop": Command("containers", "stop"),
    "gc": Command("containers", "gc"),
    "logs": Command("containers", "logs"),
    "inspect": Command("containers", "inspect"),
    "usage": Command("usage", "usage"),
    "exporter": Command("exporter", "exporter", fast="serve:fast_exporter"),
    "agent": Command("agent", "agent", fast="serve:fast_agent"),
    "build": Command("images", "build"),
    "images": Command("images", "images_"),
    "rmi": Command("images", "rmi"),
    "image": Command("images", "image_app", group=True),
    "fleet": Command("fleet", "fleet_app", group=True),
}
