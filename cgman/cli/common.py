"""CLI helpers that do not import typer (the typer-free paths use them too): the Settings of
a command line, the host, store and policy files it works on, `run`'s values, and errors as
one line."""

from __future__ import annotations

import os

TYPE_CHECKING = False
if TYPE_CHECKING:           # typing is not imported at run time: ~2 ms of every `cgman run`
    from pathlib import Path
    from typing import Any, Callable, Mapping, Optional, TypeVar

    from ..drivers import Host
    from ..model import PolicySet
    from ..settings import Settings
    from ..state.records import Store
    T = TypeVar("T")

DEFAULT_POLICY_DIRS = ("/etc/cgman/policies", "policies")


class BadOption(ValueError):
    """An option's value that typer refuses too: ``flag`` names it (None: the message does)."""

    def __init__(self, flag: Optional[str], message: str) -> None:
        super().__init__(message)
        self.flag = flag


def seconds(text: str, flag: str) -> float:
    """A duration option (500ms, 10s) in seconds."""
    from ..units import UnitError, parse_duration_usec
    try:
        return parse_duration_usec(text) / 1e6
    except UnitError as e:
        raise BadOption(flag, str(e)) from None


def policy_files(files: "Optional[list[Path]]", settings: "Settings") -> "list[Path]":
    """FILE... if given, else the first policy dir that exists: $CGMAN_POLICY_DIR, then the defaults."""
    from pathlib import Path
    if files:
        return [Path(f) for f in files]
    for d in ([settings.policy_dir] if settings.policy_dir else []) + list(DEFAULT_POLICY_DIRS):
        if Path(d).is_dir():
            return [Path(d)]
    from ..errors import PolicyError
    raise PolicyError("no policy files given and no policy directory found "
                      "(pass FILE..., or set CGMAN_POLICY_DIR)")


def agent_policy_dir(given: Optional[str], settings: "Settings") -> str:
    """The agent's directory: --policy-dir, $CGMAN_POLICY_DIR, else the first default that exists
    (the first if none does: the agent then says it is missing)."""
    return given or settings.policy_dir or next((d for d in DEFAULT_POLICY_DIRS if os.path.isdir(d)),
                                                DEFAULT_POLICY_DIRS[0])


def load(files: "Optional[list[Path]]", settings: "Settings") -> "PolicySet":
    from ..policy import load_files
    return load_files(policy_files(files, settings), settings.input_limits)


def host(settings: "Settings") -> "Host":
    from ..drivers import open_host
    return open_host(settings.cgroup_root)


def store(settings: "Settings") -> "Store":
    """The run, state and bridge lease dirs, bound to this command's cgroup root and settings."""
    from ..state.records import Store
    return Store(settings)


def hosts() -> "Callable[[str], Host]":
    """Host per cgroup root (records remember theirs), opened once each."""
    from ..drivers import open_host
    cache: dict[str, Any] = {}

    def get(root: str) -> "Host":
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


def resolve_settings(flags: Mapping[str, Any], environ: Mapping[str, str]) -> "Settings":
    """The global options (typer's, or the option table's) and the environment as one Settings."""
    from ..settings import Settings
    return Settings.resolve(environ, cgroup_root=flags.get("cgroup_root"), run_dir=flags.get("run_dir"),
                            state_dir=flags.get("state_dir"), verbose=bool(flags.get("verbose")),
                            cgroup_driver=flags.get("cgroup_driver"))


def guarded(run: "Callable[[], T]", verbose: bool) -> "T":
    """``run()``, with a CgmanError as one line on stderr and its exit code (the traceback
    too with -v), and Ctrl-C as exit 130."""
    import sys

    from ..errors import CgmanError
    try:
        return run()
    except CgmanError as e:
        if verbose:
            import traceback
            traceback.print_exc()
        print(f"cgman: error: {e}", file=sys.stderr)
        sys.exit(getattr(e, "exit_code", 1))
    except KeyboardInterrupt:
        sys.exit(130)
