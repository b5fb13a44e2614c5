"""Host checks for `cgman doctor`: what cgman can use here, and how to fix what it can't."""

from __future__ import annotations

import glob
import os
import platform
from typing import Mapping

from ..drivers import Host
from ..kernel import at_least as kernel_at_least
from ..plan import ACCOUNTING_CONTROLLERS, RESOURCE_CONTROLLERS
from .check import Check


def _read(path: str) -> str:
    try:
        with open(path, encoding="utf-8") as f:
            return f.read().strip()
    except OSError:
        return ""


def run_checks(host: Host, state_dir: str | None = None, environ: Mapping[str, str] | None = None) -> list[Check]:
    """Every check of `cgman doctor`, in the order it prints them; ``environ`` is the command's
    environment (the CLI's), for the systemd unit check."""
    from .delegation import delegation_checks, layout_check
    checks = _hierarchy_checks(host)
    if host.info.unified:
        checks += _unified_checks(host, host.info.unified)
    checks += _scheduler_checks()
    checks.append(_swap_check(host))
    checks += _write_checks(host)
    checks += delegation_checks(host.info.unified, host.root, v2_controllers=any(
        c not in host.layout.v1_controllers for c in RESOURCE_CONTROLLERS), environ=environ)
    checks.append(layout_check(host.info.unified if host.info.mode == "v2" else None, host.root))
    checks += container_checks()
    checks += security_checks(host)
    checks += accounting_checks(host, state_dir)
    return checks


def _hierarchy_checks(host: Host) -> list[Check]:
    """The hierarchy found, root privileges, and the controllers cgroup v1 serves."""
    info = host.info
    checks = [Check("hierarchy", True, f"cgroup {info.mode}: "
                    + ", ".join(f"{c}@{m}" for c, m in sorted(info.v1_mounts.items()))
                    + (f"; unified at {info.unified}" if info.unified else ""))]
    checks.append(Check("root privileges", os.geteuid() == 0,
                        f"running as uid {os.geteuid()}",
                        "" if os.geteuid() == 0 else "run as root, or delegate the cgman root to this "
                        "user (systemd: Delegate=yes)"))
    for c in RESOURCE_CONTROLLERS + ("freezer",):
        where = host.layout.version_of(c) if (c in host.layout.v1_controllers or info.unified) else None
        if where == 1:
            checks.append(Check(f"controller {c}", True, f"cgroup v1 at {info.v1_mounts[c]}"))
    return checks


def _unified_checks(host: Host, unified: str) -> list[Check]:
    """cgroup2 (mounted at ``unified``): the controllers enabled above the cgman root,
    cgroup.kill and cgroup.freeze."""
    parent = os.path.dirname(os.path.join(unified, host.root))
    delegated = host.features.v2_available      # the parent's cgroup.subtree_control
    checks = []
    for c in RESOURCE_CONTROLLERS:
        if c in host.layout.v1_controllers:
            continue
        ok = c in delegated
        checks.append(Check(
            f"controller {c}", ok or c not in ACCOUNTING_CONTROLLERS and c != "cpuset",
            f"cgroup v2: {'enabled' if ok else 'not enabled'} in {parent}/cgroup.subtree_control",
            "" if ok else f"enable it in the parent of the cgman root: echo +{c} > "
            f"{parent}/cgroup.subtree_control (or run cgman under systemd with Delegate=yes)"))
    # Only non-root groups carry these files, so ask the kernel version, not the tree.
    kill = kernel_at_least(5, 14)
    checks.append(Check("cgroup.kill", kill, "v2 cgroup.kill " + ("available" if kill else "missing"),
                        "" if kill else "Linux 5.14+ needed; cgman falls back to signalling each task",
                        warn=True))
    freeze = kernel_at_least(5, 2)
    checks.append(Check("cgroup.freeze", freeze or "freezer" in host.layout.v1_controllers,
                        "v2 cgroup.freeze " + ("available" if freeze else "missing"),
                        "" if freeze else "Linux 5.2+ needed, or mount the v1 freezer"))
    return checks


