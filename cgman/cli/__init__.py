"""The command line. ``main`` dispatches by the command table (commands.py): `cgman run`,
`cgman exporter` and `cgman agent` take their typer-free path when the option tables
(options.py) can read the line, since interpreter start-up is part of launch latency and
a long-running server should not carry typer in memory; every other line goes to typer
(app.py), which imports only the command it runs.

Flags and CGMAN_* variables become one Settings here, at the edge (common.resolve_settings);
nothing below cli/ reads the environment.
"""

from __future__ import annotations

import os
import sys

# Set in the agent's run server (served.py): its supervisors run `cgman run` lines as the direct
# path does, but the server collects, and the client gets the exit code from the supervisor.
IN_AGENT = False


def main() -> None:
    # A `cgman run` that an agent serves never gets here: the installed `cgman` is a C front
    # that hands it to the agent itself (cli/thin.py), and execs bin/cgman-cli for the rest.
    from .commands import COMMANDS
    from .options import command_of, hoist, parse
    words = sys.argv[1:]
    command = command_of(words)
    if command != "run":
        import gc
        gc.enable()                     # bin/cgman-cli turned it off for `run` (or a line with "run" in it)
    fast = COMMANDS[command].fast if command in COMMANDS else None
    if fast and command:
        # the tables read global options after the command too, and stop at the workload:
        # hoisting first would take `-v` out of `cgman run -p g grep -v x`
        opts = parse(words, command, os.environ)
        if opts is not None:
            from .common import guarded
            code = guarded(lambda: _run_fast(fast, opts), bool(opts.get("verbose")))
            if code is not None and command == "run" and not IN_AGENT:
                _exit_now(code)     # ~8 ms of a direct run: ~150 modules to tear down
            if code is not None:
                sys.exit(code)
    from .app import run
    run(hoist(words), command)


def _exit_now(code: int) -> None:
    """Exit with ``code`` once stdout and stderr are flushed, skipping the interpreter's
    teardown: a `cgman run` has nothing left to tidy (its ledger connection and files are
    closed, it starts no threads and registers no atexit handler)."""
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (AttributeError, OSError, ValueError):   # None, or a closed pipe
            pass
    os._exit(code)


def _run_fast(where: str, opts: "dict[str, object]") -> "int | None":
    """The typer-free path ``module:function`` with its Settings; None: a value needs typer."""
    import importlib
    import os

    from .common import resolve_settings
    module, function = where.split(":")
    runner = getattr(importlib.import_module(f"{__name__}.{module}"), function)
    return runner(resolve_settings(opts, os.environ), opts)  # type: ignore[no-any-return]
