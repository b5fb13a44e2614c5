"""CLI helpers that do not import typer (the `cgman run` fast path uses them too)."""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Any, Optional

if TYPE_CHECKING:
    from pathlib import Path

# Global options, set by the typer callback or by the fast path.
state: dict[str, Any] = {"verbose": False, "root": None, "run_dir": None, "state_dir": None}


def policy_files(files: "Optional[list[Path]]") -> "list[Path]":
    from pathlib import Path
    if files:
        return [Path(f) for f in files]
    env = os.environ.get("CGMAN_POLICY_DIR")
    for d in ([env] if env else []) + ["/etc/cgman/policies", "policies"]:
        if Path(d).is_dir():
            return [Path(d)]
    from ..errors import PolicyError
    raise PolicyError("no policy files given and no policy directory found "
                      "(pass FILE..., or set CGMAN_POLICY_DIR)")


def load(files: "Optional[list[Path]]"):
    from ..policy import load_files
    return load_files(policy_files(files))


def host():
    from ..drivers import open_host
    return open_host(state["root"])


def store():
    """The run/state dirs, bound to this command's cgroup root; the host-wide bridge lease
    dir is moved (tests) with CGMAN_BRIDGE_DIR, read here at the edge."""
    from ..runtime.records import Store
    return Store(state.get("run_dir"), state.get("state_dir"), root=state.get("root"),
                 bridges=os.environ.get("CGMAN_BRIDGE_DIR") or None)


def hosts():
    """Host per cgroup root (records remember theirs), opened once each."""
    from ..drivers import open_host
    cache: dict[str, Any] = {}

    def get(root: str):
        if root not in cache:
            cache[root] = open_host(root)
        return cache[root]
    return get


def argv_after_dashes(command: Optional[list[str]]) -> list[str]:
    """The words after `--` (click keeps the `--` when it follows a positional)."""
    words = list(command or [])
    return words[1:] if words[:1] == ["--"] else words


def env_pairs(pairs: Optional[list[str]]) -> tuple[tuple[str, str], ...]:
    """KEY=VALUE words; a bare KEY takes the caller's value. Raises ValueError on '=VALUE'."""
    out = []
    for p in pairs or []:
        k, sep, v = p.partition("=")
        if not sep:
            v = os.environ.get(k, "")
        if not k:
            raise ValueError(f"{p!r}: use KEY=VALUE")
        out.append((k, v))
    return tuple(out)
