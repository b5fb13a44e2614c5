"""A network namespace made ahead of a launch, off its critical path.

A new network namespace costs ~0.5 ms here (the kernel registers lo, its sysctls, a netlink
socket per protocol, ...), a sixth of a launch. A process that knows it will launch makes the
next one beforehand: the agent's spare supervisor while it waits for its request
(cli/served.py), a launcher service in a thread of its own (``keep_ready``). ``launch`` then
has the child join it (setns) instead of cloning one; it does what CLONE_NEWNET would have
done, since the namespace is new, unused, owned by the initial user namespace, with lo up.

Each one serves one container, in the process that made it: ``take`` hands it out once and only
in that process (a forked child closes its copy at once: two containers never share one), and
the launch closes its descriptor once the child has joined. A container with a user namespace
clones its own (the user namespace must own it, so that container root can administer it), as
do one whose lo stays down (network ``none``) and one on a bridge (its child is held, and joins
namespaces only once released: its veth must go into its namespace before that).

Two differences from a namespace cloned at launch, both small: its net.* sysctls start from the
host's defaults when it was made, not when it is used; and a process forked by another thread
while a launch holds a taken descriptor keeps a copy of it (the namespace lives as long as that
process, unused).
"""

from __future__ import annotations

import _thread                           # threading itself only for a keeper: not on the direct path
import os

from .. import lazylog

TYPE_CHECKING = False
if TYPE_CHECKING:
    import threading

log = lazylog.getLogger(__name__)

_lock = _thread.allocate_lock()
_ready: list[tuple[int, int]] = []       # (pid of the process that made it, its descriptor); one at most
_wanted: list["threading.Event"] = []    # the keeper's, if one runs: launched() sets it


def prepare() -> bool:
    """Make one for this process's next launch, unless one is ready; whether one is. A kernel
    that refuses (no CLONE_NEWNET, out of memory) leaves none: the launch clones one as before."""
    from .process import spawn_helper
    with _lock:
        if _ready and _ready[0][0] == os.getpid():
            return True
        _drop_locked()
    try:
        fd = spawn_helper().new_netns(True)
    except OSError as e:
        log.debug("no network namespace made ahead: %s", e)
        return False
    with _lock:
        if _ready:                        # another thread made one meanwhile: keep only one
            os.close(fd)
        else:
            _ready.append((os.getpid(), fd))
    return True


def take() -> int | None:
    """The namespace made ahead in this process, once (the caller closes it), or None."""
    with _lock:
        if not _ready:
            fd = None
        elif _ready[0][0] != os.getpid():
            _drop_locked()
            fd = None
        else:
            fd = _ready.pop()[1]
    return fd


def launched() -> None:
    """A launch is done (its workload runs): the keeper, if any, makes the next namespace now,
    not while the launch was still under way, when the two would contend for the same locks."""
    if _wanted:
        _wanted[0].set()


def keep_ready() -> None:
    """For a process that launches again and again: a daemon thread makes the next namespace
    after each launch, so that none of them is made on a launch's path."""
    import threading
    with _lock:
        if _wanted:
            return
        _wanted.append(threading.Event())
        threading.Thread(target=_keep, args=(_wanted[0],), name="cgman-netns-ahead", daemon=True).start()


def _keep(wanted: "threading.Event") -> None:
    while True:
        prepare()
        wanted.wait()
        wanted.clear()


def discard() -> None:
    """Close the namespace made ahead, if any (its kernel memory is freed with the descriptor)."""
    with _lock:
        _drop_locked()


def _drop_locked() -> None:
    while _ready:
        _, fd = _ready.pop()
        try:
            os.close(fd)
        except OSError:
            pass


def _after_fork_in_child() -> None:
    """A forked child never uses, nor keeps, its parent's namespace (nor its keeper thread)."""
    global _lock
    _lock = _thread.allocate_lock()
    _wanted.clear()
    _drop_locked()


os.register_at_fork(after_in_child=_after_fork_in_child)
