"""Which cgroup hierarchies a host has: v1, v2 (unified) or hybrid, from mountinfo."""

from __future__ import annotations

import glob
import os
from dataclasses import dataclass, field

from ..errors import CgmanError
from ..plan import RESOURCE_CONTROLLERS, Features, Layout
from . import formats as fmt
from .cgfs import read_in_hierarchy

TYPE_CHECKING = False
if TYPE_CHECKING:
    from ..plan import Target

MOUNTINFO = "/proc/self/mountinfo"
# cgman controller name -> v1 subsystem name
V1_SUBSYS = {"cpu": "cpu", "cpuacct": "cpuacct", "cpuset": "cpuset", "memory": "memory",
             "io": "blkio", "pids": "pids", "freezer": "freezer", "devices": "devices"}


@dataclass(frozen=True)
class HostInfo:
    """The cgroup mounts of this host: v1 controller mountpoints and the cgroup2 mount."""

    mode: Target
    v1_mounts: dict[str, str] = field(default_factory=dict)   # cgman controller -> mountpoint
    unified: str | None = None                                  # cgroup2 mountpoint
    unified_controllers: frozenset[str] = frozenset()

    @property
    def layout(self) -> Layout:
        v1 = frozenset(c for c in self.v1_mounts if c != "cpuacct")
        return Layout(self.mode, v1, self.unified is not None)


def _unescape(s: str) -> str:
    return s.replace("\\040", " ").replace("\\011", "\t").replace("\\012", "\n").replace("\\134", "\\")


def parse_mountinfo(text: str) -> tuple[dict[str, str], str | None]:
    """(v1 mounts by cgman controller, cgroup2 mountpoint) from mountinfo text."""
    v1: dict[str, str] = {}
    unified: str | None = None
    for line in text.splitlines():
        pre, sep, post = line.partition(" - ")
        if not sep:
            continue
        fields, tail = pre.split(), post.split()
        if len(fields) < 5 or len(tail) < 3:
            continue
        mountpoint, fstype, superopts = _unescape(fields[4]), tail[0], tail[2]
        if fstype == "cgroup2" and unified is None:
            unified = mountpoint
        elif fstype == "cgroup":
            opts = set(superopts.split(","))
            for ours, subsys in V1_SUBSYS.items():
                if subsys in opts and ours not in v1:
                    v1[ours] = mountpoint
    return v1, unified


@dataclass(frozen=True)
class Mount:
    """One line of mountinfo: where, what, and the per-mount options (nosuid, relatime, ...)."""

    mountpoint: str
    fstype: str
    options: frozenset[str]


def mounts(text: str) -> list[Mount]:
    """Every mount of a mountinfo text, in order."""
    out = []
    for line in text.splitlines():
        pre, sep, post = line.partition(" - ")
        fields, tail = pre.split(), post.split()
        if sep and len(fields) >= 6 and tail:
            out.append(Mount(_unescape(fields[4]), tail[0], frozenset(fields[5].split(","))))
    return out


_TABLE: dict[str, tuple[int, int, list[Mount]]] = {}     # mountinfo -> (its fd, whose, the table)
_SPARE: dict[str, int] = {}                               # an fd opened for the next fork's child
_HOOKED: list[bool] = []


def read_mounts(mountinfo: str = MOUNTINFO) -> list[Mount]:
    """The mount table, parsed again only when it changed: the kernel marks an open mountinfo
    file POLLPRI after any mount or unmount, so a launcher reads it once, not per container.

    The mark belongs to the open file, which a fork shares: a child that polled its parent's
    would take the parent's news. So before each fork a fresh file is opened and only then is
    the table checked (_before_fork); the child watches through that file, which is marked by
    any mount made after the check, and the parent closes it."""
    import select
    cached = _TABLE.get(mountinfo)
    if cached is not None:
        fd, pid, table = cached
        if pid == os.getpid():
            p = select.poll()
            p.register(fd, select.POLLPRI | select.POLLERR)
            if not p.poll(0):
                return table
        os.close(fd)           # changed; or a fork's child whose file was not handed over: read
        del _TABLE[mountinfo]
    fd = os.open(mountinfo, os.O_RDONLY | os.O_CLOEXEC)
    chunks = []
    while chunk := os.read(fd, 1 << 16):
        chunks.append(chunk)
    table = mounts(b"".join(chunks).decode("utf-8", "replace"))
    if not _HOOKED:
        _HOOKED.append(True)
        os.register_at_fork(before=_before_fork, after_in_child=_child_takes_spare,
                            after_in_parent=_parent_drops_spare)
    _TABLE[mountinfo] = (fd, os.getpid(), table)
    return table


