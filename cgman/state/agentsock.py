"""Where a running `cgman agent` serves `cgman run`: one Unix socket per cgroup root in the run dir.

Named like the applied snapshot (state/applied.py): ``<run>/agent-<root>.sock``, ``/`` in the
root spelled ``_``. Both sides (the agent that binds it, the thin client that connects) take
the path from here. Only os is imported (every interpreter has loaded it already): the
client's start-up is part of every launch.
"""

from __future__ import annotations

import os


def socket_path(run_dir: str, root: str) -> str:
    """The socket of the agent for cgroup root ``root`` (already stripped of ``/`` at its ends)."""
    return os.path.join(run_dir, f"agent-{root.replace('/', '_')}.sock")