def _scheduler_checks() -> list[Check]:
    """BFQ on every disk (io weights need it; throttles do not)."""
    checks = []
    for sched in sorted(glob.glob("/sys/block/*/queue/scheduler")):
        dev = sched.split("/")[3]
        if dev.startswith(("loop", "ram", "zram")):
            continue
        text = _read(sched)
        active = text[text.find("[") + 1:text.find("]")] if "[" in text else text
        majmin = _read(f"/sys/block/{dev}/dev")
        checks.append(Check(f"BFQ on {dev} ({majmin})", active == "bfq",
                            f"scheduler {active}; available: {text}",
                            "" if active == "bfq" else
                            f"io weights need BFQ: echo bfq > /sys/block/{dev}/queue/scheduler "
                            f"(throttles work with any scheduler)", warn=True))
    return checks


def _swap_check(host: Host) -> Check:
    feat = host.features
    if "memory" in host.layout.v1_controllers:
        return Check("swap accounting", feat.memsw,
                     "memory.memsw.* " + ("present" if feat.memsw else "missing"),
                     "" if feat.memsw else "boot with swapaccount=1 to enforce memory.swap")
    return Check("swap accounting", feat.memory_swap,
                 "memory.swap.max " + ("available" if feat.memory_swap else "disabled"),
                 "" if feat.memory_swap else "remove swapaccount=0 from the kernel command line")


def _write_checks(host: Host) -> list[Check]:
    """Write access to the cgman root (or where it would be made) in each hierarchy."""
    checks = []
    for d in host.drivers:
        for t in d.hierarchies():
            target = t.path(".") if os.path.isdir(t.path(".")) else os.path.dirname(t.path("."))
            ok = os.access(target, os.W_OK)
            checks.append(Check(f"write access {target}", ok, "writable" if ok else "not writable",
                                "" if ok else "run as root or chown the cgman root to this user"))
            if d.version == 2:
                break
    return checks


def container_checks() -> list[Check]:
    """What `cgman run` needs beyond cgroups; each missing piece disables one feature only."""
    out = []
    try:
        from .. import _spawn  # noqa: F401
        out.append(Check("launch helper", True, "cgman._spawn (C) is built"))
    except ImportError as e:
        out.append(Check("launch helper", False, f"cgman._spawn is not built ({e}): `cgman run` cannot start",
                         "reinstall: .venv/bin/pip install -e . (needs gcc and the Python headers)"))
    born = kernel_at_least(5, 7)
    out.append(Check("clone3 into cgroup", born, "containers are born in their cgroup2 leaf" if born else
                     "kernel < 5.7: the parent attaches the child before releasing it (still before exec)",
                     warn=not born))
    users = _read("/proc/sys/user/max_user_namespaces")
    ok = users not in ("", "0")
    out.append(Check("user namespaces", ok, f"max_user_namespaces={users or '?'}",
                     "" if ok else "sysctl -w user.max_user_namespaces=15000 (needed for --userns)", warn=not ok))
    overlay = "overlay" in _read("/proc/filesystems").split()
    out.append(Check("overlayfs", overlay, "available" if overlay else "not loaded (needed for --layer)",
                     "" if overlay else "modprobe overlay", warn=not overlay))
    bridge = os.path.isdir("/sys/module/bridge") or os.path.isdir("/sys/class/net/bridge") or _module_file("bridge")
    out.append(Check("bridge networking", bridge, "bridge module present" if bridge else
                     "no bridge module (needed for network: bridge)", "" if bridge else "modprobe bridge veth",
                     warn=not bridge))
    return out


