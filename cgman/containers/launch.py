"""Launch a container: its leaf cgroup, namespaces, network and root, race-free.

The sequence (the child side is C, in cgman/_spawn.c):

1. Claim the name (records.Store.reserve) and create ``<root>/<group>/<name>`` with
   the group's ``container`` limits plus the command-line overrides.
2. clone3(CLONE_INTO_CGROUP | CLONE_NEW*): the child is born inside its cgroup2
   leaf and moves itself into every v1 hierarchy's leaf (their ``tasks`` files, opened
   by the parent); a network namespace made ahead of the launch (netns_ahead.py) it joins
   instead of a new one. With a user namespace or a bridge network it then blocks on a pipe
   (it is *held*); otherwise it was cloned as posix_spawn clones, sharing the parent's
   memory (no page tables copied), and goes straight on (process.py).
3. Held: the parent writes the user namespace maps and plugs in the network, then
   releases the child.
4. The child unshares its cgroup namespace (now rooted at its own cgroup), sets the
   hostname, mounts its root and /proc, and runs a minimal init that execs the
   workload. Its first instruction therefore runs inside every one of its cgroups.

Each step of ``launch`` pushes its undo on one stack (the record, the cgroup, the
overlay scratch, the process, the network); a failure unwinds it in reverse, so
nothing is left behind (a process that failed after its release is still billed).
Whoever launched waits (``Container.wait``), then ``Container.finish`` reads the
final usage from the cgroup once it is empty, removes the cgroup, veth, lease and
scratch, and records usage and exit status in the record.
"""

from __future__ import annotations

import os
import select
import signal
import time
from dataclasses import dataclass, field

from .. import lazylog
from ..drivers.cgfs import KeptWalks
from ..errors import Busy, CgmanError, LaunchError, NotFound
from ..model import NetworkSpec, Resources, RootfsSpec
from ..plan import ACCOUNTING_CONTROLLERS, Write, ancestors, controllers_used, subtree_control_write, translate
from ..security.resolve import Security
from ..state.records import Record, Store, proc_start_ticks
from . import netns_ahead, scope
from . import rootfs as rfs
from .collect import collect_cgroup, finish, release_network
from .confine import confine_devices, mount_protection
from .process import Process, clean_env, clone_flags, map_user, spawn_helper, start_process

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any, Callable

    from ..drivers import Host

log = lazylog.getLogger(__name__)   # logging only if a record is shown (lazylog.py)

DEFAULT_USER_MAP = (100000, 100000, 65536)    # host uid, host gid, count (container root -> 100000)


@dataclass(frozen=True)
class ContainerSpec:
    """Everything needed to start one container (built by ``containers.spec_for``)."""

    name: str
    group: str
    tenant: str
    argv: tuple[str, ...]
    resources: Resources = field(default_factory=Resources)
    formula: str = "oci"
    namespaces: frozenset[str] = frozenset({"uts", "ipc", "pid", "net", "mount", "cgroup"})
    hostname: str | None = None
    network: NetworkSpec = field(default_factory=NetworkSpec)
    rootfs: RootfsSpec | None = None
    user_map: tuple[int, int, int] | None = None      # (host uid, host gid, count) with the user ns
    env: tuple[tuple[str, str], ...] = ()
    init: bool = True
    auto_remove: bool = False
    security: Security = Security()
    cwd: str | None = None                            # absolute, inside the root (an image's WorkingDir)
    user: tuple[int, int] | None = None               # (uid, gid) of the workload (an image's User)


def _new_record(host: "Host", spec: ContainerSpec, supervisor_pid: int, detached: bool,
                driver: str = "cgroupfs", cgroup: str | None = None) -> Record:
    """The record that claims the container's name (state "created" until it runs)."""
    ns = spec.namespaces
    return Record(id=os.urandom(16).hex(), name=spec.name, group=spec.group, tenant=spec.tenant,
                  cgroup=cgroup or f"{spec.group}/{spec.name}", cgroup_root=host.root, argv=list(spec.argv),
                  created=time.time(), supervisor_pid=supervisor_pid,
                  supervisor_start=_start_ticks(supervisor_pid), detached=detached, namespaces=sorted(ns),
                  hostname=spec.hostname, network={"mode": spec.network.mode if "net" in ns else "host"},
                  user_map=dict(zip(("uid", "gid", "count"), spec.user_map, strict=True)) if spec.user_map else None,
                  limits=_limits_summary(spec.resources), auto_remove=spec.auto_remove,
                  security=spec.security.summary(), driver=driver)


