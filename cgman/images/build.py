"""`cgman build`: a Dockerfile, step by step, into a tagged image.

Every instruction extends a chain hash (the base image's manifest digest, then each
instruction's text, the build args a RUN sees, the content of what a COPY/ADD copies).
A layer-making step whose chain hash has a cache entry whose blob is still stored reuses
that layer ("cached"). The tag is written last, after every blob: a failed build tags nothing.
"""

from __future__ import annotations

import glob
import hashlib
import json
import os
import platform
import stat
import sys
import time
from dataclasses import dataclass, field
from typing import Any, Callable

from . import dockerfile as D
from .image import empty_layer, env_pairs, resolve_user
from .manage import import_layout, split_layout_ref
from .steps import BuildError, Copy, RunEnv, copy_step, run_step
from .store import OCI_CONFIG, OCI_MANIFEST, ImageStore, Layer, descriptor, parse_ref

ARCH = {"x86_64": "amd64", "aarch64": "arm64", "armv7l": "arm", "ppc64le": "ppc64le", "s390x": "s390x"}


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


@dataclass
class State:
    """One build stage so far: its layers, image settings, history and ARGs."""

    layers: list[Layer] = field(default_factory=list)
    dirs: list[str] = field(default_factory=list)
    settings: dict[str, Any] = field(default_factory=dict)
    history: list[dict[str, Any]] = field(default_factory=list)
    chain: str = hashlib.sha256(b"cgman-build-v1").hexdigest()
    args: dict[str, str] = field(default_factory=dict)      # ARGs declared in this stage
    used_args: set[str] = field(default_factory=set)

    def env(self) -> dict[str, str]:
        return dict(env_pairs(self.settings.get("Env")))

    def vars(self) -> dict[str, str]:
        return {**self.args, **self.env()}

    def advance(self, *parts: str) -> str:
        h = hashlib.sha256(self.chain.encode())
        for p in parts:
            h.update(b"\0" + p.encode())
        self.chain = h.hexdigest()
        return self.chain

    def stack(self, store: ImageStore) -> tuple[str, ...]:
        return tuple(self.dirs) or (empty_layer(store),)