def security_checks(host: Host) -> list[Check]:
    """What a default container's protections need: seccomp, a device filter, cgman-init."""
    out = []
    try:
        from ..security import caps, seccomp
        prog = seccomp.program(seccomp.DEFAULT, caps.DEFAULT, None)
        out.append(Check("seccomp", prog is not None and "Seccomp:" in _read("/proc/self/status"),
                         f"default profile compiles ({len(prog[0]) // 8 if prog else 0} BPF instructions)"))
    except Exception as e:    # noqa: BLE001 (any failure here is the finding)
        out.append(Check("seccomp", False, f"cannot compile the default profile: {e}",
                         "install libseccomp (apt-get install libseccomp2) and reinstall cgman; until then every "
                         "container fails to start unless its group sets launch.seccomp: unconfined"))
    from ..security.devices import DEFAULT
    if "devices" in host.layout.v1_controllers:
        out.append(Check("device cgroup (v1)", True, f"devices.deny/devices.allow at {host.info.v1_mounts['devices']}"))
    if host.v2 is not None:
        try:
            from .. import _secure
            os.close(_secure.load_device_filter([d.bpf() for d in DEFAULT]))
            out.append(Check("device filter (BPF)", True, "BPF_PROG_TYPE_CGROUP_DEVICE programs load"))
        except (ImportError, OSError) as e:
            out.append(Check("device filter (BPF)", False, f"{e}",
                             "needs a kernel with CONFIG_CGROUP_BPF and root (CAP_SYS_ADMIN/CAP_BPF); until then "
                             "containers on cgroup v2 cannot start unless privileged"))
    try:
        from ..security.init import memfd
        memfd()
        out.append(Check("container init", True, "cgman-init runs from a sealed memfd (no host binary as PID 1)"))
    except Exception as e:    # noqa: BLE001
        out.append(Check("container init", False, str(e), "reinstall cgman (pip install -e .) with musl-tools or "
                         "a static libc"))
    users = _read("/proc/sys/user/max_user_namespaces")
    out.append(Check("isolation", True, "default containers: 11 capabilities, no_new_privs, seccomp, devices "
                     "allow-listed, read-only cgroupfs; --userns also maps container root to an unprivileged "
                     "host uid" + ("" if users not in ("", "0") else " (unavailable here: user namespaces are off)")))
    return out


def accounting_checks(host: Host, state_dir: str | None = None) -> list[Check]:
    """The ledger's state dir and the kernel's pressure (PSI) files, for `cgman exporter` and bills."""
    from ..accounting.ledger import Ledger, LedgerError, ledger_path
    from ..state.records import state_dir as default_state_dir
    out = []
    state = default_state_dir(state_dir)
    path = ledger_path(state)
    probe = state
    while not os.path.isdir(probe) and os.path.dirname(probe) != probe:
        probe = os.path.dirname(probe)
    if not os.access(probe, os.W_OK):
        out.append(Check("usage ledger", False, f"{probe} is not writable: containers' usage would wait in "
                         f"their run records", "run as root, or point --state-dir / CGMAN_STATE_DIR elsewhere"))
    elif os.path.exists(path):
        try:
            with Ledger(path, readonly=True) as led:
                n = sum(t.containers for t in led.tenant_totals().values())
            out.append(Check("usage ledger", True, f"{path}: {n} container(s) recorded"))
        except LedgerError as e:
            out.append(Check("usage ledger", False, str(e), "see the message: move a corrupt ledger aside"))
    else:
        out.append(Check("usage ledger", True, f"{path} will be created by the first container that exits"))
    u = host.info.unified
    psi = u is not None and os.path.exists(os.path.join(u, "cpu.pressure"))
    out.append(Check("pressure (PSI)", psi, "per-container cpu/memory/io pressure is exported" if psi else
                     "no cgroup2 *.pressure files: the exporter leaves cgman_pressure_* out",
                     "" if psi else "boot with psi=1 (a kernel with CONFIG_PSI)", warn=not psi))
    return out


def _module_file(name: str) -> bool:
    return bool(glob.glob(f"/lib/modules/{platform.release()}/kernel/net/{name}/{name}.ko*"))
