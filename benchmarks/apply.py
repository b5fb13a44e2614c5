#!/usr/bin/env python3
"""Benchmark: ``cgman apply`` against libcgroup's ``cgconfigparser`` on this host.

Usage (as root, on a host with cgroup v1 controllers, v2, or hybrid):

    .venv/bin/python benchmarks/apply.py [--groups 1000] [--tenants 50] [--rounds 3] [--json]

What it does:

1. Writes a policy YAML with ``--tenants`` tenants, each with ``--groups / --tenants``
   children (cpu weight + max, memory max, pids max; tenants have cpu weight and
   memory max), and an equivalent libcgroup ``cgconfig.conf`` built from
   ``cgman.plan.plan()`` so both tools write exactly the same values.
2. Times, in interleaved rounds (median reported):
   - the cgman library (load_files + open_host + apply), cold then re-apply
     (the re-apply must report 0 changes),
   - the ``cgman`` CLI as a whole process, cold then re-apply (if it has ``apply``),
   - ``cgconfigparser -l cgconfig.conf``, cold then a second run,
   - ``cgman apply --cgroup-driver systemd`` as a whole process, cold then re-apply: the same
     groups as transient slices over D-Bus. Only with systemd as PID 1 in the throw-away systemd
     VM (CGMAN_SYSTEMD_VM=1, see docs/operations.md); elsewhere it prints why it is skipped.
     Ratios are printed against the cgroupfs driver's CLI (cgman-cli) of the same rounds.
3. Counts kernel writes (write(2) to files under the cgroup mounts, mkdirs,
   chown/chmod) of each tool with strace, in separate untimed passes.
4. Checks with ``cgman diff`` that libcgroup's result matches cgman's plan.

Safety: every cgroup it creates has a top-level name starting with ``cgman-bench-``;
all of them are removed (deepest first, in every cgroup hierarchy) at the end,
including on failure or SIGINT/SIGTERM.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import secrets
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from cgclean import rmdir_tree  # noqa: E402

PREFIX = "cgman-bench-"
VENV_BIN = Path(sys.executable).parent
CGMAN_CLI = VENV_BIN / "cgman"

_created_roots: list[str] = []      # every root name this run may have created (cleaned at exit)
_created_slices: list[str] = []     # the systemd contender's root slices (stopped at exit)


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


# ------------------------------------------------------------------------------ safety / cleanup
def cgroup_mounts() -> list[str]:
    """Mount points of every cgroup (v1) and cgroup2 hierarchy, from mountinfo."""
    out = []
    with open("/proc/self/mountinfo", encoding="utf-8") as f:
        for line in f:
            left, _, right = line.partition(" - ")
            fstype = right.split()[0] if right else ""
            if fstype in ("cgroup", "cgroup2"):
                out.append(left.split()[4].replace("\\040", " "))
    return out


def _check_name(root: str) -> None:
    if not root.startswith(PREFIX) or "/" in root or root in (".", "..") or len(root) <= len(PREFIX):
        raise ValueError(f"refusing to touch cgroup {root!r}: not a {PREFIX}* name")


def remove_root(root: str) -> list[str]:
    """rmdir ``root`` and everything below it, deepest first, in every hierarchy.

    Returns the directories that could not be removed (with the reason).
    """
    _check_name(root)
    failed = []
    for mnt in cgroup_mounts():
        failed += rmdir_tree(os.path.join(mnt, root))[1]
    return failed


def new_root(kind: str, tag: str) -> str:
    root = f"{PREFIX}{tag}-{kind}"
    _check_name(root)
    if any(os.path.exists(os.path.join(m, root)) for m in cgroup_mounts()):
        raise RuntimeError(f"{root} already exists in a cgroup hierarchy; refusing to reuse it")
    _created_roots.append(root)
    return root


def cleanup_all() -> list[str]:
    failed = []
    for name in reversed(_created_slices):             # stops every slice below it too
        p = subprocess.run(["systemctl", "stop", name], capture_output=True, text=True)
        if p.returncode != 0:
            failed.append(f"{name}: systemctl stop: {p.stderr.strip()}")
    for root in reversed(_created_roots):
        failed += remove_root(root)
    return failed


def systemd_skip() -> str | None:
    """Why the systemd contender does not run here, or None."""
    if os.environ.get("CGMAN_SYSTEMD_VM") != "1":
        return "runs only in the throw-away systemd VM (CGMAN_SYSTEMD_VM=1): it starts transient slices"
    try:
        if Path("/proc/1/comm").read_text().strip() != "systemd":
            return "systemd is not PID 1"
    except OSError as e:
        return f"cannot read /proc/1/comm: {e.strerror}"
    return None


def systemd_cli_apply(policy: str, root: str) -> dict:
    """``cgman apply --cgroup-driver systemd`` as a whole process."""
    from cgman.drivers.systemd.units import slice_name
    if slice_name(root) not in _created_slices:
        _created_slices.append(slice_name(root))
    env = dict(os.environ, CGMAN_CGROUP_ROOT=root)
    t0 = time.perf_counter()
    p = subprocess.run([str(CGMAN_CLI), "apply", "--cgroup-driver", "systemd", policy], capture_output=True,
                       text=True, env=env)
    dt = time.perf_counter() - t0
    if p.returncode != 0:
        raise RuntimeError(f"cgman apply --cgroup-driver systemd failed (rc {p.returncode}): "
                           f"{p.stderr.strip()[-1000:]}")
    last = (p.stdout.strip().splitlines() or [""])[-1]
    return {"seconds": dt, "summary": last, "noop": last.startswith("nothing to do")}


def leftovers(tag: str) -> list[str]:
    return [os.path.join(m, n) for m in cgroup_mounts() if os.path.isdir(m)
            for n in os.listdir(m) if n.startswith(f"{PREFIX}{tag}")]


# ------------------------------------------------------------------------------ inputs
def make_policy(tenants: int, children: int) -> str:
    lines = ["version: 1", "cpu_weight_formula: oci", "policies:"]
    for t in range(tenants):
        lines += [f"  t{t:03d}:",
                  f"    cpu: {{weight: {100 + (t % 10) * 50}}}",
                  f"    memory: {{max: {4 + t % 4}Gi}}",
                  "    children:"]
        for c in range(children):
            cpus = 0.25 + (c % 8) * 0.25
            lines += [f"      c{c:03d}:",
                      f"        cpu: {{weight: {10 + (c * 37) % 500}, max: {cpus}}}",
                      f"        memory: {{max: {128 + (c % 16) * 64}Mi}}",
                      f"        pids: {{max: {64 + (c % 8) * 32}}}"]
    return "\n".join(lines) + "\n"


def make_cgconfig(plan_obj, layout, root: str) -> tuple[str, list[str]]:
    """libcgroup cgconfig.conf with exactly the plan's writes, under ``root``.

    Returns (text, notes): writes the conf cannot express (v2 core files) go to notes.
    """
    from cgman.plan import ROOT
    notes: list[str] = []
    per_group: dict[str, dict[str, list[tuple[str, str]]]] = {cg: {} for cg in [ROOT] + plan_obj.groups}
    used: list[str] = []
    for w in plan_obj.writes:
        if w.controller in ("cgroup", "freezer"):
            notes.append(f"skipped {w.cgroup}/{w.file} = {w.value} (no cgconfig equivalent here)")
            continue
        ctl = w.controller
        if ctl == "io" and layout.version_of("io") == 1:
            ctl = "blkio"
        per_group.setdefault(w.cgroup, {}).setdefault(ctl, []).append((w.file, w.value))
        if ctl not in used:
            used.append(ctl)
    out = [f"# generated by benchmarks/apply.py: the same writes as `cgman plan`, under {root}"]
    for cg, ctls in per_group.items():
        name = root if cg == ROOT else f"{root}/{cg}"
        out.append(f"group {name} {{")
        for ctl in used:       # every group in every used hierarchy (so parents exist)
            body = " ".join(f'{f} = "{v}";' for f, v in ctls.get(ctl, []))
            out.append(f"    {ctl} {{ {body} }}" if body else f"    {ctl} {{ }}")
        out.append("}")
    return "\n".join(out) + "\n", notes


# ------------------------------------------------------------------------------ strace counting
_LINE = re.compile(r"^(?:\[pid\s+)?(\d+)\]?\s+(\w+)\((.*)$")
_FD = re.compile(r"^(?:AT_FDCWD|-?\d+)(?:<([^>]*)>)?,\s*\"((?:[^\"\\]|\\.)*)\"")


def _under(path: str, mounts: list[str]) -> bool:
    return any(path == m or path.startswith(m.rstrip("/") + "/") for m in mounts)



def _at_path(fm: "re.Match[str]") -> str:
    """Absolute path of an *at() call's (dirfd<dir>, "name") arguments as strace -y prints them."""
    base, name = fm.group(1) or "", fm.group(2)
    return name if name.startswith("/") else os.path.join(base, name)