def _check_group(host: "Host", group: str) -> None:
    """The group must be applied, and not frozen (its containers could not run)."""
    if not host.exists(group):
        if scope.has_slice(host, host.root, group):
            raise NotFound(f"group {group!r} was applied with the systemd driver (it is a slice), not under the "
                           f"cgman root {host.root!r}: run with CGMAN_CGROUP_DRIVER=systemd")
        raise NotFound(f"group {group!r} does not exist under the cgman root {host.root!r}: "
                       f"apply its policy first (`cgman apply FILE`)")
    if host.is_frozen(group):
        raise LaunchError(f"group {group} is frozen: a container started there could not run "
                          f"(`cgman thaw {group}` first)")


def _limit_writes(host: "Host", leaf: str, spec: ContainerSpec) -> list[Write]:
    """The leaf's limits as kernel writes; what this host cannot enforce is logged."""
    writes, warns = translate(leaf, spec.resources, host.layout, host.features, spec.formula,  # type: ignore[arg-type]
                              who=f"container {spec.name}")
    for warning in warns:
        log.warning("%s", warning)
    return writes


def _enable_controllers_above(host: "Host", leaf: str, resources: Resources) -> None:
    """v2: enable, in every group above ``leaf``, the controllers its limits need."""
    v2_needed = sorted(c for c in controllers_used(resources) if host.layout.version_of(c) == 2)
    for anc in ancestors(leaf):
        have = set(host.read(Write(anc, "cgroup", "cgroup.subtree_control", "")).split())
        missing = [c for c in v2_needed if c not in have]
        if missing:
            host.write(subtree_control_write(anc, missing))
        # Usage accounting (memory.current, io.stat, pids.current, cpu throttling) needs the
        # controllers even without a limit. Best effort: a group that holds processes itself
        # cannot delegate them (v2's no-internal-process rule); its containers then lack those values.
        offered = set(host.read(Write(anc, "cgroup", "cgroup.controllers", "")).split())
        extra = [c for c in ACCOUNTING_CONTROLLERS if c in offered and c not in have and c not in missing]
        if extra:
            try:
                host.write(subtree_control_write(anc, extra))
            except CgmanError as e:
                log.info("usage of containers under %s will lack %s: %s", anc, ", ".join(extra), e)


