"""Group commands: status, freeze, thaw (resume), kill, rm, attach.

TARGET is a group path relative to the cgman root (acme/web) or a container's name.
Thin: parse, call the drivers or cgman.containers.lifecycle, render.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Optional

import typer

from .common import host, hosts, store
from .params import JsonOpt, TimeoutOpt, print_json, seconds, settings

if TYPE_CHECKING:
    from ..drivers import Host
    from ..settings import Settings

TargetArg = typer.Argument(..., help="Group path (acme/web) or container name.")


def group_path(h: "Host", target: str) -> str:
    """TARGET as a group path relative to the cgman root, checked to exist."""
    from ..drivers import split_path
    from ..errors import NotFound
    if target.strip("/") == "":
        raise typer.BadParameter("empty target: name a group (acme/web), or '.' for the whole cgman root",
                                 param_hint="TARGET")
    path = target.strip("/")
    split_path(path)
    if not h.exists(path) and path == ".":
        raise NotFound(f"the cgman root {h.root!r} does not exist yet: run `cgman apply` first, "
                       f"or check --cgroup-root / $CGMAN_CGROUP_ROOT")
    if not h.exists(path):
        raise NotFound(f"no group or container named {target!r} under the cgman root "
                       f"{h.root!r} (see `cgman status`)")
    return path


def host_and_cgroup(s: "Settings", target: str) -> tuple["Host", str]:
    """TARGET -> (host, cgroup path): a container's leaf cgroup, or a group path."""
    st = store(s)
    if "/" not in target and target != "." and st.exists(target):
        from ..drivers import open_host
        from ..errors import NotFound
        rec = st.load(target)
        h = open_host(rec.cgroup_root)
        if rec.state == "exited" or not h.exists(rec.cgroup):
            raise NotFound(f"container {target} has exited (see `cgman ps -a`)")
        return h, rec.cgroup
    h = host(s)
    return h, group_path(h, target)


def status(ctx: typer.Context, path: str = typer.Argument(".", help="Group to show (default: the whole "
                                                            "cgman root)."),
           as_json: bool = JsonOpt) -> None:
    """Tree of groups with their limits and current usage."""
    from ..reconcile.status import status as do_status, unit_status
    from ..units import format_bytes
    s = settings(ctx)
    if s.cgroup_driver == "systemd":          # the groups are slices below the root slice
        from ..containers.scope import scope_host
        h = scope_host(host(s), store(s).root)
        rows = unit_status(h, store(s).root, path.strip("/") or ".")
    else:
        h = host(s)
        rows = do_status(h, group_path(h, path))
    if as_json:
        print_json({"mode": h.info.mode, "root": h.root, "groups": rows})
        return
    typer.echo(f"{'GROUP':<30} {'PROCS':>5} {'STATE':<7} {'CPU(s)':>9} {'MEMORY':>9} "
               f"{'MEM MAX':>9} {'CPU MAX':>7} {'PIDS':>5} {'PIDS MAX':>8}")
    base = rows[0]["depth"] if rows else 0
    for r in rows:
        lim = r["limits"]
        name = ("  " * max(0, r["depth"] - max(base, 1))) + (h.root if r["group"] == "." else
                                                  r["group"].rsplit("/", 1)[-1])
        mem_max = lim.get("memory_max_bytes")
        typer.echo(f"{name:<30} {r['procs']:>5} {'frozen' if r['frozen'] else 'running':<7} "
                   f"{(r['cpu_usage_seconds'] or 0):>9.2f} {format_bytes(r['memory_bytes']):>9} "
                   f"{'max' if mem_max == 'max' else format_bytes(mem_max):>9} "
                   f"{str(lim.get('cpu_max') or '-'):>7} {str(r['pids'] if r['pids'] is not None else '-'):>5} "
                   f"{str(lim.get('pids_max') or '-'):>8}")


