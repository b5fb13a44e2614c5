"""Container commands: run, exec, ps, stop, gc, logs, inspect.

Thin: parse, call cgman.containers.lifecycle, render. `run` itself is runcmd.py, shared
with the typer-free path; its options are declared here, one per line of the signature,
and options.RUN lists the same ones for that path. Imports stay inside the commands,
because interpreter start-up is part of `cgman run`'s latency.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Optional

import typer

from .common import argv_after_dashes, env_pairs, hosts, store
from .params import JsonOpt, print_json, seconds, settings, usage_error

if TYPE_CHECKING:
    from ..settings import Settings

Opt = typer.Option
PolicyOpt = Opt(..., "--policy", "-p", help="Group the container belongs to (acme/web); its `container:` limits "
                "and `launch:` settings apply.")
NameOpt = Opt(None, "--name", help="Unique name (default: <group>-<6 hex>).")
DetachOpt = Opt(False, "-d", "--detach", help="Run in the background; a supervisor waits, records usage and "
                "cleans up. Output goes to `cgman logs NAME`.")
CpusOpt = Opt(None, "--cpus", help="CPU limit in CPUs, e.g. 0.5.")
MemoryOpt = Opt(None, "--memory", "-m", help="Memory limit, e.g. 256Mi.")
PidsOpt = Opt(None, "--pids", help="Most processes (0: unlimited).")
HostnameOpt = Opt(None, "--hostname", help="Hostname inside (default: the name).")
NetworkOpt = Opt(None, "--network", help="none (own netns, nothing up), loopback (lo only) or bridge (veth on "
                 "the group's bridge).")
RootfsOpt = Opt(None, "--rootfs", help="Directory to use as / (pivot_root).")
LayerOpt = Opt(None, "--layer", help="Read-only lower layer, bottom first; repeat. An overlayfs with a private "
               "upper dir becomes /.")
ImageOpt = Opt(None, "--image", help="NAME:TAG from `cgman images`: its layers are the root; its Entrypoint, "
               "Cmd, Env, WorkingDir and User apply.")
UsernsOpt = Opt(False, "--userns", help="Also a user namespace: root inside maps to an unprivileged host uid "
                "(policy launch.user, default 100000).")
InitOpt = Opt(True, "--init/--no-init", help="A minimal init as PID 1 that reaps zombies and forwards signals "
              "(default); --no-init makes the workload PID 1.")
EnvOpt = Opt(None, "--env", "-e", help="KEY=VALUE for the workload; repeat.")
RunTimeoutOpt = Opt(None, "--timeout", help="Stop it after this long (e.g. 30s); exit code 124, as timeout(1).")
RmOpt = Opt(False, "--rm", help="Remove the record when it exits (usage is still read).")
FileOpt = Opt(None, "--file", "-f", help="Policy file(s) to find the group in (default: the policy dir).")
PrivilegedOpt = Opt(False, "--privileged", help="Turn every protection off (all capabilities, no seccomp, all "
                    "devices, writable cgroupfs); only where the group's policy says launch.allow_privileged: true.")
CapAddOpt = Opt(None, "--cap-add", help="Add a capability (NET_RAW, or CAP_NET_RAW); repeat. Beyond the group's "
                "list only with allow_privileged.")
CapDropOpt = Opt(None, "--cap-drop", help="Drop a capability, or ALL; repeat.")
DeviceOpt = Opt(None, "--device", help="Allow a device node, PATH[:rwm]; repeat. Beyond the group's "
                "launch.devices only with allow_privileged.")
SecurityOpt = Opt(None, "--security-opt", help="seccomp=default|unconfined|FILE or no-new-privileges=true|false "
                  "(loosening needs allow_privileged).")
VolumeOpt = Opt(None, "--volume", help="A host path the container may write (PATH or PATH:ro; the rest of the "
                "host is read-only to a container without --rootfs); repeat. Within the group's launch.volumes, "
                "or with allow_privileged.")

DriverOpt = Opt(None, "--cgroup-driver", show_default=False,
                help="cgroupfs (default: a leaf <root>/<group>/<name>) or systemd (a transient scope of the group's "
                     "slice, over D-Bus; apply the policy with the same driver). Default: $CGMAN_CGROUP_DRIVER.")


def run(ctx: typer.Context,
        command: Optional[list[str]] = typer.Argument(None, help="The workload, after `--`.", show_default=False),
        policy: str = PolicyOpt, name: Optional[str] = NameOpt, detach: bool = DetachOpt,
        cpus: Optional[float] = CpusOpt, memory: Optional[str] = MemoryOpt, pids: Optional[int] = PidsOpt,
        hostname: Optional[str] = HostnameOpt, network: Optional[str] = NetworkOpt,
        rootfs: Optional[Path] = RootfsOpt, layer: Optional[list[Path]] = LayerOpt,
        image: Optional[str] = ImageOpt, userns: bool = UsernsOpt, init: bool = InitOpt,
        env: Optional[list[str]] = EnvOpt, timeout: Optional[str] = RunTimeoutOpt, rm: bool = RmOpt,
        files: Optional[list[Path]] = FileOpt, privileged: bool = PrivilegedOpt,
        cap_add: Optional[list[str]] = CapAddOpt, cap_drop: Optional[list[str]] = CapDropOpt,
        device: Optional[list[str]] = DeviceOpt, security_opt: Optional[list[str]] = SecurityOpt,
        volume: Optional[list[str]] = VolumeOpt, cgroup_driver: Optional[str] = DriverOpt) -> None:
    """Run CMD in a new container under a policy group; exit with its status (128+N for signal N).

    The container gets a leaf cgroup <root>/<group>/<name> with the group's `container` limits plus
    --cpus/--memory/--pids, and new namespaces (uts, ipc, pid, net, mount, cgroup; user with --userns).
    Its first instruction already runs inside its cgroup. With --cgroup-driver systemd the cgroup is
    instead the payload leaf of a transient scope of the group's slice, cgman-<group>-<name>.scope,
    whose unit properties carry the limits (`systemctl status` shows it). Examples:

      cgman run --policy acme/web -- sleep 10

      cgman run -p acme/web --name web1 -d --network bridge -- python3 -m http.server

      cgman run -p batch --layer /srv/base --layer /srv/app --timeout 1h -- /app/job

    By default a container holds 11 capabilities (CHOWN DAC_OVERRIDE FOWNER FSETID KILL
    NET_BIND_SERVICE SETFCAP SETGID SETPCAP SETUID SYS_CHROOT), runs with no_new_privs and a
    seccomp filter (Docker's rules), sees only its own cgroup read-only, and may use only
    /dev/null, zero, full, random, urandom, tty, ptmx and pts. `cgman inspect NAME` shows them.
    """
    from .common import BadOption
    from .runcmd import execute, run_request
    try:           # the options by parameter name, as options.RUN reads them for the typer-free path
        request = run_request({**ctx.params, "command": argv_after_dashes(command)})
    except BadOption as e:
        raise usage_error(e) from None
    raise typer.Exit(execute(_with_driver(settings(ctx), cgroup_driver), **request))


def _with_driver(s: "Settings", driver: Optional[str]) -> "Settings":
    """The run's own --cgroup-driver over the global settings (the option tables' path reads it
    with the rest: common.resolve_settings)."""
    import dataclasses

    from ..settings import driver_of
    return dataclasses.replace(s, cgroup_driver=driver_of(driver, "--cgroup-driver")) if driver else s


def _env(pairs: Optional[list[str]]) -> tuple[tuple[str, str], ...]:
    try:
        return env_pairs(pairs)
    except ValueError as e:
        raise typer.BadParameter(str(e), param_hint="--env") from None


def exec_(ctx: typer.Context, name: str = typer.Argument(..., help="Container name."),
          command: Optional[list[str]] = typer.Argument(None, help="Command, after `--`.", show_default=False),
          env: Optional[list[str]] = typer.Option(None, "--env", "-e", help="KEY=VALUE; repeat.")) -> None:
    """Run CMD inside a running container: all of its namespaces and its cgroup; exit with its status."""
    from ..containers.lifecycle import exec_in
    st = store(settings(ctx))
    rec = st.load(name)
    code = exec_in(hosts()(rec.cgroup_root), st, name, argv_after_dashes(command), _env(env))
    raise typer.Exit(code)


def _fmt_bytes(n: Optional[int]) -> str:
    from ..units import format_bytes
    return "-" if n is None else format_bytes(n)


def ps(ctx: typer.Context, all_: bool = typer.Option(False, "--all", "-a", help="Also exited containers."),
       as_json: bool = JsonOpt) -> None:
    """List containers: name, group, tenant, pid, state (running/frozen/exited), uptime, CPU, memory."""
    from ..containers.manage import ps as list_ps
    from .runcmd import collect_quietly
    collect_quietly(settings(ctx))
    rows = list_ps(store(settings(ctx)), hosts(), all_)
    if as_json:
        print_json(rows)
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


def stop(ctx: typer.Context, names: list[str] = typer.Argument(..., help="Container name(s)."),
         timeout: str = typer.Option("10s", "--timeout", "-t", help="Grace period between TERM and KILL.")) -> None:
    """Stop containers: SIGTERM to their init (forwarded to the workload), SIGKILL after --timeout."""
    from ..containers.manage import stop as do_stop
    grace = seconds(timeout)
    for n in names:
        rec = do_stop(store(settings(ctx)), hosts(), n, grace)
        typer.echo(f"stopped {n} (exit {rec.exit_code})")


def gc(ctx: typer.Context, as_json: bool = JsonOpt) -> None:
    """Collect containers whose supervisor died: record their usage, free cgroup, veth, address, scratch."""
    from ..containers.manage import gc as do_gc
    names = do_gc(store(settings(ctx)), hosts())
    if as_json:
        print_json({"collected": names})
    else:
        typer.echo(f"collected {len(names)} container(s){': ' + ', '.join(names) if names else ''}")


def logs(ctx: typer.Context, name: str = typer.Argument(..., help="Container name.")) -> None:
    """Print a detached container's output (stdout and stderr)."""
    st = store(settings(ctx))
    st.load(name)
    try:
        with os.fdopen(st.open_log(name), "rb") as f:
            while chunk := f.read(65536):
                sys.stdout.buffer.write(chunk)
    except FileNotFoundError:
        typer.echo(f"{name} has no log (only detached containers have one)", err=True)


def inspect(ctx: typer.Context, name: str = typer.Argument(..., help="Container name.")) -> None:
    """Print a container's full record as JSON (limits, network, final usage, exit status)."""
    from dataclasses import asdict
    print_json(asdict(store(settings(ctx)).load(name)))