def count_trace(trace_file: str) -> dict[str, int]:
    """Count cgroupfs-modifying syscalls in an ``strace -f -y`` log."""
    mounts = cgroup_mounts()
    c = {"writes": 0, "writes_failed": 0, "open_for_write": 0, "open_for_read": 0,
         "mkdir": 0, "mkdir_new": 0, "chown_chmod": 0, "rmdir": 0}
    with open(trace_file, encoding="utf-8", errors="replace") as f:
        for line in f:
            m = _LINE.match(line)
            if not m:
                continue
            call, rest = m.group(2), m.group(3)
            failed = bool(re.search(r"\)\s*=\s*-1 ", rest))
            if call == "write":
                fm = re.match(r"-?\d+<([^>]*)>", rest)
                if fm and _under(fm.group(1), mounts):
                    c["writes"] += 1
                    c["writes_failed"] += failed
            elif call in ("openat", "open"):
                if call == "open":
                    pm = re.match(r"\"((?:[^\"\\]|\\.)*)\",\s*([A-Z_|]+)", rest)
                    if not pm:
                        continue
                    path, flags = pm.group(1), pm.group(2)
                else:
                    fm = _FD.match(rest)
                    if not fm:
                        continue
                    path = _at_path(fm)
                    flags = rest[fm.end():].lstrip(", ").split(",")[0]
                if not _under(path, mounts) or "O_DIRECTORY" in flags:
                    continue
                if "O_WRONLY" in flags or "O_RDWR" in flags:
                    c["open_for_write"] += 1
                else:
                    c["open_for_read"] += 1
            elif call in ("mkdir", "mkdirat", "rmdir", "unlinkat"):
                if call in ("mkdir", "rmdir"):
                    pm = re.match(r"\"((?:[^\"\\]|\\.)*)\"", rest)
                    path = pm.group(1) if pm else ""
                else:
                    fm = _FD.match(rest)
                    if not fm:
                        continue
                    path = _at_path(fm)
                if not _under(path, mounts):
                    continue
                if call.startswith("mkdir"):
                    c["mkdir"] += 1
                    c["mkdir_new"] += not failed
                else:
                    c["rmdir"] += 1
            elif call in ("chown", "lchown", "fchownat", "chmod", "fchmodat", "fchown", "fchmod"):
                if call in ("chown", "lchown", "chmod"):
                    pm = re.match(r"\"((?:[^\"\\]|\\.)*)\"", rest)
                    path = pm.group(1) if pm else ""
                elif call in ("fchown", "fchmod"):
                    fm = re.match(r"-?\d+<([^>]*)>", rest)
                    path = fm.group(1) if fm else ""
                else:
                    fm = _FD.match(rest)
                    path = ""
                    if fm:
                        path = fm.group(2) if fm.group(2).startswith("/") else \
                            os.path.join(fm.group(1) or "", fm.group(2))
                if _under(path, mounts):
                    c["chown_chmod"] += 1
    return c


