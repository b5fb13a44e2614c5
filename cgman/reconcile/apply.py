"""Apply is a reconcile: read each live value, write only what differs, all or nothing.

If a kernel write fails mid-way, every change this run made is undone in
reverse order (values restored, new groups removed) and the error names the
file, the value and the kernel's reason.
"""

from __future__ import annotations

import errno
import logging
from dataclasses import dataclass, field
from typing import Callable

from ..drivers import Host
from ..drivers.formats import UNLIMITED_V1
from ..drivers.kfiles import satisfied, undo_value
from ..errors import Busy, CgmanError, CgroupIOError, NotFound
from ..model import PolicySet
from ..plan import ROOT, Plan, Write, ancestors, plan

log = logging.getLogger(__name__)
FREEZER_FILES = ("cgroup.freeze", "freezer.state")


class ApplyError(CgmanError):
    """A kernel write failed; what this run changed has been restored.

    ``file`` is the policy file of the group whose write failed, when known."""

    file: str | None = None


@dataclass
class Change:
    """One write an apply made, with the value it replaced."""

    write: Write
    old: str | None          # live value before (None: group is new / not readable)


@dataclass
class Result:
    """What an apply did: groups created, writes made, groups pruned."""

    plan: Plan
    created: list[str] = field(default_factory=list)
    changes: list[Change] = field(default_factory=list)
    unchanged: int = 0
    pruned: list[str] = field(default_factory=list)
    dry_run: bool = False

    def as_dict(self) -> dict[str, object]:
        return {"dry_run": self.dry_run, "created": self.created,
                "writes": [dict(c.write.as_dict(), old=c.old) for c in self.changes],
                "unchanged": self.unchanged, "pruned": self.pruned,
                "warnings": self.plan.warnings}


def _is_frozen_write(w: Write) -> bool:
    return w.file in FREEZER_FILES


def _wants_frozen(w: Write) -> bool:
    return w.value in ("1", "FROZEN")


def _freeze_value(file: str, frozen: bool) -> str:
    if file == "freezer.state":
        return "FROZEN" if frozen else "THAWED"
    return "1" if frozen else "0"


def _order_memsw(host: Host, writes: list[Write], exists: Callable[[str], bool]) -> list[Write]:
    """v1: memsw must stay >= the memory limit, so raise memsw first when growing it."""
    out = list(writes)
    for i, w in enumerate(out):
        if w.file != "memory.limit_in_bytes" or i + 1 >= len(out):
            continue
        nxt = out[i + 1]
        if nxt.file == "memory.memsw.limit_in_bytes" and nxt.cgroup == w.cgroup and exists(w.cgroup):
            live = host.read(nxt).strip()
            new = -1 if nxt.value == "-1" else int(nxt.value)
            cur = int(live)
            if new == -1 or (cur < UNLIMITED_V1 and new > cur):
                out[i], out[i + 1] = nxt, w
    return out


