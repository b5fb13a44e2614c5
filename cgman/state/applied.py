"""What `cgman apply` last applied, so `cgman run -p GROUP` finds the group without -f.

An operator applies ``cgman apply /srv/policies/acme.yaml`` and then expects
``cgman run -p acme/web`` to know acme/web. The groups of every successful apply
are kept, per cgroup root, in ``<run>/applied-<root>.pickle`` (merged with the
previous applies; ``--prune`` replaces them). It doubles as a compiled cache:
loading it skips YAML, the schema and the validator (~50 ms of `cgman run`).

Only a file owned by us and writable by nobody else is trusted (pickle runs code).
"""

from __future__ import annotations

import os
import pickle
import stat

from ..model import PolicySet
from .records import Store


def _path(store: Store, root: str) -> str:
    return os.path.join(store.run, f"applied-{root.replace('/', '_')}.pickle")


def save(store: Store, root: str, policies: PolicySet, replace: bool = False) -> None:
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


def load(store: Store, root: str) -> PolicySet | None:
    """The applied policies, or None if nothing was applied (or the file is not ours)."""
    ps = load_pickle(_path(store, root))
    return ps if isinstance(ps, PolicySet) else None


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


def load_pickle(path: str) -> object | None:
    """What dump() wrote, or None if absent, unreadable, or not trusted (not ours, or writable
    by others: unpickling runs code)."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError:
        return None
    with os.fdopen(fd, "rb") as f:
        st = os.fstat(f.fileno())
        if st.st_uid != os.geteuid() or st.st_mode & (stat.S_IWGRP | stat.S_IWOTH):
            return None
        try:
            return pickle.load(f)
        except Exception:      # written by another cgman version: re-parse instead
            return None
