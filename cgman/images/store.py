"""The image store: an OCI image layout (image-spec image-layout.md) in ``<state>/images/oci``
plus each layer unpacked once, by diff_id, in ``<state>/images/layers/<hex>``.

``oci-layout``, ``index.json`` (one manifest descriptor per tag, named by the
``org.opencontainers.image.ref.name`` annotation, NAME:TAG here) and ``blobs/sha256/``:
gzip layers, image configs (rootfs.diff_ids, history) and manifests. Every blob is written
to a temporary name, its digest checked, then renamed; index.json is replaced by rename,
so a crash leaves the old store or the new one, never half of either. Blobs and layouts
from elsewhere (import) are hostile: sizes bounded, digests and diff_ids verified, JSON
bounded and type-checked before use.
"""

from __future__ import annotations

import fcntl
import gzip
import hashlib
import json
import os
import re
import shutil
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Iterator

from ..errors import Busy, CgmanError, NotFound
from . import layers as L

OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_INDEX = "application/vnd.oci.image.index.v1+json"
OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
OCI_LAYER_GZ = "application/vnd.oci.image.layer.v1.tar+gzip"
LAYER_TYPES = {OCI_LAYER_GZ, "application/vnd.oci.image.layer.v1.tar",
               "application/vnd.docker.image.rootfs.diff.tar.gzip"}
REF_NAME = "org.opencontainers.image.ref.name"
DIGEST_RE = re.compile(r"sha256:[0-9a-f]{64}")
NAME_RE = re.compile(r"[a-z0-9][a-z0-9._/-]{0,127}")
TAG_RE = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}")
MAX_JSON = 4 << 20


class ImageError(CgmanError):
    """A bad image, reference or layout (one line: what, where, what to do)."""


def parse_ref(text: str) -> tuple[str, str]:
    """NAME[:TAG] -> (name, tag); the tag defaults to latest."""
    name, sep, tag = text.rpartition(":")
    if not sep or "/" in tag:
        name, tag = text, "latest"
    if not NAME_RE.fullmatch(name) or ".." in name or not TAG_RE.fullmatch(tag):
        raise ImageError(f"bad image reference {text[:80]!r}: use NAME:TAG, NAME of a-z 0-9 . _ / - "
                         f"(lower case), TAG of A-Z a-z 0-9 . _ -")
    return name, tag


@dataclass(frozen=True)
class Layer:
    """One layer blob of an image and its uncompressed digest."""

    digest: str
    diff_id: str
    size: int
    media_type: str = OCI_LAYER_GZ


@dataclass(frozen=True)
class Image:
    """A tagged image in the store: manifest, config and layers."""

    ref: str
    manifest_digest: str
    config: dict[str, Any]
    layers: tuple[Layer, ...]
    config_digest: str = ""
    created: str = ""

    @property
    def settings(self) -> dict[str, Any]:
        c = self.config.get("config")
        return c if isinstance(c, dict) else {}


@dataclass
class Blobs:
    """The blobs/sha256 directory of one layout (the store's own or an import/export dir)."""

    root: str
    verified: set[str] = field(default_factory=set)

    def path(self, digest: str) -> str:
        if not isinstance(digest, str) or not DIGEST_RE.fullmatch(digest):
            raise ImageError(f"bad digest {str(digest)[:80]!r}: expected sha256:<64 hex>")
        return os.path.join(self.root, "blobs", "sha256", digest[7:])

    def has(self, digest: str) -> bool:
        return os.path.isfile(self.path(digest))

    def read(self, digest: str, limit: int = MAX_JSON) -> bytes:
        try:
            with open(self.path(digest), "rb", opener=L._nofollow) as f:
                data = f.read(limit + 1)
        except FileNotFoundError:
            raise ImageError(f"blob {digest[:19]} is missing from {self.root}") from None
        if len(data) > limit:
            raise ImageError(f"blob {digest[:19]} is larger than {limit} bytes")
        if "sha256:" + hashlib.sha256(data).hexdigest() != digest:
            raise ImageError(f"blob {digest[:19]} in {self.root} does not match its digest (corrupt)")
        return data

    def json(self, digest: str) -> dict[str, Any]:
        try:
            obj = json.loads(self.read(digest))
        except ValueError as e:
            raise ImageError(f"blob {digest[:19]}: not JSON: {e}") from None
        if not isinstance(obj, dict):
            raise ImageError(f"blob {digest[:19]}: not a JSON object")
        return obj

    def put(self, write: Any, tmp_dir: str, expect: str | None = None, limit: int | None = None) -> tuple[str, int]:
        """Store what ``write(fileobj)`` writes: temp name, digest (``expect``ed), rename."""
        os.makedirs(os.path.join(self.root, "blobs", "sha256"), mode=0o755, exist_ok=True)
        tmp = os.path.join(tmp_dir, f"blob-{os.getpid()}-{os.urandom(4).hex()}")
        try:
            with open(tmp, "wb") as f:
                hw = L.HashingWriter(f)
                write(hw, limit)
                f.flush()
                os.fsync(f.fileno())
            digest = hw.digest()
            if expect is not None and digest != expect:
                raise ImageError(f"blob {expect[:19]}: content does not match its digest ({digest[:19]}): "
                                 f"corrupt or tampered; nothing was imported")
            os.chmod(tmp, 0o644)
            os.replace(tmp, self.path(digest))
            return digest, hw.size
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)

    def put_bytes(self, data: bytes, tmp_dir: str) -> tuple[str, int]:
        return self.put(lambda f, _limit: f.write(data), tmp_dir)


