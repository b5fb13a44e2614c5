"""Launch a container: its leaf cgroup, namespaces, network and root, race-free.

The sequence (the child side is C, in cgman/_spawn.c):

1. Claim the name (records.Store.reserve) and create ``<root>/<group>/<name>`` with
   the group's ``container`` limits plus the command-line overrides.
2. clone3(CLONE_INTO_CGROUP | CLONE_NEW*): the child is born inside its cgroup2
   leaf and blocks on a pipe.
3. The parent writes the pid into every cgroup v1 hierarchy, writes the user
   namespace maps and plugs in the network, then releases the child.
4. The child unshares its cgroup namespace (now rooted at its own cgroup), sets the
   hostname, mounts its root and /proc, and runs a minimal init that execs the
   workload. Its first instruction therefore runs inside every one of its cgroups.

Whoever launched waits (``Container.wait``), then ``Container.finish`` reads the
final usage from the cgroup once it is empty, removes the cgroup, veth, lease and
scratch, and records usage and exit status in the record. Any failure during
launch undoes every step, so nothing is left behind.
"""

from __future__ import annotations

import errno
import logging
import os
import select
import signal
import struct
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable

from ..errors import Busy, CgmanError, LaunchError, NotFound
from ..model import NetworkSpec, Resources, RootfsSpec
from ..plan import ACCOUNTING_CONTROLLERS, ROOT, Write, controllers_used, translate
from ..security.resolve import Security
from . import rootfs as rfs
from .collect import finish
from .confine import confine_devices, mount_protection, spawn_security
from ..state.records import Record, Store, proc_start_ticks

if TYPE_CHECKING:
    from ..drivers import Host

log = logging.getLogger(__name__)

DEFAULT_USER_MAP = (100000, 100000, 65536)    # host uid, host gid, count (container root -> 100000)
CLEAN_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
SETUP_TIMEOUT_S = 60


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


def _ns_flags(names: set[str]) -> int:
    """clone flags for namespace names, from the helper's own constants."""
    sp = _spawn_module()
    table = {"uts": sp.CLONE_NEWUTS, "ipc": sp.CLONE_NEWIPC, "pid": sp.CLONE_NEWPID, "net": sp.CLONE_NEWNET,
             "mount": sp.CLONE_NEWNS, "user": sp.CLONE_NEWUSER}
    flags = 0
    for n in names:
        flags |= table.get(n, 0)
    return flags


def _spawn_module() -> Any:
    try:
        from .. import _spawn
    except ImportError as e:
        raise LaunchError(f"cgman's launch helper (cgman._spawn, C) is not built: {e}; "
                          f"reinstall with `pip install -e .` (needs gcc and the Python headers)") from None
    return _spawn


def clean_env(hostname: str | None, extra: tuple[tuple[str, str], ...] = (), term: str | None = None) -> list[bytes]:
    """A container's environment (`run` and `exec` alike): clean, as Docker gives, since the
    operator's (tokens, credentials) is not the tenant's to read; only the operator's ``term``
    (TERM, from the store's settings) comes along, and `-e KEY` passes one variable through on purpose."""
    env = {"PATH": CLEAN_PATH, "HOME": "/root"}
    if term is not None:
        env["TERM"] = term
    if hostname:
        env["HOSTNAME"] = hostname
    env["container"] = "cgman"
    env.update(extra)
    return [os.fsencode(f"{k}={v}") for k, v in env.items()]



