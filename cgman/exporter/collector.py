"""One scrape: list the live containers, read their cgroup files, render the text format.

Built fresh on every scrape, as the Prometheus client guidelines ask: the metric
families and their values exist only for the scrape. What is kept between scrapes
is not metric state but two caches of facts that only change when a container does:

- the parsed record of each container (exporter/live.py);
- each live container's stat files (drivers/statfiles.py), kept open: cgroupfs
  regenerates a file on every read from offset 0, and skipping open()/close() halves
  the kernel's work per file. They are opened through the confined walk of
  drivers/cgfs.py like every cgroup file, and closed when the container's record
  leaves the live set or a read says the cgroup is gone (ENODEV), so removed cgroups
  are not pinned.

A container that vanishes mid-scrape (its cgroup removed between listing and
reading) is skipped; it never fails the scrape. Any other read or parse failure
counts in ``cgman_exporter_read_errors_total``, is logged, and leaves that value out;
a cgroup mount or cgman root that is missing or unreadable is such a failure (for each
container under it), never taken for vanished containers.

Tenant counters: live containers are read first, then the ledger. A container that
exits in between is already in the ledger when its cgroup is gone (finish() commits
before removing the cgroup), and one seen live and also found in the ledger counts
once, from the ledger. Hence the counters never go backwards, across exporter
restarts too: every input is durable (the ledger) or the kernel's own counter.
"""

from __future__ import annotations

import errno
import logging
import os
import resource
from typing import Any, Callable, Iterator

from ..accounting.ledger import Ledger, LedgerError, LedgerNotReady, ledger_path
from ..drivers import statfiles
from ..drivers.cgfs import CgroupTree
from ..errors import CgmanError, NotFound
from .cadvisor import KEYS as COMPAT_KEYS
from .cadvisor import render as render_compat
from .live import Live, Records, escape
from .metrics import CONTAINER, RECORD, TENANT

log = logging.getLogger(__name__)

_GONE = (-errno.ENODEV, -errno.ENOENT)
CHUNK = 256               # containers per batch of reads: bounds the transient memory
TRANSIENT = 16            # containers read without the fd cache (it is full) per batch


# A container read in this scrape: its record, CPU µs, IO read and write bytes (-1: absent).
Seen = tuple[Live, int, int, int]


class _Open:
    """A live container's stat files, open between scrapes (-1: absent on this host)."""

    __slots__ = ("fds",)

    def __init__(self, fds: list[int]) -> None:
        self.fds = fds

    def close(self) -> None:
        for fd in self.fds:
            if fd >= 0:
                os.close(fd)
        self.fds = []


def _pread_all_py(fds: list[int], nthreads: int = 1) -> list[bytes | int]:
    out: list[bytes | int] = []
    for fd in fds:
        try:
            out.append(os.pread(fd, 65536, 0))
        except OSError as e:
            out.append(-(e.errno or errno.EIO))
    return out


def _reader() -> Callable[..., list[bytes | int]]:
    try:
        from .._fastread import pread_all
        return pread_all
    except ImportError:          # not built: correct, just slower
        return _pread_all_py