@dataclass
class _Reconcile:
    """One apply in progress: which groups existed before it, which it has made ready, and
    what it changed so far (``result``), so that a failure can roll exactly that back."""

    host: Host
    result: Result
    timeout_s: float
    existed_before: dict[str, bool] = field(default_factory=dict)
    ready: set[str] = field(default_factory=set)

    @property
    def dry_run(self) -> bool:
        return self.result.dry_run

    def existed(self, cg: str) -> bool:
        if cg not in self.existed_before:
            self.existed_before[cg] = self.host.exists(cg)
        return self.existed_before[cg]

    def ensure(self, cg: str) -> None:
        """Create ``cg`` and its ancestors just before their first write.

        Creating lazily, parents' settings land before children exist, so v1
        cpuset children inherit a parent's narrowed cpus at mkdir. create() is
        idempotent in every hierarchy, so a group missing from one hierarchy
        (removed by hand, controller mounted later) is recreated there.
        """
        for anc in ancestors(cg) + [cg]:
            if anc in self.ready:
                continue
            if self.dry_run:
                if not self.existed(anc):
                    self.result.created.append(anc)
            elif self.host.create(anc):
                self.result.created.append(anc)
            self.ready.add(anc)

    def apply_plan(self, p: Plan, progress: Callable[[str], None] | None) -> None:
        """Every write of ``p`` that differs from the live value, then groups without settings."""
        writes = _order_memsw(self.host, p.writes, self.existed)
        for i, w in enumerate(writes):
            if progress and i % 200 == 0 and len(writes) > 400:
                progress(f"checked {i}/{len(writes)} settings")
            self.ensure(w.cgroup)
            if self.dry_run and not self.existed(w.cgroup):     # a new group: every write is a change
                self.result.changes.append(Change(w, None))
            elif _is_frozen_write(w):
                self.freeze(w)
            else:
                self.setting(w)
        for cg in [ROOT] + p.groups:                  # groups without settings of their own
            self.ensure(cg)

    def freeze(self, w: Write) -> None:
        """A freezer write: freeze or thaw (confirmed, within timeout_s) if the flag differs."""
        # the group's own flag: a frozen ancestor does not make it "frozen: true"
        own = bool(self.host.self_frozen(w.cgroup))
        if own == _wants_frozen(w):
            self.result.unchanged += 1
            return
        if not self.dry_run:
            (self.host.freeze if _wants_frozen(w) else self.host.thaw)(w.cgroup, self.timeout_s)
        self.result.changes.append(Change(w, _freeze_value(w.file, own)))

    def setting(self, w: Write) -> None:
        """Any other write: made only if the live value does not already satisfy it."""
        try:
            live = self.host.read(w)
        except CgroupIOError as e:
            # dry run: a controller this plan enables is not enabled yet
            if self.dry_run and e.errno == errno.ENOENT:
                self.result.changes.append(Change(w, None))
                return
            raise
        if satisfied(w.file, w.value, live):
            self.result.unchanged += 1
            return
        if not self.dry_run:
            self.host.write(w)
        self.result.changes.append(Change(w, live))     # only once the write succeeded


def apply(policies: PolicySet, host: Host, *, dry_run: bool = False, prune: bool = False,
          force: bool = False, timeout_s: float = 10.0,
          keep: Callable[[str], bool] = lambda path: False,
          progress: Callable[[str], None] | None = None) -> Result:
    """Make the live tree under the cgman root match ``policies``.

    ``keep(path)`` protects groups that are not in the files but must survive
    ``prune`` (containers). Raises ApplyError after rolling back on failure.
    """
    p = plan(policies, host.layout, host.features)
    res = Result(plan=p, dry_run=dry_run)
    try:
        _Reconcile(host, res, timeout_s).apply_plan(p, progress)
    except BaseException as err:                      # Ctrl-C too: never leave it half-applied
        if dry_run:
            raise
        undone, failed = _rollback(host, res)
        if not isinstance(err, CgmanError):
            raise
        raise _apply_error(policies, host, err, undone, failed) from err
    if prune:        # after the writes are in: removals cannot be rolled back, so they go last
        res.pruned = _prune(policies, host, dry_run=dry_run, force=force, keep=keep)
    return res


def _apply_error(policies: PolicySet, host: Host, err: CgmanError, undone: int, failed: int) -> ApplyError:
    """The error of a rolled-back apply: the policy file, the kernel's error, what was restored."""
    outcome = "nothing was applied" if not failed else \
        f"but {failed} could NOT be restored (see the log; run `cgman diff`)"
    src = _source(policies, host, err)
    ae = ApplyError(f"{src + ': ' if src else ''}{err}; rolled back {undone} change(s), {outcome}")
    ae.file = src.split(": group ", 1)[0] if src else None
    return ae


def _source(policies: PolicySet, host: Host, err: CgmanError) -> str:
    """Name the policy file of the group whose write failed."""
    directory = getattr(err, "directory", "")
    for g in policies.groups:
        if directory.endswith(f"/{host.root}/{g.path}"):
            return f"{g.location.file}: group {g.path}"
    return ""


