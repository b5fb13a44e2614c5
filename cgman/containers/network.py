"""Bridge networking for containers: a Linux bridge, one veth pair each, leased addresses.

Uses pyroute2 (netlink) rather than running ``ip``: one socket, no process per
step, and errors come back as errno values we can explain. pyroute2 is imported
only here and only when a container asks for ``network: bridge`` (it costs
~250 ms to import).

Leases are per bridge, and a bridge is per host: two cgman instances with different
run dirs on one bridge share one lease file, ``<bridges>/<bridge>.json``, under one
lock, ``<bridges>/<bridge>.lock`` (``/run/cgman-bridges``, root-only; CGMAN_BRIDGE_DIR
at the CLI edge moves it). ``{"subnet": ..., "created_bridge": bool, "leases":
{address: {"id": container id, "run": run dir}}}``. The bridge gets the subnet's
first host address; containers get the lowest free one after it. A lease whose
container's host veth is gone (the kernel removes it with the container's netns) is
stale and reclaimed under the lock; only then, when no instance holds a lease, does
the bridge go (if cgman created it), so nothing is left behind and nobody's running
container loses its bridge.
"""

from __future__ import annotations

import errno
import ipaddress
import json
import logging
import os
import re
from dataclasses import dataclass
from typing import Any

from ..errors import CgmanError, LaunchError
from ..state.recordcheck import valid_ifname
from ..state.records import Store

log = logging.getLogger(__name__)

DEFAULT_SUBNET = "10.88.0.0/24"


@dataclass(frozen=True)
class Lease:
    """A container's place on a bridge: its address, the gateway and the veth pair's names."""

    bridge: str
    address: str          # "10.88.0.2"
    prefixlen: int
    gateway: str          # the bridge's own address
    host_veth: str        # the host end, attached to the bridge
    peer_veth: str        # the container end before it is renamed eth0


def _names(cid: str) -> tuple[str, str]:
    return f"cgv{cid[:11]}", f"cgp{cid[:11]}"      # IFNAMSIZ: 15 characters


def _check_bridge(bridge: str) -> None:
    if not valid_ifname(bridge):
        raise LaunchError(f"bridge name {bridge!r} is not an interface name (1-15 characters, "
                          f"no '/', ':' or space); fix the group's launch.network.bridge")


def _load(store: Store, bridge: str) -> dict[str, Any]:
    """The bridge's lease file, checked; an unreadable one is an error, never guessed at."""
    path = store.bridges.join(f"{bridge}.json")
    try:
        data = json.loads(store.bridges.read(f"{bridge}.json"))
    except FileNotFoundError:
        return {"subnet": None, "created_bridge": False, "leases": {}}
    except ValueError as e:
        raise CgmanError(f"{path}: unreadable lease file ({e}); remove it once no container "
                         f"uses bridge {bridge}") from None
    problem = _lease_problem(data)
    if problem:
        raise CgmanError(f"{path}: {problem}; remove it once no container uses bridge {bridge}")
    return data


def _lease_problem(data: Any) -> str:
    if not isinstance(data, dict) or not isinstance(data.get("leases", {}), dict):
        return "not a lease file"
    for addr, owner in data.get("leases", {}).items():
        try:
            ipaddress.IPv4Address(addr)
        except ValueError:
            return f"leases: {addr!r} is not an IPv4 address"
        if not (isinstance(owner, dict) and isinstance(owner.get("id"), str)
                and re.fullmatch(r"[0-9a-f]{32}", owner["id"]) and isinstance(owner.get("run"), str)):
            return f"leases: {addr}: not {{id, run}}"
    if data.get("subnet") is not None:
        try:
            ipaddress.IPv4Network(data["subnet"])
        except (ValueError, TypeError):
            return f"subnet: {data['subnet']!r} is not an IPv4 network"
    return ""


def _save(store: Store, bridge: str, data: dict[str, Any]) -> None:
    store.bridges.write_atomic(f"{bridge}.json", json.dumps(data, indent=1, sort_keys=True).encode(),
                               fsync=True)


def _reclaim(ipr: Any, data: dict[str, Any]) -> None:
    """Drop leases whose container is gone: its host veth went with its netns."""
    leases = data.get("leases", {})
    for addr, owner in list(leases.items()):
        if not ipr.link_lookup(ifname=_names(owner["id"])[0]):
            log.info("reclaimed stale lease %s of container %s (run dir %s)", addr, owner["id"], owner["run"])
            del leases[addr]


def allocate(data: dict[str, Any], subnet: str, cid: str) -> tuple[str, str, int]:
    """Pick the lowest free address for ``cid``: (address, gateway, prefixlen). Pure."""
    net = ipaddress.IPv4Network(subnet, strict=True)
    if data.get("subnet") not in (None, subnet) and data.get("leases"):
        raise LaunchError(f"bridge is already in use with subnet {data['subnet']}, not {subnet}; "
                          f"use another bridge name for this subnet")
    hosts = net.hosts()
    gateway = str(next(hosts))
    used = set(data.get("leases", {}))
    for addr in hosts:
        if str(addr) not in used:
            return str(addr), gateway, net.prefixlen
    raise LaunchError(f"subnet {subnet} is exhausted: all {len(used)} container addresses are leased; "
                      f"stop or remove containers (`cgman ps`, `cgman gc`) or give the group a larger subnet")


