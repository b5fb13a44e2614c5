"""`plan --target systemd` and `apply --cgroup-driver systemd`: render the systemd driver's
unit plan and reconcile (drivers/systemd). Kept apart so policy.py only routes to it."""

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


def apply_units(ps: Any, settings: "Settings", dry_run: bool, as_json: bool, timeout_s: float) -> None:
    """Reconcile systemd's slices with the files over D-Bus."""
    from ..drivers.systemd.bus import SystemdBus
    from ..drivers.systemd.reconcile import apply_units as reconcile
    with SystemdBus(timeout_s=max(timeout_s, 30.0)) as bus:
        res = reconcile(ps, _root(settings), bus, dry_run=dry_run)
    if as_json:
        typer.echo(json.dumps(res.as_dict(), indent=2))
        return
    verb = "would " if dry_run else ""
    for name in res.created:
        typer.echo(f"{verb}create {name}")
    for ch in res.changes:
        typer.echo(f"{verb}set {ch}")
    if not res.created and not res.changes:
        typer.echo(f"nothing to do: {res.unchanged} unit properties already match")
    else:
        typer.echo(f"{'dry run: ' if dry_run else ''}{len(res.created)} slices created, {len(res.changes)} "
                   f"properties changed, {res.unchanged} already matched (driver systemd)")
