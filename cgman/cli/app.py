"""The typer app, built from the command table (commands.py) for one command line.

``build(command)`` registers only that command (every command when there is none, or
an unknown one, so that --help lists them all and a typo is named), importing only its
module. The global options are resolved here, once, into the Settings every command
takes from its context (``params.settings``).
"""

from __future__ import annotations

import importlib
import os
from typing import Optional

import typer

from ..settings import CGROUP_ROOT_ENV, RUN_DIR_ENV, STATE_DIR_ENV
from .commands import COMMANDS
from .common import guarded, resolve_settings

HELP = ("cgman: declare cgroup limits in YAML and apply them to cgroup v1, v2 or hybrid hosts.\n\n"
        "Typical session:  cgman validate policies/  ->  cgman plan policies/  ->  "
        "cgman apply policies/  ->  cgman status  ->  cgman freeze acme/web  ->  cgman thaw acme/web\n\n"
        "Containers:  cgman run -p acme/web -d --name web1 -- CMD  ->  cgman ps  ->  "
        "cgman exec web1 -- sh  ->  cgman stop web1  ->  cgman rm web1")


def global_options(
    ctx: typer.Context,
    verbose: bool = typer.Option(False, "-v", "--verbose", help="Log every cgroup write and show "
                                 "tracebacks on errors."),
    cgroup_root: Optional[str] = typer.Option(None, "--cgroup-root", envvar=CGROUP_ROOT_ENV,
                                              help="Name of cgman's root group in each hierarchy "
                                              "(default: cgman)."),
    run_dir: Optional[str] = typer.Option(None, "--run-dir", envvar=RUN_DIR_ENV,
                                          help="Live container records (default: /run/cgman)."),
    state_dir: Optional[str] = typer.Option(None, "--state-dir", envvar=STATE_DIR_ENV,
                                            help="Ledger and container scratch (default: /var/lib/cgman)."),
) -> None:
    from . import logs
    ctx.obj = resolve_settings(ctx.params, os.environ)
    logs.setup(verbose)


def build(command: Optional[str] = None) -> typer.Typer:
    """The app with ``command`` registered, or every command."""
    app = typer.Typer(name="cgman", no_args_is_help=True, pretty_exceptions_enable=False, add_completion=False,
                      help=HELP, context_settings={"help_option_names": ["-h", "--help"]})
    app.callback()(global_options)
    for name, entry in COMMANDS.items():
        if command in COMMANDS and name != command:
            continue
        attr = getattr(importlib.import_module(f"{__package__}.{entry.module}"), entry.attr)
        if entry.group:
            app.add_typer(attr, name=name)
        else:
            app.command(name, context_settings=entry.context_settings)(attr)
    return app


def run(argv: list[str], command: Optional[str]) -> None:
    """Run the command line through typer (global options first: options.hoist)."""
    from .options import globals_of
    app = build(command)
    guarded(lambda: app(args=argv, prog_name="cgman"), bool(globals_of(argv).get("verbose")))
