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
    "--compat": ("compat", "value"),
    "--max-connections": ("max_connections", "value"), "--max-requests": ("max_requests", "value"),
    "--header-timeout": ("header_timeout", "value"), "--idle-timeout": ("idle_timeout", "value"),
}
AGENT_OPTIONS: dict[str, tuple[str, Any]] = {
    "--policy-dir": ("policy_dir", "value"),
    "--ledger-url": ("ledger_url", "value"), "--node": ("node", "value"),
    "--listen": ("listen", "value"), "-l": ("listen", "value"),
    "--interval": ("interval", "value"),
    "--prune": ("prune", True),
    "--poll": ("poll", True),
    "--web-config": ("web_config", "value"),
    "--gzip": ("gzip", True), "--no-gzip": ("gzip", False),
    "--pressure": ("pressure", True), "--no-pressure": ("pressure", False),
    "--compat": ("compat", "value"),
    "--max-connections": ("max_connections", "value"), "--max-requests": ("max_requests", "value"),
    "--header-timeout": ("header_timeout", "value"), "--idle-timeout": ("idle_timeout", "value"),
}
COMMANDS = {"exporter": EXPORTER_OPTIONS, "agent": AGENT_OPTIONS}
CHOICES = {"compat": ("cadvisor",)}        # --compat: extra names to serve (exporter/cadvisor.py)
INT_RANGES = {"read_threads": (1, 16), "max_connections": (1, 10000), "max_requests": (1, 10000)}


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
    for key in ("interval", "header_timeout", "idle_timeout"):
        if key in opts:
            try:
                opts[key] = interval_s(opts[key])
            except ValueError:
                return None
    for key, allowed in CHOICES.items():
        if key in opts and opts[key] not in allowed:
            return None
    for key, (low, high) in INT_RANGES.items():
        if key in opts:
            try:
                opts[key] = int(opts[key])
            except ValueError:
                return None
            if not low <= opts[key] <= high:
                return None
    return opts


def limits(opts: dict[str, Any]) -> Any:
    """The HTTP server's bounds (exporter.conns.Limits) from parsed options."""
    from ..exporter.conns import Limits
    d = Limits()
    return Limits(max_connections=int(opts.get("max_connections") or d.max_connections),
                  max_requests=int(opts.get("max_requests") or d.max_requests),
                  header_timeout_s=float(opts.get("header_timeout") or d.header_timeout_s),
                  idle_timeout_s=float(opts.get("idle_timeout") or d.idle_timeout_s))


def run_exporter(opts: dict[str, Any]) -> None:
    """Serve with parsed options (shared by this fast path and the typer command)."""
    from ..drivers.detect import detect
    from ..exporter import serve
    from ..exporter.server import DEFAULT_LISTEN
    from ..state.records import run_dir, state_dir
    if opts.get("verbose"):
        import logging
        logging.basicConfig(level=logging.DEBUG, format="%(levelname)s %(name)s: %(message)s")
    else:
        import logging
        logging.basicConfig(level=logging.WARNING, format="cgman exporter: %(levelname)s: %(message)s")
    listen = opts.get("listen") or os.environ.get("CGMAN_EXPORTER_LISTEN") or DEFAULT_LISTEN
    serve(detect(), run_dir(opts.get("run_dir")), state_dir(opts.get("state_dir")), listen,
          web_config=opts.get("web_config"), gzip_ok=bool(opts.get("gzip", True)),
          read_threads=int(opts.get("read_threads", 2)), pressure=bool(opts.get("pressure", True)),
          limits=limits(opts), compat=opts.get("compat"))


def run_agent(opts: dict[str, Any]) -> None:
    """Run the agent with parsed options (shared by this fast path and the typer command)."""
    import logging
    from ..agent import serve
    from ..drivers import open_host
    from ..exporter.server import DEFAULT_LISTEN
    from ..state.records import Store
    from .common import input_limits
    level = logging.DEBUG if opts.get("verbose") else logging.INFO
    logging.basicConfig(level=level, format="cgman agent: %(levelname)s: %(message)s", force=True)
    policy_dir = opts.get("policy_dir") or os.environ.get("CGMAN_POLICY_DIR") or next(
        (d for d in ("/etc/cgman/policies", "policies") if os.path.isdir(d)), "/etc/cgman/policies")
    listen = opts.get("listen") or os.environ.get("CGMAN_EXPORTER_LISTEN") or DEFAULT_LISTEN
    store = Store(opts.get("run_dir"), opts.get("state_dir"), root=opts.get("root"),
                  bridges=os.environ.get("CGMAN_BRIDGE_DIR") or None)
    url = opts.get("ledger_url") or os.environ.get("CGMAN_LEDGER_URL")
    fleet = None
    if url:
        from ..fleet import shipper
        fleet = shipper(url, opts.get("node"), store.state,
                        stop_at=os.environ.get("CGMAN_AGENT_TEST_STOP_AT", ""))
    serve(open_host(opts.get("root")), store, policy_dir, listen, fleet=fleet,
          interval_s=float(opts.get("interval", 30.0)), prune=bool(opts.get("prune")),
          poll=bool(opts.get("poll")), web_config=opts.get("web_config"), gzip_ok=bool(opts.get("gzip", True)),
          pressure=bool(opts.get("pressure", True)), http_limits=limits(opts), input_limits=input_limits(),
          compat=opts.get("compat"))
