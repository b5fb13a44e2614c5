"""``cgman exporter``: per-container usage and per-tenant billing counters for Prometheus.

See metrics.py for what is served, collector.py for how a scrape reads the kernel,
and server.py for HTTP, TLS and basic auth. prometheus_client is used only here.
"""

from __future__ import annotations

import logging
import signal
import sys
from typing import Any

log = logging.getLogger(__name__)


def serve(info: Any, run_dir: str, state_dir: str, listen: str, *, web_config: str | None = None,
          gzip_ok: bool = False, read_threads: int = 2, pressure: bool = True,
          limits: Any = None, ready: Any = None, compat: str | None = None) -> None:
    """Serve until SIGTERM or SIGINT. ``ready(server)`` is called once listening;
    ``limits``: the HTTP server's bounds (conns.Limits; None: the defaults); ``compat``:
    "cadvisor" also serves cAdvisor's container_* names (cadvisor.py)."""
    from .collector import Collector
    from .server import Exporter, load_web_config, make_server
    web = load_web_config(web_config) if web_config else None
    collector = Collector(info, run_dir, state_dir, pressure=pressure, read_threads=read_threads, compat=compat)
    srv = make_server(Exporter(collector), listen, web, gzip_ok, limits)
    scheme = "https" if web and web.cert_file else "http"
    host, port = str(srv.server_address[0]), srv.server_address[1]
    print(f"cgman exporter: serving {scheme}://{listen.rpartition(':')[0] or host}:{port}/metrics "
          f"(run dir {run_dir}, ledger in {state_dir})", file=sys.stderr, flush=True)

    def stop(sig: int, _frame: object) -> None:
        raise KeyboardInterrupt
    old = signal.signal(signal.SIGTERM, stop)
    try:
        if ready is not None:
            ready(srv)
        srv.serve_forever(poll_interval=0.5)
    except KeyboardInterrupt:
        pass
    finally:
        signal.signal(signal.SIGTERM, old)
        srv.server_close()
        collector.close()