def _cgroup_limits(host: "Host", leaf: str, spec: ContainerSpec) -> None:
    """Create the leaf and write its limits (v2: enable the controllers it needs above it)."""
    writes, warns = translate(leaf, spec.resources, host.layout, host.features, spec.formula,  # type: ignore[arg-type]
                              who=f"container {spec.name}")
    for warning in warns:
        log.warning("%s", warning)
    if host.layout.mode == "v2":
        v2_needed = sorted(c for c in controllers_used(spec.resources) if host.layout.version_of(c) == 2)
        parts = leaf.split("/")
        for anc in [ROOT] + ["/".join(parts[:i]) for i in range(1, len(parts))]:
            have = set(host.read(Write(anc, "cgroup", "cgroup.subtree_control", "")).split())
            missing = [c for c in v2_needed if c not in have]
            if missing:
                host.write(Write(anc, "cgroup", "cgroup.subtree_control", " ".join(f"+{c}" for c in missing)))
            # Usage accounting (memory.current, io.stat, pids.current, cpu throttling) needs the
            # controllers even without a limit. Best effort: a group that holds processes itself
            # cannot delegate them (v2's no-internal-process rule); its containers then lack those values.
            offered = set(host.read(Write(anc, "cgroup", "cgroup.controllers", "")).split())
            extra = [c for c in ACCOUNTING_CONTROLLERS if c in offered and c not in have and c not in missing]
            if extra:
                try:
                    host.write(Write(anc, "cgroup", "cgroup.subtree_control", " ".join(f"+{c}" for c in extra)))
                except CgmanError as e:
                    log.info("usage of containers under %s will lack %s: %s", anc, ", ".join(extra), e)
    if not host.create(leaf):
        raise Busy(f"a cgroup {leaf} already exists (a policy group, or another container's): "
                   f"pick another --name")
    for w in writes:
        host.write(w)


@dataclass
class Process:
    """A started child: its host pid and the handles to release it and learn its fate."""

    pid: int
    release_fd: int
    error_fd: int
    reaped: bool = False

    def release(self) -> None:
        """Let the child go on; raise LaunchError if it then fails before exec."""
        try:
            os.write(self.release_fd, b"x")
        finally:
            os.close(self.release_fd)
            self.release_fd = -1
        try:
            data = b""
            poll = select.poll()
            poll.register(self.error_fd, select.POLLIN)
            while len(data) < 12:
                if not poll.poll(SETUP_TIMEOUT_S * 1000):
                    raise LaunchError(f"container setup did not finish within {SETUP_TIMEOUT_S}s "
                                      f"(is its group frozen, or the root on a hung filesystem?)")
                chunk = os.read(self.error_fd, 12 - len(data))
                if not chunk:
                    break
                data += chunk
        finally:
            os.close(self.error_fd)
            self.error_fd = -1
        if len(data) == 12:
            stage, err, op = struct.unpack("3i", data)
            os.waitpid(self.pid, 0)
            self.reaped = True
            raise _setup_error(stage, err, op)

    def abort(self) -> None:
        """Kill the child before it ran anything of the workload, and reap it."""
        for fd in (self.release_fd, self.error_fd):
            try:
                if fd >= 0:
                    os.close(fd)
            except OSError:
                pass
        if self.reaped:            # its pid may already belong to someone else
            return
        try:
            os.kill(self.pid, signal.SIGKILL)
            os.waitpid(self.pid, 0)
        except ChildProcessError:
            pass
        except ProcessLookupError:
            pass


_CURRENT_OPS: list[Any] = []
_CURRENT_ARGV0 = ""


def _setup_error(stage: int, err: int, op: int) -> LaunchError:
    names = _spawn_module().STAGES
    what = names[stage] if 0 < stage < len(names) else f"stage {stage}"
    detail = ""
    if 0 <= op < len(_CURRENT_OPS):
        o = _CURRENT_OPS[op]
        detail = " " + " ".join(os.fsdecode(x) for x in o[1:4] if isinstance(x, bytes))
    hint = ""
    if what == "exec":
        what = f"running {_CURRENT_ARGV0!r}"
        if err == errno.ENOENT:
            hint = ": command not found in the container (give a full path, or check --rootfs)"
    elif what == "mounting" and err in (errno.EACCES, errno.EPERM) and "overlay" in detail:
        hint = (" (with a user namespace, the container's root uid must be able to reach every layer "
                "and the state dir)")
    elif what == "pivot_root" or (what == "mounting" and err == errno.EINVAL):
        hint = " (is the root a directory with /bin inside, on a filesystem that allows it?)"
    if what == "forking the workload" and err == errno.ENOMEM:
        return LaunchError("the container is exiting: its pid namespace takes no new processes")
    code = 127 if what.startswith("running") and err == errno.ENOENT else \
        126 if what.startswith("running") and err in (errno.EACCES, errno.ENOEXEC) else 1
    return LaunchError(f"container setup failed while {what}{detail}: {os.strerror(err)}{hint}", code)


