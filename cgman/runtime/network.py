"""Bridge networking for containers: a Linux bridge, one veth pair each, leased addresses.

Uses pyroute2 (netlink) rather than running ``ip``: one socket, no process per
step, and errors come back as errno values we can explain. pyroute2 is imported
only here and only when a container asks for ``network: bridge`` (it costs
~250 ms to import).

Leases live in ``<run>/network/<bridge>.json`` under ``<run>/network.lock``:
``{"subnet": ..., "created_bridge": bool, "leases": {address: container id}}``.
The bridge gets the subnet's first host address; containers get the lowest free
one after it. When the last lease goes and cgman created the bridge, the bridge
goes too, so nothing is left behind.
"""

from __future__ import annotations

import errno
import ipaddress
import json
import os
from dataclasses import dataclass
from typing import Any

from ..errors import CgmanError, LaunchError
from .records import Store

DEFAULT_SUBNET = "10.88.0.0/24"


@dataclass(frozen=True)
class Lease:
    bridge: str
    address: str          # "10.88.0.2"
    prefixlen: int
    gateway: str          # the bridge's own address
    host_veth: str        # the host end, attached to the bridge
    peer_veth: str        # the container end before it is renamed eth0


def _names(cid: str) -> tuple[str, str]:
    return f"cgv{cid[:11]}", f"cgp{cid[:11]}"      # IFNAMSIZ: 15 characters


def _leases_path(store: Store, bridge: str) -> str:
    return os.path.join(store.run, "network", f"{bridge}.json")


def _load(store: Store, bridge: str) -> dict[str, Any]:
    try:
        with open(_leases_path(store, bridge)) as f:
            return json.load(f)
    except FileNotFoundError:
        return {"subnet": None, "created_bridge": False, "leases": {}}


def _save(store: Store, bridge: str, data: dict[str, Any]) -> None:
    path = _leases_path(store, bridge)
    os.makedirs(os.path.dirname(path), mode=0o755, exist_ok=True)
    tmp = f"{path}.{os.getpid()}.tmp"
    with open(tmp, "w") as f:
        json.dump(data, f, indent=1, sort_keys=True)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


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
    host_if, peer_if = _names(cid)
    with store.lock("network"), IPRoute() as ipr:
        data = _load(store, bridge)
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
            data.setdefault("leases", {})[address] = cid
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
    host_if, _ = _names(cid)
    with store.lock("network"), IPRoute() as ipr:
        for idx in ipr.link_lookup(ifname=host_if):
            try:
                ipr.link("del", index=idx)
            except NetlinkError as e:
                if e.code != errno.ENODEV:    # gone with its netns already
                    raise CgmanError(f"removing {host_if}: {os.strerror(e.code)}") from None
        data = _load(store, bridge)
        leases = {a: c for a, c in data.get("leases", {}).items() if c != cid}
        data["leases"] = leases
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
        try:
            os.unlink(_leases_path(store, bridge))
        except FileNotFoundError:
            pass
