"""A container's spec from its group's policy blocks (``container:`` limits, ``launch:``) plus the
command-line overrides: pure, apart from checking that a root or layer directory exists."""

from __future__ import annotations

import dataclasses
import os

from ..errors import LaunchError, NotFound
from ..model import UNLIMITED, LaunchSpec, NetworkSpec, PolicySet, Resources, RootfsSpec
from ..security.resolve import RunSecurity, resolve
from .launch import DEFAULT_USER_MAP, ContainerSpec

TYPE_CHECKING = False
if TYPE_CHECKING:
    from ..state.records import Store


@dataclasses.dataclass(frozen=True)
class Overrides:
    """Command-line flags that override a group's container/launch blocks (None: keep)."""

    cpus: float | None = None
    memory_bytes: int | None = None
    pids: int | None = None
    hostname: str | None = None
    network: str | None = None
    rootfs: str | None = None
    layers: tuple[str, ...] = ()
    userns: bool = False
    init: bool = True
    env: tuple[tuple[str, str], ...] = ()
    auto_remove: bool = False
    security: RunSecurity = RunSecurity()


def _check_argv(argv: list[str]) -> None:
    if not argv:
        raise LaunchError("no command given: put it after --, e.g. `cgman run --policy acme/web -- sleep 60`")


def _default_name(group: str) -> str:
    return f"{group.rsplit('/', 1)[-1]}-{os.urandom(3).hex()}"


def _check_dir(path: str, what: str) -> str:
    if not os.path.isabs(path):
        path = os.path.abspath(path)
    if not os.path.isdir(path):
        raise LaunchError(f"{what} {path} does not exist or is not a directory")
    return path


def _network(net: NetworkSpec, ns: frozenset[str], mode: str | None) -> tuple[NetworkSpec, frozenset[str]]:
    """The network and namespaces with --network ``mode`` over them (None: as they are)."""
    if mode is None:
        return net, ns
    if mode not in ("none", "loopback", "bridge"):
        raise LaunchError(f"--network must be none, loopback or bridge, not {mode!r}")
    return dataclasses.replace(net, mode=mode), ns | {"net"}  # type: ignore[arg-type]


def spec_for(policies: PolicySet, group: str, name: str | None, argv: list[str], o: Overrides,
             where: str = "in the policies", hint: str = "see `cgman validate`") -> ContainerSpec:
    """The container spec for ``group`` from its policy blocks plus the overrides. ``where`` and
    ``hint`` say, in the error for an unknown group, where the policies came from and what to do."""
    group = group.strip("/")
    g = policies.get(group)
    if g is None:
        known = ", ".join(x.path for x in policies.groups) or "none"
        raise NotFound(f"no group {group!r} {where} (known: {known}); {hint}")
    _check_argv(argv)
    name = name or _default_name(group)
    res = g.container or Resources()
    if o.cpus is not None:
        if o.cpus <= 0:
            raise LaunchError(f"--cpus must be above 0, not {o.cpus:g}")
        res = dataclasses.replace(res, cpu=dataclasses.replace(res.cpu, max_cpus=o.cpus))
    if o.memory_bytes is not None:
        res = dataclasses.replace(res, memory=dataclasses.replace(res.memory, max_bytes=o.memory_bytes))
    if o.pids is not None:
        res = dataclasses.replace(res, pids=dataclasses.replace(res.pids, max=o.pids if o.pids > 0 else UNLIMITED))
    ls = g.launch or LaunchSpec()
    net, namespaces = _network(ls.network, frozenset(ls.namespaces), o.network)
    ns = set(namespaces)
    user_map = None
    if o.userns or "user" in ns:
        ns.add("user")
        user_map = (ls.user_map_uid or DEFAULT_USER_MAP[0],
                    ls.user_map_gid or ls.user_map_uid or DEFAULT_USER_MAP[1],
                    ls.user_map_count or DEFAULT_USER_MAP[2])
    rootfs = ls.rootfs
    if o.rootfs and o.layers:
        raise LaunchError("give --rootfs or --layer, not both")
    if o.rootfs:
        rootfs = RootfsSpec(path=o.rootfs)
    elif o.layers:
        rootfs = RootfsSpec(layers=o.layers)
    if rootfs is not None:
        rootfs = RootfsSpec(path=_check_dir(rootfs.path, "rootfs") if rootfs.path else None,
                            layers=tuple(_check_dir(p, "layer") for p in rootfs.layers))
        ns.add("mount")
    hostname = o.hostname or (ls.hostname or "{name}").replace("{name}", name)
    security = resolve(group, ls.security, o.security)
    if not security.privileged and not {"mount", "pid"} <= ns:
        raise LaunchError(f"group {group} launches without a mount or pid namespace, which its containers' "
                          f"protections need: add mount and pid to launch.namespaces")
    return ContainerSpec(name=name, group=group, tenant=g.tenant, argv=tuple(argv), resources=res,
                         formula=g.formula, namespaces=frozenset(ns), hostname=hostname[:64],
                         network=NetworkSpec(mode=net.mode, bridge=net.bridge, subnet=net.subnet),
                         rootfs=rootfs, user_map=user_map, env=o.env, init=o.init, auto_remove=o.auto_remove,
                         security=security)


# ------------------------------------------------------------------ precompiled at apply
# A group's launch parameters are its spec for a container named NAME_SLOT with the default
# overrides: spec_for itself makes them when the group is applied (one source of truth), and
# a run with only the overrides below fills in the slot.
NAME_SLOT = "{name}"
_TEMPLATE_OVERRIDES = ("hostname", "network", "env", "init", "auto_remove")   # what a run may still set


def launch_params(policies: PolicySet, group: str) -> ContainerSpec | None:
    """``group``'s spec with the name left as NAME_SLOT; None if its runs cannot start from one
    (a default image, a hostname pattern cut at 64 characters, a policy spec_for refuses)."""
    g = policies.get(group)
    if g is None or (g.launch is not None and g.launch.image is not None):
        return None
    try:
        t = spec_for(policies, group, NAME_SLOT, ["-"], Overrides())
    except (LaunchError, NotFound):
        return None
    return t if t.hostname is not None and len(t.hostname) < 64 else None


def from_params(t: object, group: str, name: str | None, argv: list[str], o: Overrides) -> ContainerSpec | None:
    """The spec of a run from its group's precompiled parameters ``t``; None if ``t`` is not
    usable for this run (other overrides than _TEMPLATE_OVERRIDES, a root gone since)."""
    if not isinstance(t, ContainerSpec) or t.group != group or t.name != NAME_SLOT:
        return None
    if o != Overrides(**{k: getattr(o, k) for k in _TEMPLATE_OVERRIDES}):
        return None
    if t.rootfs is not None and not all(os.path.isdir(p) for p in (t.rootfs.path or "", *t.rootfs.layers) if p):
        return None                   # spec_for says which is missing
    _check_argv(argv)
    name = name or _default_name(group)
    assert t.hostname is not None
    network, namespaces = _network(t.network, t.namespaces, o.network)
    return dataclasses.replace(t, name=name, argv=tuple(argv), hostname=(o.hostname or t.hostname.replace(
        NAME_SLOT, name))[:64], network=network, namespaces=namespaces, env=o.env, init=o.init,
        auto_remove=o.auto_remove)


def save_applied(store: "Store", root: str, policies: PolicySet, replace: bool = False) -> None:
    """What `cgman apply` (or the agent) applied, and each group's launch parameters."""
    from ..state import applied
    merged = applied.save(store, root, policies, replace)
    applied.save_launch(store, root, {g.path: launch_params(merged, g.path) for g in merged.groups})
