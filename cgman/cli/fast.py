"""`cgman run` without typer.

Importing typer and letting it parse costs ~300 ms here, more than the whole launch,
so `cgman run` is parsed by this small hand parser when it can be. It knows exactly
the options of the typer `run` command (a test keeps the two in step) and gives up,
returning None, on anything else: --help, an unknown option, a value that does not
parse. typer then handles the command line as usual, with its usage errors.
"""

from __future__ import annotations

from typing import Any, Optional

# option -> (destination, kind): "value" takes an argument, "multi" repeats, else a constant.
RUN_OPTIONS: dict[str, tuple[str, Any]] = {
    "--policy": ("policy", "value"), "-p": ("policy", "value"),
    "--name": ("name", "value"),
    "--detach": ("detach", True), "-d": ("detach", True),
    "--cpus": ("cpus", "value"),
    "--memory": ("memory", "value"), "-m": ("memory", "value"),
    "--pids": ("pids", "value"),
    "--hostname": ("hostname", "value"),
    "--network": ("network", "value"),
    "--rootfs": ("rootfs", "value"),
    "--layer": ("layer", "multi"),
    "--image": ("image", "value"),
    "--userns": ("userns", True),
    "--init": ("init", True), "--no-init": ("init", False),
    "--env": ("env", "multi"), "-e": ("env", "multi"),
    "--timeout": ("timeout", "value"),
    "--rm": ("rm", True),
    "--file": ("file", "multi"), "-f": ("file", "multi"),
    "--privileged": ("privileged", True),
    "--cap-add": ("cap_add", "multi"), "--cap-drop": ("cap_drop", "multi"),
    "--device": ("device", "multi"),
    "--security-opt": ("security_opt", "multi"),
    "--volume": ("volume", "multi"),
}
GLOBAL_OPTIONS: dict[str, tuple[str, Any]] = {
    "-v": ("verbose", True), "--verbose": ("verbose", True),
    "--cgroup-root": ("root", "value"), "--run-dir": ("run_dir", "value"), "--state-dir": ("state_dir", "value"),
}


def parse(argv: list[str]) -> Optional[dict[str, Any]]:
    """Options of `[GLOBAL...] run [OPTIONS...] [--] CMD...`, or None to leave it to typer."""
    opts: dict[str, Any] = {"layer": [], "env": [], "file": [], "cap_add": [], "cap_drop": [], "device": [],
                            "security_opt": [], "volume": []}
    seen_run = False
    i = 0
    while i < len(argv):
        a = argv[i]
        if not seen_run:
            if a == "run":
                seen_run = True
                i += 1
                continue
            table = GLOBAL_OPTIONS
        else:
            table = {**RUN_OPTIONS, **GLOBAL_OPTIONS}
            if a == "--":
                opts["command"] = argv[i + 1:]
                break
            if not a.startswith("-") or a == "-":
                opts["command"] = argv[i:]       # the command starts at the first word that is no option
                break
        key, eq, inline = a.partition("=") if a.startswith("--") else (a, "", "")
        if key not in table:
            return None                          # --help, -h, typos: typer explains
        dest, kind = table[key]
        if kind in ("value", "multi"):
            if eq:
                value = inline
            elif i + 1 < len(argv):
                i += 1
                value = argv[i]
            else:
                return None
            if kind == "multi":
                opts[dest].append(value)
            else:
                opts[dest] = value
        elif eq:
            return None
        else:
            opts[dest] = kind
        i += 1
    if not seen_run or "policy" not in opts:
        return None
    opts.setdefault("command", [])
    return opts


def run_kwargs(o: dict[str, Any]) -> Optional[dict[str, Any]]:
    """Convert and validate the values as the typer command does; None if one is bad."""
    from ..units import UnitError, parse_duration_usec, parse_quantity
    from .common import env_pairs, run_security
    try:
        security = run_security(o.get("privileged", False), o["cap_add"], o["cap_drop"], o["device"],
                                o["security_opt"], o["volume"])
        cpus = float(o["cpus"]) if "cpus" in o else None
        pids = int(o["pids"]) if "pids" in o else None
        mem = None
        if "memory" in o:
            q = parse_quantity(o["memory"])
            if not isinstance(q, int) or q <= 0:
                return None
            mem = q
        timeout_s = parse_duration_usec(o["timeout"]) / 1e6 if "timeout" in o else None
        env = env_pairs(o["env"])
    except (ValueError, UnitError):
        return None
    return dict(policy=o["policy"], command=o["command"], name=o.get("name"), detach=o.get("detach", False),
                cpus=cpus, memory_bytes=mem, pids=pids, hostname=o.get("hostname"), network=o.get("network"),
                rootfs=o.get("rootfs"),
                layers=tuple(o["layer"]), userns=o.get("userns", False),
                init=o.get("init", True), env=env, timeout_s=timeout_s, timeout_text=o.get("timeout", ""),
                auto_remove=o.get("rm", False), files=list(o["file"]) or None, security=security,
                image=o.get("image"))


def main(argv: list[str]) -> Optional[int]:
    """Run `cgman run` if this parser can take the command line; None means: use typer."""
    import os
    o = parse(argv)
    if o is None:
        return None
    kw = run_kwargs(o)
    if kw is None:
        return None
    from .common import state
    state["verbose"] = o.get("verbose", False)
    state["root"] = o.get("root") or os.environ.get("CGMAN_CGROUP_ROOT")
    state["run_dir"] = o.get("run_dir") or os.environ.get("CGMAN_RUN_DIR")
    state["state_dir"] = o.get("state_dir") or os.environ.get("CGMAN_STATE_DIR")
    if state["verbose"]:
        import logging
        logging.basicConfig(level=logging.DEBUG, format="%(levelname)s %(name)s: %(message)s")
    from .runcmd import execute
    return execute(**kw)