def start_process(host: "Host", leaf: str, argv: list[bytes], envp: list[bytes], *, clone_flags: int = 0,
                  unshare_flags: int = 0, hostname: str | None = None, lo_up: bool = False,
                  ops: list[Any] | None = None, init: bool = True, uid: int = -1, gid: int = -1,
                  setns_fds: list[int] | None = None, security: Security | None = None,
                  cache_dir: str | None = None, run_user: tuple[int, int] | None = None) -> Process:
    """Clone a child into ``leaf`` (v2 at birth, v1 before release). It waits for release().

    ``security`` (default: the secure defaults) is applied by the child right before exec;
    ``init``: exec cgman-init from its sealed memfd, which then starts ``argv``."""
    sp = _spawn_module()
    sec_kw = spawn_security(security or Security(), cache_dir)
    from ..security.init import memfd
    init_fd = memfd() if init else -1
    cg_fd = -1
    if host.v2 is not None:
        try:
            cg_fd = host.v2.t.open_dir(leaf)
        except NotFound:
            cg_fd = -1
    global _CURRENT_OPS, _CURRENT_ARGV0
    _CURRENT_OPS, _CURRENT_ARGV0 = list(ops or []), os.fsdecode(argv[0]) if argv else ""
    try:
        pid, in_cgroup, rel, err = sp.spawn(argv, envp, clone_flags=clone_flags, cgroup_fd=cg_fd,
                                            unshare_flags=unshare_flags,
                                            hostname=os.fsencode(hostname) if hostname else None,
                                            lo_up=lo_up, ops=ops or None, init_fd=init_fd, uid=uid, gid=gid,
                                            setns_fds=setns_fds, **sec_kw,
                                            **({"run_uid": run_user[0], "run_gid": run_user[1]} if run_user else {}))
    except OSError as e:
        raise LaunchError(f"cannot create the container's process: {e.strerror}"
                          f"{' (too many processes? check pids.max)' if e.errno == errno.EAGAIN else ''}") from None
    finally:
        if cg_fd >= 0:
            os.close(cg_fd)
    proc = Process(pid, rel, err)
    try:
        if host.v2 is not None and not in_cgroup and host.v2.exists(leaf):
            host.v2.attach(leaf, pid)
        if host.v1 is not None:
            host.v1.attach(leaf, pid)
    except BaseException:
        proc.abort()
        raise
    return proc


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
        self._next_sample = 0.0
        self.rusage_cpu_usec: int | None = None

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
        return finish(self.host, self.store, self.rec, self.status, reason)