class Collector:
    """Scrapes the containers of one run dir (every cgroup root they use)."""

    def __init__(self, info: Any, run_dir: str, state_dir: str, *, pressure: bool = True,
                 read_threads: int = 2, c_scrape: bool = True, compat: str | None = None) -> None:
        self.files = statfiles.stat_files(info, pressure=pressure)
        self.compat = compat == "cadvisor"      # also serve cAdvisor's names (exporter/cadvisor.py)
        self._parsers = [statfiles.RSS_PARSERS.get(f.parse, f.parse) if self.compat else f.parse
                         for f in self.files]
        # Per hierarchy: which of self.files lie there (their index, their name).
        self._by_mount: dict[str, tuple[list[int], list[str]]] = {}
        for i, f in enumerate(self.files):
            idx, names = self._by_mount.setdefault(f.mount, ([], []))
            idx.append(i)
            names.append(f.file)
        self._trees: dict[tuple[str, str], CgroupTree] = {}
        self.records = Records(run_dir)
        self.ledger = Ledger(ledger_path(state_dir), readonly=True)
        self.read_threads = read_threads
        self._pread_all = _reader()
        from .fast import KIND, module
        self._fast: Any = module() if c_scrape else None
        self._kinds = bytes(KIND.get(p, 0) for p in self._parsers)
        self._open: dict[str, _Open] = {}
        self.read_errors = 0
        self._ledger_ino: int | None = None
        self._unread: set[str] = set()         # tenants with a live container unread this scrape
        self.ledger_up = 1
        self.last_containers = 0
        self._fd_budget = _raise_fd_limit()
        # Tenants to serve even before their first container (the agent's policies): a series
        # that starts at 0 lets increase() count the first container's usage too.
        self.known_tenants: frozenset[str] = frozenset()

    # ------------------------------------------------------------------ files
    def _open_files(self, c: Live) -> list[int]:
        """Descriptors of ``c``'s stat files, in the order of self.files (-1: absent here)."""
        fds = [-1] * len(self.files)
        try:
            for mount, (idx, names) in self._by_mount.items():
                for i, fd in zip(idx, self._tree(mount, c.root).open_for_reading(c.cgroup, names), strict=True):
                    fds[i] = fd
        except BaseException:
            _Open(fds).close()
            raise
        return fds

    def _tree(self, mount: str, root: str) -> CgroupTree:
        tree = self._trees.get((mount, root))
        if tree is None:
            tree = self._trees[(mount, root)] = CgroupTree(mount, root)
        return tree

    def _fds_for(self, c: Live) -> _Open | None:
        o = self._open.get(c.id)
        if o is not None:
            return o
        try:
            o = _Open(self._open_files(c))
        except NotFound:
            problem = self._root_problem(c)
            if problem is None:
                return None       # the group is gone (or not there yet): only its samples go
        except CgmanError as e:   # a mount that is missing, a root or group that is unreadable
            problem = f"cannot open its stat files: {e}"
        else:
            if len(self._open) * len(self.files) < self._fd_budget:
                self._open[c.id] = o
            return o
        self.read_errors += 1
        self._unread.add(c.tenant)
        log.warning("container %s: %s", c.name, problem)
        return None

    def _root_problem(self, c: Live) -> str | None:
        """Why ``c``'s group was not found when its root is what is missing (None: the root is
        there, the group is not): a scrape says so instead of showing no containers."""
        for mount in self._by_mount:
            tree = self._tree(mount, c.root)
            try:
                if not tree.exists():
                    return f"its cgroup root {tree.path()} does not exist"
            except CgmanError as e:
                return f"cannot open its cgroup root: {e}"
        return None

    def _drop(self, cid: str) -> None:
        o = self._open.pop(cid, None)
        if o is not None:
            o.close()

    # ------------------------------------------------------------------ scrape
    def collect(self) -> str:
        """The text exposition (format 0.0.4) of every live container and tenant."""
        return b"".join(self.collect_chunks()).decode()

    def collect_chunks(self) -> list[bytes]:
        """The same as chunks, sent one after the other: a 1000-container body is 2 MB, and
        each concatenation would be another 2 MB copy at the peak of the exporter's memory."""
        records = self.records.scan()
        live = [c for c in records if c.state == "running"]
        pending = [c for c in records if c.state == "exited" and c.ledger_pending and c.final_usage]
        live_ids = {c.id for c in live}
        for cid in [k for k in self._open if k not in live_ids]:
            self._drop(cid)
        self._unread = set()
        compat: list[tuple[Live, dict[str, int]]] | None = [] if self.compat else None
        if self._fast is not None:
            body, seen = self._containers_c(live, compat)
        else:
            body, seen = self._containers_py(live, compat)
        self.last_containers = len(seen)
        out = [body, self._tenants(seen, pending, {}).encode()]
        if compat is not None:
            out.append(render_compat(compat, _micro))
        return out

    def _groups(self, live: list[Live], size: int) -> Iterator[tuple[list[tuple[Live, _Open]], list[int]]]:
        """``live`` in groups of at most ``size`` containers, and at most TRANSIENT of those
        whose files are opened for this scrape only (the fd cache is full): however many
        containers there are, the transient fds of one group are all that is open at once.
        The caller reads a group, then closes its transient files (``_close_transient``)."""
        batch: list[tuple[Live, _Open]] = []
        fds: list[int] = []
        transient = 0
        for c in live:
            o = self._fds_for(c)
            if o is None:
                continue
            batch.append((c, o))
            fds.extend(o.fds)
            if c.id not in self._open:
                transient += 1
            if transient >= TRANSIENT or len(batch) >= size:
                yield batch, fds
                batch, fds, transient = [], [], 0
        if batch:
            yield batch, fds

    def _close_transient(self, batch: list[tuple[Live, _Open]]) -> None:
        for c, o in batch:
            if c.id not in self._open:
                o.close()

    def _containers_c(self, live: list[Live], compat: list[tuple[Live, dict[str, int]]] | None = None
                      ) -> tuple[bytes, list[Seen]]:
        """Reads, parsing and text in C (exporter/fast.py): a few ms per 1000 containers."""
        from .fast import NSLOTS, RECORD_SLOTS, RENDER, SLOT
        batch: list[tuple[Live, _Open]] = []
        parts: list[bytearray] = []
        for group, fds in self._groups(live, len(live)):
            try:
                parts.append(self._fast.read_parse(fds, self._kinds, self.read_threads))
            finally:
                self._close_transient(group)
            batch += group
        raw = parts[0] if len(parts) == 1 else bytearray(b"".join(parts))
        v = memoryview(raw).cast("q")
        seen: list[Seen] = []
        labels: list[bytes] = []
        g, e, cpu, rb, wb = SLOT["_gone"], SLOT["_errors"], SLOT["cpu_usage_usec"], SLOT["io_read_bytes"], \
            SLOT["io_write_bytes"]
        rec_off = SLOT[RECORD_SLOTS[0]] * 8
        for i, (c, _o) in enumerate(batch):
            base = i * NSLOTS
            labels.append(c.labels_b)
            if v[base + g]:
                self._drop(c.id)
                continue
            if v[base + e]:
                self.read_errors += v[base + e]
            raw[base * 8 + rec_off:base * 8 + rec_off + len(c.record_slots)] = c.record_slots
            if v[base + cpu] < 0:
                self._unread.add(c.tenant)        # its CPU is unknown: no tenant total this scrape
            seen.append((c, v[base + cpu], v[base + rb], v[base + wb]))
            if compat is not None:
                compat.append((c, {k: v[base + SLOT[k]] for k in COMPAT_KEYS}))
        del v
        body = self._fast.render(raw, labels, RENDER)
        return body, seen

    def _containers_py(self, live: list[Live], compat: list[tuple[Live, dict[str, int]]] | None = None
                       ) -> tuple[bytes, list[Seen]]:
        """The same in Python, with statfiles' parsers (when the C helper is not built)."""
        seen: list[tuple[Live, statfiles.Values]] = []
        for batch, fds in self._groups(live, CHUNK):
            try:
                data = self._pread_all(fds, self.read_threads)
            finally:
                self._close_transient(batch)
            seen += self._parse_py(batch, data)
            del data
        if compat is not None:
            compat += seen
        return _render_py(seen), [(c, vals.get("cpu_usage_usec", -1), vals.get("io_read_bytes", -1),
                                   vals.get("io_write_bytes", -1)) for c, vals in seen]

    def _parse_py(self, batch: list[tuple[Live, _Open]], data: list[bytes | int]
                  ) -> list[tuple[Live, statfiles.Values]]:
        """The values of each container of ``batch`` from ``data``, its files' contents (or
        -errno) in order; a container whose cgroup is gone is left out and its files closed."""
        out: list[tuple[Live, statfiles.Values]] = []
        pos = 0
        for c, o in batch:
            n = len(o.fds)
            vals: statfiles.Values = {}
            gone = False
            for k in range(n):
                d = data[pos + k]
                if o.fds[k] < 0:
                    continue
                if isinstance(d, int):
                    if d in _GONE:
                        gone = True
                        break
                    self.read_errors += 1
                    continue
                try:
                    self._parsers[k](d.decode(), vals)
                except (ValueError, KeyError, IndexError):
                    self.read_errors += 1
            pos += n
            if gone:
                self._drop(c.id)
                continue
            statfiles.finalize(vals)
            if "cpu_usage_usec" not in vals:
                self._unread.add(c.tenant)
            out.append((c, vals))
        return out

    def _tenants(self, seen: list[Seen], pending: list[Live],
                 acc: dict[str, list[float]]) -> str:
        """Ledger totals plus what is not in the ledger yet. Empty if the ledger is unreadable:
        a missing series is a gap to Prometheus, a smaller value would be a counter reset."""
        try:
            try:
                try:
                    ino = os.stat(self.ledger.path).st_ino
                except OSError:
                    ino = None
                if ino != self._ledger_ino:     # moved aside and recreated: read the new one
                    self.ledger.close()
                    self._ledger_ino = ino
                if os.path.exists(self.ledger.path):
                    totals, recorded = self.ledger.totals_and_recorded(
                        [c.id for c, *_ in seen] + [c.id for c in pending])
                else:
                    totals, recorded = {}, set()
            except LedgerNotReady:
                totals, recorded = {}, set()      # created this instant: no row yet
            self.ledger_up = 1
        except LedgerError as e:
            if self.ledger_up:
                log.error("%s", e)
            self.ledger_up = 0
            self.ledger.close()
            return ""
        for tt in totals.values():
            acc[tt.tenant] = [tt.cpu_usage_usec, tt.memory_byte_seconds, tt.io_read_bytes, tt.io_write_bytes,
                              tt.containers]
        for c, cpu_usec, rb, wb in seen:
            if c.id not in recorded:
                _add(acc, c.tenant, max(0, cpu_usec), c.memory_byte_seconds, max(0, rb), max(0, wb))
        for c in pending:
            if c.id not in recorded and c.final_usage:
                u = c.final_usage
                _add(acc, c.tenant, u.get("cpu_usage_usec") or 0, u.get("memory_byte_seconds") or 0.0,
                     u.get("io_read_bytes") or 0, u.get("io_write_bytes") or 0)
        for t in self.known_tenants:
            acc.setdefault(t, [0, 0.0, 0, 0, 0])   # no row, no live container: truly 0 so far
        for t in self._unread:
            acc.pop(t, None)      # a live container we could not read: a gap, never a smaller value
        if not acc:
            return ""
        cpu, mem, io, cnt = TENANT
        out = [f"# HELP {cpu.name} {cpu.help}\n# TYPE {cpu.name} counter\n"]
        out += [f'{cpu.name}{{tenant="{escape(t)}"}} {_micro(int(v[0]))}\n' for t, v in sorted(acc.items())]
        out.append(f"# HELP {mem.name} {mem.help}\n# TYPE {mem.name} counter\n")
        out += [f'{mem.name}{{tenant="{escape(t)}"}} {float(v[1])}\n' for t, v in sorted(acc.items())]
        out.append(f"# HELP {io.name} {io.help}\n# TYPE {io.name} counter\n")
        for t, v in sorted(acc.items()):
            out.append(f'{io.name}{{direction="read",tenant="{escape(t)}"}} {int(v[2])}\n')
            out.append(f'{io.name}{{direction="write",tenant="{escape(t)}"}} {int(v[3])}\n')
        out.append(f"# HELP {cnt.name} {cnt.help}\n# TYPE {cnt.name} counter\n")
        out += [f'{cnt.name}{{tenant="{escape(t)}"}} {int(v[4])}\n' for t, v in sorted(acc.items())]
        return "".join(out)

    def open_files(self) -> int:
        return sum(len(o.fds) for o in self._open.values())

    def close(self) -> None:
        for cid in list(self._open):
            self._drop(cid)
        for tree in self._trees.values():
            tree.close()
        self._trees = {}
        self.ledger.close()