def attach(store: Store, bridge: str, subnet: str | None, cid: str, pid: int) -> Lease:
    """Lease an address, make sure the bridge exists, and plug a veth into ``pid``'s netns."""
    from pyroute2 import IPRoute
    from pyroute2.netlink.exceptions import NetlinkError
    subnet = subnet or DEFAULT_SUBNET
    _check_bridge(bridge)
    host_if, peer_if = _names(cid)
    with store.bridges.lock(f"{bridge}.lock"), IPRoute() as ipr:
        data = _load(store, bridge)
        _reclaim(ipr, data)
        address, gateway, plen = allocate(data, subnet, cid)
        try:
            existing = ipr.link_lookup(ifname=bridge)
            if existing:
                kind = ipr.get_links(existing[0])[0].get_nested("IFLA_LINKINFO", "IFLA_INFO_KIND")
                if kind != "bridge":
                    raise LaunchError(f"interface {bridge} exists and is not a bridge ({kind or 'a device'}): "
                                      f"give the group's launch.network.bridge another name")
            else:
                ipr.link("add", ifname=bridge, kind="bridge")
                data["created_bridge"] = True
                data["subnet"] = subnet
                _save(store, bridge, data)        # recorded at once, so release() can remove it
            br = ipr.link_lookup(ifname=bridge)[0]
            if not any(a.get("address") == gateway for a in ipr.get_addr(index=br, family=2)):
                ipr.addr("add", index=br, address=gateway, prefixlen=plen)
                data["added_address"] = f"{gateway}/{plen}"
            ipr.link("set", index=br, state="up")
            data["subnet"] = subnet
            data.setdefault("leases", {})[address] = {"id": cid, "run": store.run}
            _save(store, bridge, data)
            ipr.link("add", ifname=host_if, kind="veth", peer=peer_if)
            hidx = ipr.link_lookup(ifname=host_if)[0]
            ipr.link("set", index=hidx, master=br, state="up")
            ipr.link("set", index=ipr.link_lookup(ifname=peer_if)[0], net_ns_pid=pid)
        except NetlinkError as e:
            raise LaunchError(f"bridge {bridge}: {os.strerror(e.code)} while plugging in the container"
                              f"{' (is the bridge name used by something else?)' if e.code == errno.EEXIST else ''}"
                              ) from None
    lease = Lease(bridge, address, plen, gateway, host_if, peer_if)
    try:
        _configure_inside(lease, pid)
    except NetlinkError as e:
        raise LaunchError(f"configuring eth0 in the container: {os.strerror(e.code)}") from None
    return lease


def _configure_inside(lease: Lease, pid: int) -> None:
    from pyroute2 import IPRoute
    with IPRoute(netns=f"/proc/{pid}/ns/net") as ns:
        idx = ns.link_lookup(ifname=lease.peer_veth)[0]
        ns.link("set", index=idx, ifname="eth0")
        ns.addr("add", index=idx, address=lease.address, prefixlen=lease.prefixlen)
        ns.link("set", index=idx, state="up")
        lo = ns.link_lookup(ifname="lo")[0]
        ns.link("set", index=lo, state="up")
        ns.route("add", dst="0.0.0.0/0", gateway=lease.gateway)


def release(store: Store, bridge: str, cid: str) -> None:
    """Drop ``cid``'s lease and host veth; remove the bridge if cgman made it and it is unused."""
    from pyroute2 import IPRoute
    from pyroute2.netlink.exceptions import NetlinkError
    _check_bridge(bridge)
    host_if, _ = _names(cid)
    with store.bridges.lock(f"{bridge}.lock"), IPRoute() as ipr:
        for idx in ipr.link_lookup(ifname=host_if):
            try:
                ipr.link("del", index=idx)
            except NetlinkError as e:
                if e.code != errno.ENODEV:    # gone with its netns already
                    raise CgmanError(f"removing {host_if}: {os.strerror(e.code)}") from None
        data = _load(store, bridge)
        leases = {a: c for a, c in data.get("leases", {}).items() if c["id"] != cid}
        data["leases"] = leases
        _reclaim(ipr, data)
        if leases:
            _save(store, bridge, data)
            return
        if data.get("created_bridge"):
            for idx in ipr.link_lookup(ifname=bridge):
                try:
                    ipr.link("del", index=idx)
                except NetlinkError as e:
                    if e.code != errno.ENODEV:
                        raise CgmanError(f"removing bridge {bridge}: {os.strerror(e.code)}") from None
        elif data.get("added_address"):          # the host's own bridge: only our address goes
            address, _, plen = data["added_address"].partition("/")
            for idx in ipr.link_lookup(ifname=bridge):
                try:
                    ipr.addr("del", index=idx, address=address, prefixlen=int(plen))
                except NetlinkError:
                    pass
        store.bridges.remove(f"{bridge}.json")
