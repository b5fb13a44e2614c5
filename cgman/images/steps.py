"""The two kinds of build step that make a layer, both snapshotted from an overlayfs upper dir
(only what the step changed is walked, never the whole tree as kaniko does):

* RUN: a cgman container of the build's group (limits, security defaults, billing to the
  group's tenant) whose root is an overlay of the layers so far; its upper dir is the layer.
* COPY/ADD: a forked child of the builder in a private mount namespace mounts the same
  kind of overlay and chroots into it, so a destination resolves inside the image (as
  Docker resolves it) and a link in the image can never send a write to the host.
"""

from __future__ import annotations

import ctypes
import dataclasses
import os
import stat
import tarfile
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from ..errors import CgmanError
from . import layers as L
from .store import ImageStore, Layer

if TYPE_CHECKING:
    from ..drivers import Host
    from ..model import PolicySet
    from ..state.records import Store


class BuildError(CgmanError):
    def __init__(self, message: str, exit_code: int = 1) -> None:
        super().__init__(message)
        self.exit_code = exit_code


@dataclass(frozen=True)
class RunEnv:
    """Where RUN steps run: the host, the records store, the policies and the build's group."""

    host: "Host"
    records: "Store"
    policies: "PolicySet"
    group: str | None
    network: str | None = None


def snapshot_to_layer(store: ImageStore, upper: str, shift: tuple[int, int] | None = None) -> tuple[Layer, int]:
    """The upper dir as a stored layer (blob, diff_id, unpacked dir) and its entry count."""
    if shift:
        _unshift(upper, shift)
    tmp = os.path.join(store.tmp, f"tar-{os.getpid()}-{os.urandom(4).hex()}")
    try:
        with open(tmp, "wb") as f:
            n = L.snapshot(upper, f)
        return store.add_layer(tmp), n
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def _unshift(upper: str, shift: tuple[int, int]) -> None:
    """A user-namespaced step wrote as host ids uid0+N: store them as the container saw them."""
    uid0, gid0 = shift
    for path, _name, st in [(upper, "", os.lstat(upper)), *L._walk(upper)]:
        os.chown(path, max(st.st_uid - uid0, 0) if st.st_uid >= uid0 else 0,
                 max(st.st_gid - gid0, 0) if st.st_gid >= gid0 else 0, follow_symlinks=False)


def run_step(store: ImageStore, env: RunEnv, where: str, argv: list[str], envp: list[tuple[str, str]],
             cwd: str | None, user: tuple[int, int] | None, dirs: tuple[str, ...]) -> tuple[Layer, int]:
    """RUN as a container; its layer, or BuildError with the step's exit code."""
    from ..containers import spec as C
    from ..containers.launch import launch
    if not env.group:
        raise BuildError(f"{where}: RUN steps run as containers of a group: give -p GROUP (see `cgman validate`)")
    o = C.Overrides(layers=dirs, env=tuple(envp), network=env.network, auto_remove=True)
    spec = C.spec_for(env.policies, env.group, f"build-{os.urandom(4).hex()}", argv, o)
    spec = dataclasses.replace(spec, cwd=cwd, user=user, hostname="buildkit")
    c = launch(env.host, env.records, spec)
    try:
        code = c.wait()
        if env.host.procs(c.rec.cgroup):
            env.host.kill(c.rec.cgroup)   # what a step left running is not part of its layer
        if code != 0:
            raise BuildError(f"{where}: RUN {' '.join(argv)[:120]} failed with exit code {code}; "
                             f"nothing was tagged", exit_code=code or 1)
        upper = str((c.rec.rootfs or {}).get("upper"))
        shift = (spec.user_map[0], spec.user_map[1]) if spec.user_map else None
        return snapshot_to_layer(store, upper, shift)
    except BaseException:
        c.stop(0)
        raise
    finally:
        c.finish("build step")


# ------------------------------------------------------------------------------ COPY, ADD
@dataclass(frozen=True)
class Copy:
    """One source (a path relative to the context) to a destination inside the image."""

    src: str                    # relative to the context, validated
    dest: str                   # absolute inside the image
    chown: tuple[int, int] | None
    chmod: int | None
    extract: bool = False       # ADD of a tar archive


def _libc() -> Any:
    return ctypes.CDLL(None, use_errno=True)


def _mount(libc: Any, src: bytes | None, target: bytes, fstype: bytes | None, flags: int,
           data: bytes | None) -> None:
    if libc.mount(src, target, fstype, ctypes.c_ulong(flags), data) != 0:
        e = ctypes.get_errno()
        raise OSError(e, f"mount {target.decode()}: {os.strerror(e)}")


