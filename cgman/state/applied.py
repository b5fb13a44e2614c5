"""What `cgman apply` last applied, so `cgman run -p GROUP` finds the group without -f.

An operator applies ``cgman apply /srv/policies/acme.yaml`` and then expects
``cgman run -p acme/web`` to know acme/web. The groups of every successful apply
are kept, per cgroup root, in ``<run>/applied-<root>.pickle`` (merged with the
previous applies; ``--prune`` replaces them). It doubles as a compiled cache:
loading it skips YAML, the schema and the validator (~50 ms of `cgman run`).

Only a file owned by us and writable by nobody else is trusted (pickle runs code).

Beside it, ``<run>/launch-<root>/<group>.pickle`` holds each group's launch parameters as
they were compiled when the group was applied (containers/spec.py makes them from the
model, by the same function every run uses), so that `cgman run -p GROUP` reads one small
file instead of every group. Each names the applied file it was made with (inode, mtime,
size): one that does not match the applied file now is stale, and the run reads the
applied policies instead.
"""

from __future__ import annotations

import os
import pickle
import stat

from ..errors import CgmanError
from ..model import PolicySet
from .records import Store


def _path(store: Store, root: str) -> str:
    return os.path.join(store.run, f"applied-{root.replace('/', '_')}.pickle")


def save(store: Store, root: str, policies: PolicySet, replace: bool = False) -> PolicySet:
    """Merge ``policies`` into what was applied (``replace``: instead of it); the merged set."""
    groups = {}
    if not replace:
        old = load(store, root)
        if old is not None:
            groups = {g.path: g for g in old.groups}
    groups.update({g.path: g for g in policies.groups})
    files = tuple(dict.fromkeys((*(() if replace or old is None else old.files), *policies.files)))
    merged = PolicySet(tuple(sorted(groups.values(), key=lambda g: (g.path.count("/"), g.path))), files)
    store.rundir.fd()             # created 0700, or refused if another user could write it
    dump(_path(store, root), merged)
    return merged


MAX_LAUNCH_BYTES = 1 << 20          # one group's launch parameters: a few KB


def _launch_dir(store: Store, root: str) -> str:
    return os.path.join(store.run, f"launch-{root.replace('/', '_')}")


def _launch_file(group: str) -> str | None:
    """A group's file name (its path's segments never hold a "+"); None if too long for one."""
    name = group.replace("/", "+") + ".pickle"
    return name if len(name) <= 200 else None


def _applied_id(store: Store, root: str) -> tuple[int, int, int] | None:
    try:
        st = os.stat(_path(store, root), follow_symlinks=False)
    except OSError:
        return None
    return (st.st_ino, st.st_mtime_ns, st.st_size)


def save_launch(store: Store, root: str, params: dict[str, object]) -> None:
    """Each group's launch parameters (None: it has none to precompile), tied to the applied
    file as it is now; the files of groups no longer applied are removed."""
    ident = _applied_id(store, root)
    d = _launch_dir(store, root)
    os.makedirs(d, mode=0o700, exist_ok=True)
    keep = set()
    for group, value in params.items():
        name = _launch_file(group)
        if value is None or name is None or ident is None:
            continue
        dump(os.path.join(d, name), {"applied": ident, "group": group, "params": value})
        keep.add(name)
    for name in os.listdir(d):
        if name not in keep:
            try:
                os.unlink(os.path.join(d, name))
            except OSError:
                pass


def load_launch(store: Store, root: str, group: str) -> tuple[object | None, str]:
    """(a group's precompiled launch parameters, "") or (None, why there are none usable)."""
    name = _launch_file(group)
    if name is None:
        return None, "its path is too long for a file name"
    try:
        store.rundir.fd(create=False)       # the run dir's owner and mode, as for every file in it
    except (OSError, CgmanError) as e:
        return None, f"the run dir is not usable: {e}"
    d = load_pickle(os.path.join(_launch_dir(store, root), name), MAX_LAUNCH_BYTES)
    if not isinstance(d, dict) or d.get("group") != group:
        return None, "none were compiled for it (not applied, or applied by an older cgman)"
    if d.get("applied") != _applied_id(store, root):
        return None, "they are older than the applied policies"
    return d.get("params"), ""


def load(store: Store, root: str) -> PolicySet | None:
    """The applied policies, or None if nothing was applied (or the file is not ours)."""
    ps = load_pickle(_path(store, root))
    return ps if isinstance(ps, PolicySet) else None


_GROUPS: dict[str, tuple[tuple[int, ...], frozenset[str]]] = {}


def group_paths(store: Store, root: str) -> frozenset[str]:
    """The paths of the applied groups, unpickled again only when the file changed (a new
    inode, mtime, size or ctime: a chmod that makes it untrusted changes the ctime), so that
    a long-lived process and the supervisors its forks make read it once."""
    path = _path(store, root)
    try:
        st = os.stat(path, follow_symlinks=False)
    except OSError:
        return frozenset()
    ident = (st.st_ino, st.st_mtime_ns, st.st_size, st.st_ctime_ns)
    hit = _GROUPS.get(path)
    if hit is not None and hit[0] == ident:
        return hit[1]
    applied = load(store, root)
    if applied is None:                 # unreadable or untrusted now: asked again next time
        return frozenset()
    groups = frozenset(g.path for g in applied.groups)
    _GROUPS[path] = (ident, groups)     # a file replaced since the stat: a new identity next time
    return groups


def dump(path: str, obj: object) -> None:
    """Pickle ``obj`` to ``path`` atomically (mode 0600; a crash leaves the old file or the new)."""
    tmp = f"{path}.{os.getpid()}.tmp"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
    try:
        with os.fdopen(fd, "wb") as f:
            pickle.dump(obj, f, protocol=pickle.HIGHEST_PROTOCOL)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise


def load_pickle(path: str, max_bytes: int | None = None) -> object | None:
    """What dump() wrote, or None if absent, unreadable, larger than ``max_bytes``, or not
    trusted (not ours, or writable by others: unpickling runs code)."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError:
        return None
    with os.fdopen(fd, "rb") as f:
        st = os.fstat(f.fileno())
        if st.st_uid != os.geteuid() or st.st_mode & (stat.S_IWGRP | stat.S_IWOTH) or not stat.S_ISREG(st.st_mode):
            return None
        if max_bytes is not None and st.st_size > max_bytes:
            return None
        try:
            return pickle.load(f)
        except Exception:      # written by another cgman version: re-parse instead
            return None