@dataclass
class Builder:
    """Builds a Dockerfile's stages into the image store."""

    store: ImageStore
    context: str
    file_name: str
    build_args: dict[str, str]
    run_env: RunEnv
    out: Callable[[str], None] = lambda s: print(s, flush=True)

    def build(self, text: str, ref: str) -> str:
        """Build, tag ``ref``; the manifest digest."""
        name, tag = parse_ref(ref)
        ref = f"{name}:{tag}"
        instrs = D.parse(text, self.file_name)
        self.store.init()
        st = State()
        meta_args: dict[str, str] = {}
        with self.store.lock("gc", shared=True):
            for i, ins in enumerate(instrs, 1):
                self.out(f"step {i}/{len(instrs)}: {ins.cmd} {ins.rest[:100]}")
                if ins.cmd == "ARG" and ins.line < _from_line(instrs):
                    meta_args[ins.args[0]] = self._arg_value(ins, meta_args)
                    continue
                if ins.cmd == "FROM":
                    self._from(st, ins, meta_args)
                else:
                    self._step(st, ins)
            unused = set(self.build_args) - st.used_args - set(meta_args)
            if unused:
                self.out(f"warning: build args not consumed by any ARG: {', '.join(sorted(unused))}")
            return self._commit(st, ref)

    def _arg_value(self, ins: D.Instruction, env: dict[str, str]) -> str:
        name = ins.args[0]
        default = ins.args[1].partition("=")[2] if len(ins.args) > 1 else ""
        return self.build_args.get(name, D.expand(default, env))

    # ------------------------------------------------------------------ FROM
    def _from(self, st: State, ins: D.Instruction, meta: dict[str, str]) -> None:
        base = D.expand(ins.args[0], meta)
        if base == "scratch":
            st.advance("FROM", "scratch")
            return
        if base.startswith("oci:"):
            d, tag = split_layout_ref(base[4:])
            if not os.path.isabs(d):
                d = os.path.join(self.context, d)
            image = import_layout(self.store, d, tag, None)
        else:
            image = self.store.get(base)
        st.layers = list(image.layers)
        st.dirs = list(self.store.layer_dirs(image))
        st.settings = dict(image.settings)
        hist = image.config.get("history")
        st.history = [h for h in hist if isinstance(h, dict)] if isinstance(hist, list) else []
        st.advance("FROM", image.manifest_digest)

    # ------------------------------------------------------------------ one step
    def _step(self, st: State, ins: D.Instruction) -> None:
        v = st.vars()
        s = st.settings
        if ins.cmd in ("RUN", "COPY", "ADD"):
            self._layer_step(st, ins)
            return
        if ins.cmd == "ARG":
            st.args[ins.args[0]] = self._arg_value(ins, v)
            st.used_args.add(ins.args[0])
        elif ins.cmd == "ENV":
            env = st.env()
            for w in ins.args:
                k, _, val = w.partition("=")
                env[k] = D.expand(val, {**st.args, **env})
            s["Env"] = [f"{k}={x}" for k, x in env.items()]
        elif ins.cmd == "WORKDIR":
            wd = D.expand(ins.args[0], v)
            s["WorkingDir"] = os.path.normpath(os.path.join(s.get("WorkingDir") or "/", wd))
        elif ins.cmd == "USER":
            s["User"] = D.expand(ins.args[0], v)
        elif ins.cmd == "LABEL":
            labels = dict(s.get("Labels") or {})
            for w in ins.args:
                k, _, val = w.partition("=")
                labels[D.expand(k, v)] = D.expand(val, v)
            s["Labels"] = labels
        elif ins.cmd == "EXPOSE":
            ports = dict(s.get("ExposedPorts") or {})
            for p in ins.args:
                p = D.expand(p, v)
                ports[p if "/" in p else f"{p}/tcp"] = {}
            s["ExposedPorts"] = ports
        elif ins.cmd in ("CMD", "ENTRYPOINT"):
            argv = list(ins.exec_form) if ins.exec_form else ["/bin/sh", "-c", ins.rest]
            if ins.cmd == "ENTRYPOINT":
                s["Entrypoint"] = argv
                s.pop("Cmd", None)           # Docker: a new ENTRYPOINT drops the inherited CMD
            else:
                s["Cmd"] = argv
        st.advance(ins.cmd, ins.rest, json.dumps(s, sort_keys=True))
        st.history.append({"created": _now(), "created_by": f"{ins.cmd} {ins.rest}", "empty_layer": True})

    def _layer_step(self, st: State, ins: D.Instruction) -> None:
        started = time.monotonic()
        if ins.cmd == "RUN":
            argv = list(ins.exec_form) if ins.exec_form else ["/bin/sh", "-c", ins.rest]
            envp = {**{k: x for k, x in st.args.items()}, **st.env()}
            key = st.advance("RUN", ins.rest, json.dumps(sorted(st.args.items())))
            copies: list[Copy] = []
        else:
            copies = self._copies(st, ins)
            key = st.advance(ins.cmd, ins.rest, json.dumps(ins.flags, sort_keys=True), _content_hash(
                self.context, copies))
        layer = self._cached(key)
        if layer is not None:
            self.out(f"  cached {layer.diff_id[:19]}")
        else:
            stack = st.stack(self.store)
            if ins.cmd == "RUN":
                user = resolve_user(str(st.settings.get("User") or ""), stack)
                layer, n = run_step(self.store, self.run_env, ins.where, argv, list(envp.items()),
                                    st.settings.get("WorkingDir") or None, user, stack)
            else:
                try:
                    layer, n = copy_step(self.store, self.context, copies, stack)
                except BuildError as e:
                    raise BuildError(f"{ins.where}: {ins.cmd}: {e}") from None
            self._remember(key, layer)
            self.out(f"  layer {layer.diff_id[:19]}: {n} entries, {layer.size} bytes gzip, "
                     f"{time.monotonic() - started:.2f}s")
        st.layers.append(layer)
        st.dirs.append(self.store.layer_dir(layer))
        st.history.append({"created": _now(), "created_by": f"{ins.cmd} {ins.rest}"})

    # ------------------------------------------------------------------ COPY / ADD sources
    def _copies(self, st: State, ins: D.Instruction) -> list[Copy]:
        v = st.vars()
        words = [D.expand(w, v) for w in ins.args]
        srcs, dest = words[:-1], words[-1]
        wd = st.settings.get("WorkingDir") or "/"
        dest_abs = os.path.normpath(os.path.join(wd, dest)) + ("/" if dest.endswith("/") or len(srcs) > 1 else "")
        chown = None
        if "chown" in ins.flags:
            chown = resolve_user(D.expand(ins.flags["chown"], v), st.stack(self.store)) or (0, 0)
        chmod = int(ins.flags["chmod"], 8) if "chmod" in ins.flags else None
        out: list[Copy] = []
        for s in srcs:
            if s.startswith(("http://", "https://", "git@")):
                raise BuildError(f"{ins.where}: {ins.cmd}: remote sources ({s[:60]}) are not supported: "
                                 f"download them into the context")
            for rel in self._match(ins, s):
                extract = ins.cmd == "ADD" and _is_archive(os.path.join(self.context, rel))
                out.append(Copy(rel, dest_abs.rstrip("/") + "/" if extract else dest_abs, chown, chmod, extract))
        return out

    def _match(self, ins: D.Instruction, src: str) -> list[str]:
        """Context-relative paths for a source (globs allowed), each inside the context."""
        ctx = os.path.realpath(self.context)
        pattern = os.path.normpath(os.path.join(ctx, src.lstrip("/")))
        if pattern != ctx and not pattern.startswith(ctx + "/"):
            raise BuildError(f"{ins.where}: {ins.cmd}: {src[:120]} is outside the build context {self.context}")
        hits = sorted(glob.glob(glob.escape(ctx) + pattern[len(ctx):])) if glob.has_magic(src) else [pattern]
        out = []
        for h in hits:
            if not os.path.lexists(h):
                raise BuildError(f"{ins.where}: {ins.cmd}: {src[:120]}: no such file in the build context "
                                 f"{self.context}")
            real = os.path.realpath(h)
            if real != ctx and not real.startswith(ctx + "/"):
                raise BuildError(f"{ins.where}: {ins.cmd}: {src[:120]} leads outside the build context "
                                 f"(a symlink to {real[:120]}); copy the file into the context")
            out.append(os.path.relpath(real, ctx))
        if not out:
            raise BuildError(f"{ins.where}: {ins.cmd}: {src[:120]}: no file in the build context matches")
        return out

    # ------------------------------------------------------------------ cache, commit
    def _cached(self, key: str) -> Layer | None:
        p = os.path.join(self.store.cache_dir, key)
        try:
            with open(p, "rb") as f:
                e = json.loads(f.read(4096))
            layer = Layer(e["digest"], e["diff_id"], int(e["size"]))
        except (OSError, ValueError, KeyError, TypeError):
            return None
        return layer if self.store.blobs.has(layer.digest) else None

    def _remember(self, key: str, layer: Layer) -> None:
        from .store import write_atomic
        data = json.dumps({"digest": layer.digest, "diff_id": layer.diff_id, "size": layer.size}).encode()
        write_atomic(os.path.join(self.store.cache_dir, key), data, self.store.tmp)

    def _commit(self, st: State, ref: str) -> str:
        config = {"created": _now(), "architecture": ARCH.get(platform.machine(), platform.machine()),
                  "os": "linux", "config": st.settings,
                  "rootfs": {"type": "layers", "diff_ids": [x.diff_id for x in st.layers]},
                  "history": st.history}
        cdig, csize = self.store.blobs.put_bytes(json.dumps(config).encode(), self.store.tmp)
        manifest = {"schemaVersion": 2, "mediaType": OCI_MANIFEST,
                    "config": descriptor(OCI_CONFIG, cdig, csize),
                    "layers": [descriptor(x.media_type, x.digest, x.size) for x in st.layers]}
        mdig, msize = self.store.blobs.put_bytes(json.dumps(manifest).encode(), self.store.tmp)
        self.store.tag(ref, {"digest": mdig, "size": msize})
        self.out(f"tagged {ref} ({mdig[:19]}, {len(st.layers)} layers)")
        return mdig


