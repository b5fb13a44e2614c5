"""Moving images in and out of the store, and removing them: import of an OCI layout another
tool wrote (skopeo, umoci, buildah), export to one, rmi, prune."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from typing import Any, Iterable

from ..errors import Busy, NotFound
from . import layers as L
from .store import (MAX_JSON, OCI_INDEX, OCI_MANIFEST, REF_NAME, TAG_RE, Blobs, Image, ImageError, ImageStore, _ref_of,
                    copy_tree_blobs, descriptor, load_image, parse_ref, remove_tree, write_atomic)


def _read_layout_index(d: str) -> list[dict[str, Any]]:
    try:
        with open(os.path.join(d, "oci-layout"), "rb") as f:
            layout = json.loads(f.read(4096))
    except FileNotFoundError:
        raise ImageError(f"{d} is not an OCI image layout (no oci-layout file); make one with "
                         f"`skopeo copy ... oci:{d}:TAG` or `umoci init --layout {d}`") from None
    except ValueError as e:
        raise ImageError(f"{d}/oci-layout is not JSON: {e}") from None
    if not isinstance(layout, dict) or layout.get("imageLayoutVersion") != "1.0.0":
        raise ImageError(f"{d}/oci-layout: imageLayoutVersion must be 1.0.0")
    try:
        with open(os.path.join(d, "index.json"), "rb") as f:
            data = f.read(MAX_JSON + 1)
    except FileNotFoundError:
        raise ImageError(f"{d} has no index.json") from None
    if len(data) > MAX_JSON:
        raise ImageError(f"{d}/index.json is larger than {MAX_JSON} bytes")
    try:
        idx = json.loads(data)
    except ValueError as e:
        raise ImageError(f"{d}/index.json is not JSON: {e}") from None
    ms = idx.get("manifests") if isinstance(idx, dict) else None
    if not isinstance(ms, list):
        raise ImageError(f"{d}/index.json has no manifests list")
    return [m for m in ms if isinstance(m, dict)]


def split_layout_ref(text: str) -> tuple[str, str]:
    """DIR:TAG -> (DIR, TAG), as skopeo's oci:DIR:TAG spells it."""
    d, sep, tag = text.rpartition(":")
    if not sep or not d or not TAG_RE.fullmatch(tag):
        raise ImageError(f"{text[:120]!r}: give DIR:TAG, the layout directory and the tag (ref.name) in it")
    return d, tag


def import_layout(store: ImageStore, src_dir: str, tag: str, ref: str | None) -> Image:
    """Copy image ``tag`` of the layout ``src_dir`` into the store as ``ref``, every blob checked
    (``ref`` None: untagged, for a build's FROM oci:DIR:TAG)."""
    if ref is not None:
        name, rtag = parse_ref(ref)
        ref = f"{name}:{rtag}"
    store.init()
    src = Blobs(os.path.abspath(src_dir))
    found = [m for m in _read_layout_index(src_dir) if _ref_of(m) == tag]
    if not found:
        raise NotFound(f"no image tagged {tag!r} in {src_dir}/index.json (org.opencontainers.image.ref.name)")
    desc = found[-1]
    if desc.get("mediaType") == OCI_INDEX:
        raise ImageError(f"{src_dir}:{tag} is a multi-platform index; copy one platform first "
                         f"(skopeo copy --override-arch amd64 ...)")
    size = desc.get("size")
    if not isinstance(size, int) or size < 0:
        raise ImageError(f"{src_dir}/index.json: the descriptor of {tag!r} has no valid size")
    with store.lock("gc", shared=True):
        copy_tree_blobs(src, store.blobs, [(desc.get("digest", ""), size)],
                        store.tmp, MAX_JSON)
        manifest = store.blobs.json(desc["digest"])
        cfg = manifest.get("config")
        if not isinstance(cfg, dict) or not isinstance(cfg.get("size"), int):
            raise ImageError(f"{src_dir}:{tag}: manifest has no config descriptor")
        copy_tree_blobs(src, store.blobs, [(cfg.get("digest", ""), cfg["size"])], store.tmp, MAX_JSON)
        image = load_image(store.blobs, descriptor(desc.get("mediaType") or OCI_MANIFEST, desc["digest"], size),
                           ref or f"{src_dir}:{tag}")
        copy_tree_blobs(src, store.blobs, [(x.digest, x.size) for x in image.layers], store.tmp,
                        store.max_blob_bytes)
        for x in image.layers:
            store.layer_dir(x)
        if ref is not None:
            store.tag(ref, {"digest": desc["digest"], "size": size})
    return image