STRACE_CALLS = "openat,open,write,mkdir,mkdirat,rmdir,chown,lchown,fchown,fchownat,chmod,fchmod,fchmodat"


def straced(cmd: list[str], workdir: str, label: str, env: dict[str, str] | None = None) -> dict:
    trace = os.path.join(workdir, f"strace-{label}.txt")
    full = ["strace", "-f", "-qq", "-y", "-s", "32", "-e", f"trace={STRACE_CALLS}", "-o", trace, "--"] + cmd
    p = subprocess.run(full, capture_output=True, text=True, env=env)
    out: dict[str, int | str] = dict(count_trace(trace))
    out["rc"] = p.returncode
    if p.returncode != 0:
        out["stderr"] = p.stderr[-2000:]
    return out


# ------------------------------------------------------------------------------ the tools
_WRAPPER = r"""
import json, sys, time
from cgman.policy import load_files
from cgman.drivers import open_host
from cgman.reconcile.apply import apply
t0 = time.perf_counter()
res = apply(load_files([sys.argv[1]]), open_host(sys.argv[2]))
print(json.dumps({"created": len(res.created), "changes": len(res.changes),
                  "unchanged": res.unchanged, "seconds": time.perf_counter() - t0}))
"""


def cgman_api_apply(policy: str, root: str) -> dict:
    """One in-process apply, timed end to end (load + detect + apply)."""
    from cgman.drivers import open_host
    from cgman.policy import load_files
    from cgman.reconcile.apply import apply
    t0 = time.perf_counter()
    ps = load_files([policy])
    t1 = time.perf_counter()
    res = apply(ps, open_host(root))
    t2 = time.perf_counter()
    return {"seconds": t2 - t0, "load_seconds": t1 - t0, "created": len(res.created),
            "changes": len(res.changes), "unchanged": res.unchanged,
            "warnings": len(res.plan.warnings)}


