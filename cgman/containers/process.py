"""A container's first process: cloned by the C helper (cgman/_spawn.c) into its cgroup, and the
setup error it reports if it fails before exec.

``launch`` (a new container) and ``exec_in`` (a process joining a running one) both start their
process here: clone3 into the cgroup2 leaf; the child moves itself into every v1 hierarchy's
leaf; then ``release()``. A caller with work to do on the pid before the workload may start (the
user namespace's maps, a veth) asks for a *held* child, which waits for ``release()``. Otherwise
the child is cloned as posix_spawn clones (sharing the parent's memory, so no page tables are
copied) and has exec'd by the time ``start_process`` returns; ``release()`` then only waits for
the workload's exec. Such a child's set-up has no timeout (the parent is suspended meanwhile;
SIGKILL still ends it): a launch into a group frozen in the middle of it waits for the thaw.
"""

from __future__ import annotations

import errno
import os
import select
import signal
import struct
from dataclasses import dataclass

from ..errors import LaunchError, NotFound
from ..security.resolve import Security
from .confine import spawn_security

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any, Iterable

    from ..drivers import Host

SETUP_TIMEOUT_S = 60
CLEAN_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


def spawn_helper() -> Any:
    """The C launch helper (cgman._spawn), or LaunchError saying how to build it."""
    try:
        from .. import _spawn
    except ImportError as e:
        raise LaunchError(f"cgman's launch helper (cgman._spawn, C) is not built: {e}; "
                          f"reinstall with `pip install -e .` (needs gcc and the Python headers)") from None
    return _spawn


def clone_flags(names: Iterable[str]) -> int:
    """clone flags for namespace names (uts ipc pid net mount user), from the helper's own constants."""
    sp = spawn_helper()
    table = {"uts": sp.CLONE_NEWUTS, "ipc": sp.CLONE_NEWIPC, "pid": sp.CLONE_NEWPID, "net": sp.CLONE_NEWNET,
             "mount": sp.CLONE_NEWNS, "user": sp.CLONE_NEWUSER}
    flags = 0
    for n in names:
        flags |= table.get(n, 0)
    return flags


@dataclass
class Process:
    """A started child: its host pid and the handles to release it and learn its fate."""

    pid: int
    release_fd: int
    error_fd: int
    reaped: bool = False

    def release(self) -> None:
        """Let a held child go on; raise LaunchError if it then fails before exec."""
        if self.release_fd >= 0:
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
    names = spawn_helper().STAGES
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
                  cache_dir: str | None = None, run_user: tuple[int, int] | None = None,
                  hold: bool = False, netns_fd: int = -1) -> Process:
    """Clone a child into ``leaf`` (v2 at birth, v1 by itself before anything of its own runs).

    ``hold``: the child waits for release() (the caller acts on its pid first); otherwise it
    has exec'd on return and release() waits for the workload's exec. ``security`` (default:
    the secure defaults) is applied by the child right before exec; ``init``: exec cgman-init
    from its sealed memfd, which then starts ``argv``. ``netns_fd``: a network namespace the
    child joins (setns, network namespaces only; not closed here) instead of cloning one."""
    sp = spawn_helper()
    sec_kw = spawn_security(security or Security(), cache_dir)
    from ..security.init import memfd
    init_fd = memfd() if init else -1
    cg_fd = -1
    if host.v2 is not None:
        try:
            cg_fd = host.v2.t.open_dir(leaf)
        except NotFound:
            cg_fd = -1
    try:
        join_fds = host.v1.open_joins(leaf) if host.v1 is not None else []
    except BaseException:
        if cg_fd >= 0:
            os.close(cg_fd)
        raise
    global _CURRENT_OPS, _CURRENT_ARGV0
    _CURRENT_OPS, _CURRENT_ARGV0 = list(ops or []), os.fsdecode(argv[0]) if argv else ""
    try:
        pid, in_cgroup, rel, err = sp.spawn(argv, envp, clone_flags=clone_flags, cgroup_fd=cg_fd,
                                            unshare_flags=unshare_flags,
                                            hostname=os.fsencode(hostname) if hostname else None,
                                            lo_up=lo_up, ops=ops or None, init_fd=init_fd, uid=uid, gid=gid,
                                            setns_fds=setns_fds, join_fds=join_fds, held=hold, netns_fd=netns_fd,
                                            **sec_kw,
                                            **({"run_uid": run_user[0], "run_gid": run_user[1]} if run_user else {}))
    except OSError as e:
        raise LaunchError(f"cannot create the container's process: {e.strerror}"
                          f"{' (too many processes? check pids.max)' if e.errno == errno.EAGAIN else ''}") from None
    finally:
        for fd in (cg_fd, *join_fds):
            if fd >= 0:
                os.close(fd)
    proc = Process(pid, rel, err)
    if rel < 0:
        return proc               # not held: born in its cgroup2 leaf, and it has exec'd
    try:
        if host.v2 is not None and not in_cgroup and host.v2.exists(leaf):
            host.v2.attach(leaf, pid)
    except BaseException:
        proc.abort()
        raise
    return proc


def map_user(pid: int, user_map: tuple[int, int, int]) -> None:
    """A held child's user namespace: its root is host ``uid``/``gid``, for ``count`` ids."""
    uid, gid, count = user_map
    _write_map(pid, "uid_map", f"0 {uid} {count}\n")
    _write_map(pid, "gid_map", f"0 {gid} {count}\n")


def _write_map(pid: int, which: str, text: str) -> None:
    try:
        with open(f"/proc/{pid}/{which}", "w") as f:
            f.write(text)
    except OSError as e:
        raise LaunchError(f"writing the user namespace {which} ({text.strip()!r}): {e.strerror}") from None


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
