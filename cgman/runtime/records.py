"""Container records in the run dir: one directory per name, one atomic JSON file each.

Layout (``--run-dir``, env ``CGMAN_RUN_DIR``, default /run/cgman)::

    containers/<name>/record.json   the record (replaced atomically: write tmp, rename)
    containers/<name>/log           stdout and stderr of a detached container
    network/<bridge>.json           the bridge's address leases (see network.py)
    gc.lock, network.lock           flock(2) files that serialise collection and leasing

Creating ``containers/<name>`` with mkdir(2) is what makes a name unique: two
concurrent ``cgman run --name x`` cannot both succeed. Per-container scratch that
may be large (the overlay upper dir) lives in the state dir instead
(``--state-dir``, env ``CGMAN_STATE_DIR``, default /var/lib/cgman).
"""

from __future__ import annotations

import errno
import fcntl
import json
import os
import re
import shutil
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Iterator

from ..errors import Busy, CgmanError, NotFound

NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")


def run_dir(explicit: str | None = None) -> str:
    return explicit or os.environ.get("CGMAN_RUN_DIR") or "/run/cgman"


def state_dir(explicit: str | None = None) -> str:
    return explicit or os.environ.get("CGMAN_STATE_DIR") or "/var/lib/cgman"


@dataclass
class Record:
    """What cgman knows about one container; the JSON in record.json."""

    id: str
    name: str
    group: str
    tenant: str
    cgroup: str                       # relative to the cgman root: "<group>/<name>"
    cgroup_root: str
    argv: list[str]
    created: float
    state: str = "created"            # created | running | exited
    pid: int | None = None            # host pid of the container's first process (init or workload)
    pid_start: int | None = None      # its start time in clock ticks (/proc/PID/stat), against pid reuse
    supervisor_pid: int | None = None     # who waits on the container (foreground run or detached supervisor)
    supervisor_start: int | None = None
    detached: bool = False
    started: float | None = None
    ended: float | None = None
    exit_code: int | None = None
    exit_reason: str | None = None    # exited | signal | timeout | collected (supervisor died)
    namespaces: list[str] = field(default_factory=list)
    hostname: str | None = None
    network: dict[str, Any] = field(default_factory=dict)     # mode, bridge, address, veth
    rootfs: dict[str, Any] = field(default_factory=dict)      # path or layers, upper dir
    user_map: dict[str, int] | None = None
    limits: dict[str, Any] = field(default_factory=dict)
    final_usage: dict[str, Any] | None = None
    auto_remove: bool = False
    cleanup_pending: bool = False     # exited, but a cleanup step failed: gc tries again
    memory_byte_seconds: float = 0.0  # integral of sampled memory so far (see accounting.py)
    memory_sampled_at: float | None = None
    memory_sampled_bytes: int | None = None
    memory_peak_bytes: int | None = None
    ledger_pending: bool = False      # exited, but the ledger could not be written: gc tries again
    security: dict[str, Any] | None = None    # what it runs with (security.resolve.Security.summary)

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> "Record":
        known = {k: v for k, v in d.items() if k in cls.__dataclass_fields__}
        return cls(**known)


def proc_start_ticks(pid: int) -> int | None:
    """Start time of ``pid`` in clock ticks since boot, or None if it is gone.

    A pid plus its start time names a process uniquely: pids are reused, start times
    of a reused pid differ. (psutil.create_time() rounds this to a float.)
    """
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            data = f.read()
    except (FileNotFoundError, ProcessLookupError):
        return None
    # comm may hold spaces and parentheses: the fields after it start past the last ')'.
    fields = data[data.rindex(b")") + 2:].split()
    if fields[0] == b"Z":
        return None               # a zombie has exited; only its parent's wait is pending
    return int(fields[19])


def alive(pid: int | None, start: int | None) -> bool:
    return pid is not None and start is not None and proc_start_ticks(pid) == start


