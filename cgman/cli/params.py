"""What the typer commands share: common options, the command's Settings, JSON output and
durations as usage errors."""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

import typer

from ..settings import POLICY_DIR_ENV

if TYPE_CHECKING:
    from ..settings import Settings
    from .common import BadOption

FilesArg = typer.Argument(None, help="Policy files or directories (default: --policy-dir, "
                          f"${POLICY_DIR_ENV}, /etc/cgman/policies, else ./policies).",
                          show_default=False)
JsonOpt = typer.Option(False, "--json", help="Print JSON for scripts.")
TimeoutOpt = typer.Option("10s", "--timeout", help="How long to wait, e.g. 500ms, 10s.")


def settings(ctx: typer.Context) -> "Settings":
    """The Settings the global options resolved (app.global_options put them on the context)."""
    from ..settings import Settings
    assert isinstance(ctx.obj, Settings), "the global options' callback has not run"
    return ctx.obj


def print_json(obj: Any) -> None:
    typer.echo(json.dumps(obj, indent=2, default=str))


def usage_error(e: "BadOption") -> typer.BadParameter:
    """A value typer's own checks let through but cgman refuses, as typer's usage error (exit 2)."""
    return typer.BadParameter(str(e), param_hint=e.flag)


def seconds(text: str, flag: str = "--timeout") -> float:
    """A duration option in seconds, or a usage error naming ``flag``."""
    from .common import BadOption, seconds as to_seconds
    try:
        return to_seconds(text, flag)
    except BadOption as e:
        raise usage_error(e) from None