class Container:
    """A launched container that this process waits on."""

    def __init__(self, host: "Host", store: Store, rec: Record, spec: ContainerSpec,
                 sample_interval_s: float | None = None) -> None:
        self.host, self.store, self.rec, self.spec = host, store, rec, spec
        self.status: int | None = None
        if sample_interval_s is None:
            from ..accounting.usage import sample_interval_s as configured
            sample_interval_s = configured(store.settings.sample_interval_s)
        self.sample_interval_s = sample_interval_s    # 0: no memory sampling (`cgman exec`)
        # The first sample one interval into the wait, not at once: at the start the integral
        # from zero adds nothing, and a short job's run would save its record once more for it.
        self._next_sample: float | None = None
        self.rusage_cpu_usec: int | None = None
        self.keeper: int | None = None        # systemd driver: the scope's keeper, our child

    @property
    def pid(self) -> int:
        assert self.rec.pid is not None
        return self.rec.pid

    def signal(self, sig: int) -> None:
        try:
            os.kill(self.pid, sig)
        except ProcessLookupError:
            pass

    def sample(self) -> None:
        """One memory sample into the record (the waiter calls this every interval)."""
        from ..accounting.usage import sample
        sample(self.host, self.store, self.rec)
        self._next_sample = time.monotonic() + self.sample_interval_s

    def wait(self, timeout_s: float | None = None) -> int | None:
        """Wait for the container's first process, sampling its memory meanwhile; its exit
        code (128+N for signal N), or None on timeout."""
        if self.status is not None:
            return self.status
        deadline = None if timeout_s is None else time.monotonic() + timeout_s
        try:
            pidfd = os.pidfd_open(self.pid)
        except OSError:           # gone already, or a kernel before 5.3: a plain wait, no sampling
            pidfd = -1
        try:
            while True:
                if pidfd >= 0:
                    now = time.monotonic()
                    wait_s = None if deadline is None else deadline - now
                    if wait_s is not None and wait_s <= 0:
                        return None
                    if self.sample_interval_s > 0:
                        if self._next_sample is None:
                            self._next_sample = now + self.sample_interval_s
                        if now >= self._next_sample:
                            self.sample()
                            continue
                        nxt = self._next_sample - now
                        wait_s = nxt if wait_s is None else min(wait_s, nxt)
                    p = select.poll()
                    p.register(pidfd, select.POLLIN)
                    if not p.poll(None if wait_s is None else wait_s * 1000):
                        continue
                try:
                    pid, st, ru = os.wait4(self.pid, 0 if pidfd < 0 else os.WNOHANG)
                except ChildProcessError:
                    self.status = 255
                    return self.status
                if pid == self.pid:
                    # The kernel's per-process account of the first process and every process it
                    # reaped (the init reaps the workload): a cross-check of the cgroup's counter.
                    self.rusage_cpu_usec = round((ru.ru_utime + ru.ru_stime) * 1e6)
                    self.status = os.waitstatus_to_exitcode(st)
                    if self.status < 0:
                        self.status = 128 - self.status
                    return self.status
        finally:
            if pidfd >= 0:
                os.close(pidfd)

    def stop(self, grace_s: float = 10.0) -> int:
        """SIGTERM (the init forwards it), then SIGKILL the whole cgroup after ``grace_s``."""
        try:
            if self.host.is_frozen(self.rec.cgroup):
                self.host.thaw(self.rec.cgroup)    # a frozen process cannot act on SIGTERM
        except CgmanError:
            pass
        self.signal(signal.SIGTERM)
        code = self.wait(grace_s)
        if code is None:
            self.host.kill(self.rec.cgroup)
            code = self.wait()
        assert code is not None
        return code

    def finish(self, reason: str = "exited") -> Record:
        """After the first process has exited: final usage, cleanup, the record. Idempotent."""
        rec = finish(self.host, self.store, self.rec, self.status, reason)
        if self.keeper is not None:
            scope.reap(self.keeper)           # ended by finish (or by whoever collected first)
        return rec


class _Undo:
    """The launch's one undo stack: each step, once done, pushes what takes it back; a failure
    unwinds them in reverse (as runc's start path, or a contextlib.ExitStack). An undo that
    fails is logged and the rest still run, so the launch's own error is the one raised."""

    def __init__(self) -> None:
        self._steps: list[tuple[str, Callable[[], object]]] = []

    def push(self, what: str, undo: Callable[[], object]) -> None:
        self._steps.append((what, undo))

    def unwind(self) -> None:
        while self._steps:
            what, undo = self._steps.pop()
            try:
                undo()
            except (CgmanError, OSError) as e:
                log.warning("undoing a failed launch: %s: %s", what, e)


def launch(host: "Host", store: Store, spec: ContainerSpec, *, supervisor_pid: int | None = None,
           detached: bool = False, before_spawn: "Callable[[], None] | None" = None) -> Container:
    """Start ``spec``; the caller (its supervisor) must wait() and finish() it.

    ``before_spawn`` runs once the name is claimed, just before the clone (the detached
    supervisor points stdout and stderr at the container's log there)."""
    driver, root = store.settings.cgroup_driver, host.root
    if driver == "systemd":      # the root names the slices; the scopes' cgroups are below its slice's
        host = scope.scope_host(host, root)
    undo = _Undo()
    walks, keeper = None, None
    try:
        walks = KeptWalks()      # the same root, group and leaf are walked ~25 times below
        rec = _claim(host, store, spec, supervisor_pid or os.getpid(), detached, undo, root)
        if driver == "systemd":
            keeper = _make_scope(host, store, spec, rec, undo, root)
        else:
            _make_cgroup(host, store, spec, rec, undo)
        confine_devices(host, rec.cgroup, spec.security)
        ops = _mount_ops(host, store, spec, rec, undo)
        if before_spawn is not None:
            before_spawn()
        proc = _start(host, store, spec, rec.cgroup, ops)
        undo.push("its first process", proc.abort)
        # A child that is not held has exec'd by now, and a short workload may have exited: a
        # zombie still, our own until we reap it, so its start time is read all the same.
        rec.pid, rec.pid_start = proc.pid, proc_start_ticks(proc.pid, zombie=True)
        if "user" in spec.namespaces:
            map_user(proc.pid, spec.user_map or DEFAULT_USER_MAP)
        if _bridged(spec):
            _plug_in(store, spec, rec, proc.pid, undo)
        rec.state, rec.started = "running", time.time()
        store.save(rec)
        proc.release()
    except BaseException:
        if walks is not None:
            walks.close()        # before the undo, which removes what was walked
        undo.unwind()
        raise
    finally:
        if walks is not None:
            walks.close()
        netns_ahead.launched()
    c = Container(host, store, rec, spec)
    c.keeper = keeper
    return c