def cli_forms(policy: str, root: str) -> list[tuple[str, list[str], dict[str, str]]]:
    env = dict(os.environ)
    env_root = dict(env, CGMAN_CGROUP_ROOT=root)
    exe = str(CGMAN_CLI)
    return [
        ("cgman apply --cgroup-root ROOT FILE", [exe, "apply", "--cgroup-root", root, policy], env),
        ("cgman --cgroup-root ROOT apply FILE", [exe, "--cgroup-root", root, "apply", policy], env),
        ("CGMAN_CGROUP_ROOT=ROOT cgman apply FILE", [exe, "apply", policy], env_root),
    ]


def probe_cli(policy: str, tag: str) -> tuple[int | None, list[dict]]:
    """Which CLI spelling works (tried with --dry-run, which creates nothing)."""
    tries = []
    if not CGMAN_CLI.exists():
        return None, [{"form": str(CGMAN_CLI), "error": "console script not installed"}]
    root = new_root("cliprobe", tag)
    try:
        for i, (form, cmd, env) in enumerate(cli_forms(policy, root)):
            cmd = cmd[:-1] + ["--dry-run", cmd[-1]]
            p = subprocess.run(cmd, capture_output=True, text=True, env=env)
            tries.append({"form": form, "rc": p.returncode,
                          "error": _last_message(p.stderr) if p.returncode else None})
            if p.returncode == 0:
                return i, tries
        return None, tries
    finally:
        remove_root(root)


def _last_message(text: str) -> str:
    """Last line of an error output that says something (typer/rich draws boxes around it)."""
    lines = [ln.strip(" \u2502\u256d\u256e\u2570\u256f\u2500") for ln in text.splitlines()]
    lines = [ln for ln in lines if any(ch.isalnum() for ch in ln)]
    return (lines[-1] if lines else "")[:300]


def cgman_cli_apply(policy: str, root: str, form: int) -> dict:
    _, cmd, env = cli_forms(policy, root)[form]
    t0 = time.perf_counter()
    p = subprocess.run(cmd, capture_output=True, text=True, env=env)
    dt = time.perf_counter() - t0
    if p.returncode != 0:
        raise RuntimeError(f"cgman CLI failed (rc {p.returncode}): {p.stderr.strip()[-1000:]}")
    last = (p.stdout.strip().splitlines() or [""])[-1]
    return {"seconds": dt, "summary": last, "noop": last.startswith("nothing to do")}


def libcgroup_apply(conf: str) -> dict:
    t0 = time.perf_counter()
    p = subprocess.run(["cgconfigparser", "-l", conf], capture_output=True, text=True)
    dt = time.perf_counter() - t0
    if p.returncode != 0:
        raise RuntimeError(f"cgconfigparser -l failed (rc {p.returncode}): "
                           f"{(p.stderr + p.stdout).strip()[-1500:]}")
    return {"seconds": dt}


