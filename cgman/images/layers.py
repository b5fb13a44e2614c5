"""Layers: an overlayfs upper dir -> an OCI layer tar, and an OCI layer tar -> a directory
that overlayfs stacks as a lower dir.

The two whiteout forms (image-spec layer.md; the kernel's overlayfs.rst):

| meaning                  | OCI tar                 | overlayfs dir                                   |
|--------------------------|-------------------------|-------------------------------------------------|
| ``a/x`` deleted          | empty file ``a/.wh.x``  | char device 0:0 ``a/x``                         |
| ``a`` emptied (opaque)   | ``a/.wh..wh..opq``      | xattr ``trusted.overlay.opaque=y`` on ``a``     |

(``user.overlay.opaque`` too, for overlays mounted with ``userxattr`` in a user namespace.)

Layer tars are hostile input (an imported image is anyone's): ``extract`` refuses absolute
names, ``..``, device nodes other than whiteouts, hardlinks that leave the layer, any path
that passes through a symlink, and stops at a byte and entry budget (gzip bombs included).
It needs no chroot: the destination is a fresh directory only this process writes, so an
``lstat`` of every parent component is not racy.
"""

from __future__ import annotations

import errno
import hashlib
import os
import shutil
import stat
import tarfile
from dataclasses import dataclass
from typing import IO, Iterator

from ..errors import CgmanError

WH = ".wh."
OPQ = ".wh..wh..opq"
OPAQUE_XATTRS = ("trusted.overlay.opaque", "user.overlay.opaque")
# Set by overlayfs features that keep data in a lower layer (a renamed dir, a metadata-only
# copy-up): an upper dir with them is not a self-contained diff.
UNSUPPORTED_XATTRS = ("trusted.overlay.redirect", "trusted.overlay.metacopy", "user.overlay.redirect",
                      "user.overlay.metacopy")


class LayerError(CgmanError):
    """A layer that cannot be made or unpacked (the message names the member)."""


@dataclass(frozen=True)
class Limits:
    """Bounds on what one layer may unpack to (defaults generous, tests set small ones)."""

    max_bytes: int = 64 << 30           # file contents, uncompressed
    max_entries: int = 2_000_000
    max_name_bytes: int = 4096


class HashingWriter:
    """A file object that hashes and counts what passes to ``inner``."""

    def __init__(self, inner: IO[bytes]) -> None:
        self.inner, self.sha, self.size = inner, hashlib.sha256(), 0

    def write(self, data: bytes) -> int:  # type: ignore[override]
        self.sha.update(data)
        self.size += len(data)
        return self.inner.write(data)

    def flush(self) -> None:
        self.inner.flush()

    def digest(self) -> str:
        return "sha256:" + self.sha.hexdigest()


# ---------------------------------------------------------------------------- upper -> tar
def _opaque(path: str) -> bool:
    for x in OPAQUE_XATTRS:
        try:
            if os.getxattr(path, x, follow_symlinks=False) == b"y":
                return True
        except OSError:
            pass
    return False


def _check_xattrs(path: str, rel: str) -> None:
    try:
        names = os.listxattr(path, follow_symlinks=False)
    except OSError:
        return
    bad = [n for n in names if n in UNSUPPORTED_XATTRS]
    if bad:
        raise LayerError(f"{rel}: overlayfs {bad[0]} is set (redirect_dir or metacopy is on); "
                         f"builds need them off: `echo N > /sys/module/overlay/parameters/redirect_dir` "
                         f"and `.../metacopy`")


def _walk(top: str, rel: str = "") -> Iterator[tuple[str, str, os.stat_result]]:
    """(host path, name in the layer, lstat) of everything under ``top``, sorted, parents first."""
    with os.scandir(os.path.join(top, rel) if rel else top) as it:
        entries = sorted(it, key=lambda e: e.name)
    for e in entries:
        name = f"{rel}/{e.name}" if rel else e.name
        st = e.stat(follow_symlinks=False)
        yield e.path, name, st
        if stat.S_ISDIR(st.st_mode):
            yield from _walk(top, name)


def _info(name: str, st: os.stat_result, kind: bytes) -> tarfile.TarInfo:
    ti = tarfile.TarInfo(name)
    ti.type, ti.mode = kind, stat.S_IMODE(st.st_mode)
    ti.uid, ti.gid, ti.mtime = st.st_uid, st.st_gid, int(st.st_mtime)
    ti.uname = ti.gname = ""
    return ti


