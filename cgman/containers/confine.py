"""What keeps a container in its place, as the launch applies it (cgman/security/ decides what).

- ``spawn_security``: the launch helper's arguments for the capability sets, no_new_privs and
  the seccomp program.
- ``mount_protection``: the mount steps of the child: its read-only view of its own cgroup, a
  read-only host (without a root of its own), /tmp, devpts, masked and read-only paths.
- ``confine_devices``: the device allow list on the container's cgroup (v1 rules, v2 BPF).
"""

from __future__ import annotations

import os

from ..errors import LaunchError
from ..kernel import at_least as kernel_at_least
from ..plan import Write
from ..security.resolve import MASKED_PATHS, READONLY_PATHS, Security
from . import rootfs as rfs

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

    from ..drivers import Host
    from .launch import ContainerSpec


def spawn_security(sec: Security, cache_dir: str | None) -> dict[str, Any]:
    """The helper's arguments for ``sec``: capability mask, no_new_privs, the seccomp program."""
    if sec.privileged:
        return {}
    from ..security import caps, seccomp
    compiled = seccomp.program(sec.seccomp, sec.caps, cache_dir)
    return {"drop_caps": True, "cap_keep": caps.mask(sec.caps), "no_new_privs": sec.no_new_privileges,
            "seccomp": compiled[0] if compiled else None}


def mount_protection(host: "Host", spec: "ContainerSpec", leaf: str, root: str | None) -> tuple[list[Any], list[Any]]:
    """Mount steps that keep the container off the host's cgroupfs, /sys and /proc secrets."""
    if spec.security.privileged:
        return [], []
    from ..drivers.detect import read_mounts
    mounts = read_mounts()
    trees = {t.mount: t for d in host.drivers for t in d.hierarchies()}
    views = []
    for m in mounts:
        # a new root gets the hierarchies under /sys/fs/cgroup; the host's view, every cgroup mount
        if m.fstype not in ("cgroup", "cgroup2") or (root is not None
                                                      and not m.mountpoint.startswith("/sys/fs/cgroup")):
            continue
        t = trees.get(m.mountpoint)
        own = t.path(leaf) if t is not None else None     # the launch created the leaf in each
        views.append(rfs.CgroupView(m.mountpoint, own, rfs.mount_flags(m.options)))
    by_point = {m.mountpoint: m for m in mounts}
    tmpfs = by_point.get("/sys/fs/cgroup")
    tmpfs_flags = rfs.mount_flags(tmpfs.options) if tmpfs is not None and tmpfs.fstype == "tmpfs" else None
    if root is None:
        sysfs = by_point.get("/sys")
        sys_flags = rfs.mount_flags(sysfs.options) if sysfs is not None else None
    else:
        sys_flags = 0 if "net" in spec.namespaces else None
    return rfs.protect_ops(root=root, views=views, tmpfs_flags=tmpfs_flags, sys_flags=sys_flags,
                           masked=MASKED_PATHS, readonly=READONLY_PATHS,
                           host=_host_view(mounts, spec) if root is None else None)


def _host_view(mounts: list[Any], spec: "ContainerSpec") -> rfs.HostView:
    """The host as a container without a root sees it: read-only but for its volumes."""
    points = [(m.mountpoint, rfs.mount_flags(m.options)) for m in mounts]

    def flags_at(path: str) -> int:        # the flags of the mount a path lies on
        best = max((p for p, _ in points if path == p or path.startswith(p.rstrip("/") + "/")), key=len)
        return dict(points)[best]
    vols = tuple((p, ro, flags_at(p), os.path.isdir(p)) for p, ro in spec.security.volumes)
    return rfs.HostView(mounts=tuple(points), volumes=vols, ipc_ns="ipc" in spec.namespaces,
                        setattr=kernel_at_least(5, 12), userns="user" in spec.namespaces)


def confine_devices(host: "Host", leaf: str, sec: Security) -> None:
    """Deny every device but the allowed ones: v1 devices.deny/allow on the leaf, and on a
    cgroup2 leaf (pure v2, or hybrid as well) a BPF device program."""
    if sec.privileged:
        return
    # The BPF program on a cgroup2 leaf is checked for every process there, whatever v1 devices
    # cgroup it is in too: the v1 rules are for hosts without cgroup2 only.
    if "devices" in host.layout.v1_controllers and host.v2 is None:
        host.write(Write(leaf, "devices", "devices.deny", "a"))
        for d in sec.devices:
            host.write(Write(leaf, "devices", "devices.allow", d.v1_line()))
    if host.v2 is not None:
        from .. import _secure
        from ..security.devices import program_fd
        fd = host.v2.t.open_dir(leaf)
        try:
            _secure.attach_device_filter(fd, program_fd(sec.devices))
        except OSError as e:
            raise LaunchError(f"cannot restrict the devices of {leaf}: {e} (see `cgman doctor`)") from None
        finally:
            os.close(fd)
