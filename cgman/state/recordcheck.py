"""A container record, read back from the run dir, checked as if an attacker wrote it.

Every field must be what cgman itself would have written before any command acts on it:
the name is the record's own directory name, the cgroup is ``<group>/<name>`` under the
root of the command that reads it, numbers are numbers, a bridge is a valid interface
name. A record that fails is reported (file, field, what is wrong) and never acted on.
A record of another cgroup root is not invalid, only not ours: a command acts on the
groups of the root it was invoked with and no other (``--cgroup-root``).

Pids are checked again at the moment they are signalled (``owned_pid``): the start time
must match and the process must sit in the container's leaf, so an edited or stale pid
never reaches a process outside the container.
"""

from __future__ import annotations

import math
import os
import re
import signal

from ..errors import CgmanError
from ..security.resolve import check_summary

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any, Callable

NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")
_HEX_ID = re.compile(r"[0-9a-f]{32}")
STATES = ("created", "running", "exited")
NET_MODES = ("host", "none", "loopback", "bridge")
_SHORT = 4096           # longest string field cgman writes (argv words, reasons) is far below


class InvalidRecord(CgmanError):
    """A record that cgman would not have written: reported, never acted on."""

    def __init__(self, path: str, field: str, problem: str) -> None:
        self.path, self.field, self.problem = path, field, problem
        super().__init__(f"{path}: {field}: {problem}; the record is left alone (inspect it, then "
                         f"`cgman rm --force NAME` drops it)")


class OtherRoot(InvalidRecord):
    """A valid-looking record of another cgroup root: not this command's to act on."""

    def __init__(self, path: str, root: str, ours: str) -> None:
        CgmanError.__init__(self, f"{path}: cgroup_root: the container belongs to cgroup root {root!r}, "
                                  f"this command acts on {ours!r}; run it with --cgroup-root {root}")
        self.path, self.field, self.problem, self.root = path, "cgroup_root", "another root", root


def valid_ifname(name: object) -> bool:
    """The kernel's dev_valid_name(): 1-15 bytes, not . or .., no '/', ':' or whitespace."""
    return (isinstance(name, str) and 0 < len(name.encode()) < 16 and name not in (".", "..")
            and name.isascii() and name.isprintable() and not any(c in name for c in "/: \t\n"))


def valid_group(path: object) -> bool:
    return isinstance(path, str) and all(NAME_RE.fullmatch(p) for p in path.split("/"))


# ---------------------------------------------------------------------------- field rules
def _int(lo: int = 0, hi: int = 1 << 63, none: bool = True) -> Callable[[Any], str]:
    def check(v: Any) -> str:
        if v is None and none:
            return ""
        if type(v) is not int or not lo <= v <= hi:
            return f"{v!r} is not an integer in {lo}..{hi}"
        return ""
    return check


def _num(none: bool = True) -> Callable[[Any], str]:
    def check(v: Any) -> str:
        if v is None and none:
            return ""
        if type(v) not in (int, float) or not math.isfinite(v) or v < 0:
            return f"{v!r} is not a finite number >= 0"
        return ""
    return check


def _str(none: bool = False, limit: int = _SHORT) -> Callable[[Any], str]:
    def check(v: Any) -> str:
        if v is None and none:
            return ""
        return "" if isinstance(v, str) and len(v) <= limit else f"not a string of at most {limit} characters"
    return check


def _bool(v: Any) -> str:
    return "" if type(v) is bool else f"{v!r} is not true or false"


def _one_of(*allowed: str) -> Callable[[Any], str]:
    return lambda v: "" if v in allowed else f"{v!r} is not one of {', '.join(allowed)}"


def _argv(v: Any) -> str:
    ok = isinstance(v, list) and len(v) <= 4096 and all(isinstance(a, str) and len(a) <= 1 << 17 for a in v)
    return "" if ok else "not a list of strings"


def _scalars(v: Any) -> str:
    ok = isinstance(v, dict) and len(v) <= 256 and all(
        isinstance(k, str) and (x is None or type(x) in (int, float, str, bool)) for k, x in v.items())
    return "" if ok else "not a flat object of numbers and strings"


def _scalars_or_none(v: Any) -> str:
    return "" if v is None else _scalars(v)