def _claim(host: "Host", store: Store, spec: ContainerSpec, supervisor_pid: int, detached: bool,
           undo: _Undo, root: str) -> Record:
    """The container's record, once its group is known to be there (a slice, with the systemd
    driver: ``host`` is then scope_host's, ``root`` the cgman root), written: the name is claimed."""
    if store.settings.cgroup_driver == "systemd":
        from ..drivers.systemd.units import scope_placement
        _, leaf = scope_placement(root, spec.group, spec.name)
        rec = _new_record(host, spec, supervisor_pid, detached, "systemd", leaf)
        scope.check_slice(host, root, spec.group)
    else:
        rec = _new_record(host, spec, supervisor_pid, detached)
        _check_group(host, spec.group)
    store.reserve(rec)
    undo.push("its record", lambda: store.delete(spec.name))
    return rec


def _make_cgroup(host: "Host", store: Store, spec: ContainerSpec, rec: Record, undo: _Undo) -> None:
    """Create the leaf and write its limits (v2: enable the controllers it needs above it first).
    Its undo collects it: what ran there (a process that failed after its release) is billed."""
    leaf = rec.cgroup
    writes = _limit_writes(host, leaf, spec)
    if host.layout.mode == "v2":
        _enable_controllers_above(host, leaf, spec.resources)
    # No walk to look first: a policy group of that name exists in every hierarchy, so nothing
    # is created; a container's name is claimed by its record, so what exists in only some of
    # them is a crashed launch's leftover of this very container, collected with it on failure.
    if not host.create(leaf):
        raise Busy(f"a cgroup {leaf} already exists (a policy group, or another container's): "
                   f"pick another --name")
    undo.push(f"its cgroup {leaf}", lambda: collect_cgroup(host, store, rec, None, "failed to start"))
    for w in writes:
        host.write(w)


def _make_scope(host: "Host", store: Store, spec: ContainerSpec, rec: Record, undo: _Undo, root: str) -> int:
    """systemd driver: the container's transient scope, with its limits as unit properties and
    the payload leaf it is cloned into (containers/scope.py); the keeper's pid. Its undo
    collects the payload, then ends the keeper, so that systemd stops the scope.

    The payload gets the same limits as the cgroupfs driver's leaf: the kernel updates a
    cgroup's memory.peak before its parent refuses a charge, so under the scope's limit alone
    the billed peak of the payload could exceed the limit (seen: 33.5 MiB under 32 MiB)."""
    from ..drivers.systemd.bus import SystemdBus
    with SystemdBus() as bus:
        keeper = scope.open_scope(host, bus, root, spec.group, spec.name, spec.resources, spec.formula)

    def undo_scope() -> None:
        collect_cgroup(host, store, rec, None, "failed to start")
        scope.reap(keeper)
    undo.push(f"its scope {rec.cgroup}", undo_scope)
    for w in _limit_writes(host, rec.cgroup, spec):
        host.write(w)
    return keeper