def export_layout(store: ImageStore, ref: str, dest: str) -> Image:
    """Write image ``ref`` to the OCI layout ``dest`` (created, or added to) tagged with its TAG."""
    image = store.get(ref)
    tag = parse_ref(ref)[1]
    if os.path.exists(dest) and os.listdir(dest) and not os.path.exists(os.path.join(dest, "oci-layout")):
        raise ImageError(f"{dest} exists and is not an OCI layout: give an empty or new directory")
    os.makedirs(os.path.join(dest, "blobs", "sha256"), mode=0o755, exist_ok=True)
    dst = Blobs(os.path.abspath(dest))
    man = store.blobs.read(image.manifest_digest)
    blobs = [(image.manifest_digest, len(man)), (image.config_digest, len(store.blobs.read(image.config_digest)))]
    copy_tree_blobs(store.blobs, dst, blobs + [(x.digest, x.size) for x in image.layers], dest,
                    store.max_blob_bytes)
    if not os.path.exists(os.path.join(dest, "oci-layout")):
        write_atomic(os.path.join(dest, "oci-layout"), b'{"imageLayoutVersion": "1.0.0"}', dest)
    ms = _read_layout_index(dest) if os.path.exists(os.path.join(dest, "index.json")) else []
    ms = [m for m in ms if _ref_of(m) != tag]
    ms.append(descriptor("application/vnd.oci.image.manifest.v1+json", image.manifest_digest, len(man),
                         **{REF_NAME: tag}))
    doc = {"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": ms}
    write_atomic(os.path.join(dest, "index.json"), json.dumps(doc, indent=2).encode(), dest)
    return image


def users(store: ImageStore, image: Image, live_layers: Iterable[tuple[str, list[str]]]) -> list[str]:
    """Names of live containers whose root is exactly ``image``'s layer stack."""
    mine = [store.layer_path(x.diff_id) for x in image.layers]
    return [name for name, stack in live_layers if stack == mine]


def rmi(store: ImageStore, ref: str, live_layers: list[tuple[str, list[str]]]) -> Image:
    image = store.get(ref)
    who = users(store, image, live_layers)
    if who:
        raise Busy(f"image {image.ref} is used by container(s) {', '.join(who)}: stop and remove them first "
                   f"(`cgman rm --force {who[0]}`)")
    store.untag(image.ref)
    return image


@dataclass(frozen=True)
class Pruned:
    """What an image prune removed."""

    blobs: int
    layers: int
    bytes: int


def prune(store: ImageStore, live_layers: list[tuple[str, list[str]]]) -> Pruned:
    """Remove blobs no tag reaches and unpacked layers no tag or live container uses."""
    store.init()
    with store.lock("gc", timeout_s=5.0):
        keep_blobs: set[str] = set()
        keep_layers: set[str] = set()
        for image in store.images():
            keep_blobs |= {image.manifest_digest, image.config_digest, *(x.digest for x in image.layers)}
            keep_layers |= {x.diff_id[7:] for x in image.layers}
        for _, stack in live_layers:
            keep_layers |= {os.path.basename(p) for p in stack if os.path.dirname(p) == store.layers_dir}
        n_blobs = n_layers = freed = 0
        bdir = os.path.join(store.oci, "blobs", "sha256")
        for h in os.listdir(bdir) if os.path.isdir(bdir) else []:
            if f"sha256:{h}" not in keep_blobs:
                p = os.path.join(bdir, h)
                freed += os.lstat(p).st_size
                os.unlink(p)
                n_blobs += 1
        for h in os.listdir(store.layers_dir):
            if h not in keep_layers:
                remove_tree(os.path.join(store.layers_dir, h))
                n_layers += 1
        for n in os.listdir(store.cache_dir):       # cache entries whose layer is gone
            remove_tree(os.path.join(store.cache_dir, n)) if not _cache_ok(store, n) else None
        for n in os.listdir(store.tmp):              # left by a crash: no build holds the gc lock now
            remove_tree(os.path.join(store.tmp, n))
    return Pruned(n_blobs, n_layers, freed)


def _cache_ok(store: ImageStore, name: str) -> bool:
    try:
        with open(os.path.join(store.cache_dir, name), "rb") as f:
            entry = json.loads(f.read(4096))
        return store.blobs.has(entry["digest"])
    except (OSError, ValueError, KeyError, TypeError, ImageError):
        return False


__all__ = ["import_layout", "export_layout", "rmi", "prune", "split_layout_ref", "users", "Pruned", "L"]
