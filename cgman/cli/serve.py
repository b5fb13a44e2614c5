"""`cgman exporter` and `cgman agent` themselves, shared by the typer commands and the
typer-free path (options.py reads their command lines by table): ``server_options``
checks and converts the values as typer would, ``run_exporter`` and ``run_agent`` serve.
No typer import here: a long-running server should not carry it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Callable, Mapping, Optional

from ..settings import CGROUP_DRIVERS
from .common import BadOption

if TYPE_CHECKING:
    from ..exporter.conns import Limits
    from ..settings import Settings

CHOICES = {"compat": ("cadvisor",),        # --compat: extra names to serve (exporter/cadvisor.py)
           "cgroup_driver": CGROUP_DRIVERS}
INT_RANGES = {"read_threads": (1, 16), "max_connections": (1, 10000), "max_requests": (1, 10000)}
DURATIONS = ("interval", "header_timeout", "idle_timeout")


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


def server_options(o: Mapping[str, Any]) -> dict[str, Any]:
    """The options with durations in seconds and numbers as ints, checked as typer checks them;
    BadOption names the option of a value typer would refuse. Options not given stay out."""
    out = {k: v for k, v in o.items() if v is not None}
    for key in DURATIONS:
        if key in out:
            try:
                out[key] = interval_s(out[key]) if isinstance(out[key], str) else float(out[key])
            except ValueError as e:
                raise BadOption("--" + key.replace("_", "-"), str(e)) from None
    for key, allowed in CHOICES.items():
        if key in out and out[key] not in allowed:
            raise BadOption("--" + key.replace("_", "-"), f"{out[key]!r} is not one of {', '.join(allowed)}")
    for key, (low, high) in INT_RANGES.items():
        if key in out:
            try:
                out[key] = int(out[key])
            except ValueError:
                raise BadOption("--" + key.replace("_", "-"), f"{out[key]!r} is not a number") from None
            if not low <= out[key] <= high:
                raise BadOption("--" + key.replace("_", "-"), f"{out[key]} is not in {low}..{high}")
    return out


def limits(opts: Mapping[str, Any]) -> "Limits":
    """The HTTP server's bounds (exporter.conns.Limits) from checked options."""
    from ..exporter.conns import Limits
    d = Limits()
    return Limits(max_connections=int(opts.get("max_connections") or d.max_connections),
                  max_requests=int(opts.get("max_requests") or d.max_requests),
                  header_timeout_s=float(opts.get("header_timeout") or d.header_timeout_s),
                  idle_timeout_s=float(opts.get("idle_timeout") or d.idle_timeout_s))


def run_exporter(settings: "Settings", opts: Mapping[str, Any]) -> None:
    """Serve with checked options (``server_options``) until SIGTERM."""
    from ..drivers.detect import detect
    from ..exporter import serve
    from ..exporter.server import DEFAULT_LISTEN
    from . import logs
    from .common import store
    logs.setup(settings.verbose, "exporter")
    st = store(settings)
    serve(detect(), st.run, st.state, opts.get("listen") or DEFAULT_LISTEN,
          web_config=opts.get("web_config"), gzip_ok=bool(opts.get("gzip", True)),
          read_threads=int(opts.get("read_threads", 2)), pressure=bool(opts.get("pressure", True)),
          limits=limits(opts), compat=opts.get("compat"))


def run_agent(settings: "Settings", opts: Mapping[str, Any], *,
              checkpoint: Optional[Callable[[str], None]] = None, ship_stop_at: str = "",
              served_stop_at: str = "") -> None:
    """Run the agent with checked options until SIGTERM. ``checkpoint``, ``ship_stop_at`` and
    ``served_stop_at`` are the crash tests' fault hooks (tests/agent_crashpoint.py); the
    command line gives none."""
    from ..agent import serve
    from ..exporter.server import DEFAULT_LISTEN
    from . import logs
    from .common import agent_policy_dir, host, store
    logs.setup(settings.verbose, "agent")
    st = store(settings)
    fleet = None
    if opts.get("ledger_url"):
        from ..fleet import shipper
        fleet = shipper(opts["ledger_url"], opts.get("node"), st.state, stop_at=ship_stop_at)
    serve(host(settings), st, agent_policy_dir(opts.get("policy_dir"), settings),
          opts.get("listen") or DEFAULT_LISTEN, fleet=fleet, interval_s=float(opts.get("interval", 30.0)),
          prune=bool(opts.get("prune")), poll=bool(opts.get("poll")), web_config=opts.get("web_config"),
          gzip_ok=bool(opts.get("gzip", True)), pressure=bool(opts.get("pressure", True)),
          http_limits=limits(opts), input_limits=settings.input_limits, compat=opts.get("compat"),
          checkpoint=checkpoint, served_stop_at=served_stop_at,
          cgroup_driver=opts.get("cgroup_driver") or "cgroupfs")


def fast_exporter(settings: "Settings", opts: dict[str, Any]) -> Optional[int]:
    """`cgman exporter` read by the option table; None if a value needs typer's usage error."""
    try:
        checked = server_options(opts)
    except BadOption:
        return None
    run_exporter(settings, checked)
    return 0


def fast_agent(settings: "Settings", opts: dict[str, Any]) -> Optional[int]:
    """`cgman agent` read by the option table; None if a value needs typer's usage error."""
    try:
        checked = server_options(opts)
    except BadOption:
        return None
    run_agent(settings, checked)
    return 0