def _user_map(v: Any) -> str:
    if v is None:
        return ""
    ok = isinstance(v, dict) and set(v) == {"uid", "gid", "count"} and all(
        type(x) is int and 0 <= x < 1 << 32 for x in v.values())
    return "" if ok else "not {uid, gid, count} integers"


def _namespaces(v: Any) -> str:
    known = {"uts", "ipc", "pid", "net", "mount", "cgroup", "user"}
    return "" if isinstance(v, list) and set(v) <= known and all(isinstance(x, str) for x in v) \
        else f"not a list of {', '.join(sorted(known))}"


def _ipv4(v: Any, net: bool = False) -> bool:
    import ipaddress        # only a bridged container's record has addresses to check
    try:
        (ipaddress.IPv4Network if net else ipaddress.IPv4Address)(v)
        return isinstance(v, str)
    except ValueError:
        return False


def _network(v: Any) -> str:
    if not isinstance(v, dict):
        return "not an object"
    if v.get("mode", "host") not in NET_MODES:
        return f"mode {v.get('mode')!r} is not one of {', '.join(NET_MODES)}"
    if "bridge" in v and not valid_ifname(v["bridge"]):
        return f"bridge {v['bridge']!r} is not an interface name (1-15 characters, no '/', ':' or space)"
    if "veth" in v and not valid_ifname(v["veth"]):
        return f"veth {v['veth']!r} is not an interface name"
    if "address" in v and v["address"] != "pending" and not _ipv4(v["address"]):
        return f"address {v['address']!r} is not an IPv4 address"
    if "gateway" in v and not _ipv4(v["gateway"]):
        return f"gateway {v['gateway']!r} is not an IPv4 address"
    if "subnet" in v and not _ipv4(v["subnet"], net=True):
        return f"subnet {v['subnet']!r} is not an IPv4 network"
    if v.get("mode") == "bridge" and "address" in v and "bridge" not in v:
        return "a bridge address without a bridge"
    return ""


def _rootfs(v: Any) -> str:
    if not isinstance(v, dict):
        return "not an object"
    ok = all(isinstance(v.get(k, ""), str) for k in ("path", "upper")) and \
        isinstance(v.get("layers", []), list) and all(isinstance(x, str) for x in v.get("layers", []))
    return "" if ok else "not {path | layers, upper} strings"


RULES: dict[str, Callable[[Any], str]] = {
    "id": lambda v: "" if isinstance(v, str) and _HEX_ID.fullmatch(v) else "not 32 lowercase hex digits",
    "name": lambda v: "" if isinstance(v, str) and NAME_RE.fullmatch(v) else "not a container name",
    "group": lambda v: "" if valid_group(v) else "not a group path (names joined by '/', no '..')",
    "tenant": _str(limit=256), "cgroup": _str(), "cgroup_root": _str(),
    "argv": _argv, "created": _num(none=False), "state": _one_of(*STATES),
    "pid": _int(2, 1 << 22), "pid_start": _int(), "supervisor_pid": _int(2, 1 << 22),
    "supervisor_start": _int(), "detached": _bool, "started": _num(), "ended": _num(),
    "exit_code": _int(-255, 255), "exit_reason": _str(none=True), "namespaces": _namespaces,
    "hostname": _str(none=True, limit=64), "network": _network, "rootfs": _rootfs, "user_map": _user_map,
    "limits": _scalars, "final_usage": _scalars_or_none, "auto_remove": _bool, "cleanup_pending": _bool,
    "memory_byte_seconds": _num(none=False), "memory_sampled_at": _num(), "memory_sampled_bytes": _int(),
    "memory_peak_bytes": _int(), "ledger_pending": _bool, "security": check_summary,
    "driver": _one_of("cgroupfs", "systemd"),
}
REQUIRED = ("id", "name", "group", "tenant", "cgroup", "cgroup_root", "argv", "created")


