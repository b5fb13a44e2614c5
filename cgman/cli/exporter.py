"""The `exporter` command, typer side (--help and usage errors; serve.py runs it), and the HTTP
server's options it shares with `agent`."""

from __future__ import annotations

from enum import Enum
from typing import Optional

import typer

from .params import settings, usage_error


class Compat(str, Enum):
    """--compat: the names of another exporter to serve as well (exporter/cadvisor.py)."""
    cadvisor = "cadvisor"


# The HTTP server's options, shared by `cgman exporter` and `cgman agent` (one declaration).
CompatOpt = typer.Option(None, "--compat", show_default=False, help="Also serve another exporter's names "
                         "for the same values: cadvisor (container_* with id, name, image; README lists which map).")
MaxConnectionsOpt = typer.Option(64, "--max-connections", min=1, max=10000, help="Connections (so threads) at "
                                 "once; past it the longest-waiting idle or slow one is closed, or the new one "
                                 "gets 503 if all are mid-request.")
MaxRequestsOpt = typer.Option(40, "--max-requests", min=1, max=10000, help="Requests in flight at once (as "
                              "node_exporter's --web.max-requests); past it: 503.")
HeaderTimeoutOpt = typer.Option("10s", "--header-timeout", help="A request's line and headers (and the TLS "
                                "handshake) must arrive whole within this, or the connection is closed.")
IdleTimeoutOpt = typer.Option("120s", "--idle-timeout", help="How long a kept-alive connection may wait for "
                              "its next request.")


def exporter(
    ctx: typer.Context,
    listen: Optional[str] = typer.Option(None, "--listen", "-l", envvar="CGMAN_EXPORTER_LISTEN",
                                         help="HOST:PORT to serve /metrics on; :PORT for every address. "
                                              "[default: 127.0.0.1:9753]", show_default=False),
    web_config: Optional[str] = typer.Option(None, "--web-config", help="TLS and basic auth: a Prometheus "
                                             "exporter-toolkit web config (tls_server_config, "
                                             "basic_auth_users with bcrypt hashes)."),
    gzip: bool = typer.Option(True, "--gzip/--no-gzip", help="Compress responses for clients that accept "
                              "gzip, as Prometheus does (2 MB -> 110 KiB at 1000 containers, for ~1 ms)."),
    pressure: bool = typer.Option(True, "--pressure/--no-pressure", help="Read PSI (cpu/memory/io.pressure) "
                                  "where the kernel has it: 3 of ~12 files per container."),
    read_threads: int = typer.Option(2, "--read-threads", min=1, max=16, help="Threads reading cgroup "
                                     "files per scrape (the cost is kernel time: use the cores you can spare)."),
    compat: Optional[Compat] = CompatOpt,
    max_connections: int = MaxConnectionsOpt,
    max_requests: int = MaxRequestsOpt,
    header_timeout: str = HeaderTimeoutOpt,
    idle_timeout: str = IdleTimeoutOpt,
) -> None:
    """Serve per-container usage and per-tenant billing counters to Prometheus.

    Every scrape reads each live container's cgroup (CPU, memory and working set,
    OOM kills, IO bytes and ops, pids, frozen, pressure) and the ledger (tenants'
    totals, exited containers included, never going backwards). Metric names:
    cgman.exporter.metrics; Grafana dashboards in grafana/.

    Example:  cgman exporter --listen :9753   then scrape http://HOST:9753/metrics
    """
    from .serve import run_exporter
    run_exporter(settings(ctx), checked(ctx))


def checked(ctx: typer.Context) -> dict[str, object]:
    """The server's options (``ctx.params``) checked and converted as on the typer-free path."""
    from .common import BadOption
    from .serve import server_options
    compat = ctx.params.get("compat")
    try:
        return server_options({**ctx.params, "compat": compat.value if compat else None})
    except BadOption as e:
        raise usage_error(e) from None