def _from_line(instrs: list[D.Instruction]) -> int:
    return next(i.line for i in instrs if i.cmd == "FROM")


def _is_archive(path: str) -> bool:
    import tarfile
    try:
        return os.path.isfile(path) and tarfile.is_tarfile(path)
    except OSError:
        return False


def _content_hash(context: str, copies: list[Copy]) -> str:
    """What a COPY/ADD copies: names, modes, link targets and file contents."""
    h = hashlib.sha256()
    for cp in copies:
        h.update(f"{cp.src}\0{cp.dest}\0{cp.chown}\0{cp.chmod}\0{cp.extract}\0".encode())
        top = os.path.join(context, cp.src)
        paths = [top] if not os.path.isdir(top) else [top] + sorted(
            os.path.join(dp, n) for dp, dns, fns in os.walk(top) for n in dns + fns)
        for p in paths:
            st = os.lstat(p)
            h.update(f"{os.path.relpath(p, context)}\0{st.st_mode}\0".encode())
            if stat.S_ISLNK(st.st_mode):
                h.update(os.readlink(p).encode())
            elif stat.S_ISREG(st.st_mode):
                with open(p, "rb") as f:
                    while chunk := f.read(1 << 20):
                        h.update(chunk)
    return h.hexdigest()


__all__ = ["Builder", "BuildError", "RunEnv", "sys"]