def _render_py(seen: list[tuple[Live, statfiles.Values]]) -> bytes:
    """The per-container families of metrics.py, as the C renderer writes them."""
    lines: list[list[str]] = [[] for _ in CONTAINER]
    rlines: list[list[str]] = [[] for _ in RECORD]
    for c, vals in seen:
        L = c.labels
        for j, m in enumerate(CONTAINER):
            v = vals.get(m.key)
            if v is not None:
                lines[j].append(f"{m.name}{L} {_micro(v) if m.div else v}")
        rlines[0].append(f"{RECORD[0].name}{L} 1")
        if c.started is not None:
            rlines[1].append(f"{RECORD[1].name}{L} {_micro(round(c.started * 1e6))}")
        rlines[2].append(f"{RECORD[2].name}{L} {round(c.memory_byte_seconds)}")
        for j, key in ((3, "cpu_max_cpus"), (4, "memory_max_bytes"), (5, "pids_max")):
            lim = c.limits.get(key)
            if lim is not None:
                rlines[j].append(f"{RECORD[j].name}{L} {_micro(round(lim * 1e6)) if j == 3 else int(lim)}")
    out: list[str] = []
    for m, ls in zip(CONTAINER + RECORD, lines + rlines, strict=True):
        if ls:
            out.append(f"# HELP {m.name} {m.help}\n# TYPE {m.name} {m.type}\n")
            out.append("\n".join(ls))
            out.append("\n")
    return "".join(out).encode()


def _micro(v: int) -> str:
    """``v`` millionths as an exact decimal (as the C renderer prints them)."""
    ip, fp = divmod(v, 1_000_000)
    return f"{ip}.{fp:06d}".rstrip("0") if fp else str(ip)


def _add(acc: dict[str, list[float]], tenant: str, cpu: float, mem: float, r: float, w: float) -> None:
    v = acc.setdefault(tenant, [0, 0.0, 0, 0, 0])
    v[0] += cpu
    v[1] += mem
    v[2] += r
    v[3] += w
    v[4] += 1


def _raise_fd_limit() -> int:
    """Raise the soft fd limit to the hard one; how many fds the open-file cache may use."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY or hard > soft:
        want = hard if hard != resource.RLIM_INFINITY else 1 << 20
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))
            soft = want
        except (ValueError, OSError):
            pass
    return max(0, soft - 256)       # room for the server's sockets, the ledger and the records