def snapshot(upper: str, out: IO[bytes]) -> int:
    """Write the OCI layer tar of overlayfs upper dir ``upper`` to ``out``; the entry count."""
    n = 0
    links: dict[tuple[int, int], str] = {}
    with tarfile.open(fileobj=out, mode="w|", format=tarfile.PAX_FORMAT) as tar:
        for path, name, st in _walk(upper):
            base = os.path.basename(name)
            if base.startswith(WH):
                raise LayerError(f"{name}: a file named {WH}* cannot be stored in a layer (it means a deletion)")
            m = st.st_mode
            if stat.S_ISCHR(m) and st.st_rdev == 0:          # overlayfs whiteout
                parent = os.path.dirname(name)
                ti = tarfile.TarInfo(f"{parent}/{WH}{base}" if parent else f"{WH}{base}")
                tar.addfile(ti)
            elif stat.S_ISDIR(m):
                _check_xattrs(path, name)
                tar.addfile(_info(name + "/", st, tarfile.DIRTYPE))
                if _opaque(path):
                    tar.addfile(tarfile.TarInfo(f"{name}/{OPQ}"))
            elif stat.S_ISREG(m):
                _check_xattrs(path, name)
                key = (st.st_dev, st.st_ino)
                if st.st_nlink > 1 and key in links:
                    ti = _info(name, st, tarfile.LNKTYPE)
                    ti.linkname = links[key]
                    tar.addfile(ti)
                else:
                    links[key] = name
                    ti = _info(name, st, tarfile.REGTYPE)
                    ti.size = st.st_size
                    with open(path, "rb", opener=_nofollow) as f:
                        tar.addfile(ti, f)
            elif stat.S_ISLNK(m):
                ti = _info(name, st, tarfile.SYMTYPE)
                ti.linkname = os.readlink(path)
                tar.addfile(ti)
            elif stat.S_ISFIFO(m):
                tar.addfile(_info(name, st, tarfile.FIFOTYPE))
            elif stat.S_ISSOCK(m):
                continue                                        # a socket is no content
            else:
                raise LayerError(f"{name}: a device node cannot be stored in a layer")
            n += 1
    return n


def _nofollow(path: str, flags: int) -> int:
    return os.open(path, flags | os.O_NOFOLLOW | os.O_CLOEXEC)


# ---------------------------------------------------------------------------- tar -> dir
def clean_name(name: str, what: str = "member") -> str:
    """A member name as a plain relative path, or LayerError."""
    if "\0" in name or name.startswith("/"):
        raise LayerError(f"layer {what} {name[:120]!r}: absolute paths are not allowed")
    parts = [p for p in name.split("/") if p not in ("", ".")]
    if any(p == ".." for p in parts):
        raise LayerError(f"layer {what} {name[:120]!r}: '..' is not allowed")
    return "/".join(parts)


class _Dest:
    """The directory being filled; every parent component checked to be a real directory."""

    def __init__(self, root: str) -> None:
        self.root = root

    def parent(self, rel: str, create: bool = True) -> str:
        cur = self.root
        for comp in rel.split("/")[:-1]:
            cur = os.path.join(cur, comp)
            try:
                st = os.lstat(cur)
            except FileNotFoundError:
                if not create:
                    raise
                os.mkdir(cur, 0o755)
                continue
            if stat.S_ISCHR(st.st_mode) and st.st_rdev == 0:     # a whiteout from this layer: a dir now
                os.unlink(cur)
                os.mkdir(cur, 0o755)
            elif not stat.S_ISDIR(st.st_mode):
                raise LayerError(f"layer member {rel[:120]!r} passes through {os.path.relpath(cur, self.root)!r}, "
                                 f"which is not a directory (a symlink?)")
        return os.path.join(self.root, rel)

    def clear(self, path: str, keep_dir: bool) -> None:
        try:
            st = os.lstat(path)
        except FileNotFoundError:
            return
        if stat.S_ISDIR(st.st_mode):
            if not keep_dir:
                shutil.rmtree(path)
        else:
            os.unlink(path)


def _meta(path: str, ti: tarfile.TarInfo) -> None:
    os.chown(path, ti.uid, ti.gid, follow_symlinks=False)
    if not ti.issym():
        os.chmod(path, ti.mode & 0o7777)
    try:
        os.utime(path, (ti.mtime, ti.mtime), follow_symlinks=False)
    except OSError:
        pass


def _whiteout(d: _Dest, rel: str) -> None:
    base, parent = os.path.basename(rel), os.path.dirname(rel)
    if base == OPQ:
        if parent:
            d.parent(parent + "/x")                   # the directory itself, checked or created
        target = os.path.join(d.root, parent) if parent else d.root
        for x in OPAQUE_XATTRS:
            os.setxattr(target, x, b"y", follow_symlinks=False)
        return
    name = base[len(WH):]
    if not name or name in (".", "..") or name.startswith(WH):
        raise LayerError(f"layer member {rel[:120]!r}: not a valid whiteout")
    path = d.parent(os.path.join(parent, name))
    d.clear(path, keep_dir=False)
    os.mknod(path, stat.S_IFCHR | 0o000, os.makedev(0, 0))


