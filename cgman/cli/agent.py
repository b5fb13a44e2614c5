"""The `agent` command: typer side (--help, usage errors); serve.py runs it."""

from __future__ import annotations

from typing import Optional

import typer

from ..settings import POLICY_DIR_ENV
from .exporter import (Compat, CompatOpt, HeaderTimeoutOpt, IdleTimeoutOpt, MaxConnectionsOpt,
                       MaxRequestsOpt, checked)
from .params import settings


def agent(
    ctx: typer.Context,
    policy_dir: Optional[str] = typer.Option(
        None, "--policy-dir", envvar=POLICY_DIR_ENV, show_default=False,
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
    compat: Optional[Compat] = CompatOpt,
    max_connections: int = MaxConnectionsOpt,
    max_requests: int = MaxRequestsOpt,
    header_timeout: str = HeaderTimeoutOpt,
    idle_timeout: str = IdleTimeoutOpt,
    ledger_url: Optional[str] = typer.Option(None, "--ledger-url", envvar="CGMAN_LEDGER_URL", show_default=False,
                                             help="Ship every ledger row to this PostgreSQL (postgresql://USER@HOST"
                                                  "/DB; password in ~/.pgpass), the fleet's bill of record. "
                                                  "See docs/fleet.md."),
    node: Optional[str] = typer.Option(None, "--node", show_default=False, help="This node's name in the "
                                       "fleet ledger (unique per node). [default: the host name]"),
    cgroup_driver: str = typer.Option("cgroupfs", "--cgroup-driver", envvar="CGMAN_CGROUP_DRIVER",
                                      help="cgroupfs, or systemd: groups are slices whose unit properties "
                                      "the agent keeps (drift is a property changed by hand)."),
) -> None:
    """Keep a policy directory applied, collect dead containers, serve metrics.

    At start and whenever a file in --policy-dir changes, the agent applies
    the directory (a reconcile: only settings that differ are written). A
    file with an error is logged with file:line and its last good version
    stays in force; the agent keeps running. Every --interval it writes back
    settings changed by hand (logged as drift) and collects containers whose
    supervisor died, recording their final usage in the ledger exactly once.
    Containers keep running across agent restarts: each has its own
    supervisor.

    /metrics serves all that `cgman exporter` serves, plus cgman_agent_*
    (reconciles, errors, drift corrections, last reconcile time).
    SIGHUP re-reads the files now; SIGTERM stops. Logs go to stderr (the
    journal, under systemd).

    Example:  cgman agent --policy-dir /etc/cgman/policies --listen :9753
    Unit file: packaging/systemd/cgman-agent.service
    """
    from .serve import run_agent
    run_agent(settings(ctx), checked(ctx))
