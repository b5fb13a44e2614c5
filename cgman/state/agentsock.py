"""Where a running `cgman agent` serves `cgman run`: one Unix socket per cgroup root in the run dir.

Named like the applied snapshot (state/applied.py): ``<run>/agent-<root>.sock``, ``/`` in the
root spelled ``_``. Both sides (the agent that binds it, the C front that connects: cli/thin.py) take
the path from here.
"""

from __future__ import annotations

import os


PREFIX, SUFFIX, SEPARATOR_AS = "agent-", ".sock", "_"     # also the C front's (cli/thin.py)


def socket_path(run_dir: str, root: str) -> str:
    """The socket of the agent for cgroup root ``root`` (already stripped of ``/`` at its ends)."""
    return os.path.join(run_dir, PREFIX + root.replace("/", SEPARATOR_AS) + SUFFIX)
