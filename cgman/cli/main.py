"""The `cgman` command line: thin wrappers that parse, call the library, render.

Domain errors become one line on stderr and exit 1; `-v` shows the traceback.
Heavy imports happen inside each command so `cgman --help` stays fast.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Any, Optional

import typer

app = typer.Typer(
    name="cgman", no_args_is_help=True, pretty_exceptions_enable=False, add_completion=False,
    help="cgman: declare cgroup limits in YAML and apply them to cgroup v1, v2 or hybrid hosts.\n\n"
         "Typical session:  cgman validate policies/  ->  cgman plan policies/  ->  "
         "cgman apply policies/  ->  cgman status  ->  cgman freeze acme/web  ->  cgman thaw acme/web\n\n"
         "Containers:  cgman run -p acme/web -d --name web1 -- CMD  ->  cgman ps  ->  "
         "cgman exec web1 -- sh  ->  cgman stop web1  ->  cgman rm web1",
    context_settings={"help_option_names": ["-h", "--help"]},
)
from .common import state as _state  # noqa: E402

FilesArg = typer.Argument(None, help="Policy files or directories (default: --policy-dir, "
                          "$CGMAN_POLICY_DIR, /etc/cgman/policies, else ./policies).",
                          show_default=False)
JsonOpt = typer.Option(False, "--json", help="Print JSON for scripts.")
TimeoutOpt = typer.Option("10s", "--timeout", help="How long to wait, e.g. 500ms, 10s.")


@app.callback()
def _global(
    verbose: bool = typer.Option(False, "-v", "--verbose", help="Log every cgroup write and show "
                                 "tracebacks on errors."),
    cgroup_root: Optional[str] = typer.Option(None, "--cgroup-root", envvar="CGMAN_CGROUP_ROOT",
                                              help="Name of cgman's root group in each hierarchy "
                                              "(default: cgman)."),
    run_dir: Optional[str] = typer.Option(None, "--run-dir", envvar="CGMAN_RUN_DIR",
                                          help="Live container records (default: /run/cgman)."),
    state_dir: Optional[str] = typer.Option(None, "--state-dir", envvar="CGMAN_STATE_DIR",
                                            help="Ledger and container scratch (default: /var/lib/cgman)."),
) -> None:
    _state["verbose"] = verbose
    _state["root"] = cgroup_root
    _state["run_dir"], _state["state_dir"] = run_dir, state_dir
    if verbose:
        import logging
        logging.basicConfig(level=logging.DEBUG, format="%(levelname)s %(name)s: %(message)s")


from .common import host as _host, load as _load  # noqa: E402,F401


def _print_json(obj: Any) -> None:
    typer.echo(json.dumps(obj, indent=2, default=str))


def _seconds(text: str) -> float:
    from ..units import UnitError, parse_duration_usec
    try:
        return parse_duration_usec(text) / 1e6
    except UnitError as e:
        raise typer.BadParameter(str(e), param_hint="--timeout") from None


def _container(target: str):
    """The record of container ``target``, or None when TARGET names a group."""
    if "/" in target or target == ".":
        return None
    from .common import store
    st = store()
    return st.load(target) if st.exists(target) else None


def _resolve(target: str):
    """TARGET -> (host, cgroup path): a container name (its leaf cgroup) or a group path."""
    rec = _container(target)
    if rec is not None:
        from ..drivers import open_host
        from ..errors import NotFound
        host = open_host(rec.cgroup_root)
        if rec.state == "exited" or not host.exists(rec.cgroup):
            raise NotFound(f"container {target} has exited (see `cgman ps -a`)")
        return host, rec.cgroup
    host = _host()
    return host, _target(host, target)


def _target(host, target: str) -> str:
    """TARGET: a group path relative to the cgman root."""
    from ..drivers import split_path
    from ..errors import NotFound
    if target.strip("/") == "":
        raise typer.BadParameter("empty target: name a group (acme/web), or '.' for the whole cgman root",
                                 param_hint="TARGET")
    path = target.strip("/")
    split_path(path)
    if not host.exists(path) and path == ".":
        raise NotFound(f"the cgman root {host.root!r} does not exist yet: run `cgman apply` first, "
                       f"or check --cgroup-root / $CGMAN_CGROUP_ROOT")
    if not host.exists(path):
        raise NotFound(f"no group or container named {target!r} under the cgman root "
                       f"{host.root!r} (see `cgman status`)")
    return path


# ------------------------------------------------------------------------------- policy
@app.command()
def validate(files: Optional[list[Path]] = FilesArg, as_json: bool = JsonOpt) -> None:
    """Check policy files; print each group, or the first error as file:line:column: key: message."""
    ps = _load(files)
    if as_json:
        _print_json({"files": ps.files, "groups": [
            {"path": g.path, "tenant": g.tenant, "source": str(g.location)} for g in ps.groups]})
    else:
        typer.echo(f"ok: {len(ps.groups)} groups in {len(ps.files)} file(s)")
        for g in ps.groups:
            typer.echo(f"  {g.path:<32} tenant={g.tenant:<12} {g.location}")


@app.command()
def plan(files: Optional[list[Path]] = FilesArg,
         target: str = typer.Option("auto", "--target", help="auto (this host), v1, v2, hybrid, or systemd "
                                    "(the unit properties of --cgroup-driver systemd). An explicit target "
                                    "needs no root and no cgroup access."),
         as_json: bool = JsonOpt) -> None:
    """Show every kernel write `apply` would make, in order, without touching the host."""
    from ..plan import Layout, plan as make_plan
    if target not in ("auto", "v1", "v2", "hybrid", "systemd"):
        raise typer.BadParameter("use auto, v1, v2 or hybrid (or systemd: the unit properties of "
                                 "--cgroup-driver systemd)", param_hint="--target")
    ps = _load(files)
    if target == "systemd":
        from .systemd import plan_units
        return plan_units(ps, as_json)
    if target == "auto":
        host = _host()
        p = make_plan(ps, host.layout, host.features)
    else:
        p = make_plan(ps, Layout.for_target(target))  # type: ignore[arg-type]
    if as_json:
        _print_json(p.as_dict())
        return
    typer.echo(f"target: {p.target}   groups: {len(p.groups)}   writes: {len(p.writes)}")
    for w in p.writes:
        typer.echo(f"  {w.cgroup:<28} {w.file:<32} {w.value}")
    for warn in p.warnings:
        typer.echo(f"warning: {warn}", err=True)


@app.command()
def apply(files: Optional[list[Path]] = FilesArg,
          dry_run: bool = typer.Option(False, "--dry-run", help="Print what would change; change nothing."),
          prune: bool = typer.Option(False, "--prune", help="Remove empty groups that are no longer "
                                     "in the files."),
          force: bool = typer.Option(False, "--force", help="With --prune: kill processes in groups "
                                     "being removed."),
          timeout: str = TimeoutOpt, as_json: bool = JsonOpt,
          cgroup_driver: str = typer.Option("cgroupfs", "--cgroup-driver", envvar="CGMAN_CGROUP_DRIVER",
                                            help="cgroupfs (write cgroup files under the cgman root) or "
                                            "systemd (groups become slices, limits unit properties, over "
                                            "D-Bus; pure cgroup v2 with systemd as PID 1).")) -> None:
    """Reconcile the host with the files: write only what differs; all or nothing."""
    from ..reconcile.apply import apply as do_apply
    if cgroup_driver not in ("cgroupfs", "systemd"):
        raise typer.BadParameter("use cgroupfs or systemd", param_hint="--cgroup-driver")
    ps = _load(files)
    if cgroup_driver == "systemd":
        if prune:
            raise typer.BadParameter("not with --cgroup-driver systemd yet", param_hint="--prune")
        from .systemd import apply_units
        return apply_units(ps, dry_run, as_json, _seconds(timeout))
    host = _host()
    res = do_apply(ps, host, dry_run=dry_run, prune=prune, force=force, timeout_s=_seconds(timeout),
                   progress=lambda msg: typer.echo(msg, err=True))
    if not dry_run:
        from ..state.applied import save
        from .common import store
        save(store(), host.root, ps, replace=prune)
    if as_json:
        _print_json(res.as_dict())
        return
    for warn in res.plan.warnings:
        typer.echo(f"warning: {warn}", err=True)
    verb = "would " if dry_run else ""
    for cg in res.created:
        typer.echo(f"{verb}create {cg}")
    for ch in res.changes:
        old = (ch.old or "").strip().replace("\n", "; ") or "-"
        typer.echo(f"{verb}set {ch.write.cgroup}/{ch.write.file} = {ch.write.value}   (was {old})")
    for cg in res.pruned:
        typer.echo(f"{verb}remove {cg}")
    if not res.created and not res.changes and not res.pruned:
        typer.echo(f"nothing to do: {res.unchanged} settings already match ({len(res.plan.groups)} groups)")
    else:
        typer.echo(f"{'dry run: ' if dry_run else ''}{len(res.created)} groups created, "
                   f"{len(res.changes)} settings changed, {res.unchanged} already matched"
                   + (f", {len(res.pruned)} removed" if res.pruned else ""))


@app.command()
def diff(files: Optional[list[Path]] = FilesArg, as_json: bool = JsonOpt) -> None:
    """Show drift: settings whose live value differs from the files. Exit 2 when there is drift."""
    from ..reconcile.apply import diff as do_diff
    drift = do_diff(_load(files), _host())
    if as_json:
        _print_json(drift)
    elif not drift:
        typer.echo("no drift: the host matches the files")
    else:
        for d in drift:
            if d["file"] is None:
                typer.echo(f"{d['cgroup']}: missing")
            else:
                typer.echo(f"{d['cgroup']}/{d['file']}: want {d['want']}, live {d['live']}")
    if drift:
        raise typer.Exit(2)


@app.command()
def schema() -> None:
    """Print the JSON Schema of policy files (for editors and CI linters)."""
    from ..schema import json_schema
    _print_json(json_schema())


# ------------------------------------------------------------------------------ runtime
@app.command()
def status(path: str = typer.Argument(".", help="Group to show (default: the whole cgman root)."),
           as_json: bool = JsonOpt) -> None:
    """Tree of groups with their limits and current usage."""
    from ..reconcile.status import status as do_status
    from ..units import format_bytes
    host = _host()
    rows = do_status(host, _target(host, path))
    if as_json:
        _print_json({"mode": host.info.mode, "root": host.root, "groups": rows})
        return
    typer.echo(f"{'GROUP':<30} {'PROCS':>5} {'STATE':<7} {'CPU(s)':>9} {'MEMORY':>9} "
               f"{'MEM MAX':>9} {'CPU MAX':>7} {'PIDS':>5} {'PIDS MAX':>8}")
    base = rows[0]["depth"] if rows else 0
    for r in rows:
        lim = r["limits"]
        name = ("  " * max(0, r["depth"] - max(base, 1))) + (host.root if r["group"] == "." else
                                                  r["group"].rsplit("/", 1)[-1])
        mem_max = lim.get("memory_max_bytes")
        typer.echo(f"{name:<30} {r['procs']:>5} {'frozen' if r['frozen'] else 'running':<7} "
                   f"{(r['cpu_usage_seconds'] or 0):>9.2f} {format_bytes(r['memory_bytes']):>9} "
                   f"{'max' if mem_max == 'max' else format_bytes(mem_max):>9} "
                   f"{str(lim.get('cpu_max') or '-'):>7} {str(r['pids'] if r['pids'] is not None else '-'):>5} "
                   f"{str(lim.get('pids_max') or '-'):>8}")


@app.command()
def freeze(target: str = typer.Argument(..., help="Group path (acme/web) or container name."),
           timeout: str = TimeoutOpt) -> None:
    """Freeze every process in TARGET and below; confirmed, or thawed again on timeout."""
    host, path = _resolve(target)
    host.freeze(path, _seconds(timeout))
    typer.echo(f"frozen {target}")


def _thaw(target: str, timeout: str) -> None:
    host, path = _resolve(target)
    host.thaw(path, _seconds(timeout))
    typer.echo(f"thawed {target}")


@app.command()
def thaw(target: str = typer.Argument(..., help="Group path (acme/web) or container name."),
         timeout: str = TimeoutOpt) -> None:
    """Resume a frozen TARGET (alias: resume)."""
    _thaw(target, timeout)


@app.command("resume")
def resume(target: str = typer.Argument(..., help="Group path (acme/web) or container name."),
           timeout: str = TimeoutOpt) -> None:
    """Alias of thaw."""
    _thaw(target, timeout)


def _signal(name: str) -> int:
    import signal as sigmod
    n = name.upper()
    if n.isdigit():
        if not 1 <= int(n) <= sigmod.SIGRTMAX:
            raise typer.BadParameter(f"signal {n} is out of range 1..{int(sigmod.SIGRTMAX)}",
                                     param_hint="--signal")
        return int(n)
    n = n if n.startswith("SIG") else "SIG" + n
    try:
        return int(getattr(sigmod, n))
    except AttributeError:
        raise typer.BadParameter(f"unknown signal {name!r} (e.g. KILL, TERM, 9)",
                                 param_hint="--signal") from None


@app.command()
def kill(target: str = typer.Argument(..., help="Group path (acme/web) or container name."),
         sig: str = typer.Option("KILL", "--signal", "-s", help="Signal name or number."),
         timeout: str = TimeoutOpt) -> None:
    """Signal every process in TARGET and below (KILL waits until the group is empty)."""
    host, path = _resolve(target)
    n = host.kill(path, _signal(sig), _seconds(timeout))
    typer.echo(f"signalled {n} process(es) in {target}")


@app.command()
def rm(target: str = typer.Argument(..., help="Group path (acme/web) or container name."),
       force: bool = typer.Option(False, "--force", "-f", help="Kill processes first.")) -> None:
    """Remove a container's record, or a group and its children (refused while processes run, unless --force)."""
    from ..errors import Busy, CgmanError, NotFound
    from .common import store as _store
    st = _store()
    if "/" not in target and st.exists(target):
        try:
            st.load(target)
        except NotFound:
            pass
        except CgmanError as e:
            from ..state.recordcheck import OtherRoot
            if not force or isinstance(e, OtherRoot):   # another root's: rm it with that --cgroup-root
                raise
            st.delete(target)          # an invalid or unreadable record: never acted on, dropped
            typer.echo(f"removed container {target} (its record was invalid or unreadable)")
            return
    if _container(target) is not None:
        from .containers import hosts, store
        from ..containers.lifecycle import rm as rm_container
        rm_container(store(), hosts(), target, force)
        typer.echo(f"removed container {target}")
        return
    host = _host()
    path = _target(host, target)
    if host.procs(path, recursive=True):
        if not force:
            raise Busy(f"{target} has running processes: stop them, or use --force to kill them")
        host.kill(path)
    groups = host.walk(path)
    for cg in reversed(groups):
        host.remove(cg)
    typer.echo(f"removed {len(groups)} group(s) under {target}")


