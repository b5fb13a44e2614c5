"""``cgman agent``: the long-running service.

It applies a policy directory at start and whenever a file changes, writes back
settings changed by hand (drift) every --interval, collects containers whose
supervisor died (final usage into the ledger, exactly once), and serves the
exporter's metrics plus its own health (cgman_agent_*). See service.py for the
loop and why a SIGKILL anywhere is safe, policies.py for how a bad file keeps its
last good version, and watch.py for inotify and polling.
"""

from __future__ import annotations

import logging
import os
import signal
import sys
import threading
from typing import Any

log = logging.getLogger("cgman.agent")


def serve(host: Any, store: Any, policy_dir: str, listen: str, *, interval_s: float = 30.0,
          prune: bool = False, poll: bool = False, web_config: str | None = None,
          gzip_ok: bool = True, pressure: bool = True, read_threads: int = 2,
          http_limits: Any = None, input_limits: Any = None, ready: Any = None,
          fleet: Any = None, compat: str | None = None, checkpoint: Any = None,
          served_stop_at: str = "", cgroup_driver: str = "cgroupfs") -> None:
    """Run until SIGTERM or SIGINT (SIGHUP re-reads the files now). ``fleet``: a
    fleet.shipper.Shipper to run beside the loop (--ledger-url), checked here first.
    ``checkpoint`` and ``served_stop_at``: the crash tests' hooks (service.Checkpoint, and the
    point where a served run stops, cli/served.py); none in service. ``cgroup_driver`` "systemd":
    the policies are applied as slices over D-Bus (units.py), checked here first."""
    from ..exporter.collector import Collector
    from ..exporter.server import Exporter, load_web_config, make_server
    from ..inputs import DEFAULT_LIMITS
    from .service import Agent
    _check(host, policy_dir, cgroup_driver)
    web = load_web_config(web_config) if web_config else None
    if fleet is not None:
        _open_fleet(fleet)
    agent = Agent(host, store, policy_dir, interval_s=interval_s, prune=prune, poll=poll,
                  limits=input_limits or DEFAULT_LIMITS, checkpoint=checkpoint, cgroup_driver=cgroup_driver)
    collector = Collector(host.info, store.run, store.state, pressure=pressure, read_threads=read_threads,
                          compat=compat)
    exp = Exporter(collector)
    exp.add_health(agent.health.metrics)
    exp.unhealthy = agent.stalled
    agent.on_policies = lambda ps: setattr(collector, "known_tenants",
                                           frozenset(g.tenant for g in ps.groups if g.tenant))
    srv = make_server(exp, listen, web, gzip_ok, http_limits)       # a taken port fails before anything is applied
    _start_http(srv, listen, bool(web and web.cert_file), host.root, store)
    if fleet is not None:
        exp.add_health(fleet.health.metrics)
        shipping = threading.Thread(target=fleet.run, name="cgman-agent-ship", daemon=True)
        shipping.start()

    runs = _serve_runs(store, host.root, served_stop_at)
    old = {s: signal.signal(s, lambda *_: agent.stop()) for s in (signal.SIGTERM, signal.SIGINT)}
    old[signal.SIGHUP] = signal.signal(signal.SIGHUP, lambda *_: agent.reload())
    try:
        if ready is not None:
            ready(srv)
        agent.run()
    finally:
        for s, h in old.items():
            signal.signal(s, h)
        if fleet is not None:
            fleet.stop()
            shipping.join(10)
            fleet.close()
        if runs is not None:
            runs.stop()
        srv.shutdown()
        srv.server_close()
        collector.close()
        log.info("stopped")
        sys.stderr.flush()


def _check(host: Any, policy_dir: str, cgroup_driver: str) -> None:
    """What must hold before anything is served or applied, each a one-line error with the fix;
    then the agent leaves its unit's cgroup for a leaf (layout (b) only)."""
    from ..errors import CgmanError
    from .delegated import enter_supervisor_leaf
    if not os.path.isdir(policy_dir):
        raise CgmanError(f"--policy-dir {policy_dir}: not a directory (create it, or point --policy-dir "
                         f"or CGMAN_POLICY_DIR at your policy files)")
    if cgroup_driver == "systemd":
        from .units import UnitApplier
        UnitApplier.check()                  # no system bus or no systemd
    enter_supervisor_leaf(host.info.unified, host.root, host.info.mode)


def _start_http(srv: Any, listen: str, tls: bool, root: str, store: Any) -> None:
    """Serve /metrics in a thread of its own, and say where."""
    hostname, port = str(srv.server_address[0]), srv.server_address[1]
    log.info("serving %s://%s:%s/metrics; cgroup root %s, run dir %s, ledger in %s", "https" if tls else "http",
             listen.rpartition(":")[0] or hostname, port, root, store.run, store.state)
    threading.Thread(target=srv.serve_forever, kwargs={"poll_interval": 0.5}, name="cgman-agent-http",
                     daemon=True).start()


def _serve_runs(store: Any, root: str, stop_at: str) -> Any:
    """Serve `cgman run` on the agent's socket (serve_run.py); without it, runs launch by themselves."""
    from ..errors import CgmanError
    from .serve_run import ServedRuns
    runs = ServedRuns(store.run, store.state, root, stop_at)
    try:
        store.rundir.fd()           # the run dir, created 0700 or refused if another user could write it
        runs.start()
    except (OSError, CgmanError) as e:
        log.error("cannot serve `cgman run` on %s: %s; runs launch by themselves", runs.path, e)
        return None
    return runs


def _open_fleet(fleet: Any) -> None:
    """A wrong URL, password, schema or a taken node name stop the agent here, in one line;
    a database that is only down does not: rows wait in the local ledger until it is back."""
    from ..fleet.db import FleetUnreachable
    try:
        fleet.open()
    except FleetUnreachable as e:
        log.error("%s: starting anyway; rows wait in the local ledger and ship when it is back", e)
