"""Container records in the run dir: one directory per name, one atomic JSON file each.

Layout (``--run-dir``, env ``CGMAN_RUN_DIR``, default /run/cgman)::

    containers/<name>/record.json   the record (replaced atomically: write tmp, rename)
    containers/<name>/log           stdout and stderr of a detached container
    containers/<name>/collect.lock  serialises whoever collects the container
    gc.lock                         flock(2) file that serialises collection

Bridge address leases are per host, not per run dir: see network.py. Every file here
is opened without following links, in a directory that only root (or the user running
cgman) may write (safedir.py), and every record is checked before use (recordcheck.py).

Creating ``containers/<name>`` with mkdir(2) is what makes a name unique: two
concurrent ``cgman run --name x`` cannot both succeed. Per-container scratch that
may be large (the overlay upper dir) lives in the state dir instead
(``--state-dir``, env ``CGMAN_STATE_DIR``, default /var/lib/cgman).
"""

from __future__ import annotations

import json
import os
from contextlib import AbstractContextManager
from dataclasses import dataclass, field

from ..errors import Busy, CgmanError, NotFound
from ..settings import Settings
from .recordcheck import NAME_RE, InvalidRecord, check
from .safedir import SafeDir

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

BRIDGE_DIR = "/run/cgman-bridges"     # host-wide: a bridge is per host, not per run dir
RUN_DIR = "/run/cgman"
STATE_DIR = "/var/lib/cgman"


def run_dir(explicit: str | None = None) -> str:
    return explicit or RUN_DIR


def state_dir(explicit: str | None = None) -> str:
    return explicit or STATE_DIR


@dataclass
class Record:
    """What cgman knows about one container; the JSON in record.json."""

    id: str
    name: str
    group: str
    tenant: str
    cgroup: str                       # relative to cgroup_root: "<group>/<name>"; systemd driver: its scope's payload
    cgroup_root: str                  # the cgman root; systemd driver: the root slice's cgroup ("cgman.slice")
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
    driver: str = "cgroupfs"          # cgroupfs | systemd (a transient scope: containers/scope.py)

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> "Record":
        known = {k: v for k, v in d.items() if k in cls.__dataclass_fields__}
        return cls(**known)


def proc_start_ticks(pid: int, zombie: bool = False) -> int | None:
    """Start time of ``pid`` in clock ticks since boot, or None if it is gone.

    A pid plus its start time names a process uniquely: pids are reused, start times
    of a reused pid differ. (psutil.create_time() rounds this to a float.) A zombie counts
    as gone, unless ``zombie``: the caller's own child not reaped yet, whose pid is still its.
    """
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            data = f.read()
    except (FileNotFoundError, ProcessLookupError):
        return None
    # comm may hold spaces and parentheses: the fields after it start past the last ')'.
    fields = data[data.rindex(b")") + 2:].split()
    if fields[0] == b"Z" and not zombie:
        return None               # a zombie has exited; only its parent's wait is pending
    return int(fields[19])


def alive(pid: int | None, start: int | None) -> bool:
    return pid is not None and start is not None and proc_start_ticks(pid) == start


