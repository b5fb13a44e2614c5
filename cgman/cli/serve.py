"""`cgman exporter` without typer: a long-running server should not carry typer and
click in its memory (~7 MB of the 35 MB budget). Like fast.py for `run`: this parser
knows exactly the typer command's options (a test keeps them in step) and returns
None on anything else (--help, a typo), leaving typer to print help or the error.
"""

from __future__ import annotations

import os
from typing import Any, Optional

from .fast import GLOBAL_OPTIONS

EXPORTER_OPTIONS: dict[str, tuple[str, Any]] = {
    "--listen": ("listen", "value"), "-l": ("listen", "value"),
    "--web-config": ("web_config", "value"),
    "--gzip": ("gzip", True), "--no-gzip": ("gzip", False),
    "--pressure": ("pressure", True), "--no-pressure": ("pressure", False),
    "--read-threads": ("read_threads", "value"),
}


def parse(argv: list[str]) -> Optional[dict[str, Any]]:
    """Options of `[GLOBAL...] exporter [OPTIONS...]`, or None to leave it to typer."""
    opts: dict[str, Any] = {}
    seen = False
    i = 0
    while i < len(argv):
        a = argv[i]
        if a == "exporter" and not seen:
            seen = True
            i += 1
            continue
        table = {**EXPORTER_OPTIONS, **GLOBAL_OPTIONS} if seen else GLOBAL_OPTIONS
        key, eq, inline = a.partition("=") if a.startswith("--") else (a, "", "")
        if key not in table:
            return None
        dest, kind = table[key]
        if kind == "value":
            if eq:
                opts[dest] = inline
            elif i + 1 < len(argv):
                i += 1
                opts[dest] = argv[i]
            else:
                return None
        elif eq:
            return None
        else:
            opts[dest] = kind
        i += 1
    if not seen:
        return None
    if "read_threads" in opts:
        try:
            opts["read_threads"] = int(opts["read_threads"])
        except ValueError:
            return None
        if not 1 <= opts["read_threads"] <= 16:
            return None
    return opts


def run_exporter(opts: dict[str, Any]) -> None:
    """Serve with parsed options (shared by this fast path and the typer command)."""
    from ..drivers.detect import detect
    from ..exporter import serve
    from ..exporter.server import DEFAULT_LISTEN
    from ..runtime.records import run_dir, state_dir
    if opts.get("verbose"):
        import logging
        logging.basicConfig(level=logging.DEBUG, format="%(levelname)s %(name)s: %(message)s")
    else:
        import logging
        logging.basicConfig(level=logging.WARNING, format="cgman exporter: %(levelname)s: %(message)s")
    listen = opts.get("listen") or os.environ.get("CGMAN_EXPORTER_LISTEN") or DEFAULT_LISTEN
    serve(detect(), run_dir(opts.get("run_dir")), state_dir(opts.get("state_dir")), listen,
          web_config=opts.get("web_config"), gzip_ok=bool(opts.get("gzip", True)),
          read_threads=int(opts.get("read_threads", 2)), pressure=bool(opts.get("pressure", True)))