def extract(tar: tarfile.TarFile, dest: str, limits: Limits = Limits(), whiteouts: bool = True) -> int:
    """Unpack an OCI layer into the empty directory ``dest`` in overlayfs form; entry count.
    ``whiteouts=False`` (ADD of an archive): a whiteout name is an error, not a deletion."""
    d = _Dest(dest)
    total = count = 0
    dirs: list[tuple[str, tarfile.TarInfo]] = []
    for ti in tar:
        count += 1
        if count > limits.max_entries:
            raise LayerError(f"layer has more than {limits.max_entries} entries")
        if len(ti.name.encode()) > limits.max_name_bytes:
            raise LayerError(f"layer member name longer than {limits.max_name_bytes} bytes")
        rel = clean_name(ti.name)
        if not rel:
            continue                                           # "./": the root itself
        base = os.path.basename(rel)
        if base.startswith(WH):
            if not whiteouts:
                raise LayerError(f"archive member {rel[:120]!r}: whiteout names are not allowed here")
            _whiteout(d, rel)
            continue
        if "/" + WH in "/" + rel.rsplit("/", 1)[0] + "/":
            raise LayerError(f"layer member {rel[:120]!r}: a whiteout name cannot be a directory")
        path = d.parent(rel)
        if ti.isdir():
            d.clear(path, keep_dir=True)
            if not os.path.isdir(path):
                os.mkdir(path, 0o700)
            dirs.append((path, ti))
            continue
        d.clear(path, keep_dir=False)
        if ti.isreg():
            total += ti.size
            if total > limits.max_bytes:
                raise LayerError(f"layer unpacks to more than {limits.max_bytes} bytes (a gzip bomb?)")
            src = tar.extractfile(ti)
            assert src is not None
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
            with os.fdopen(fd, "wb") as f:
                shutil.copyfileobj(src, f, 1 << 20)
        elif ti.issym():
            os.symlink(ti.linkname, path)                      # data only: never followed here
        elif ti.islnk():
            target = d.parent(clean_name(ti.linkname, "hardlink target"), create=False)
            st = os.lstat(target)
            if not stat.S_ISREG(st.st_mode):
                raise LayerError(f"layer member {rel[:120]!r}: hardlink to {ti.linkname[:120]!r}, not a file "
                                 f"of this layer")
            os.link(target, path, follow_symlinks=False)
            continue                                           # shares the target's metadata
        elif ti.isfifo():
            os.mkfifo(path, 0o600)
        else:
            kind = "device node" if ti.ischr() or ti.isblk() else f"type {ti.type!r}"
            raise LayerError(f"layer member {rel[:120]!r}: a {kind} is not allowed in an image")
        _meta(path, ti)
    for path, ti in reversed(dirs):                           # after their contents: mtimes stick
        _meta(path, ti)
    return count


class BoundedReader:
    """Reads an uncompressed layer stream: hashes it (the diff_id) and stops past ``limit``
    bytes, so neither a gzip bomb nor a giant pax header can exhaust disk or memory."""

    def __init__(self, inner: IO[bytes], limit: int) -> None:
        self.inner, self.limit, self.size, self.sha = inner, limit, 0, hashlib.sha256()

    def read(self, n: int = -1) -> bytes:
        if n is None or n < 0:
            n = 1 << 20
        data = self.inner.read(n)
        self.size += len(data)
        if self.size > self.limit:
            raise LayerError(f"layer unpacks to more than {self.limit} bytes (a gzip bomb?)")
        self.sha.update(data)
        return data

    def drain(self) -> str:
        """Read to the end (tar readers stop at the end marker); the stream's digest."""
        while self.read(1 << 20):
            pass
        return "sha256:" + self.sha.hexdigest()


def open_layer(f: IO[bytes], media_type: str, limits: Limits = Limits()) -> tuple[tarfile.TarFile, BoundedReader]:
    """A streaming tar reader of a layer blob (gzip or plain tar) and its bounded stream."""
    import gzip
    raw: IO[bytes] = gzip.GzipFile(fileobj=f, mode="rb") if media_type.endswith("gzip") else f  # type: ignore[assignment]
    # 1 KiB per entry covers tar headers; pax records beyond that count against the budget.
    reader = BoundedReader(raw, limits.max_bytes + limits.max_entries * 1024 + (1 << 20))
    try:
        return tarfile.open(fileobj=reader, mode="r|"), reader  # type: ignore[call-overload]
    except (tarfile.TarError, OSError, EOFError) as e:
        raise LayerError(f"layer blob is not a tar{' (gzip)' if raw is not f else ''}: {e}") from None


def rmtree(path: str) -> None:
    """Remove a tree this store made (its dirs may be read-only)."""
    def onerror(func, p, exc):  # type: ignore[no-untyped-def]
        if isinstance(exc[1], PermissionError):
            os.chmod(os.path.dirname(p), 0o700)
            func(p)
        elif not (isinstance(exc[1], OSError) and exc[1].errno == errno.ENOENT):
            raise exc[1]
    shutil.rmtree(path, onerror=onerror)
