"""What a container takes from an image: its layer stack, argv (Entrypoint + Cmd), Env,
WorkingDir and User (names resolved through the image's /etc/passwd and /etc/group)."""

from __future__ import annotations

import os
import stat
from dataclasses import dataclass
from typing import Any

from .store import ImageError, ImageStore

EMPTY_LAYER = "empty"


@dataclass(frozen=True)
class RunSettings:
    """What `cgman run --image` takes from an image: layers, command, env, cwd, user."""

    layers: tuple[str, ...]
    argv: tuple[str, ...]
    env: tuple[tuple[str, str], ...]
    cwd: str | None
    user: tuple[int, int] | None


def _strs(v: Any) -> list[str]:
    return [x for x in v if isinstance(x, str)] if isinstance(v, list) else []


def env_pairs(env: Any) -> list[tuple[str, str]]:
    out = []
    for e in _strs(env):
        k, _, v = e.partition("=")
        if k:
            out.append((k, v))
    return out


def empty_layer(store: ImageStore) -> str:
    """A read-only empty directory: overlayfs needs one lower dir, and scratch has none."""
    store.init()
    p = os.path.join(store.root, EMPTY_LAYER)
    os.makedirs(p, mode=0o755, exist_ok=True)
    return p


def _top_file(layer_dirs: tuple[str, ...] | list[str], rel: str, limit: int = 1 << 20) -> str | None:
    """Text of ``rel`` in the topmost layer that has it (a regular file, not a link)."""
    for d in reversed(layer_dirs):
        p = os.path.join(d, rel)
        parent_ok = all(not os.path.islink(os.path.join(d, *rel.split("/")[:i + 1]))
                        for i in range(rel.count("/")))
        if not parent_ok:
            return None
        try:
            st = os.lstat(p)
        except FileNotFoundError:
            continue
        if not stat.S_ISREG(st.st_mode) or st.st_size > limit:
            return None                              # a whiteout, a link or a giant: no such file
        with open(p, "rb", opener=lambda q, f: os.open(q, f | os.O_NOFOLLOW)) as f:
            return f.read(limit).decode(errors="replace")
    return None


def _lookup(text: str | None, name: str, field_index: int = 2) -> tuple[int, int] | None:
    for line in (text or "").splitlines():
        parts = line.split(":")
        if len(parts) > 3 and parts[0] == name and parts[2].isdigit() and parts[3].isdigit():
            return int(parts[2]), int(parts[3])
    return None


def resolve_user(user: str, layer_dirs: tuple[str, ...] | list[str]) -> tuple[int, int] | None:
    """USER ``name|uid[:group|gid]`` -> (uid, gid); None for root and the empty user."""
    if not user:
        return None
    u, _, g = user.partition(":")
    passwd = None
    if u.isdigit():
        uid, gid = int(u), int(u) if not g else 0
        if not g:
            passwd = _top_file(layer_dirs, "etc/passwd")
            for line in (passwd or "").splitlines():
                parts = line.split(":")
                if len(parts) > 3 and parts[2] == u and parts[3].isdigit():
                    gid = int(parts[3])
                    break
    else:
        found = _lookup(_top_file(layer_dirs, "etc/passwd"), u)
        if found is None:
            raise ImageError(f"user {u!r} is not in the image's /etc/passwd: use a numeric uid[:gid]")
        uid, gid = found
    if g:
        if g.isdigit():
            gid = int(g)
        else:
            grp = _lookup(_top_file(layer_dirs, "etc/group"), g)
            if grp is None:
                raise ImageError(f"group {g!r} is not in the image's /etc/group: use a numeric gid")
            gid = grp[0]
    if uid >= 2**32 - 1 or gid >= 2**32 - 1:
        raise ImageError(f"user {user!r}: ids must be below 4294967295")
    return None if (uid, gid) == (0, 0) else (uid, gid)


def run_settings(store: ImageStore, ref: str, command: list[str]) -> RunSettings:
    """The pieces of a container spec that image ``ref`` gives (``command`` replaces its Cmd)."""
    image = store.get(ref)
    dirs = store.layer_dirs(image) or (empty_layer(store),)
    c = image.settings
    argv = _strs(c.get("Entrypoint")) + (command or _strs(c.get("Cmd")))
    if not argv:
        raise ImageError(f"image {image.ref} has no Entrypoint or Cmd: give a command after --")
    cwd = c.get("WorkingDir") if isinstance(c.get("WorkingDir"), str) and c.get("WorkingDir") else None
    user = str(c.get("User") or "")
    return RunSettings(dirs, tuple(argv), tuple(env_pairs(c.get("Env"))), cwd, resolve_user(user, dirs))
