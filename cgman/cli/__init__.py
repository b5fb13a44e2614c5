"""The command line. ``main`` dispatches: `cgman run` takes a typer-free fast path
(interpreter start-up is part of launch latency), so do `cgman exporter` and
`cgman agent` (a long-running server should not carry typer in memory); everything else goes to typer."""

from __future__ import annotations

import sys


def main() -> None:
    if "run" in sys.argv[1:]:          # served by a running agent if there is one (cli/thin.py)
        from .thin import run_served
        served = run_served(sys.argv[1:])
        if served is not None:
            sys.exit(served)
    from .common import state
    from .hoist import hoist_global_options
    argv = hoist_global_options(sys.argv[1:])
    if "run" in argv:
        from ..errors import CgmanError
        try:
            from .fast import main as fast_main
            code = fast_main(argv)
        except CgmanError as e:
            _fail(e, state["verbose"])
        except KeyboardInterrupt:
            sys.exit(130)
        if code is not None:
            sys.exit(code)
    for command in ("exporter", "agent"):
        if command in argv and "run" not in argv:
            from .serve import parse as parse_server
            opts = parse_server(argv, command)
            if opts is not None:
                from ..errors import CgmanError
                try:
                    from . import serve
                    (serve.run_exporter if command == "exporter" else serve.run_agent)(opts)
                except CgmanError as e:
                    _fail(e, bool(opts.get("verbose")))
                except KeyboardInterrupt:
                    sys.exit(130)
                sys.exit(0)
    from .main import main as typer_main
    typer_main(argv)


def _fail(e: Exception, verbose: bool) -> None:
    if verbose:
        import traceback
        traceback.print_exc()
    print(f"cgman: error: {e}", file=sys.stderr)
    sys.exit(getattr(e, "exit_code", 1))
