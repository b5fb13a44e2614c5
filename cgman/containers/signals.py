"""The signals a container's supervisor forwards to its workload (`cgman run`, direct or served),
in one place for the three that act on them: containers/lifecycle.py (the direct path), the
agent's supervisor (cli/supervise.py: SIGNAL frames) and the C front (cli/thin.py writes them
into its header). Imports only signal: the front's header is generated before the C helpers
are built."""

from __future__ import annotations

import signal

FORWARDED = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP, signal.SIGQUIT, signal.SIGUSR1, signal.SIGUSR2)