def _before_fork() -> None:
    for mountinfo in list(_TABLE):
        try:
            _SPARE[mountinfo] = os.open(mountinfo, os.O_RDONLY | os.O_CLOEXEC)
            read_mounts(mountinfo)        # after the open: what changes later marks the spare
        except Exception:            # a fork must not fail for it: the child reads the table itself
            spare = _SPARE.pop(mountinfo, None)
            if spare is not None:
                os.close(spare)


def _child_takes_spare() -> None:
    for mountinfo, spare in list(_SPARE.items()):
        cached = _TABLE.get(mountinfo)
        if cached is not None:
            os.close(cached[0])           # our reference only: the parent's stays open
            _TABLE[mountinfo] = (spare, os.getpid(), cached[2])
        else:
            os.close(spare)
    _SPARE.clear()


def _parent_drops_spare() -> None:
    for spare in _SPARE.values():
        os.close(spare)
    _SPARE.clear()


def detect(mountinfo: str = MOUNTINFO) -> HostInfo:
    """Read the host's cgroup layout. Raises NotFound-like errors via the CLI when none."""
    with open(mountinfo, encoding="utf-8") as f:
        v1, unified = parse_mountinfo(f.read())
    ctl = frozenset(_read_cgroup(unified, ".", "cgroup.controllers").split()) if unified else frozenset()
    resource_v1 = [c for c in v1 if c in RESOURCE_CONTROLLERS]
    if unified and not resource_v1:
        mode: Target = "v2"
    elif unified:
        mode = "hybrid"
    else:
        mode = "v1"
    return HostInfo(mode, v1, unified, ctl)


def probe_features(info: HostInfo, root: str) -> Features:
    """Optional kernel files that change the translation (SPEC §2 'where the file exists')."""
    schedulers = " ".join(_read(p) for p in glob.glob("/sys/block/*/queue/scheduler"))
    bfq = "bfq" in schedulers.replace("[", " ").replace("]", " ").split()
    cmdline = _read("/proc/cmdline").split()
    mem_v1 = info.v1_mounts.get("memory")
    blkio_v1 = info.v1_mounts.get("io")
    available: frozenset[str] = frozenset()
    iocost: frozenset[str] = frozenset()
    if info.unified:
        # what the cgman root can enable = its parent's subtree_control
        parent = os.path.dirname(root.strip("/")) or "."
        available = frozenset(_read_cgroup(info.unified, parent, "cgroup.subtree_control").split())
        qos = fmt.nested_keyed(_read_cgroup(info.unified, ".", "io.cost.qos"))
        iocost = frozenset(dev for dev, q in qos.items() if q.get("enable") == "1")
    return Features(
        io_bfq_weight=bfq,
        io_weight=info.unified is not None and os.path.exists(os.path.join(info.unified, "io.cost.qos")),
        blkio_bfq=bool(blkio_v1) and (bfq or os.path.exists(
            os.path.join(blkio_v1 or "/", "blkio.bfq.io_service_bytes"))),
        memsw=bool(mem_v1) and os.path.exists(os.path.join(mem_v1 or "/", "memory.memsw.limit_in_bytes")),
        memory_swap="swapaccount=0" not in cmdline,
        v2_available=available,
        iocost_devices=iocost,
    )


def _read_cgroup(mount: str, rel: str, file: str) -> str:
    """A cgroup file's text, or "" where it is missing or unreadable (the feature is off)."""
    try:
        return read_in_hierarchy(mount, rel, file)
    except CgmanError:
        return ""


def _read(path: str) -> str:
    try:
        with open(path, encoding="utf-8") as f:
            return f.read()
    except OSError:
        return ""