def copy_limited(src: Any, limit: int | None, what: str) -> Any:
    """A writer for Blobs.put that copies ``src`` (a file object), at most ``limit`` bytes."""
    def write(f: Any, _ignored: int | None) -> None:
        n = 0
        while chunk := src.read(1 << 20):
            n += len(chunk)
            if limit is not None and n > limit:
                raise ImageError(f"{what} is larger than {limit} bytes")
            f.write(chunk)
    return write


def descriptor(media_type: str, digest: str, size: int, **annotations: str) -> dict[str, Any]:
    d: dict[str, Any] = {"mediaType": media_type, "digest": digest, "size": size}
    if annotations:
        d["annotations"] = annotations
    return d


class ImageStore:
    """``<state>/images``: the layout, unpacked layers, the build cache, temp space, locks."""

    def __init__(self, state_dir: str, limits: L.Limits = L.Limits(), max_blob_bytes: int = 16 << 30) -> None:
        self.root = os.path.join(state_dir, "images")
        self.oci = os.path.join(self.root, "oci")
        self.blobs = Blobs(self.oci)
        self.layers_dir = os.path.join(self.root, "layers")
        self.cache_dir = os.path.join(self.root, "cache")
        self.tmp = os.path.join(self.root, "tmp")
        self.limits, self.max_blob_bytes = limits, max_blob_bytes

    def init(self) -> None:
        for d, mode in ((self.root, 0o711), (self.oci, 0o700), (self.layers_dir, 0o711), (self.cache_dir, 0o700),
                        (self.tmp, 0o700)):
            os.makedirs(d, mode=mode, exist_ok=True)
        if not os.path.exists(os.path.join(self.oci, "oci-layout")):
            write_atomic(os.path.join(self.oci, "oci-layout"), b'{"imageLayoutVersion": "1.0.0"}', self.tmp)
        if not os.path.exists(os.path.join(self.oci, "index.json")):
            self._write_index([])

    # ------------------------------------------------------------------ locks
    @contextmanager
    def lock(self, name: str, shared: bool = False, timeout_s: float = 30.0) -> Iterator[None]:
        """``index``: index.json updates. ``gc``: builds and imports hold it shared, prune exclusive."""
        self.init()
        fd = os.open(os.path.join(self.root, f"{name}.lock"), os.O_RDWR | os.O_CREAT | os.O_CLOEXEC | os.O_NOFOLLOW,
                     0o600)
        try:
            deadline = time.monotonic() + timeout_s
            while True:
                try:
                    fcntl.flock(fd, (fcntl.LOCK_SH if shared else fcntl.LOCK_EX) | fcntl.LOCK_NB)
                    break
                except BlockingIOError:
                    if time.monotonic() > deadline:
                        raise Busy(f"the image store is busy ({name} lock held by another cgman for "
                                   f"{timeout_s:g}s: a build or prune); try again") from None
                    time.sleep(0.05)
            yield
        finally:
            os.close(fd)

    # ------------------------------------------------------------------ index
    def _index(self) -> list[dict[str, Any]]:
        try:
            with open(os.path.join(self.oci, "index.json"), "rb", opener=L._nofollow) as f:
                idx = json.loads(f.read(MAX_JSON + 1))
        except FileNotFoundError:
            return []
        except ValueError as e:
            raise ImageError(f"{self.oci}/index.json is not JSON ({e}); restore it or remove the store") from None
        ms = idx.get("manifests") if isinstance(idx, dict) else None
        return [m for m in ms if isinstance(m, dict)] if isinstance(ms, list) else []

    def _write_index(self, manifests: list[dict[str, Any]]) -> None:
        doc = {"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": manifests}
        write_atomic(os.path.join(self.oci, "index.json"), json.dumps(doc, indent=2).encode(), self.tmp)

    def refs(self) -> list[str]:
        return sorted(str(m.get("annotations", {}).get(REF_NAME, "")) for m in self._index()
                      if isinstance(m.get("annotations"), dict) and m["annotations"].get(REF_NAME))

    def tag(self, ref: str, manifest: dict[str, Any]) -> None:
        with self.lock("index"):
            ms = [m for m in self._index() if _ref_of(m) != ref]
            ms.append(descriptor(OCI_MANIFEST, manifest["digest"], manifest["size"], **{REF_NAME: ref}))
            self._write_index(ms)

    def untag(self, ref: str) -> None:
        with self.lock("index"):
            ms = self._index()
            if not any(_ref_of(m) == ref for m in ms):
                raise NotFound(f"no image {ref} (see `cgman images`)")
            self._write_index([m for m in ms if _ref_of(m) != ref])

    def get(self, text: str) -> Image:
        name, tag = parse_ref(text)
        ref = f"{name}:{tag}"
        for m in self._index():
            if _ref_of(m) == ref:
                return load_image(self.blobs, m, ref)
        raise NotFound(f"no image {ref} (see `cgman images`; build one with `cgman build -t {ref} DIR`)")

    def images(self) -> list[Image]:
        return [load_image(self.blobs, m, _ref_of(m)) for m in self._index() if _ref_of(m)]

    # ------------------------------------------------------------------ layers
    def add_layer(self, tar_path: str) -> Layer:
        """Compress the layer tar at ``tar_path`` into a blob; its diff_id; unpack it once."""
        with open(tar_path, "rb") as src:
            sha = hashlib.sha256()

            def write(f: Any, _limit: int | None) -> None:
                with gzip.GzipFile(fileobj=f, mode="wb", compresslevel=6, mtime=0) as gz:
                    while chunk := src.read(1 << 20):
                        sha.update(chunk)
                        gz.write(chunk)
            digest, size = self.blobs.put(write, self.tmp)
        layer = Layer(digest, "sha256:" + sha.hexdigest(), size)
        self.layer_dir(layer)
        return layer

    def layer_path(self, diff_id: str) -> str:
        if not DIGEST_RE.fullmatch(diff_id):
            raise ImageError(f"bad diff_id {diff_id[:80]!r}")
        return os.path.join(self.layers_dir, diff_id[7:])

    def layer_dir(self, layer: Layer, blobs: Blobs | None = None) -> str:
        """The unpacked directory of ``layer`` (unpacked now from its blob if it is not yet)."""
        dest = self.layer_path(layer.diff_id)
        if os.path.isdir(dest):
            return dest
        blobs = blobs or self.blobs
        tmp = os.path.join(self.tmp, f"layer-{os.getpid()}-{os.urandom(4).hex()}")
        os.mkdir(tmp, 0o755)
        try:
            try:
                f = open(blobs.path(layer.digest), "rb", opener=L._nofollow)
            except FileNotFoundError:
                raise ImageError(f"layer blob {layer.digest[:19]} is missing from {blobs.root}") from None
            with f:
                tar, reader = L.open_layer(f, layer.media_type, self.limits)
                try:
                    L.extract(tar, tmp, self.limits)
                    got = reader.drain()
                except (EOFError, OSError, tarfile_errors()) as e:
                    raise ImageError(f"layer {layer.digest[:19]}: {e}") from None
            if got != layer.diff_id:
                raise ImageError(f"layer {layer.digest[:19]} unpacks to {got[:19]}, not its diff_id "
                                 f"{layer.diff_id[:19]} (corrupt or tampered)")
            try:
                os.rename(tmp, dest)
            except OSError:
                if not os.path.isdir(dest):      # else: another cgman unpacked it meanwhile
                    raise
        finally:
            if os.path.exists(tmp):
                L.rmtree(tmp)
        return dest

    def layer_dirs(self, image: Image) -> tuple[str, ...]:
        return tuple(self.layer_dir(x) for x in image.layers)