def lib_drift(policy: str, root: str) -> list:
    """cgman diff of the plan against libcgroup's tree (read only)."""
    from cgman.drivers import open_host
    from cgman.policy import load_files
    from cgman.reconcile.apply import diff
    return diff(load_files([policy]), open_host(root))


# ------------------------------------------------------------------------------ helpers
def ensure_tool(binary: str, package: str) -> str | None:
    if shutil.which(binary):
        return None
    log(f"{binary} missing: apt-get install -y {package}")
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    for cmd in (["apt-get", "update"], ["apt-get", "install", "-y", package]):
        p = subprocess.run(cmd, capture_output=True, text=True, env=env)
        if p.returncode != 0:
            return f"{' '.join(cmd)} failed: {p.stderr.strip()[-500:]}"
    return None if shutil.which(binary) else f"{binary} still missing after installing {package}"


def pkg_version(pkg: str) -> str:
    p = subprocess.run(["dpkg-query", "-W", "-f=${Version}", pkg], capture_output=True, text=True)
    return p.stdout.strip() if p.returncode == 0 else "?"


def med(xs: list[float]) -> float | None:
    return statistics.median(xs) if xs else None


def ratio(a, b) -> float | None:
    return (a / b) if (a is not None and b) else None


def fmt(x, nd=3) -> str:
    if x is None:
        return "n/a"
    return f"{x:.{nd}f}" if isinstance(x, float) else str(x)


