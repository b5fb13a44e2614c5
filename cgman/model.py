"""Version-neutral values: what a policy asks for, with units in the names.

``None`` always means "leave as is"; ``UNLIMITED`` means the kernel's max.
Pure data: no I/O, no parsing (see policy.py), no kernel names (see plan.py).
Every dataclass has a docstring: without one, @dataclass builds it from inspect.signature,
~0.4 ms a class on every `cgman run` (tests/test_house.py checks).
"""

from __future__ import annotations

from dataclasses import dataclass, field


class Unlimited:
    """The explicit "max" value. A singleton; compare with ``is UNLIMITED``."""

    _instance: "Unlimited | None" = None

    def __new__(cls) -> "Unlimited":
        if cls._instance is None:
            cls._instance = super().__new__(cls)
        return cls._instance

    def __repr__(self) -> str:
        return "UNLIMITED"

    def __reduce__(self) -> str:
        return "UNLIMITED"


UNLIMITED = Unlimited()

Bytes = int | Unlimited
TYPE_CHECKING = False
if TYPE_CHECKING:           # typing is not imported at run time: ~2 ms of every `cgman run`
    from typing import Literal
    WeightFormula = Literal["oci", "systemd"]
    NetworkMode = Literal["none", "loopback", "bridge"]
NAMESPACES = ("uts", "ipc", "pid", "net", "mount", "user", "cgroup")
DEFAULT_NAMESPACES = ("uts", "ipc", "pid", "net", "mount", "cgroup")
DEFAULT_CPU_PERIOD_USEC = 100_000


@dataclass(frozen=True)
class Location:
    """Where a value came from, for error messages."""

    file: str
    line: int
    column: int

    def __str__(self) -> str:
        return f"{self.file}:{self.line}:{self.column}"


@dataclass(frozen=True)
class CpuLimits:
    """A group's CPU limits (cpu, cpuacct and cpuset controllers)."""

    weight: int | None = None              # v2 scale 1..10000
    shares: int | None = None              # v1 scale 2..262144
    max_cpus: float | Unlimited | None = None
    period_usec: int | None = None
    cpus: frozenset[int] | None = None     # cpuset.cpus
    mems: frozenset[int] | None = None     # cpuset.mems


@dataclass(frozen=True)
class MemoryLimits:
    """A group's memory limits, in bytes."""

    max_bytes: Bytes | None = None
    high_bytes: Bytes | None = None
    low_bytes: Bytes | None = None
    min_bytes: Bytes | None = None
    swap_bytes: Bytes | None = None        # swap alone, as v2 memory.swap.max


@dataclass(frozen=True)
class IODevice:
    """The I/O limits of one block device."""

    device: str                            # "MAJ:MIN"
    weight: int | None = None
    rbps: Bytes | None = None
    wbps: Bytes | None = None
    riops: int | Unlimited | None = None
    wiops: int | Unlimited | None = None


@dataclass(frozen=True)
class IOLimits:
    """A group's I/O weight and per-device limits."""

    weight: int | None = None
    devices: tuple[IODevice, ...] = ()


@dataclass(frozen=True)
class PidsLimits:
    """How many tasks a group may hold."""

    max: int | Unlimited | None = None


@dataclass(frozen=True)
class Resources:
    """Every limit of one group (or of each of its containers)."""

    cpu: CpuLimits = field(default_factory=CpuLimits)
    memory: MemoryLimits = field(default_factory=MemoryLimits)
    io: IOLimits = field(default_factory=IOLimits)
    pids: PidsLimits = field(default_factory=PidsLimits)
    frozen: bool | None = None


@dataclass(frozen=True)
class NetworkSpec:
    """A container's network: none, its own loopback, or a veth on a bridge."""

    mode: NetworkMode = "none"
    bridge: str = "cgman0"
    subnet: str | None = None


@dataclass(frozen=True)
class RootfsSpec:
    """A container's root: a host directory, or read-only layers under a writable overlay."""

    path: str | None = None
    layers: tuple[str, ...] = ()


@dataclass(frozen=True)
class DeviceSpec:
    """A device node a group's containers may use beyond the default set (launch.devices)."""

    path: str
    access: str = "rwm"


@dataclass(frozen=True)
class VolumeSpec:
    """A host path a group's containers without a root of their own may write (launch.volumes)."""

    path: str
    readonly: bool = False


@dataclass(frozen=True)
class SecurityPolicy:
    """What a group's containers may do (launch.*): the defaults are the secure ones."""

    privileged: bool = False               # every protection off, as `docker run --privileged`
    allow_privileged: bool = False         # runs may loosen the rules (--privileged, --cap-add ...)
    cap_add: tuple[str, ...] = ()          # capability names, normalized (NET_RAW, ALL)
    cap_drop: tuple[str, ...] = ()
    no_new_privileges: bool = True
    seccomp: str = "default"               # default | unconfined | an absolute path to a JSON profile
    devices: tuple[DeviceSpec, ...] = ()
    volumes: tuple[VolumeSpec, ...] = ()     # writable host paths; the rest of the host is read-only


@dataclass(frozen=True)
class LaunchSpec:
    """How a group's containers start (launch.*): namespaces, network, root, user map, security."""

    namespaces: tuple[str, ...] = DEFAULT_NAMESPACES
    hostname: str | None = None
    network: NetworkSpec = field(default_factory=NetworkSpec)
    rootfs: RootfsSpec | None = None
    user_map_uid: int | None = None        # host uid that container root maps to (user ns)
    user_map_gid: int | None = None        # host gid of container root (default: the uid)
    user_map_count: int | None = None      # how many ids are mapped (default 65536)
    security: SecurityPolicy = SecurityPolicy()
    image: str | None = None               # NAME:TAG: `cgman run` without a root uses it


@dataclass(frozen=True)
class Group:
    """One declared cgroup: ``path`` is relative to the cgman root, e.g. "acme/web"."""

    path: str
    tenant: str
    resources: Resources
    location: Location
    formula: WeightFormula = "oci"
    container: Resources | None = None
    launch: LaunchSpec | None = None

    @property
    def parent(self) -> str | None:
        return self.path.rsplit("/", 1)[0] if "/" in self.path else None

    @property
    def depth(self) -> int:
        return self.path.count("/")


@dataclass(frozen=True)
class PolicySet:
    """Every group of one or more policy files, parents before children."""

    groups: tuple[Group, ...]
    files: tuple[str, ...] = ()

    def get(self, path: str) -> Group | None:
        for g in self.groups:
            if g.path == path:
                return g
        return None