def check(d: object, path: str, dirname: str, root: str) -> dict[str, Any]:
    """The known fields of ``d`` if it is a record cgman would have written for container
    ``dirname`` under cgroup root ``root``; else InvalidRecord (OtherRoot for another root)."""
    if not isinstance(d, dict):
        raise InvalidRecord(path, "(top)", "not a JSON object")
    for k in REQUIRED:
        if k not in d:
            raise InvalidRecord(path, k, "missing")
    for k, rule in RULES.items():
        if k in d and (problem := rule(d[k])):
            raise InvalidRecord(path, k, problem)
    if d["name"] != dirname:
        raise InvalidRecord(path, "name", f"{d['name']!r} is not its directory's name {dirname!r}")
    try:
        want_root, want_cgroup = placement(d, root)
    except CgmanError as e:                  # a root the systemd driver cannot name
        raise InvalidRecord(path, "driver", str(e)) from None
    scoped = d.get("driver", "cgroupfs") != "cgroupfs"
    if scoped and d["cgroup_root"] != want_root and (theirs := _scope_root(d)) is not None:
        raise OtherRoot(path, theirs, root)      # the right scope of another root's slice
    if d["cgroup"] != want_cgroup:
        what = f"its systemd scope's payload ({want_cgroup})" if scoped else f"group/name ({want_cgroup})"
        raise InvalidRecord(path, "cgroup", f"{d['cgroup']!r} is not {what}")
    if d["cgroup_root"] != want_root:
        if scoped:
            raise InvalidRecord(path, "cgroup_root",
                                f"{d['cgroup_root']!r} is not the root slice's cgroup {want_root!r}")
        if not valid_group(d["cgroup_root"]):
            raise InvalidRecord(path, "cgroup_root", f"{d['cgroup_root']!r} is not a cgroup root name")
        raise OtherRoot(path, d["cgroup_root"], root)
    if (d.get("pid") is None) != (d.get("pid_start") is None):
        raise InvalidRecord(path, "pid_start", "a pid needs its start time and a start time its pid")
    return d


def placement(d: dict[str, Any], root: str) -> tuple[str, str]:
    """(cgroup root, cgroup) that cgman writes into a record of ``d``'s group and name under the
    command's root ``root``: ``root`` and group/name, or with the systemd driver the root slice's
    cgroup and the payload of the container's scope below it."""
    if d.get("driver", "cgroupfs") == "cgroupfs":
        return root, f"{d['group']}/{d['name']}"
    from ..drivers.systemd.units import scope_placement
    return scope_placement(root, d["group"], d["name"])


def _scope_root(d: dict[str, Any]) -> str | None:
    """The other cgman root a systemd record was written under, if its cgroup_root is that root's
    slice and its cgroup that root's scope of the container; else None (the record is invalid)."""
    from ..drivers.systemd.units import root_of_slice, scope_placement
    theirs = root_of_slice(d["cgroup_root"])
    if theirs is None or not NAME_RE.fullmatch(theirs) \
            or scope_placement(theirs, d["group"], d["name"]) != (d["cgroup_root"], d["cgroup"]):
        return None
    return theirs


# ---------------------------------------------------------------------------- live pids
def cgroup_paths(pid: int) -> list[str]:
    """The cgroup paths of ``pid`` in every hierarchy (/proc/PID/cgroup, as the host sees them)."""
    try:
        with open(f"/proc/{pid}/cgroup") as f:
            return [line.rstrip("\n").split(":", 2)[2] for line in f if line.count(":") >= 2]
    except (FileNotFoundError, ProcessLookupError):
        return []


def in_leaf(pid: int, root: str, leaf: str) -> bool:
    """Whether ``pid`` lives in ``<root>/<leaf>`` (or below it) in some hierarchy."""
    want = f"/{root}/{leaf}"
    return any(p == want or p.startswith(want + "/") for p in cgroup_paths(pid))


def owned_pid(pid: int | None, start: int | None, root: str, leaf: str) -> bool:
    """``pid`` is the process the record means (same start time) and sits in the container's leaf."""
    from .records import proc_start_ticks
    if pid is None or start is None or proc_start_ticks(pid) != start:
        return False
    return in_leaf(pid, root, leaf) and proc_start_ticks(pid) == start


def signal_owned(pid: int | None, start: int | None, root: str, leaf: str, sig: int) -> bool:
    """Send ``sig`` to ``pid`` only if it is the container's (checked through a pidfd, so a
    pid reused between the check and the signal is never hit). False if it was not sent."""
    if pid is None:
        return False
    try:
        pidfd = os.pidfd_open(pid)
    except (ProcessLookupError, OSError):
        return False
    try:
        if not owned_pid(pid, start, root, leaf):
            return False
        signal.pidfd_send_signal(pidfd, sig)
        return True
    except ProcessLookupError:
        return False
    finally:
        os.close(pidfd)