def freeze(ctx: typer.Context, target: str = TargetArg, timeout: str = TimeoutOpt) -> None:
    """Freeze every process in TARGET and below; confirmed, or thawed again on timeout.
    A group of the systemd driver (CGMAN_CGROUP_DRIVER=systemd) is frozen as `systemctl freeze` does."""
    if not _unit_freeze(settings(ctx), target, True, seconds(timeout)):
        h, path = host_and_cgroup(settings(ctx), target)
        h.freeze(path, seconds(timeout))
    typer.echo(f"frozen {target}")


def thaw(ctx: typer.Context, target: str = TargetArg, timeout: str = TimeoutOpt) -> None:
    """Resume a frozen TARGET (alias: resume)."""
    if not _unit_freeze(settings(ctx), target, False, seconds(timeout)):
        h, path = host_and_cgroup(settings(ctx), target)
        h.thaw(path, seconds(timeout))
    typer.echo(f"thawed {target}")


def _unit_freeze(s: "Settings", target: str, frozen: bool, timeout_s: float) -> bool:
    """systemd driver, TARGET a group: FreezeUnit/ThawUnit of its slice (systemd owns the slice's
    cgroup.freeze); False for anything else (a container's payload is cgman's to freeze)."""
    if s.cgroup_driver != "systemd" or ("/" not in target and store(s).exists(target)):
        return False
    from ..drivers import split_path
    from ..drivers.systemd.bus import SystemdBus
    from ..drivers.systemd.units import slice_name
    from ..errors import NotFound
    path = target.strip("/") or "."
    split_path(path)
    name = slice_name(store(s).root, path)
    with SystemdBus(timeout_s=timeout_s) as bus:
        if bus.unit(name) is None:
            raise NotFound(f"no group {target!r}: systemd has no slice {name} (see `cgman status`)")
        bus.freeze(name, frozen)
    return True


def resume(ctx: typer.Context, target: str = TargetArg, timeout: str = TimeoutOpt) -> None:
    """Alias of thaw."""
    thaw(ctx, target, timeout)


def signal_number(name: str) -> int:
    """--signal: a name (KILL, SIGTERM) or a number, as a usage error if it is neither."""
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


def kill(ctx: typer.Context, target: str = TargetArg,
         sig: str = typer.Option("KILL", "--signal", "-s", help="Signal name or number."),
         timeout: str = TimeoutOpt) -> None:
    """Signal every process in TARGET and below (KILL waits until the group is empty)."""
    h, path = host_and_cgroup(settings(ctx), target)
    n = h.kill(path, signal_number(sig), seconds(timeout))
    typer.echo(f"signalled {n} process(es) in {target}")


def rm(ctx: typer.Context, target: str = TargetArg,
       force: bool = typer.Option(False, "--force", "-f", help="Kill processes first.")) -> None:
    """Remove a container's record, or a group and its children (refused while processes run, unless --force)."""
    from ..containers.manage import rm_group, rm_named
    s = settings(ctx)
    removed = rm_named(store(s), hosts(), target, force)
    if removed == "invalid":
        typer.echo(f"removed container {target} (its record was invalid or unreadable)")
    elif removed is not None:
        typer.echo(f"removed container {target}")
    else:
        h = host(s)
        n = rm_group(h, group_path(h, target), force)
        typer.echo(f"removed {n} group(s) under {target}")


def attach(ctx: typer.Context, target: str = typer.Argument(..., help="Leaf group path (acme/batch)."),
           command: Optional[list[str]] = typer.Argument(None, help="Command to run after `--`."),
           pid: Optional[list[int]] = typer.Option(None, "--pid", "-p", help="Move existing PIDs instead.")) -> None:
    """Place processes in a group: `--pid N`, or run `-- CMD...` inside it (like cgexec).

    The command joins the group before exec, so its first instruction runs inside it.
    """
    h = host(settings(ctx))
    path = group_path(h, target)
    if pid:
        for p in pid:
            h.attach(path, p)
        typer.echo(f"moved {len(pid)} process(es) into {target}")
        return
    if not command:
        raise typer.BadParameter("give a command after `--`, or --pid", param_hint="COMMAND")
    h.attach(path, os.getpid())
    try:
        os.execvp(command[0], command)
    except OSError as e:
        from ..errors import NotFound
        raise NotFound(f"cannot run {command[0]!r}: {e.strerror}") from None