# ------------------------------------------------------------------------------ main
def run(args: argparse.Namespace, workdir: str, tag: str) -> dict:
    from cgman.drivers import open_host
    from cgman.plan import plan
    from cgman.policy import load_files

    tenants = max(1, min(args.tenants, args.groups))
    children = max(1, -(-args.groups // tenants))
    policy = os.path.join(workdir, "policy.yaml")
    Path(policy).write_text(make_policy(tenants, children), encoding="utf-8")
    ps = load_files([policy])
    host = open_host(f"{PREFIX}{tag}-planonly")           # detection only: nothing is created
    p = plan(ps, host.layout, host.features)
    report: dict = {
        "host": {"kernel": os.uname().release, "layout": host.layout.mode,
                 "v1_controllers": sorted(host.layout.v1_controllers),
                 "unified": host.info.unified, "cpus": os.cpu_count()},
        "versions": {"cgroup-tools": pkg_version("cgroup-tools"), "strace": pkg_version("strace"),
                     "python": sys.version.split()[0]},
        "groups": {"tenants": tenants, "children_per_tenant": children,
                   "leaf": tenants * children, "total": len(ps.groups),
                   "total_with_root": len(ps.groups) + 1},
        "plan": {"writes": len(p.writes), "warnings": p.warnings[:5]},
        "rounds": args.rounds, "errors": {}, "timings": {}, "counts": {},
    }
    log(f"policy: {len(ps.groups)} groups ({tenants} tenants x {children} children), "
        f"{len(p.writes)} planned writes; layout {host.layout.mode}")

    # --- tools available? --------------------------------------------------------------
    for binary, pkg in (("cgconfigparser", "cgroup-tools"), ("strace", "strace")):
        err = ensure_tool(binary, pkg)
        if err:
            report["errors"][binary] = err
    have_lib = "cgconfigparser" not in report["errors"]
    have_strace = "strace" not in report["errors"]
    form, tries = probe_cli(policy, tag)
    report["cli"] = {"available": form is not None, "tried": tries,
                     "form": cli_forms(policy, "ROOT")[form][0] if form is not None else None}
    if form is None:
        report["errors"]["cgman-cli"] = "; ".join(f"{t['form']}: {t.get('error')}" for t in tries)
        log(f"cgman CLI apply unavailable: {report['errors']['cgman-cli']}")

    def conf_for(root: str) -> str:
        text, notes = make_cgconfig(p, host.layout, root)
        report["cgconfig_notes"] = notes[:5]
        path = os.path.join(workdir, f"cgconfig-{root}.conf")
        Path(path).write_text(text, encoding="utf-8")
        return path

    T: dict[str, dict[str, list]] = {k: {"first": [], "second": []}
                                     for k in ("cgman-api", "cgman-cli", "libcgroup", "systemd")}
    extra: dict[str, list] = {"cgman-api-load_seconds": []}

    def do_api(r: int) -> None:
        root = new_root(f"api-r{r}", tag)
        try:
            a = cgman_api_apply(policy, root)
            b = cgman_api_apply(policy, root)
            if b["changes"] != 0 or b["created"] != 0:
                raise AssertionError(f"cgman re-apply was not a no-op: {b}")
            T["cgman-api"]["first"].append(a["seconds"])
            T["cgman-api"]["second"].append(b["seconds"])
            extra["cgman-api-load_seconds"].append(a["load_seconds"])
            report.setdefault("cgman_api_results", {"first": a, "second": b})
            log(f"  round {r} cgman-api  first {a['seconds']:.3f}s ({a['created']} created, "
                f"{a['changes']} changes)  re-apply {b['seconds']:.3f}s ({b['changes']} changes, "
                f"{b['unchanged']} unchanged)")
        finally:
            remove_root(root)

    def do_cli(r: int) -> None:
        if form is None:
            return
        root = new_root(f"cli-r{r}", tag)
        try:
            a = cgman_cli_apply(policy, root, form)
            b = cgman_cli_apply(policy, root, form)
            if not b["noop"]:
                raise AssertionError(f"cgman CLI re-apply was not a no-op: {b['summary']}")
            T["cgman-cli"]["first"].append(a["seconds"])
            T["cgman-cli"]["second"].append(b["seconds"])
            report.setdefault("cgman_cli_results", {"first": a["summary"], "second": b["summary"]})
            log(f"  round {r} cgman-cli  first {a['seconds']:.3f}s  re-apply {b['seconds']:.3f}s "
                f"({b['summary']})")
        except RuntimeError as e:
            report["errors"]["cgman-cli"] = str(e)
            log(f"  round {r} cgman-cli failed: {e}")
        finally:
            remove_root(root)

    lib_state = {"ok": have_lib}

    def do_lib(r: int) -> None:
        if not lib_state["ok"]:
            return
        root = new_root(f"lib-r{r}", tag)
        conf = conf_for(root)
        try:
            a = libcgroup_apply(conf)
            b = libcgroup_apply(conf)
            T["libcgroup"]["first"].append(a["seconds"])
            T["libcgroup"]["second"].append(b["seconds"])
            if "lib_drift" not in report:
                drift = lib_drift(policy, root)
                report["lib_drift"] = {"count": len(drift), "sample": drift[:5]}
                log(f"  libcgroup result vs cgman plan: {len(drift)} differences")
            log(f"  round {r} libcgroup  first {a['seconds']:.3f}s  second {b['seconds']:.3f}s")
        except RuntimeError as e:
            lib_state["ok"] = False
            report["errors"]["libcgroup"] = str(e)
            log(f"  round {r} libcgroup failed: {e}")
        finally:
            remove_root(root)

    sd_state = {"skip": systemd_skip() if form is not None else "the cgman CLI is unavailable"}
    if sd_state["skip"]:
        report["errors"]["systemd"] = f"skipped: {sd_state['skip']}"

    def do_sysd(r: int) -> None:
        if sd_state["skip"]:
            return
        root = new_root(f"sd-r{r}", tag)
        try:
            a = systemd_cli_apply(policy, root)
            b = systemd_cli_apply(policy, root)
            if not b["noop"]:
                raise AssertionError(f"systemd driver re-apply was not a no-op: {b['summary']}")
            T["systemd"]["first"].append(a["seconds"])
            T["systemd"]["second"].append(b["seconds"])
            report.setdefault("systemd_results", {"first": a["summary"], "second": b["summary"]})
            log(f"  round {r} systemd    first {a['seconds']:.3f}s  re-apply {b['seconds']:.3f}s ({b['summary']})")
        except RuntimeError as e:
            sd_state["skip"] = str(e)
            report["errors"]["systemd"] = str(e)
            log(f"  round {r} systemd failed: {e}")
        finally:
            subprocess.run(["systemctl", "stop", _created_slices[-1]], capture_output=True)
            remove_root(root)

    # --- timed rounds, interleaved, rotating the order --------------------------------
    steps = [("libcgroup", do_lib), ("cgman-api", do_api), ("cgman-cli", do_cli), ("systemd", do_sysd)]
    for r in range(1, args.rounds + 1):
        order = steps[(r - 1) % len(steps):] + steps[:(r - 1) % len(steps)]
        log(f"round {r}/{args.rounds}: " + ", ".join(n for n, _ in order))
        for _name, fn in order:
            fn(r)
    report["timings"] = {k: {"first_s": v["first"], "second_s": v["second"],
                             "first_median_s": med(v["first"]), "second_median_s": med(v["second"])}
                         for k, v in T.items()}
    report["timings"]["cgman-api"]["load_files_median_s"] = med(extra["cgman-api-load_seconds"])

    # --- untimed strace passes: what each tool writes ------------------------------------
    if have_strace:
        log("strace passes (untimed)")
        root = new_root("strace-cgman", tag)
        try:
            cmd = [sys.executable, "-c", _WRAPPER, policy, root]
            first, second = straced(cmd, workdir, "cgman-1"), straced(cmd, workdir, "cgman-2")
            report["counts"]["cgman"] = {"first": first, "second": second}
        finally:
            remove_root(root)
        if have_lib:
            root = new_root("strace-lib", tag)
            conf = conf_for(root)
            try:
                cmd = ["cgconfigparser", "-l", conf]
                first, second = straced(cmd, workdir, "lib-1"), straced(cmd, workdir, "lib-2")
                report["counts"]["libcgroup"] = {"first": first, "second": second}
                if first["rc"] != 0:
                    report["errors"].setdefault("libcgroup", first.get("stderr", ""))
            finally:
                remove_root(root)
    return report


def summarize(rep: dict) -> dict:
    t, c = rep["timings"], rep.get("counts", {})

    def cnt(tool, run, key="writes"):
        return c.get(tool, {}).get(run, {}).get(key)

    rows = []
    for tool, ctool in (("cgman-api", "cgman"), ("cgman-cli", "cgman"), ("libcgroup", "libcgroup")):
        rows.append({"tool": tool,
                     "first_s": t[tool]["first_median_s"], "second_s": t[tool]["second_median_s"],
                     "writes_first": cnt(ctool, "first"), "writes_second": cnt(ctool, "second"),
                     "mkdir_first": cnt(ctool, "first", "mkdir_new"),
                     "chown_first": cnt(ctool, "first", "chown_chmod"),
                     "chown_second": cnt(ctool, "second", "chown_chmod"),
                     "reads_second": cnt(ctool, "second", "open_for_read")})
    lib = rows[2]
    ratios = {}
    for r in rows[:2]:
        ratios[f"{r['tool']}/libcgroup"] = {
            k: ratio(r[k], lib[k]) for k in ("first_s", "second_s", "writes_first", "writes_second")}
    if t["systemd"]["first_median_s"] is not None:          # D-Bus calls, not file writes: times only
        rows.append({"tool": "systemd", "first_s": t["systemd"]["first_median_s"],
                     "second_s": t["systemd"]["second_median_s"]})
        ratios["systemd/cgman-cli"] = {k: ratio(rows[-1][k], rows[1][k]) for k in ("first_s", "second_s")}
    return {"rows": rows, "ratios": ratios}


def print_table(rep: dict, summ: dict) -> None:
    g = rep["groups"]
    print(f"cgman apply vs libcgroup cgconfigparser — kernel {rep['host']['kernel']}, "
          f"layout {rep['host']['layout']}, {rep['host']['cpus']} CPUs, cgroup-tools "
          f"{rep['versions']['cgroup-tools']}")
    print(f"{g['total']} groups ({g['tenants']} tenants + {g['leaf']} children; +1 root), "
          f"{rep['plan']['writes']} planned settings, {rep['rounds']} rounds, median seconds")
    hdr = ("tool", "first s", "re-apply s", "writes 1st", "writes 2nd", "mkdirs 1st",
           "chown 1st", "chown 2nd", "reads 2nd")
    print("  ".join(f"{h:>11}" for h in hdr))
    for r in summ["rows"]:
        vals = (r["tool"], fmt(r["first_s"]), fmt(r["second_s"]), fmt(r.get("writes_first")),
                fmt(r.get("writes_second")), fmt(r.get("mkdir_first")), fmt(r.get("chown_first")),
                fmt(r.get("chown_second")), fmt(r.get("reads_second")))
        print("  ".join(f"{v:>11}" for v in vals))
    for name, rr in summ["ratios"].items():
        print(f"ratio {name}: first {fmt(rr['first_s'], 2)}x, re-apply {fmt(rr['second_s'], 2)}x"
              + (f", writes first {fmt(rr['writes_first'], 2)}x, writes second {fmt(rr['writes_second'], 2)}x"
                 if "writes_first" in rr else " (the systemd driver against the cgroupfs driver, both CLI)"))
    api = rep.get("cgman_api_results")
    if api:
        print(f"cgman re-apply: {api['second']['changes']} changes, {api['second']['created']} created, "
              f"{api['second']['unchanged']} unchanged (asserted 0 changes); first apply created "
              f"{api['first']['created']} groups, {api['first']['changes']} changes")
    load = rep["timings"]["cgman-api"].get("load_files_median_s")
    if load is not None:
        print(f"cgman-api times include load_files (YAML parse + validation): median {load:.3f}s per apply")
    if "lib_drift" in rep:
        print(f"libcgroup result vs cgman plan (cgman diff): {rep['lib_drift']['count']} differences")
    rejected = "; ".join(f"`{t['form']}` -> rc {t.get('rc')}: {t.get('error')}"
                         for t in rep["cli"]["tried"] if t.get("rc") != 0)
    print(f"cgman CLI: {rep['cli']['form'] or 'unavailable'}" + (f" (rejected: {rejected})" if rejected else ""))
    for k, v in rep["errors"].items():
        print(f"error [{k}]: {v}")
    print("(writes = write(2) calls on files under the cgroup mounts, counted with strace -f -y "
          "in untimed passes; cgman-cli shares the cgman-api counts)")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--groups", type=int, default=1000, help="child (leaf) groups; tenants come on top")
    ap.add_argument("--tenants", type=int, default=50)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--json", action="store_true", help="print one JSON object")
    ap.add_argument("--keep-tmp", action="store_true", help="keep the temp dir (policy, conf, traces)")
    args = ap.parse_args()
    if os.geteuid() != 0:
        print("apply.py: needs root (it creates cgroups under cgman-bench-*)", file=sys.stderr)
        return 2

    def on_signal(signum, _frame):
        raise SystemExit(128 + signum)
    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGHUP, on_signal)

    tag = secrets.token_hex(3)
    workdir = tempfile.mkdtemp(prefix="cgman-bench-")
    rep: dict | None = None
    rc = 0
    try:
        rep = run(args, workdir, tag)
    except BaseException as e:                      # report, then clean up
        rc = 1
        tb = traceback.format_exc()
        log(tb)
        rep = {"fatal": f"{type(e).__name__}: {e}", "traceback": tb}
        if isinstance(e, KeyboardInterrupt | SystemExit):
            rc = 130 if isinstance(e, KeyboardInterrupt) else (e.code if isinstance(e.code, int) else 1)
    finally:
        failed = cleanup_all()
        left = leftovers(tag)
        if failed or left:
            log(f"cleanup left: {failed or left}")
            rc = rc or 1
        if args.keep_tmp:
            log(f"kept {workdir}")
        else:
            shutil.rmtree(workdir, ignore_errors=True)
    if rep is not None:
        rep["cleanup"] = {"left_behind": left, "failed": failed}
        if "fatal" in rep:
            print(json.dumps(rep, indent=2) if args.json else f"FAILED: {rep['fatal']}")
            return rc
        summ = summarize(rep)
        rep["summary"] = summ
        if args.json:
            print(json.dumps(rep, indent=2, default=str))
        else:
            print_table(rep, summ)
    return rc


if __name__ == "__main__":
    sys.exit(main())
