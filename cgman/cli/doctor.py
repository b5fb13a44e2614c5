"""The `doctor` command: what this host offers cgman, each problem with its fix."""

from __future__ import annotations

import os

import typer

from .common import host, store
from .params import JsonOpt, print_json, settings


def doctor(ctx: typer.Context, as_json: bool = JsonOpt) -> None:
    """Check what this host offers cgman and how to fix what is missing. Exit 1 on problems."""
    from ..hostcheck.doctor import run_checks
    s = settings(ctx)
    checks = run_checks(host(s), store(s).state, environ=os.environ)
    if as_json:
        print_json([c.as_dict() for c in checks])
    else:
        for c in checks:
            mark = "ok" if c.ok else ("warn" if c.warn else "FAIL")
            typer.echo(f"[{mark}] {c.name}: {c.detail}")
            if c.fix:
                typer.echo(f"       fix: {c.fix}")
    if not all(c.ok or c.warn for c in checks):
        raise typer.Exit(1)
