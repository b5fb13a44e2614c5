"""`cgman agent` that stops itself (SIGSTOP) at one named point, so that a crash test can
SIGKILL it there by PID. The fault injection lives here, on the test side: the agent only
calls its checkpoint (agent/service.py), which the command line never gives it.

    python -m tests.agent_crashpoint POINT [cgman agent options...]

POINT: before-apply, write:N (after the N-th cgroup change of an apply), after-apply,
collect:N (after the N-th container collected), or the fleet shipper's ship-mid:N and
ship-acked:N (fleet/shipper.py: inside the N-th batch's transaction, or after its commit), or
served:request (each served run's supervisor, once it has read its request; cli/supervise.py).
The environment (CGMAN_CGROUP_ROOT, CGMAN_RUN_DIR, ...) is read as `cgman agent` reads it.
"""

from __future__ import annotations

import logging
import os
import signal
import sys

log = logging.getLogger("cgman.agent")
AGENT_POINTS = {"before-apply": "before-apply", "after-apply": "after-apply", "write": "write",
                "collect": "collected"}


class StopAt:
    """The agent's checkpoint: SIGSTOP this process at the N-th pass of one point."""

    def __init__(self, point: str) -> None:
        kind, _, n = point.partition(":")
        if kind not in AGENT_POINTS or n.isdigit() != (kind in ("write", "collect")):     # write:N, collect:N
            raise SystemExit(f"agent_crashpoint: bad point {point!r}")
        self.point, self.watched, self.left = point, AGENT_POINTS[kind], int(n or 1)

    def __call__(self, where: str) -> None:
        if where != self.watched:
            return
        self.left -= 1
        if self.left == 0:
            log.warning("stopping at %s", self.point)
            for h in logging.getLogger().handlers:
                h.flush()
            os.kill(os.getpid(), signal.SIGSTOP)


def main(argv: list[str]) -> None:
    from cgman.cli.common import guarded, resolve_settings
    from cgman.cli.options import parse
    from cgman.cli.serve import run_agent, server_options
    point, line = argv[0], ["agent", *argv[1:]]
    opts = parse(line, "agent", os.environ)
    if opts is None:
        raise SystemExit(f"agent_crashpoint: the typer-free parser cannot read {line}")
    ship, served = point.startswith("ship-"), point.startswith("served:")
    guarded(lambda: run_agent(resolve_settings(opts, os.environ), server_options(opts),
                              checkpoint=None if ship or served else StopAt(point),
                              ship_stop_at=point if ship else "",
                              served_stop_at=point.removeprefix("served:") if served else ""),
            verbose=True)


if __name__ == "__main__":
    main(sys.argv[1:])
