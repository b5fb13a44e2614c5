"""`cgman run` itself, shared by the typer command and the typer-free fast path.

Values arrive validated (typer's BadParameter or the fast parser did that); this
only builds the spec, launches and waits. No typer import here.
"""

from __future__ import annotations

import sys
from typing import TYPE_CHECKING, Optional

if TYPE_CHECKING:
    from pathlib import Path

    from ..model import PolicySet
    from ..security.resolve import RunSecurity

from .common import host, load, store


def collect_quietly() -> None:
    """The next cgman command collects containers whose waiter died (see `cgman gc`)."""
    from ..errors import CgmanError
    from ..containers.manage import gc
    from .common import hosts
    try:
        for name in gc(store(), hosts()):
            print(f"cgman: collected container {name} (its supervisor had died)", file=sys.stderr)
    except (CgmanError, OSError) as e:
        print(f"cgman: warning: gc: {e}", file=sys.stderr)


def policies_for_run(st, root: str, files: Optional[list[Path]]) -> tuple[PolicySet, dict[str, str]]:
    """-f files if given; else what `cgman apply` (or the agent) last applied; else the policy dir.
    Also how an unknown group's error names that source (spec_for's ``where`` and ``hint``)."""
    if files:
        return load(files), {}
    from ..state.applied import load as load_applied
    applied = load_applied(st, root)
    if applied is not None:
        return applied, {"where": f"applied under cgroup root {root!r}",
                         "hint": "apply its policy first (`cgman apply FILE`; a running `cgman agent` applies "
                                 "a new file in its policy dir once it is 0.5 s old) or name the file with -f FILE"}
    return load(None), {}


def execute(*, policy: str, command: list[str], name: Optional[str] = None, detach: bool = False,
            cpus: Optional[float] = None, memory_bytes: Optional[int] = None, pids: Optional[int] = None,
            hostname: Optional[str] = None, network: Optional[str] = None, rootfs: Optional[str] = None,
            layers: tuple[str, ...] = (), userns: bool = False, init: bool = True,
            env: tuple[tuple[str, str], ...] = (), timeout_s: Optional[float] = None,
            timeout_text: str = "", auto_remove: bool = False, files: Optional[list[Path]] = None,
            security: Optional[RunSecurity] = None, image: Optional[str] = None) -> int:
    """Run a container; the exit code for the CLI (the workload's, or 0 after -d)."""
    import dataclasses

    from ..containers import spec as C
    from ..containers.lifecycle import run_detached, run_foreground
    from ..security.resolve import RunSecurity
    h, st = host(), store()
    policies, source = policies_for_run(st, h.root, files)
    g = policies.get(policy.strip("/"))
    if image is None and not rootfs and not layers and g is not None and g.launch is not None:
        image = g.launch.image                     # the group's default image
    settings = None
    if image is not None:
        from ..errors import LaunchError
        from ..images.image import run_settings
        from ..images.store import ImageStore
        if rootfs or layers:
            raise LaunchError("give --image, or --rootfs/--layer, not both")
        settings = run_settings(ImageStore(st.state), image, command)
        command, layers, env = list(settings.argv), settings.layers, settings.env + env
    o = C.Overrides(cpus=cpus, memory_bytes=memory_bytes, pids=pids, hostname=hostname, network=network,
                    rootfs=rootfs, layers=layers, userns=userns, init=init, env=env, auto_remove=auto_remove,
                    security=security or RunSecurity())
    spec = C.spec_for(policies, policy, name, command, o, **source)
    if settings is not None:
        spec = dataclasses.replace(spec, cwd=settings.cwd, user=settings.user)
    collect_quietly()
    if detach:
        rec = run_detached(h, st, spec, timeout_s)
        print(rec.name, flush=True)
        return 0
    sys.stdout.flush()
    return run_foreground(h, st, spec, timeout_s, on_timeout=lambda: print(
        f"cgman: container {spec.name} timed out after {timeout_text}; stopping it", file=sys.stderr))
