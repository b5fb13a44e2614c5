"""`cgman run` itself, shared by the typer command and the typer-free fast path.

``run_request`` turns the options (typer's values, or the option table's strings) into
``execute``'s keywords, refusing what typer would refuse; ``execute`` builds the spec,
launches and waits. No typer import here.
"""

from __future__ import annotations

import gc
import sys

from .common import BadOption, host, hosts, load, seconds, store

TYPE_CHECKING = False
if TYPE_CHECKING:           # typing is not imported at run time: ~2 ms of every `cgman run`
    from pathlib import Path
    from typing import Any, Mapping, Optional

    from ..model import PolicySet
    from ..security.resolve import RunSecurity
    from ..settings import Settings
    from ..state.records import Store


def collect_quietly(settings: "Settings", only: Optional[str] = None) -> None:
    """The next cgman command collects containers whose waiter died (see `cgman gc`); ``only``:
    just that name, if it is taken."""
    from ..containers.manage import gc, gc_name
    from ..errors import CgmanError
    try:
        st = store(settings)
        if only is not None:
            names = [only] if st.exists(only) and gc_name(st, hosts(), only) else []
        else:
            names = gc(st, hosts())
        for name in names:
            print(f"cgman: collected container {name} (its supervisor had died)", file=sys.stderr)
    except (CgmanError, OSError) as e:
        print(f"cgman: warning: gc: {e}", file=sys.stderr)


def policies_for_run(st: "Store", root: str, files: "Optional[list[Path]]",
                     settings: "Settings") -> "tuple[PolicySet, dict[str, str]]":
    """-f files if given; else what `cgman apply` (or the agent) last applied; else the policy dir.
    Also how an unknown group's error names that source (spec_for's ``where`` and ``hint``)."""
    if files:
        return load(files, settings), {}
    from ..state.applied import load as load_applied
    applied = load_applied(st, root)
    if applied is not None:
        return applied, {"where": f"applied under cgroup root {root!r}",
                         "hint": "apply its policy first (`cgman apply FILE`; a running `cgman agent` applies "
                                 "a new file in its policy dir once it is 0.5 s old) or name the file with -f FILE"}
    return load(None, settings), {}


def _memory_bytes(text: Optional[str]) -> Optional[int]:
    if text is None:
        return None
    from ..units import UnitError, parse_quantity
    try:
        q = parse_quantity(text)
    except UnitError as e:
        raise BadOption("--memory", str(e)) from None
    if not isinstance(q, int) or q <= 0:
        raise BadOption("--memory", "give a size like 256Mi (unlimited: leave it out)")
    return q


def _number(kind: type, value: Any, flag: str) -> Any:
    try:
        return None if value is None else kind(value)
    except ValueError:
        raise BadOption(flag, f"{value!r} is not a valid {kind.__name__}") from None


def run_request(o: Mapping[str, Any]) -> dict[str, Any]:
    """``execute``'s keywords from `run`'s options, keyed by the typer parameters' names;
    BadOption for a value typer would refuse."""
    from .common import env_pairs, run_security
    try:
        security = run_security(o.get("privileged") or False, o.get("cap_add"), o.get("cap_drop"),
                                o.get("device"), o.get("security_opt"), o.get("volume"))
    except ValueError as e:
        raise BadOption(None, str(e)) from None
    try:
        env = env_pairs(o.get("env"))
    except ValueError as e:
        raise BadOption("--env", str(e)) from None
    timeout = o.get("timeout")
    rootfs = o.get("rootfs")
    return dict(policy=o["policy"], command=list(o.get("command") or []), name=o.get("name"),
                detach=bool(o.get("detach")), cpus=_number(float, o.get("cpus"), "--cpus"),
                memory_bytes=_memory_bytes(o.get("memory")), pids=_number(int, o.get("pids"), "--pids"),
                hostname=o.get("hostname"), network=o.get("network"), rootfs=str(rootfs) if rootfs else None,
                layers=tuple(str(p) for p in o.get("layer") or ()), userns=bool(o.get("userns")),
                init=o.get("init", True), env=env, timeout_s=seconds(timeout, "--timeout") if timeout else None,
                timeout_text=timeout or "", auto_remove=bool(o.get("rm")), files=list(o.get("files") or ()) or None,
                security=security, image=o.get("image"))


