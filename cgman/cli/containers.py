"""Container commands: run, exec, ps, stop, gc, logs (registered on the main app).

Thin: parse, call cgman.containers.lifecycle, render. Imports stay inside the
commands, because interpreter start-up is part of `cgman run`'s latency.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Optional

import typer

from .common import argv_after_dashes as _argv, env_pairs, hosts, store
from .main import JsonOpt, _print_json, _seconds, app
from .runcmd import collect_quietly


def _env(pairs: Optional[list[str]]) -> tuple[tuple[str, str], ...]:
    try:
        return env_pairs(pairs)
    except ValueError as e:
        raise typer.BadParameter(str(e), param_hint="--env") from None


@app.command(context_settings={"allow_interspersed_args": False})
def run(
    command: Optional[list[str]] = typer.Argument(None, help="The workload, after `--`.", show_default=False),
    policy: str = typer.Option(..., "--policy", "-p", help="Group the container belongs to (acme/web); its "
                               "`container:` limits and `launch:` settings apply."),
    name: Optional[str] = typer.Option(None, "--name", help="Unique name (default: <group>-<6 hex>)."),
    detach: bool = typer.Option(False, "-d", "--detach", help="Run in the background; a supervisor waits, "
                                "records usage and cleans up. Output goes to `cgman logs NAME`."),
    cpus: Optional[float] = typer.Option(None, "--cpus", help="CPU limit in CPUs, e.g. 0.5."),
    memory: Optional[str] = typer.Option(None, "--memory", "-m", help="Memory limit, e.g. 256Mi."),
    pids: Optional[int] = typer.Option(None, "--pids", help="Most processes (0: unlimited)."),
    hostname: Optional[str] = typer.Option(None, "--hostname", help="Hostname inside (default: the name)."),
    network: Optional[str] = typer.Option(None, "--network", help="none (own netns, nothing up), loopback "
                                          "(lo only) or bridge (veth on the group's bridge)."),
    rootfs: Optional[Path] = typer.Option(None, "--rootfs", help="Directory to use as / (pivot_root)."),
    layer: Optional[list[Path]] = typer.Option(None, "--layer", help="Read-only lower layer, bottom first; "
                                               "repeat. An overlayfs with a private upper dir becomes /."),
    image: Optional[str] = typer.Option(None, "--image", help="NAME:TAG from `cgman images`: its layers "
                                        "are the root; its Entrypoint, Cmd, Env, WorkingDir and User apply."),
    userns: bool = typer.Option(False, "--userns", help="Also a user namespace: root inside maps to an "
                                "unprivileged host uid (policy launch.user, default 100000)."),
    init: bool = typer.Option(True, "--init/--no-init", help="A minimal init as PID 1 that reaps zombies and "
                              "forwards signals (default); --no-init makes the workload PID 1."),
    env: Optional[list[str]] = typer.Option(None, "--env", "-e", help="KEY=VALUE for the workload; repeat."),
    timeout: Optional[str] = typer.Option(None, "--timeout", help="Stop it after this long (e.g. 30s); "
                                          "exit code 124, as timeout(1)."),
    rm: bool = typer.Option(False, "--rm", help="Remove the record when it exits (usage is still read)."),
    files: Optional[list[Path]] = typer.Option(None, "--file", "-f", help="Policy file(s) to find the group "
                                               "in (default: the policy dir)."),
    privileged: bool = typer.Option(False, "--privileged", help="Turn every protection off (all capabilities, "
                                    "no seccomp, all devices, writable cgroupfs); only where the group's "
                                    "policy says launch.allow_privileged: true."),
    cap_add: Optional[list[str]] = typer.Option(None, "--cap-add", help="Add a capability (NET_RAW, or "
                                                "CAP_NET_RAW); repeat. Beyond the group's list only "
                                                "with allow_privileged."),
    cap_drop: Optional[list[str]] = typer.Option(None, "--cap-drop", help="Drop a capability, or ALL; repeat."),
    device: Optional[list[str]] = typer.Option(None, "--device", help="Allow a device node, PATH[:rwm]; "
                                               "repeat. Beyond the group's launch.devices only with "
                                               "allow_privileged."),
    security_opt: Optional[list[str]] = typer.Option(None, "--security-opt", help="seccomp=default|unconfined|"
                                                     "FILE or no-new-privileges=true|false (loosening needs "
                                                     "allow_privileged)."),
    volume: Optional[list[str]] = typer.Option(None, "--volume", help="A host path the container may write "
                                               "(PATH or PATH:ro; the rest of the host is read-only to a "
                                               "container without --rootfs); repeat. Within the group's "
                                               "launch.volumes, or with allow_privileged."),
) -> None:
    """Run CMD in a new container under a policy group; exit with its status (128+N for signal N).

    The container gets a leaf cgroup <root>/<group>/<name> with the group's `container` limits plus
    --cpus/--memory/--pids, and new namespaces (uts, ipc, pid, net, mount, cgroup; user with --userns).
    Its first instruction already runs inside its cgroup. Examples:

      cgman run --policy acme/web -- sleep 10

      cgman run -p acme/web --name web1 -d --network bridge -- python3 -m http.server

      cgman run -p batch --layer /srv/base --layer /srv/app --timeout 1h -- /app/job

    By default a container holds 11 capabilities (CHOWN DAC_OVERRIDE FOWNER FSETID KILL
    NET_BIND_SERVICE SETFCAP SETGID SETPCAP SETUID SYS_CHROOT), runs with no_new_privs and a
    seccomp filter (Docker's rules), sees only its own cgroup read-only, and may use only
    /dev/null, zero, full, random, urandom, tty, ptmx and pts. `cgman inspect NAME` shows them.
    """
    from ..units import UnitError, parse_quantity
    from .runcmd import execute
    mem: int | None = None
    if memory is not None:
        try:
            q = parse_quantity(memory)
        except UnitError as e:
            raise typer.BadParameter(str(e), param_hint="--memory") from None
        if not isinstance(q, int) or q <= 0:
            raise typer.BadParameter("give a size like 256Mi (unlimited: leave it out)", param_hint="--memory")
        mem = q
    from .common import run_security
    try:
        security = run_security(privileged, cap_add, cap_drop, device, security_opt, volume)
    except ValueError as e:
        raise typer.BadParameter(str(e)) from None
    code = execute(policy=policy, command=_argv(command), name=name, detach=detach, cpus=cpus, memory_bytes=mem,
                   pids=pids, hostname=hostname, network=network, rootfs=str(rootfs) if rootfs else None,
                   layers=tuple(str(p) for p in layer or ()), userns=userns, init=init, env=_env(env),
                   timeout_s=_seconds(timeout) if timeout else None, timeout_text=timeout or "", auto_remove=rm,
                   files=files, security=security, image=image)
    raise typer.Exit(code)


@app.command("exec", context_settings={"allow_interspersed_args": False})
def exec_(name: str = typer.Argument(..., help="Container name."),
          command: Optional[list[str]] = typer.Argument(None, help="Command, after `--`.", show_default=False),
          env: Optional[list[str]] = typer.Option(None, "--env", "-e", help="KEY=VALUE; repeat.")) -> None:
    """Run CMD inside a running container: all of its namespaces and its cgroup; exit with its status."""
    from ..containers.lifecycle import exec_in
    st = store()
    rec = st.load(name)
    code = exec_in(hosts()(rec.cgroup_root), st, name, _argv(command), _env(env))
    raise typer.Exit(code)


def _fmt_bytes(n: Optional[int]) -> str:
    from ..units import format_bytes
    return "-" if n is None else format_bytes(n)


@app.command()
def ps(all_: bool = typer.Option(False, "--all", "-a", help="Also exited containers."),
       as_json: bool = JsonOpt) -> None:
    """List containers: name, group, tenant, pid, state (running/frozen/exited), uptime, CPU, memory."""
    from ..containers.manage import ps as list_ps
    collect_quietly()
    rows = list_ps(store(), hosts(), all_)
    if as_json:
        _print_json(rows)
        return
    fmt = "{:<20} {:<16} {:<10} {:>7} {:<8} {:>9} {:>9} {:>9}  {}"
    typer.echo(fmt.format("NAME", "GROUP", "TENANT", "PID", "STATE", "UPTIME", "CPU", "MEMORY", "COMMAND"))
    for r in rows:
        if r.get("problem"):
            typer.echo(f"cgman: {r['problem']}", err=True)
        state = r["state"] if r["state"] != "exited" else f"exit {r['exit_code']}"
        up = "-" if r["uptime_s"] is None else f"{r['uptime_s']:.1f}s"
        cpu = "-" if r["cpu_s"] is None else f"{r['cpu_s']:.3f}s"
        typer.echo(fmt.format(r["name"], r["group"], r["tenant"], r["pid"] or "-", state, up, cpu,
                              _fmt_bytes(r["memory_bytes"]), r["command"][:40]))


@app.command()
def stop(names: list[str] = typer.Argument(..., help="Container name(s)."),
         timeout: str = typer.Option("10s", "--timeout", "-t", help="Grace period between TERM and KILL.")) -> None:
    """Stop containers: SIGTERM to their init (forwarded to the workload), SIGKILL after --timeout."""
    from ..containers.manage import stop as do_stop
    grace = _seconds(timeout)
    for n in names:
        rec = do_stop(store(), hosts(), n, grace)
        typer.echo(f"stopped {n} (exit {rec.exit_code})")


@app.command()
def gc(as_json: bool = JsonOpt) -> None:
    """Collect containers whose supervisor died: record their usage, free cgroup, veth, address, scratch."""
    from ..containers.manage import gc as do_gc
    names = do_gc(store(), hosts())
    if as_json:
        _print_json({"collected": names})
    else:
        typer.echo(f"collected {len(names)} container(s){': ' + ', '.join(names) if names else ''}")


@app.command()
def logs(name: str = typer.Argument(..., help="Container name.")) -> None:
    """Print a detached container's output (stdout and stderr)."""
    st = store()
    st.load(name)
    try:
        with os.fdopen(st.open_log(name), "rb") as f:
            while chunk := f.read(65536):
                sys.stdout.buffer.write(chunk)
    except FileNotFoundError:
        typer.echo(f"{name} has no log (only detached containers have one)", err=True)


@app.command()
def inspect(name: str = typer.Argument(..., help="Container name.")) -> None:
    """Print a container's full record as JSON (limits, network, final usage, exit status)."""
    from dataclasses import asdict
    _print_json(asdict(store().load(name)))