def tarfile_errors() -> type[Exception]:
    import tarfile
    return tarfile.TarError


def _ref_of(m: dict[str, Any]) -> str:
    a = m.get("annotations")
    r = a.get(REF_NAME) if isinstance(a, dict) else None
    return r if isinstance(r, str) else ""


def write_atomic(path: str, data: bytes, tmp_dir: str) -> None:
    tmp = os.path.join(os.path.dirname(path), f".{os.path.basename(path)}.{os.getpid()}.tmp")
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.chmod(tmp, 0o644)
    os.replace(tmp, path)


def _str_list(v: Any) -> list[str] | None:
    return v if isinstance(v, list) and all(isinstance(x, str) for x in v) else None


def load_image(blobs: Blobs, desc: dict[str, Any], ref: str) -> Image:
    """Manifest and config of ``desc``, checked: media types, digests, diff_ids per layer."""
    if desc.get("mediaType") not in (OCI_MANIFEST, None):
        raise ImageError(f"{ref}: {desc.get('mediaType')!r} is not an OCI image manifest "
                         f"(a multi-platform index? copy one platform: skopeo copy --override-arch ...)")
    manifest = blobs.json(desc.get("digest", ""))
    cfg_d = manifest.get("config")
    lay = manifest.get("layers")
    if not isinstance(cfg_d, dict) or not isinstance(lay, list):
        raise ImageError(f"{ref}: manifest lacks config or layers")
    config = blobs.json(cfg_d.get("digest", ""))
    rootfs = config.get("rootfs")
    diff_ids = _str_list(rootfs.get("diff_ids")) if isinstance(rootfs, dict) else None
    if diff_ids is None or len(diff_ids) != len(lay):
        raise ImageError(f"{ref}: config rootfs.diff_ids does not list one diff_id per layer")
    out = []
    for ld, diff in zip(lay, diff_ids, strict=True):
        if not isinstance(ld, dict) or ld.get("mediaType") not in LAYER_TYPES:
            mt = ld.get("mediaType") if isinstance(ld, dict) else ld
            raise ImageError(f"{ref}: layer media type {str(mt)[:80]!r} is not supported (tar or tar+gzip)")
        size = ld.get("size")
        if not isinstance(size, int) or size < 0 or not DIGEST_RE.fullmatch(diff):
            raise ImageError(f"{ref}: layer descriptor with a bad size or diff_id")
        blobs.path(ld.get("digest", ""))
        out.append(Layer(ld["digest"], diff, size, ld["mediaType"]))
    return Image(ref, desc["digest"], config, tuple(out), cfg_d["digest"], str(config.get("created", "")))


def copy_tree_blobs(src: Blobs, dst: Blobs, digests: list[tuple[str, int]], tmp: str, max_bytes: int) -> None:
    """Copy blobs from one layout to another, each checked against its digest and size."""
    for digest, size in digests:
        if dst.has(digest) and digest in dst.verified:
            continue
        if size > max_bytes:
            raise ImageError(f"blob {digest[:19]} is {size} bytes, above the limit of {max_bytes}")
        try:
            f = open(src.path(digest), "rb", opener=L._nofollow)
        except FileNotFoundError:
            raise ImageError(f"blob {digest[:19]} is missing from {src.root}") from None
        with f:
            _, got = dst.put(copy_limited(f, size, f"blob {digest[:19]}"), tmp, expect=digest)
        if got != size:
            raise ImageError(f"blob {digest[:19]} is {got} bytes, its descriptor says {size}")
        dst.verified.add(digest)


def remove_tree(path: str) -> None:
    if os.path.lexists(path):
        if os.path.isdir(path) and not os.path.islink(path):
            L.rmtree(path)
        else:
            os.unlink(path)


__all__ = ["ImageStore", "Image", "Layer", "ImageError", "parse_ref", "load_image", "shutil"]
