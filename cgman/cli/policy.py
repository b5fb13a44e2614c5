"""Policy commands: validate, plan, apply, diff, schema.

Thin: parse, call cgman.policy / plan / reconcile, render. Heavy imports happen inside
each command so that `cgman --help` stays fast.
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from ..settings import CGROUP_DRIVERS
from .common import host, load, store
from .params import FilesArg, JsonOpt, TimeoutOpt, print_json, seconds, settings


def validate(ctx: typer.Context, files: Optional[list[Path]] = FilesArg, as_json: bool = JsonOpt) -> None:
    """Check policy files; print each group, or the first error as file:line:column: key: message."""
    ps = load(files, settings(ctx))
    if as_json:
        print_json({"files": ps.files, "groups": [
            {"path": g.path, "tenant": g.tenant, "source": str(g.location)} for g in ps.groups]})
    else:
        typer.echo(f"ok: {len(ps.groups)} groups in {len(ps.files)} file(s)")
        for g in ps.groups:
            typer.echo(f"  {g.path:<32} tenant={g.tenant:<12} {g.location}")


def plan(ctx: typer.Context, files: Optional[list[Path]] = FilesArg,
         target: str = typer.Option("auto", "--target", help="auto (this host), v1, v2, hybrid, or systemd "
                                    "(the unit properties of --cgroup-driver systemd). An explicit target "
                                    "needs no root and no cgroup access."),
         as_json: bool = JsonOpt) -> None:
    """Show every kernel write `apply` would make, in order, without touching the host."""
    from ..plan import Layout, plan as make_plan
    if target not in ("auto", "v1", "v2", "hybrid", "systemd"):
        raise typer.BadParameter("use auto, v1, v2 or hybrid (or systemd: the unit properties of "
                                 "--cgroup-driver systemd)", param_hint="--target")
    ps = load(files, settings(ctx))
    if target == "systemd":
        from .systemd import plan_units
        return plan_units(ps, settings(ctx), as_json)
    if target == "auto":
        h = host(settings(ctx))
        p = make_plan(ps, h.layout, h.features)
    else:
        p = make_plan(ps, Layout.for_target(target))  # type: ignore[arg-type]
    if as_json:
        print_json(p.as_dict())
        return
    typer.echo(f"target: {p.target}   groups: {len(p.groups)}   writes: {len(p.writes)}")
    for w in p.writes:
        typer.echo(f"  {w.cgroup:<28} {w.file:<32} {w.value}")
    for warn in p.warnings:
        typer.echo(f"warning: {warn}", err=True)


DriverOpt = typer.Option("cgroupfs", "--cgroup-driver", envvar="CGMAN_CGROUP_DRIVER",
                         help="cgroupfs (write cgroup files under the cgman root) or systemd (groups become "
                         "slices, limits unit properties, over D-Bus; pure cgroup v2 with systemd as PID 1).")


def _driver(name: str) -> str:
    if name not in CGROUP_DRIVERS:
        raise typer.BadParameter(f"use {' or '.join(CGROUP_DRIVERS)}", param_hint="--cgroup-driver")
    return name


def apply(ctx: typer.Context, files: Optional[list[Path]] = FilesArg,
          dry_run: bool = typer.Option(False, "--dry-run", help="Print what would change; change nothing."),
          prune: bool = typer.Option(False, "--prune", help="Remove empty groups that are no longer "
                                     "in the files (systemd driver: stop cgman's slices)."),
          force: bool = typer.Option(False, "--force", help="With --prune: kill processes in groups "
                                     "being removed."),
          timeout: str = TimeoutOpt, as_json: bool = JsonOpt,
          cgroup_driver: str = DriverOpt) -> None:
    """Reconcile the host with the files: write only what differs; all or nothing."""
    from ..reconcile.apply import apply as do_apply
    _driver(cgroup_driver)
    ps = load(files, settings(ctx))
    if cgroup_driver == "systemd":
        from .systemd import apply_units
        return apply_units(ps, settings(ctx), dry_run, as_json, seconds(timeout), prune=prune, force=force)
    h = host(settings(ctx))
    res = do_apply(ps, h, dry_run=dry_run, prune=prune, force=force, timeout_s=seconds(timeout),
                   progress=lambda msg: typer.echo(msg, err=True))
    if not dry_run:
        from ..containers.spec import save_applied
        save_applied(store(settings(ctx)), h.root, ps, replace=prune)
    if as_json:
        print_json(res.as_dict())
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


def diff(ctx: typer.Context, files: Optional[list[Path]] = FilesArg, as_json: bool = JsonOpt,
         cgroup_driver: str = DriverOpt) -> None:
    """Show drift: settings whose live value differs from the files. Exit 2 when there is drift."""
    from ..reconcile.apply import diff as do_diff
    if _driver(cgroup_driver) == "systemd":
        from .systemd import diff_units
        if diff_units(load(files, settings(ctx)), settings(ctx), as_json):
            raise typer.Exit(2)
        return
    drift = do_diff(load(files, settings(ctx)), host(settings(ctx)))
    if as_json:
        print_json(drift)
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


def schema() -> None:
    """Print the JSON Schema of policy files (for editors and CI linters)."""
    from ..schema import json_schema
    print_json(json_schema())