def launch(host: "Host", store: Store, spec: ContainerSpec, *, supervisor_pid: int | None = None,
           detached: bool = False, before_spawn: "Callable[[], None] | None" = None) -> Container:
    """Start ``spec``; the caller (its supervisor) must wait() and finish() it.

    ``before_spawn`` runs once the name is claimed, just before the clone (the detached
    supervisor points stdout and stderr at the container's log there)."""
    sup = supervisor_pid or os.getpid()
    ns = set(spec.namespaces)
    leaf = f"{spec.group}/{spec.name}"
    rec = Record(id=os.urandom(16).hex(), name=spec.name, group=spec.group, tenant=spec.tenant, cgroup=leaf,
                 cgroup_root=host.root, argv=list(spec.argv), created=time.time(), supervisor_pid=sup,
                 supervisor_start=_start_ticks(sup), detached=detached, namespaces=sorted(ns),
                 hostname=spec.hostname, network={"mode": spec.network.mode if "net" in ns else "host"},
                 user_map=dict(zip(("uid", "gid", "count"), spec.user_map, strict=True)) if spec.user_map else None,
                 limits=_limits_summary(spec.resources), auto_remove=spec.auto_remove,
                 security=spec.security.summary())
    if not host.exists(spec.group):
        raise NotFound(f"group {spec.group!r} does not exist under the cgman root {host.root!r}: "
                       f"apply its policy first (`cgman apply FILE`)")
    if host.is_frozen(spec.group):
        raise LaunchError(f"group {spec.group} is frozen: a container started there could not run "
                          f"(`cgman thaw {spec.group}` first)")
    store.reserve(rec)
    proc: Process | None = None
    try:
        if host.exists(leaf):
            raise Busy(f"a cgroup {leaf} already exists (a policy group, or another container's): "
                       f"pick another --name")
        _cgroup_limits(host, leaf, spec)
        confine_devices(host, leaf, spec.security)
        overlay = None
        if spec.rootfs is not None and spec.rootfs.layers:
            owner = (spec.user_map[0], spec.user_map[1]) if spec.user_map and "user" in ns else None
            scratch = store.make_scratch(spec.name, ("upper", "work", "merged"), owner)
            overlay = rfs.Overlay(spec.rootfs.layers, f"{scratch}/upper", f"{scratch}/work", f"{scratch}/merged")
            rec.rootfs = {"layers": list(spec.rootfs.layers), "upper": overlay.upper}
        elif spec.rootfs is not None and spec.rootfs.path:
            rec.rootfs = {"path": spec.rootfs.path}
        root = overlay.merged if overlay is not None else spec.rootfs.path if spec.rootfs else None
        protect = mount_protection(host, spec, leaf, root) if "mount" in ns else ([], [])
        ops = rfs.mount_ops(root=spec.rootfs.path if spec.rootfs else None, overlay=overlay,
                            pid_ns="pid" in ns, net_ns="net" in ns, ipc_ns="ipc" in ns,
                            userns="user" in ns, protect=protect) if "mount" in ns else []
        ops += rfs.workdir_ops(spec.cwd) if spec.cwd and root is not None else []
        if before_spawn is not None:
            before_spawn()
        userns = "user" in ns
        envp = clean_env(spec.hostname, spec.env, store.settings.term)
        proc = start_process(host, leaf, [os.fsencode(a) for a in spec.argv], envp, clone_flags=_ns_flags(ns),
                             unshare_flags=_spawn_module().CLONE_NEWCGROUP if "cgroup" in ns else 0,
                             hostname=spec.hostname if "uts" in ns else None,
                             lo_up="net" in ns and spec.network.mode in ("loopback", "bridge"),
                             ops=ops, init=spec.init, uid=0 if userns else -1, gid=0 if userns else -1,
                             security=spec.security, cache_dir=store.state, run_user=spec.user)
        rec.pid, rec.pid_start = proc.pid, proc_start_ticks(proc.pid)
        if userns:
            uid, gid, count = spec.user_map or DEFAULT_USER_MAP
            _write_map(proc.pid, "uid_map", f"0 {uid} {count}\n")
            _write_map(proc.pid, "gid_map", f"0 {gid} {count}\n")
        if "net" in ns and spec.network.mode == "bridge":
            from . import network
            rec.network.update(bridge=spec.network.bridge, subnet=spec.network.subnet or network.DEFAULT_SUBNET)
            rec.network["address"] = "pending"
            store.save(rec)           # so that gc frees the lease if we die while plugging in
            lease = network.attach(store, spec.network.bridge, spec.network.subnet, rec.id, proc.pid)
            rec.network.update(address=lease.address, gateway=lease.gateway, veth=lease.host_veth)
        rec.state, rec.started = "running", time.time()
        store.save(rec)
        proc.release()
    except BaseException as e:
        if proc is not None:
            proc.abort()
        ours = not (isinstance(e, Busy) and "already exists" in str(e))
        finish(host, store, rec, None, "failed to start", cgroup=ours)
        store.delete(spec.name)
        raise
    return Container(host, store, rec, spec)


_START_TICKS: dict[int, int | None] = {}


def _start_ticks(pid: int) -> int | None:
    """Start time of a supervisor (this process, usually): read once per pid."""
    if pid not in _START_TICKS:
        _START_TICKS[pid] = proc_start_ticks(pid)
    return _START_TICKS[pid]


def _write_map(pid: int, which: str, text: str) -> None:
    try:
        with open(f"/proc/{pid}/{which}", "w") as f:
            f.write(text)
    except OSError as e:
        raise LaunchError(f"writing the user namespace {which} ({text.strip()!r}): {e.strerror}") from None


def _limits_summary(res: Resources) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for part in ("cpu", "memory", "pids"):
        for k, v in vars(getattr(res, part)).items():
            if v is not None:
                out[f"{part}_{k}"] = v if isinstance(v, (int, float, str)) else str(v)
    return out
