"""A container's spec from its group's policy blocks (``container:`` limits, ``launch:``) plus the
command-line overrides: pure, apart from checking that a root or layer directory exists."""

from __future__ import annotations

import dataclasses
import os

from ..errors import LaunchError, NotFound
from ..model import UNLIMITED, LaunchSpec, NetworkSpec, PolicySet, Resources, RootfsSpec
from ..security.resolve import RunSecurity, resolve
from .launch import DEFAULT_USER_MAP, ContainerSpec


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


def _check_dir(path: str, what: str) -> str:
    if not os.path.isabs(path):
        path = os.path.abspath(path)
    if not os.path.isdir(path):
        raise LaunchError(f"{what} {path} does not exist or is not a directory")
    return path


def spec_for(policies: PolicySet, group: str, name: str | None, argv: list[str], o: Overrides,
             where: str = "in the policies", hint: str = "see `cgman validate`") -> ContainerSpec:
    """The container spec for ``group`` from its policy blocks plus the overrides. ``where`` and
    ``hint`` say, in the error for an unknown group, where the policies came from and what to do."""
    group = group.strip("/")
    g = policies.get(group)
    if g is None:
        known = ", ".join(x.path for x in policies.groups) or "none"
        raise NotFound(f"no group {group!r} {where} (known: {known}); {hint}")
    if not argv:
        raise LaunchError("no command given: put it after --, e.g. `cgman run --policy acme/web -- sleep 60`")
    name = name or f"{group.rsplit('/', 1)[-1]}-{os.urandom(3).hex()}"
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
    ns = set(ls.namespaces)
    net = ls.network
    if o.network is not None:
        if o.network not in ("none", "loopback", "bridge"):
            raise LaunchError(f"--network must be none, loopback or bridge, not {o.network!r}")
        net = dataclasses.replace(net, mode=o.network)  # type: ignore[arg-type]
        ns.add("net")
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
