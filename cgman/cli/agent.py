"""The `agent` command: typer side (options, --help); cgman.agent runs it."""

from __future__ import annotations

from typing import Optional

import typer

from .common import state
from .main import app


def _interval(text: str) -> float:
    """30s, 500ms, 5m, 1h (hours too: a drift check may be rare)."""
    from ..units import UnitError, parse_duration_usec
    try:
        s = float(text[:-1]) * 3600 if text.endswith("h") else parse_duration_usec(text) / 1e6
    except (UnitError, ValueError):
        raise typer.BadParameter(f"{text!r}: expected a duration like 500ms, 30s, 5m or 1h",
                                 param_hint="--interval") from None
    if not s > 0:
        raise typer.BadParameter(f"{text!r}: must be more than 0, e.g. 30s", param_hint="--interval")
    return s


@app.command()
def agent(
    policy_dir: Optional[str] = typer.Option(
        None, "--policy-dir", "-d", envvar="CGMAN_POLICY_DIR", show_default=False,
        help="Directory of policy files (*.yaml) to keep applied. [default: /etc/cgman/policies, "
             "else ./policies]"),
    listen: Optional[str] = typer.Option(
        None, "--listen", "-l", envvar="CGMAN_EXPORTER_LISTEN", show_default=False,
        help="HOST:PORT for /metrics and /healthz; :PORT for every address. [default: 127.0.0.1:9753]"),
    interval: str = typer.Option("30s", "--interval", help="How often to check for drift (settings "
                                 "changed by hand) and collect containers whose supervisor died."),
    prune: bool = typer.Option(False, "--prune", help="Remove empty groups that are no longer in the "
                               "files (groups holding containers are kept)."),
    poll: bool = typer.Option(False, "--poll", help="Poll the directory every second instead of inotify "
                              "(for NFS and file systems that do not report changes)."),
    web_config: Optional[str] = typer.Option(None, "--web-config", help="TLS and basic auth for /metrics: "
                                             "a Prometheus exporter-toolkit web config."),
    gzip: bool = typer.Option(True, "--gzip/--no-gzip", help="Compress /metrics for clients that accept it."),
    pressure: bool = typer.Option(True, "--pressure/--no-pressure", help="Serve PSI where the kernel has it."),
) -> None:
    """Keep a policy directory applied, collect dead containers, serve metrics: the service.

    At start and whenever a file in --policy-dir changes, the agent applies the
    directory (a reconcile: only differing settings are written). A file with an
    error is logged with file:line and its last good version stays in force; the
    agent keeps running. Every --interval it writes back settings changed by hand
    (logged as drift) and collects containers whose supervisor died, recording
    their final usage in the ledger exactly once. Containers keep running across
    agent restarts: each has its own supervisor.

    /metrics serves everything `cgman exporter` does plus cgman_agent_* (reconciles,
    errors, drift corrections, last reconcile time). SIGHUP re-reads the files now;
    SIGTERM stops. Logs go to stderr (the journal, under systemd).

    Example:  cgman agent --policy-dir /etc/cgman/policies --listen 127.0.0.1:9753
    Unit file: packaging/systemd/cgman-agent.service
    """
    import logging
    import os
    from ..agent import serve
    from ..exporter.server import DEFAULT_LISTEN
    from .common import host, store
    level = logging.DEBUG if state["verbose"] else logging.INFO
    logging.basicConfig(level=level, format="cgman agent: %(levelname)s: %(message)s", force=True)
    if policy_dir is None:
        policy_dir = next((d for d in ("/etc/cgman/policies", "policies") if os.path.isdir(d)),
                          "/etc/cgman/policies")
    interval_s = _interval(interval)
    serve(host(), store(), policy_dir, listen or DEFAULT_LISTEN, interval_s=interval_s, prune=prune,
          poll=poll, web_config=web_config, gzip_ok=gzip, pressure=pressure)