@app.command()
def attach(target: str = typer.Argument(..., help="Leaf group path (acme/batch)."),
           command: Optional[list[str]] = typer.Argument(None, help="Command to run after `--`."),
           pid: Optional[list[int]] = typer.Option(None, "--pid", "-p", help="Move existing PIDs instead.")) -> None:
    """Place processes in a group: `--pid N`, or run `-- CMD...` inside it (like cgexec).

    The command joins the group before exec, so its first instruction runs inside it.
    """
    host = _host()
    path = _target(host, target)
    if pid:
        for p in pid:
            host.attach(path, p)
        typer.echo(f"moved {len(pid)} process(es) into {target}")
        return
    if not command:
        raise typer.BadParameter("give a command after `--`, or --pid", param_hint="COMMAND")
    host.attach(path, os.getpid())
    try:
        os.execvp(command[0], command)
    except OSError as e:
        from ..errors import NotFound
        raise NotFound(f"cannot run {command[0]!r}: {e.strerror}") from None


@app.command()
def doctor(as_json: bool = JsonOpt) -> None:
    """Check what this host offers cgman and how to fix what is missing. Exit 1 on problems."""
    from ..hostcheck.doctor import run_checks
    checks = run_checks(_host(), _state["state_dir"])
    if as_json:
        _print_json([c.as_dict() for c in checks])
    else:
        for c in checks:
            mark = "ok" if c.ok else ("warn" if c.warn else "FAIL")
            typer.echo(f"[{mark}] {c.name}: {c.detail}")
            if c.fix:
                typer.echo(f"       fix: {c.fix}")
    if not all(c.ok or c.warn for c in checks):
        raise typer.Exit(1)


from .hoist import hoist_global_options  # noqa: E402  (re-exported for tests)


def main(argv: list[str] | None = None) -> None:
    """Run the typer app; print CgmanError as one line (traceback with -v)."""
    from ..errors import CgmanError
    try:
        app(args=hoist_global_options(sys.argv[1:]) if argv is None else argv, prog_name="cgman")
    except CgmanError as e:
        if _state["verbose"]:
            import traceback
            traceback.print_exc()
        typer.echo(f"cgman: error: {e}", err=True)
        sys.exit(getattr(e, "exit_code", 1))
    except KeyboardInterrupt:
        sys.exit(130)


from . import containers as _containers  # noqa: E402,F401  (registers run, exec, ps, stop, gc, logs)
from . import usage as _usage  # noqa: E402,F401  (registers usage)
from . import exporter as _exporter  # noqa: E402,F401  (registers exporter)
from . import agent as _agent  # noqa: E402,F401  (registers agent)
from . import images as _images  # noqa: E402,F401  (registers build, images, rmi, image ...)
from . import fleet as _fleet  # noqa: E402,F401  (registers fleet init, fleet nodes)

if __name__ == "__main__":
    main()