def execute(settings: "Settings", *, policy: str, command: list[str], name: Optional[str] = None,
            detach: bool = False, cpus: Optional[float] = None, memory_bytes: Optional[int] = None,
            pids: Optional[int] = None, hostname: Optional[str] = None, network: Optional[str] = None,
            rootfs: Optional[str] = None, layers: tuple[str, ...] = (), userns: bool = False, init: bool = True,
            env: tuple[tuple[str, str], ...] = (), timeout_s: Optional[float] = None,
            timeout_text: str = "", auto_remove: bool = False, files: "Optional[list[Path]]" = None,
            security: "Optional[RunSecurity]" = None, image: Optional[str] = None) -> int:
    """Run a container; the exit code for the CLI (the workload's, or 0 after -d)."""
    from ..containers import spec as C
    from ..containers.lifecycle import run_detached, run_foreground
    from ..security.resolve import RunSecurity
    # bin/cgman-cli turned the collector off for the imports, which are done. Their objects go to
    # the permanent generation first: enabled over them, the next allocation would start a
    # pass over every one of them (~3 ms, all of it on the launch path), and they are no garbage.
    gc.freeze()
    gc.enable()
    h, st = host(settings), store(settings)
    kw: dict[str, Any] = dict(cpus=cpus, memory_bytes=memory_bytes, pids=pids, hostname=hostname, network=network,
                              userns=userns, init=init, auto_remove=auto_remove, security=security or RunSecurity())
    spec = None
    if not files and image is None and not rootfs and not layers:
        spec = _precompiled(st, h.root, policy.strip("/"), name, command, C.Overrides(env=env, **kw),
                            settings.verbose)
    if spec is None:
        spec = _spec_from_policies(settings, st, h.root, files, policy, name, command, image, rootfs, layers, env, kw)
    from . import IN_AGENT
    if not IN_AGENT:
        collect_quietly(settings)
    elif name:                # served: the agent collects every interval (gc here is O(containers))
        collect_quietly(settings, name)
    if detach:
        rec = run_detached(h, st, spec, timeout_s)
        print(rec.name, flush=True)
        return 0
    sys.stdout.flush()
    return run_foreground(h, st, spec, timeout_s, on_timeout=lambda: print(
        f"cgman: container {spec.name} timed out after {timeout_text}; stopping it", file=sys.stderr))


def _precompiled(st: "Store", root: str, group: str, name: Optional[str], command: list[str],
                 o: Any, verbose: bool) -> Any:
    """The spec from ``group``'s launch parameters as compiled when it was applied, or None
    (then the run reads the applied policies); -v says which."""
    from ..containers import spec as C
    from ..state.applied import load_launch
    params, why = load_launch(st, root, group)
    spec = None if params is None else C.from_params(params, group, name, command, o)
    if verbose:
        how = (f"launch parameters of {group} as compiled when it was applied" if spec is not None else
               f"reading the applied policies (no precompiled launch parameters of {group}: "
               f"{why or 'this run overrides them'})")
        print(f"cgman: run: {how}", file=sys.stderr)
    return spec


def _spec_from_policies(settings: "Settings", st: "Store", root: str, files: "Optional[list[Path]]", policy: str,
                        name: Optional[str], command: list[str], image: Optional[str], rootfs: Optional[str],
                        layers: tuple[str, ...], env: tuple[tuple[str, str], ...], kw: dict[str, Any]) -> Any:
    """The spec from the policies (-f files, else the applied ones), with an image's settings."""
    import dataclasses

    from ..containers import spec as C
    policies, source = policies_for_run(st, root, files, settings)
    g = policies.get(policy.strip("/"))
    if image is None and not rootfs and not layers and g is not None and g.launch is not None:
        image = g.launch.image                     # the group's default image
    image_run = None
    if image is not None:
        from ..errors import LaunchError
        from ..images.image import run_settings
        from ..images.store import ImageStore
        if rootfs or layers:
            raise LaunchError("give --image, or --rootfs/--layer, not both")
        image_run = run_settings(ImageStore(st.state), image, command)
        command, layers, env = list(image_run.argv), image_run.layers, image_run.env + env
    spec = C.spec_for(policies, policy, name, command, C.Overrides(rootfs=rootfs, layers=layers, env=env, **kw),
                      **source)
    if image_run is not None:
        spec = dataclasses.replace(spec, cwd=image_run.cwd, user=image_run.user)
    return spec


def fast(settings: "Settings", opts: dict[str, Any]) -> Optional[int]:
    """`cgman run` read by the option table; None if a value needs typer's usage error."""
    try:
        request = run_request(opts)
    except BadOption:
        return None
    from . import logs
    logs.setup_when_needed(settings.verbose)
    return execute(settings, **request)
