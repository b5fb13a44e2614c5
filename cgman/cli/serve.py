"""`cgman exporter` and `cgman agent` without typer: a long-running server should not
carry typer, click and rich in its memory (~15 MB; the exporter's budget is 35 MB).
Like fast.py for `run`: this parser knows exactly the typer commands' options (a test
keeps them in step) and returns None on anything else (--help, a typo, a bad value),
leaving typer to print help or the error.
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
AGENT_OPTIONS: dict[str, tuple[str, Any]] = {
    "--policy-dir": ("policy_dir", "value"),
    "--listen": ("listen", "value"), "-l": ("listen", "value"),
    "--interval": ("interval", "value"),
    "--prune": ("prune", True),
    "--poll": ("poll", True),
    "--web-config": ("web_config", "value"),
    "--gzip": ("gzip", True), "--no-gzip": ("gzip", False),
    "--pressure": ("pressure", True), "--no-pressure": ("pressure", False),
}
COMMANDS = {"exporter": EXPORTER_OPTIONS, "agent": AGENT_OPTIONS}


def interval_s(text: str) -> float:
    """--interval: 500ms, 30s, 5m or 1h; raises ValueError with the message to show."""
    from ..units import UnitError, parse_duration_usec
    try:
        s = float(text[:-1]) * 3600 if text.endswith("h") else parse_duration_usec(text) / 1e6
    except (UnitError, ValueError):
        raise ValueError(f"{text!r}: expected a duration like 500ms, 30s, 5m or 1h") from None
    if not s > 0:
        raise ValueError(f"{text!r}: must be more than 0, e.g. 30s")
    return s


def parse(argv: list[str], command: str = "exporter") -> Optional[dict[str, Any]]:
    """Options of `[GLOBAL...] COMMAND [OPTIONS...]`, or None to leave it to typer."""
    opts: dict[str, Any] = {}
    seen = False
    i = 0
    while i < len(argv):
        a = argv[i]
        if a == command and not seen:
            seen = True
            i += 1
            continue
        table = {**COMMANDS[command], **GLOBAL_OPTIONS} if seen else GLOBAL_OPTIONS
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
    if "interval" in opts:
        try:
            opts["interval"] = interval_s(opts["interval"])
        except ValueError:
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


def run_agent(opts: dict[str, Any]) -> None:
    """Run the agent with parsed options (shared by this fast path and the typer command)."""
    import logging
    from ..agent import serve
    from ..drivers import open_host
    from ..exporter.server import DEFAULT_LISTEN
    from ..runtime.records import Store
    from .common import input_limits
    level = logging.DEBUG if opts.get("verbose") else logging.INFO
    logging.basicConfig(level=level, format="cgman agent: %(levelname)s: %(message)s", force=True)
    policy_dir = opts.get("policy_dir") or os.environ.get("CGMAN_POLICY_DIR") or next(
        (d for d in ("/etc/cgman/policies", "policies") if os.path.isdir(d)), "/etc/cgman/policies")
    listen = opts.get("listen") or os.environ.get("CGMAN_EXPORTER_LISTEN") or DEFAULT_LISTEN
    serve(open_host(opts.get("root")), Store(opts.get("run_dir"), opts.get("state_dir")), policy_dir, listen,
          interval_s=float(opts.get("interval", 30.0)), prune=bool(opts.get("prune")),
          poll=bool(opts.get("poll")), web_config=opts.get("web_config"), gzip_ok=bool(opts.get("gzip", True)),
          pressure=bool(opts.get("pressure", True)), limits=input_limits())