def copy_step(store: ImageStore, context: str, copies: list[Copy], dirs: tuple[str, ...]) -> tuple[Layer, int]:
    """COPY/ADD onto an overlay of ``dirs``; the layer of what changed."""
    from .. import _spawn as sp
    from ..containers.rootfs import Overlay
    work = os.path.join(store.tmp, f"copy-{os.getpid()}-{os.urandom(4).hex()}")
    os.mkdir(work, 0o700)
    try:
        for sub in ("upper", "work", "merged"):
            os.mkdir(os.path.join(work, sub), 0o755)
        ov = Overlay(dirs, f"{work}/upper", f"{work}/work", f"{work}/merged")
        r, w = os.pipe()
        pid = os.fork()
        if pid == 0:                                       # the child: never returns
            os.close(r)
            msg = b""
            try:
                libc = _libc()
                if libc.unshare(sp.CLONE_NEWNS) != 0:
                    raise OSError(ctypes.get_errno(), "unshare(CLONE_NEWNS)")
                _mount(libc, None, b"/", None, sp.MS_REC | sp.MS_PRIVATE, None)
                _mount(libc, b"overlay", ov.merged.encode(), b"overlay", 0, ov.options(False).encode())
                ctx = os.open(context, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
                os.chroot(ov.merged)
                os.chdir("/")
                for cp in copies:
                    _copy_one(ctx, cp)
            except BaseException as e:                     # noqa: BLE001 - reported to the parent
                msg = str(e).encode()[:2000] or type(e).__name__.encode()
            os.write(w, msg)
            os._exit(1 if msg else 0)
        os.close(w)
        msg = b""
        while chunk := os.read(r, 4096):
            msg += chunk
        os.close(r)
        _, status = os.waitpid(pid, 0)
        if msg or status != 0:
            raise BuildError(msg.decode(errors="replace") or f"the copy helper failed (status {status})")
        return snapshot_to_layer(store, ov.upper)
    finally:
        L.rmtree(work)


def _mkdirs(path: str) -> None:
    """mkdir -p inside the chroot: new directories root-owned 0755 (Docker's)."""
    cur = ""
    for part in [p for p in path.split("/") if p]:
        cur += "/" + part
        try:
            os.mkdir(cur, 0o755)
        except FileExistsError:
            if not os.path.isdir(cur):
                raise BuildError(f"{cur} exists in the image and is not a directory") from None


def _meta(path: str, st: os.stat_result, cp: Copy) -> None:
    uid, gid = cp.chown if cp.chown else (0, 0)
    os.chown(path, uid, gid, follow_symlinks=False)
    if not stat.S_ISLNK(st.st_mode):
        os.chmod(path, cp.chmod if cp.chmod is not None else stat.S_IMODE(st.st_mode))
        os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))


def _copy_file(ctx: int, rel: str, dest: str, cp: Copy) -> None:
    st = os.stat(rel, dir_fd=ctx, follow_symlinks=False)
    if os.path.lexists(dest) and (os.path.isdir(dest) and not os.path.islink(dest)) != stat.S_ISDIR(st.st_mode):
        L.rmtree(dest) if os.path.isdir(dest) else os.unlink(dest)
    if stat.S_ISDIR(st.st_mode):
        if not os.path.isdir(dest):
            os.mkdir(dest, 0o755)
        _copy_children(ctx, rel, dest, cp)
    elif stat.S_ISLNK(st.st_mode):
        if os.path.lexists(dest):
            os.unlink(dest)
        os.symlink(os.readlink(rel, dir_fd=ctx), dest)
    elif stat.S_ISREG(st.st_mode):
        src = os.open(rel, os.O_RDONLY | os.O_NOFOLLOW, dir_fd=ctx)
        if os.path.lexists(dest):
            os.unlink(dest)
        out = os.open(dest, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
        try:
            while chunk := os.read(src, 1 << 20):
                os.write(out, chunk)
        finally:
            os.close(src)
            os.close(out)
    else:
        raise BuildError(f"{rel}: only files, directories and symlinks can be copied")
    _meta(dest, st, cp)


def _copy_children(ctx: int, rel: str, dest: str, cp: Copy) -> None:
    """Each entry of the context directory ``rel`` into ``dest``, in name order, never
    following a link."""
    fd = os.open(rel, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW, dir_fd=ctx)
    try:
        names = sorted(os.listdir(fd))
    finally:
        os.close(fd)
    for n in names:
        _copy_file(ctx, f"{rel}/{n}", f"{dest.rstrip('/')}/{n}", cp)


def _copy_one(ctx: int, cp: Copy) -> None:
    st = os.stat(cp.src, dir_fd=ctx, follow_symlinks=False)
    if cp.extract:
        _mkdirs(cp.dest)
        fd = os.open(cp.src, os.O_RDONLY | os.O_NOFOLLOW, dir_fd=ctx)
        with os.fdopen(fd, "rb") as f, tarfile.open(fileobj=f, mode="r|*") as tar:
            L.extract(tar, cp.dest, whiteouts=False)
        return
    if stat.S_ISDIR(st.st_mode):                # a directory's contents go into dest (not its own metadata)
        _mkdirs(cp.dest)
        _copy_children(ctx, cp.src, cp.dest, cp)
        return
    dest = cp.dest
    if dest.endswith("/") or os.path.isdir(dest):
        _mkdirs(dest)
        dest = dest.rstrip("/") + "/" + os.path.basename(cp.src)
    else:
        _mkdirs(os.path.dirname(dest))
    _copy_file(ctx, cp.src, dest, cp)