class Store:
    """The run dir's records, for the commands of one cgroup root.

    ``settings`` name the run and state dirs, the host-wide bridge lease dir (network.py)
    and the cgroup root of the command (records of other roots are never acted on); they
    travel with the store to whoever launches, waits on and bills a container through it
    (the memory sample interval, the ledger's lock timeout, TERM). Nothing is read or
    created until used."""

    def __init__(self, settings: Settings = Settings()) -> None:
        self.settings = settings
        self.run = run_dir(settings.run_dir)
        self.state = state_dir(settings.state_dir)
        self.containers = os.path.join(self.run, "containers")
        self.rundir = SafeDir(self.run, "run dir", "--run-dir (CGMAN_RUN_DIR)")
        # 0711: a user-namespaced container's root must pass through to its overlay scratch.
        self.statedir = SafeDir(self.state, "state dir", "--state-dir (CGMAN_STATE_DIR)", mode=0o711)
        self.bridges = SafeDir(settings.bridge_dir or BRIDGE_DIR, "bridge lease dir", "CGMAN_BRIDGE_DIR")
        self._root = settings.cgroup_root
        self._resolved: str | None = None
        self._groups: frozenset[str] | None = None

    @property
    def root(self) -> str:
        if self._resolved is None:
            from ..drivers import cgroup_root
            self._resolved = cgroup_root(self._root)
        return self._resolved

    def _dir(self, name: str) -> str:
        if not NAME_RE.fullmatch(name):
            raise CgmanError(f"bad container name {name!r}: use 1-64 of A-Z a-z 0-9 _ . - "
                             f"(starting with a letter or digit)")
        return f"containers/{name}"

    def scratch(self, name: str) -> str:
        """Per-container scratch (overlay upper and work dirs) in the state dir."""
        return self.statedir.join(self._dir(name))

    def make_scratch(self, name: str, subdirs: tuple[str, ...], owner: tuple[int, int] | None) -> str:
        """Create the scratch dir with ``subdirs`` (chowned to ``owner``) and its owner file."""
        d = self._dir(name)
        try:
            self.statedir.mkdir(d, mode=0o711)
        except FileExistsError:         # left by a crash: nothing in it is ours any more
            self.statedir.remove(d)
            self.statedir.mkdir(d, mode=0o711)
        self.statedir.write_atomic(f"{d}/owner", self.run.encode())  # gc sweeps only its own run dir's
        dfd = self.statedir.open_dir(d)
        try:
            for sub in subdirs:
                os.mkdir(sub, 0o755, dir_fd=dfd)
                if owner is not None:
                    os.chown(sub, *owner, dir_fd=dfd, follow_symlinks=False)
        finally:
            os.close(dfd)
        return self.scratch(name)

    def delete_scratch(self, name: str) -> None:
        self.statedir.remove(self._dir(name))

    def sweep_scratch(self) -> None:
        """Scratch dirs whose record is gone (a crash between delete steps)."""
        if not self.statedir.exists():
            return
        for n in self.statedir.listdir("containers"):
            if not NAME_RE.fullmatch(n):
                continue
            try:
                owner = self.statedir.read(f"containers/{n}/owner", 4096).decode(errors="replace")
            except (OSError, CgmanError):
                continue          # not ours to judge (another run dir may share this state dir)
            if owner == self.run and not self.exists(n):
                self.delete_scratch(n)

    def log_path(self, name: str) -> str:
        return self.rundir.join(f"{self._dir(name)}/log")

    def open_log(self, name: str, write: bool = False) -> int:
        """The detached container's log (appended to by its supervisor); never through a link."""
        flags = os.O_WRONLY | os.O_CREAT | os.O_APPEND if write else os.O_RDONLY
        return self.rundir.open(f"{self._dir(name)}/log", flags)

    def reserve(self, rec: Record) -> None:
        """Claim ``rec.name`` (atomically) and write its first record."""
        d = self._dir(rec.name)
        self.statedir.fd()    # the ledger and scratch live there: refuse an unsafe one before anything runs
        try:
            self.rundir.mkdir(d)
        except FileExistsError:
            raise Busy(f"a container named {rec.name!r} already exists (see `cgman ps -a`); "
                       f"remove it with `cgman rm {rec.name}` or pick another --name") from None
        self.save(rec)

    def save(self, rec: Record) -> None:
        """Replace the record atomically. No fsync: the run dir is volatile by design (tmpfs
        on most hosts, gone at reboot, as are the containers); durable usage is the ledger's job."""
        self.rundir.write_atomic(f"{self._dir(rec.name)}/record.json", json.dumps(vars(rec)).encode())

    def load(self, name: str) -> Record:
        """The record of ``name``, checked (recordcheck.py) before anyone acts on it."""
        rel = f"{self._dir(name)}/record.json"
        path = self.rundir.join(rel)
        try:
            data = json.loads(self.rundir.read(rel))
        except FileNotFoundError:
            raise NotFound(f"no container named {name!r} (see `cgman ps -a`)") from None
        except (ValueError, TypeError) as e:
            raise CgmanError(f"{path}: unreadable container record ({e}); remove it with "
                             f"`cgman rm --force {name}`") from None
        rec = Record.from_json(check(data, path, name, self.root))
        if rec.cgroup in self._policy_groups():
            raise InvalidRecord(path, "cgroup", f"{rec.cgroup} is a policy group (applied under root "
                                f"{self.root!r}), not a container's leaf")
        return rec

    def _policy_groups(self) -> frozenset[str]:
        """The groups `cgman apply` applied under this root: never a container's leaf."""
        if self._groups is None:
            from .applied import group_paths
            self._groups = group_paths(self, self.root) if self.rundir.exists() else frozenset()
        return self._groups

    def exists(self, name: str) -> bool:
        return NAME_RE.fullmatch(name) is not None and self.rundir.isdir(self._dir(name))

    def names(self) -> list[str]:
        if not self.rundir.exists():
            return []
        return sorted(n for n in self.rundir.listdir("containers") if NAME_RE.fullmatch(n))

    def records(self) -> list[Record]:
        """The valid records of this root (see ``scan`` for the others)."""
        return self.scan()[0]

    def scan(self) -> tuple[list[Record], list[tuple[str, CgmanError]]]:
        """(valid records of this root, (name, error) per record that is not: invalid,
        unreadable, or of another cgroup root)."""
        out: list[Record] = []
        bad: list[tuple[str, CgmanError]] = []
        for n in self.names():
            try:
                out.append(self.load(n))
            except NotFound:
                continue          # removed while we listed, or still reserving (no record yet)
            except CgmanError as e:
                bad.append((n, e))
        return out, bad

    def delete(self, name: str) -> None:
        self.rundir.remove(self._dir(name))
        self.delete_scratch(name)

    def container_lock(self, name: str, timeout_s: float = 30.0) -> AbstractContextManager[None]:
        """Serialises whoever collects container ``name`` (the lock file goes with its directory)."""
        return self.rundir.lock(f"{self._dir(name)}/collect.lock", timeout_s, missing_ok=True)

    def lock(self, what: str, timeout_s: float = 30.0) -> AbstractContextManager[None]:
        """An exclusive flock on ``<run>/<what>.lock`` (released if the holder dies)."""
        return self.rundir.lock(f"{what}.lock", timeout_s)
