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
    return load_files(policy_files(files), input_limits())


def input_limits(environ: "Optional[dict[str, str]]" = None):
    """Bounds on policy files and price sheets: CGMAN_MAX_INPUT_BYTES (bytes, or 8Mi) per file
    and CGMAN_MAX_GROUPS per apply. Resolved here, at the edge; the library takes them as values."""
    from ..errors import CgmanError
    from ..inputs import DEFAULT_LIMITS, Limits
    from ..units import UnitError, parse_quantity
    env = os.environ if environ is None else environ
    size, groups = env.get("CGMAN_MAX_INPUT_BYTES", ""), env.get("CGMAN_MAX_GROUPS", "")
    limits = DEFAULT_LIMITS
    if size:
        try:
            n = parse_quantity(size)
        except UnitError:
            n = 0
        if not isinstance(n, int) or n < 1:
            raise CgmanError(f"CGMAN_MAX_INPUT_BYTES={size[:40]!r}: expected a size such as 4194304 or 8Mi")
        limits = Limits(max_input_bytes=n, max_groups=limits.max_groups)
    if groups:
        if not (groups.isascii() and groups.isdigit() and len(groups) < 10 and int(groups) > 0):
            raise CgmanError(f"CGMAN_MAX_GROUPS={groups[:40]!r}: expected a positive number such as 10000")
        limits = Limits(max_input_bytes=limits.max_input_bytes, max_groups=int(groups))
    return limits


def host():
    from ..drivers import open_host
    return open_host(state["root"])


def store():
    """The run/state dirs, bound to this command's cgroup root; the host-wide bridge lease
    dir is moved (tests) with CGMAN_BRIDGE_DIR, read here at the edge."""
    from ..state.records import Store
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


def run_security(privileged: bool = False, cap_add: Optional[list[str]] = None,
                 cap_drop: Optional[list[str]] = None, devices: Optional[list[str]] = None,
                 opts: Optional[list[str]] = None, volumes: Optional[list[str]] = None) -> Any:
    """`run`'s security flags as a RunSecurity. ValueError names the flag and what is wrong.

    --device PATH[:ACCESS] (ACCESS of r, w, m; default rwm); --security-opt seccomp=default|
    unconfined|FILE and no-new-privileges[=true|false], as `docker run` spells them; --volume
    PATH[:ro] (a host path, the same path inside)."""
    from ..security.caps import normalize
    from ..security.devices import check_access
    from ..security.resolve import RunSecurity
    devs = []
    for d in devices or []:
        path, _, access = d.partition(":")
        devs.append((path, check_access(access or "rwm")))
    seccomp, nnp = None, None
    for o in opts or []:
        key, eq, value = o.partition("=")
        if key == "seccomp" and eq and value:
            if value not in ("default", "unconfined"):
                value = os.path.abspath(value)
            seccomp = value
        elif key == "no-new-privileges" and value in ("", "true", "false"):
            nnp = value != "false"
        else:
            raise ValueError(f"--security-opt {o[:60]!r}: use seccomp=default|unconfined|FILE or "
                             f"no-new-privileges[=true|false]")
    vols = []
    for v in volumes or []:
        path, _, mode = v.partition(":")
        if mode not in ("", "ro", "rw") or not path:
            raise ValueError(f"--volume {v[:60]!r}: use PATH or PATH:ro (an absolute host path)")
        vols.append((os.path.abspath(path), mode == "ro"))
    return RunSecurity(volumes=tuple(vols), privileged=privileged, cap_add=tuple(normalize(c) for c in cap_add or ()),
                       cap_drop=tuple(normalize(c) for c in cap_drop or ()), devices=tuple(devs),
                       seccomp=seccomp, no_new_privileges=nnp)


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