def _rollback(host: Host, res: Result) -> tuple[int, int]:
    """Undo in reverse order; returns (restored, could not be restored)."""
    n = failed = 0
    for ch in reversed(res.changes):
        w = ch.write
        try:
            if _is_frozen_write(w):
                (host.freeze if ch.old in ("1", "FROZEN") else host.thaw)(w.cgroup, 10.0)
            elif ch.old is not None:
                host.write(Write(w.cgroup, w.controller, w.file, undo_value(w.file, w.value, ch.old)))
            n += 1
        except CgmanError as e:           # keep going: restore as much as possible
            failed += 1
            log.error("rollback of %s/%s failed: %s", w.cgroup, w.file, e)
    for cg in reversed(res.created):
        try:
            host.remove(cg)
            n += 1
        except CgmanError as e:
            failed += 1
            log.error("rollback: cannot remove %s: %s", cg, e)
    return n, failed


def prune(policies: PolicySet, host: Host, *, force: bool = False,
          keep: Callable[[str], bool] = lambda path: False) -> list[str]:
    """Remove groups under the root that are not in ``policies`` (nor kept); see apply(prune=True)."""
    return _prune(policies, host, dry_run=False, force=force, keep=keep)


def _prune(policies: PolicySet, host: Host, *, dry_run: bool, force: bool,
           keep: Callable[[str], bool]) -> list[str]:
    wanted = {g.path for g in policies.groups}
    everything = host.walk(ROOT)[1:]
    kept = [cg for cg in everything if keep(cg)]
    extra = [cg for cg in everything if cg not in wanted and not keep(cg)
             and not any(k.startswith(cg + "/") for k in kept)        # a kept group keeps its ancestors
             and not any(cg.startswith(k + "/") for k in kept)]       # and its own subtree
    busy = [cg for cg in extra if host.procs(cg, recursive=True)]
    top_busy = [cg for cg in busy if not any(cg.startswith(b + "/") for b in busy)]
    if top_busy and not force:
        raise Busy(f"cannot prune {', '.join(top_busy)}: processes are running there "
                   f"(use --force to kill them, or stop them first)")
    removed = []
    for cg in sorted(extra, key=lambda c: -c.count("/")):
        if not dry_run:
            if force and host.procs(cg, recursive=True):
                host.kill(cg)
            try:
                host.remove(cg)
            except NotFound:
                pass
        removed.append(cg)
    return removed


def diff(policies: PolicySet, host: Host,
         keep: Callable[[str], bool] | None = lambda path: False) -> list[dict[str, str | None]]:
    """Drift: every planned setting whose live value differs (live None: group missing)."""
    p = plan(policies, host.layout, host.features)
    out: list[dict[str, str | None]] = []
    for cg in p.groups:
        if not host.exists(cg):
            out.append({"cgroup": cg, "file": None, "want": "group exists", "live": None})
    wanted = set(p.groups)
    for cg in host.walk(ROOT)[1:] if host.exists(ROOT) else []:
        if cg not in wanted and keep is not None and not keep(cg):
            out.append({"cgroup": cg, "file": None, "want": None, "live": "not in the files (--prune removes it)"})
    for w in p.writes:
        if not host.exists(w.cgroup):
            continue
        if _is_frozen_write(w):
            fz = host.self_frozen(w.cgroup)
            if fz != _wants_frozen(w):
                out.append({"cgroup": w.cgroup, "file": w.file, "want": w.value,
                            "live": "frozen" if fz else "thawed"})
            continue
        try:
            live = host.read(w)
        except CgroupIOError as e:
            if e.errno != errno.ENOENT:
                raise
            out.append({"cgroup": w.cgroup, "file": w.file, "want": w.value,
                        "live": "missing (controller not enabled for this group yet)"})
            continue
        if not satisfied(w.file, w.value, live):
            out.append({"cgroup": w.cgroup, "file": w.file, "want": w.value,
                        "live": live.strip().replace("\n", "; ")})
    return out
