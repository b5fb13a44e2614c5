"""A container under the systemd cgroup driver: a transient scope of its group's slice.

systemd removes a scope's cgroup as soon as the last process in it is gone, and the final
usage of a container (cpu.stat, memory.peak, io.stat, pids.peak) can only be read while its
cgroup exists. So the scope is made with ``Delegate=yes`` and two leaves cgman owns below it,
as systemd's delegation document describes:

    cgman-acme-web-c1.scope/          systemd's: the container's limits as unit properties
        keeper/                       cgman-keeper (cgman-init without a workload) sleeps here
        payload/                      the container: its first process is cloned straight in

The keeper is the scope's first process (StartTransientUnit needs one); cgman then moves it into
``keeper/`` and enables the controllers for both leaves, so no cgroup holds processes and
children at once. When the container has exited, cgman reads ``payload/`` as it reads a
cgroupfs leaf, removes it, and ends the keeper through ``keeper/cgroup.kill``; systemd then
stops the empty scope. Only SIGKILL ends a keeper, so a ``systemctl stop`` of the scope ends
the container but leaves the scope until the container is billed. A keeper whose supervisor
died keeps the scope, and the cgroup, until `cgman gc` collects the container.

The container's own record names the payload as its cgroup under the root slice's cgroup
(``cgroup_root`` ``cgman.slice``), so everything that reads, freezes or kills a container
does so as for the cgroupfs driver, inside the delegated subtree.
"""

from __future__ import annotations

import errno
import os
import signal
import time

from ..errors import CgmanError, LaunchError, NotFound

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

    from ..drivers import Host

CONTROLLERS = ("cpu", "cpuset", "io", "memory", "pids")    # what a scope's two leaves get, where offered


def spawn_keeper() -> int:
    """cgman-keeper (the sealed cgman-init, no workload): its own session, stdio on /dev/null."""
    from ..security.init import memfd
    fd = memfd()
    null = [(os.POSIX_SPAWN_OPEN, n, "/dev/null", os.O_RDWR, 0) for n in (0, 1, 2)]
    try:
        return os.posix_spawn(f"/proc/self/fd/{fd}", ["cgman-keeper"], {}, file_actions=null, setsid=True)
    except OSError as e:
        raise LaunchError(f"starting the scope's keeper (cgman-init): {e.strerror}") from None


def open_scope(host: "Host", bus: Any, root: str, group: str, name: str, resources: Any, formula: Any) -> int:
    """Start the scope of container ``name`` with its limits, the keeper in ``keeper/`` and an
    empty ``payload/`` ready for the container; the keeper's pid. On failure nothing is left."""
    from ..drivers.systemd.reconcile import start_scope
    from ..drivers.systemd.units import KEEPER, PAYLOAD, scope_dir, scope_name
    scope = scope_dir(root, group, name)
    keeper = spawn_keeper()
    try:
        start_scope(bus, root, group, name, keeper, resources, formula, delegate=True)
    except BaseException:
        _end_keeper(keeper)
        raise
    try:
        host.create(f"{scope}/{KEEPER}")
        host.attach(f"{scope}/{KEEPER}", keeper)
        host.create(f"{scope}/{PAYLOAD}")
        _enable_below(host, scope)
    except BaseException:
        _end_keeper(keeper)          # the scope empties, and systemd stops it and removes its cgroups
        _stop_quietly(bus, scope_name(root, group, name))
        raise
    return keeper


def _enable_below(host: "Host", scope: str) -> None:
    from ..plan import Write, subtree_control_write
    offered = set(host.read(Write(scope, "cgroup", "cgroup.controllers", "")).split())
    wanted = [c for c in CONTROLLERS if c in offered]
    if wanted:
        host.write(subtree_control_write(scope, wanted))


def scope_host(host: "Host", root: str) -> "Host":
    """A Host rooted at the root slice's cgroup (``cgman.slice``), where the scopes' cgroups are."""
    from ..drivers import Host as HostClass
    from ..drivers.systemd.units import slice_name
    if host.layout.mode != "v2":
        raise LaunchError(f"the systemd cgroup driver needs a pure cgroup v2 host; this one is {host.layout.mode} "
                          f"(use the default cgroupfs driver: --cgroup-driver cgroupfs, or unset CGMAN_CGROUP_DRIVER)")
    return HostClass(host.info, slice_name(root))


def check_slice(host: "Host", root: str, group: str) -> None:
    """The group's slice must be active (its cgroup exists), and not frozen. ``host``: scope_host's."""
    from ..drivers.systemd.units import slice_dir
    where = slice_dir(root, group)
    if not host.exists(where):
        raise NotFound(f"group {group!r} has no slice under the root slice {host.root!r}: apply its policy "
                       f"with the systemd driver first (`cgman apply --cgroup-driver systemd FILE`)")
    if host.is_frozen(where):
        raise LaunchError(f"group {group} is frozen: a container started there could not run "
                          f"(`cgman thaw {group}` first)")


def has_slice(host: "Host", root: str, group: str) -> bool:
    """Whether ``group`` exists as a slice of the systemd driver (for an error's hint)."""
    from ..drivers.systemd.units import slice_dir
    try:
        return scope_host(host, root).exists(slice_dir(root, group))
    except CgmanError:
        return False


def release_scope(host: "Host", leaf: str) -> None:
    """After the payload is billed and removed: end the keeper (keeper/cgroup.kill), so that systemd
    stops the scope. No wait for it to go: the moment the keeper is gone, systemd removes the
    scope's cgroups, keeper/ with them (a read there may then fail with ENODEV, as the
    benchmark's 20th round once did). A supervisor killed in launch just after systemd started the
    scope left the keeper in the scope's own cgroup (keeper/ not made yet): then the scope's own
    cgroup.kill, whose only process is that keeper by now (found by review)."""
    from ..drivers.systemd.units import KEEPER
    scope_dir = leaf.rsplit("/", 1)[0]
    keep = f"{scope_dir}/{KEEPER}"
    if not host.exists(keep):
        keep = scope_dir
    v2 = host.v2
    try:
        if v2 is not None and v2.kill(keep):
            return
        for pid in host.procs(keep):           # a kernel before 5.14: no cgroup.kill
            os.kill(pid, signal.SIGKILL)
    except NotFound:
        pass                                   # gone already: the scope is stopping
    except ProcessLookupError:
        pass
    except CgmanError as e:
        if getattr(e, "errno", None) not in (errno.ENODEV, errno.ENOENT):
            raise


def reap(keeper: int, wait_s: float = 2.0) -> None:
    """Reap the keeper this process started once it has ended (release_scope, or a failed launch;
    SIGKILL ends it within milliseconds); one that has not ended within ``wait_s`` is left."""
    deadline = time.monotonic() + wait_s
    while True:
        try:
            if os.waitpid(keeper, os.WNOHANG)[0] == keeper or time.monotonic() > deadline:
                return
        except ChildProcessError:
            return
        time.sleep(0.001)


def _end_keeper(pid: int) -> None:
    try:
        os.kill(pid, signal.SIGKILL)     # our own child, not yet reaped: the pid is still its
    except ProcessLookupError:
        pass
    reap(pid)


def _stop_quietly(bus: Any, unit: str) -> None:
    try:
        bus.stop(unit)
    except CgmanError:
        pass