class Store:
    """The run dir's records."""

    def __init__(self, run: str | None = None, state: str | None = None) -> None:
        self.run = run_dir(run)
        self.state = state_dir(state)
        self.containers = os.path.join(self.run, "containers")

    def _dir(self, name: str) -> str:
        if not NAME_RE.fullmatch(name):
            raise CgmanError(f"bad container name {name!r}: use 1-64 of A-Z a-z 0-9 _ . - "
                             f"(starting with a letter or digit)")
        return os.path.join(self.containers, name)

    def scratch(self, name: str) -> str:
        """Per-container scratch (overlay upper and work dirs) in the state dir."""
        self._dir(name)
        return os.path.join(self.state, "containers", name)

    def log_path(self, name: str) -> str:
        return os.path.join(self._dir(name), "log")

    def reserve(self, rec: Record) -> None:
        """Claim ``rec.name`` (atomically) and write its first record."""
        d = self._dir(rec.name)
        os.makedirs(self.containers, mode=0o700, exist_ok=True)
        try:
            os.mkdir(d, 0o700)
        except FileExistsError:
            raise Busy(f"a container named {rec.name!r} already exists (see `cgman ps -a`); "
                       f"remove it with `cgman rm {rec.name}` or pick another --name") from None
        self.save(rec)

    def save(self, rec: Record) -> None:
        """Replace the record atomically. No fsync: the run dir is volatile by design (tmpfs
        on most hosts, gone at reboot, as are the containers); durable usage is the ledger's job."""
        d = self._dir(rec.name)
        tmp = os.path.join(d, f".record.{os.getpid()}.tmp")
        with open(tmp, "w") as f:
            f.write(json.dumps(vars(rec)))      # fields are plain JSON values; asdict() deep-copies
        os.replace(tmp, os.path.join(d, "record.json"))

    def load(self, name: str) -> Record:
        path = os.path.join(self._dir(name), "record.json")
        try:
            with open(path) as f:
                return Record.from_json(json.load(f))
        except FileNotFoundError:
            raise NotFound(f"no container named {name!r} (see `cgman ps -a`)") from None
        except (ValueError, TypeError) as e:
            raise CgmanError(f"{path}: unreadable container record ({e}); remove it with "
                             f"`cgman rm --force {name}`") from None

    def exists(self, name: str) -> bool:
        return NAME_RE.fullmatch(name) is not None and os.path.isdir(self._dir(name))

    def names(self) -> list[str]:
        try:
            return sorted(n for n in os.listdir(self.containers) if NAME_RE.fullmatch(n))
        except FileNotFoundError:
            return []

    def records(self) -> list[Record]:
        out = []
        for n in self.names():
            try:
                out.append(self.load(n))
            except NotFound:
                continue          # removed while we listed
            except CgmanError:
                continue          # a half-written record of a run that is still reserving
        return out

    def delete(self, name: str) -> None:
        shutil.rmtree(self._dir(name), ignore_errors=True)
        shutil.rmtree(self.scratch(name), ignore_errors=True)

    def container_lock(self, name: str, timeout_s: float = 30.0):
        """Serialises whoever collects container ``name`` (the lock file goes with its directory)."""
        return self.lock(f"containers/{name}/collect", timeout_s, create_dir=False)

    @contextmanager
    def lock(self, what: str, timeout_s: float = 30.0, create_dir: bool = True) -> Iterator[None]:
        """An exclusive flock on ``<run>/<what>.lock`` (released if the holder dies)."""
        path = os.path.join(self.run, f"{what}.lock")
        if create_dir:
            os.makedirs(self.run, mode=0o755, exist_ok=True)
        elif not os.path.isdir(os.path.dirname(path)):
            yield                   # nothing on disk to protect any more
            return
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        except FileNotFoundError:   # the container's directory went meanwhile
            yield
            return
        try:
            deadline = time.monotonic() + timeout_s
            while True:
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    break
                except OSError as e:
                    if e.errno not in (errno.EWOULDBLOCK, errno.EAGAIN) or time.monotonic() > deadline:
                        raise Busy(f"{self.run}/{what}.lock is held by another cgman for "
                                   f"{timeout_s:g}s; is one stuck?") from None
                    time.sleep(0.01)
            yield
        finally:
            os.close(fd)