def _mount_ops(host: "Host", store: Store, spec: ContainerSpec, rec: Record, undo: _Undo) -> list[Any]:
    """The child's mount steps: its root (a directory, or an overlay of layers on a scratch
    upper dir made here), the protections, the working directory."""
    ns = spec.namespaces
    overlay = None
    if spec.rootfs is not None and spec.rootfs.layers:
        owner = (spec.user_map[0], spec.user_map[1]) if spec.user_map and "user" in ns else None
        undo.push("its overlay scratch", lambda: store.delete_scratch(spec.name))
        scratch = store.make_scratch(spec.name, ("upper", "work", "merged"), owner)
        overlay = rfs.Overlay(spec.rootfs.layers, f"{scratch}/upper", f"{scratch}/work", f"{scratch}/merged")
        rec.rootfs = {"layers": list(spec.rootfs.layers), "upper": overlay.upper}
    elif spec.rootfs is not None and spec.rootfs.path:
        rec.rootfs = {"path": spec.rootfs.path}
    root = overlay.merged if overlay is not None else spec.rootfs.path if spec.rootfs else None
    ops: list[Any] = []
    if "mount" in ns:
        protect = mount_protection(host, spec, rec.cgroup, root)
        ops = rfs.mount_ops(root=spec.rootfs.path if spec.rootfs else None, overlay=overlay,
                            pid_ns="pid" in ns, net_ns="net" in ns, ipc_ns="ipc" in ns,
                            userns="user" in ns, protect=protect)
    return ops + (rfs.workdir_ops(spec.cwd) if spec.cwd and root is not None else [])


def _start(host: "Host", store: Store, spec: ContainerSpec, leaf: str, ops: list[Any]) -> Process:
    """Clone the container's first process into its leaf, held until release(). Its network
    namespace is the one made ahead (netns_ahead.py) where this process has one and it fits:
    not with a user namespace (which must own it), lo down (``none``), or a bridge (a held child
    joins namespaces only once released, and its veth goes into its namespace before that)."""
    ns = spec.namespaces
    userns = "user" in ns
    lo_up = "net" in ns and spec.network.mode in ("loopback", "bridge")
    netns = netns_ahead.take() if lo_up and not userns and not _bridged(spec) else None
    try:
        return start_process(host, leaf, [os.fsencode(a) for a in spec.argv],
                             clean_env(spec.hostname, spec.env, store.settings.term),
                             clone_flags=clone_flags(ns - {"net"} if netns is not None else ns),
                             unshare_flags=spawn_helper().CLONE_NEWCGROUP if "cgroup" in ns else 0,
                             hostname=spec.hostname if "uts" in ns else None,
                             lo_up=lo_up and netns is None, netns_fd=-1 if netns is None else netns,
                             ops=ops, init=spec.init, uid=0 if userns else -1, gid=0 if userns else -1,
                             security=spec.security, cache_dir=store.state, run_user=spec.user,
                             hold=userns or _bridged(spec))
    finally:
        if netns is not None:
            os.close(netns)       # the child has joined it (or failed): it holds the namespace now


def _bridged(spec: ContainerSpec) -> bool:
    return "net" in spec.namespaces and spec.network.mode == "bridge"


def _plug_in(store: Store, spec: ContainerSpec, rec: Record, pid: int, undo: _Undo) -> None:
    """A veth from the group's bridge into the container, with a leased address."""
    from . import network
    rec.network.update(bridge=spec.network.bridge, subnet=spec.network.subnet or network.DEFAULT_SUBNET)
    rec.network["address"] = "pending"
    store.save(rec)           # so that gc frees the lease if we die while plugging in
    undo.push("its network", lambda: release_network(store, rec))
    lease = network.attach(store, spec.network.bridge, spec.network.subnet, rec.id, pid)
    rec.network.update(address=lease.address, gateway=lease.gateway, veth=lease.host_veth)


_START_TICKS: dict[int, int | None] = {}


def _start_ticks(pid: int) -> int | None:
    """Start time of a supervisor (this process, usually): read once per pid."""
    if pid not in _START_TICKS:
        _START_TICKS[pid] = proc_start_ticks(pid)
    return _START_TICKS[pid]


def _limits_summary(res: Resources) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for part in ("cpu", "memory", "pids"):
        for k, v in vars(getattr(res, part)).items():
            if v is not None:
                out[f"{part}_{k}"] = v if isinstance(v, (int, float, str)) else str(v)
    return out
