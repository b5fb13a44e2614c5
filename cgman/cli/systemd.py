"""`plan --target systemd`, `apply --cgroup-driver systemd [--prune]` and `diff --cgroup-driver
systemd`: render the systemd driver's unit plan, reconcile and drift (drivers/systemd). Kept apart
so policy.py only routes to it."""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

import typer

if TYPE_CHECKING:
    from ..settings import Settings


def _root(settings: "Settings") -> str:
    from ..drivers import cgroup_root
    return cgroup_root(settings.cgroup_root)


def plan_units(ps: Any, settings: "Settings", as_json: bool) -> None:
    """Every slice and the unit properties it would get; no root, no D-Bus."""
    from ..drivers.systemd.units import unit_plan
    p = unit_plan(ps, _root(settings))
    if as_json:
        typer.echo(json.dumps(p.as_dict(), indent=2))
        return
    typer.echo(f"target: systemd   units: {len(p.units)} (one slice per group)")
    for u in p.units:
        typer.echo(f"  {u.name}  (group {u.group}, in {u.parent})")
        for prop in u.props:
            typer.echo(f"    {prop.name}={prop.render()}")
        if u.frozen is not None:
            typer.echo(f"    {'systemctl freeze' if u.frozen else 'systemctl thaw'}")


def apply_units(ps: Any, settings: "Settings", dry_run: bool, as_json: bool, timeout_s: float,
                prune: bool = False, force: bool = False) -> None:
    """Reconcile systemd's slices with the files over D-Bus."""
    from ..drivers.systemd.bus import SystemdBus
    from ..drivers.systemd.reconcile import apply_units as reconcile
    with SystemdBus(timeout_s=max(timeout_s, 30.0)) as bus:
        res = reconcile(ps, _root(settings), bus, dry_run=dry_run, prune=prune, force=force)
    if as_json:
        typer.echo(json.dumps(res.as_dict(), indent=2))
        return
    verb = "would " if dry_run else ""
    for name in res.created:
        typer.echo(f"{verb}create {name}")
    for ch in res.changes:
        typer.echo(f"{verb}set {ch}")
    for name in res.pruned:
        typer.echo(f"{verb}stop {name}")
    if not res.created and not res.changes and not res.pruned:
        typer.echo(f"nothing to do: {res.unchanged} unit properties already match")
    else:
        typer.echo(f"{'dry run: ' if dry_run else ''}{len(res.created)} slices created, {len(res.changes)} "
                   f"properties changed, {res.unchanged} already matched"
                   + (f", {len(res.pruned)} stopped" if res.pruned else "") + " (driver systemd)")


def diff_units(ps: Any, settings: "Settings", as_json: bool) -> list[dict[str, Any]]:
    """Drift between the files and systemd's units; the caller exits 2 if there is any."""
    from ..drivers.systemd.bus import SystemdBus
    from ..drivers.systemd.reconcile import diff_units as drift_of
    with SystemdBus() as bus:
        drift = drift_of(ps, _root(settings), bus)
    if as_json:
        typer.echo(json.dumps(drift, indent=2))
    elif not drift:
        typer.echo("no drift: systemd's units match the files")
    for d in drift if not as_json else []:
        if d["property"] is None:
            typer.echo(f"{d['unit']}: {d['live'] or 'missing'}")
        else:
            typer.echo(f"{d['unit']} {d['property']}: want {d['want']}, live {d['live']}")
    return drift
