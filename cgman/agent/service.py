"""The agent's loop: keep the policy directory true, collect the dead, serve metrics.

One thread reconciles (at start, when a file changes, every --interval); the
exporter's HTTP server answers scrapes in its own threads. Nothing the agent holds
is needed to restart it: desired state is the files, live state is the kernel,
containers are owned by their own supervisors, usage is in the ledger. A SIGKILL
at any point is followed by a restart that converges:
- an apply cut short leaves some settings written and others not; apply is a
  reconcile (read, compare, write what differs), so the next apply finishes it;
- a collection cut short leaves the record; the next gc collects it, and the
  ledger's unique container id makes the second commit of the same row a no-op.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from dataclasses import dataclass
from typing import Any, Callable, Iterator

from ..errors import CgmanError
from ..inputs import DEFAULT_LIMITS, Limits
from ..reconcile.apply import ApplyError, apply
from .policies import PolicyDir
from .watch import Watcher

log = logging.getLogger("cgman.agent")

# Called with each point the loop passes: "before-apply", "write" (after each cgroup
# change of an apply), "after-apply", "collected" (after each container collected). The
# crash tests pass one that stops the agent at a chosen point, to SIGKILL it there
# (tests/agent_crashpoint.py); the agent itself passes none.
Checkpoint = Callable[[str], None]


@dataclass
class Health:
    """The agent's own counters, served as cgman_agent_* with every scrape."""
    started: float = 0.0
    reconciles: int = 0
    reconcile_errors: int = 0
    last_reconcile: float = 0.0
    last_success: int = 0
    last_duration_s: float = 0.0
    drift_corrections: int = 0
    changes_applied: int = 0
    policy_files: int = 0
    policy_files_invalid: int = 0
    collected: int = 0
    collect_errors: int = 0
    containers_running: int = 0
    oldest_sample_age_s: float = 0.0

    def metrics(self) -> Iterator[tuple[str, str, str, float]]:
        yield ("cgman_agent_start_time_seconds", "gauge", "When this agent started (unix time).", self.started)
        yield ("cgman_agent_reconciles", "counter", "Reconciles run (start, file change, timer).", self.reconciles)
        yield ("cgman_agent_reconcile_errors", "counter", "Reconciles that failed (a policy file the kernel "
               "refused, a busy prune); the last good state stayed in force.", self.reconcile_errors)
        yield ("cgman_agent_last_reconcile_timestamp_seconds", "gauge", "When the last reconcile finished.",
               self.last_reconcile)
        yield ("cgman_agent_last_reconcile_success", "gauge", "1 if the last reconcile applied every file in "
               "force and no file was refused.", self.last_success)
        yield ("cgman_agent_last_reconcile_duration_seconds", "gauge", "How long the last reconcile took.",
               self.last_duration_s)
        yield ("cgman_agent_drift_corrections", "counter", "Settings found changed by hand and written back.",
               self.drift_corrections)
        yield ("cgman_agent_changes_applied", "counter", "Settings written because a policy file changed.",
               self.changes_applied)
        yield ("cgman_agent_policy_files", "gauge", "Policy files in the directory.", self.policy_files)
        yield ("cgman_agent_policy_files_invalid", "gauge", "Policy files whose current text is not in force "
               "(see the log for file:line).", self.policy_files_invalid)
        yield ("cgman_agent_containers_collected", "counter", "Containers whose supervisor died, collected "
               "with their final usage.", self.collected)
        yield ("cgman_agent_collect_errors", "counter", "Collections that failed (retried next interval).",
               self.collect_errors)
        yield ("cgman_agent_containers_running", "gauge", "Running containers at the last interval.",
               self.containers_running)
        yield ("cgman_agent_oldest_sample_age_seconds", "gauge", "Age of the stalest memory sample of a "
               "running container (its supervisor samples every CGMAN_SAMPLE_INTERVAL s).",
               self.oldest_sample_age_s)


class _Announcing:
    """The host, with each change (mkdir, write, freeze, thaw) announced to the checkpoint."""

    def __init__(self, host: Any, checkpoint: Checkpoint) -> None:
        self._host, self._checkpoint = host, checkpoint

    def __getattr__(self, name: str) -> Any:
        attr = getattr(self._host, name)
        if name not in ("write", "create", "freeze", "thaw"):
            return attr

        def announced(*a: Any, **kw: Any) -> Any:
            out = attr(*a, **kw)
            if name != "create" or out:          # create() of an existing group changes nothing
                self._checkpoint("write")
            return out
        return announced


class Agent:
    def __init__(self, host: Any, store: Any, policy_dir: str, *, interval_s: float = 30.0,
                 prune: bool = False, poll: bool = False, timeout_s: float = 10.0,
                 limits: Limits = DEFAULT_LIMITS, checkpoint: Checkpoint | None = None,
                 cgroup_driver: str = "cgroupfs") -> None:
        self.host, self.store = host, store
        root_key = host.root.replace("/", "_")
        self.policies = PolicyDir(policy_dir, memory=os.path.join(store.state, f"agent-{root_key}.pickle"),
                                  limits=limits)
        self.interval_s, self.prune, self.timeout_s = interval_s, prune, timeout_s
        self.poll = poll
        self.health = Health(started=time.time())
        self._stop = threading.Event()
        self._wake_r, self._wake_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        self._checkpoint = checkpoint
        self._prune_held = False
        self._rescan = False
        self._saved: tuple[str, ...] | None = None
        self._desired: dict[tuple[str, str], str] = {}     # (cgroup, file) -> value of the last apply
        self._groups: set[str] = set()
        self.on_policies: Callable[[Any], None] | None = None     # the policies in force, after each apply
        self._refusals: tuple[type[CgmanError], ...] = (ApplyError,)
        self._units: Any = None              # agent/units.UnitApplier with --cgroup-driver systemd
        if cgroup_driver == "systemd":
            from .units import REFUSALS, UnitApplier
            self._units, self._refusals = UnitApplier(host.root, max(timeout_s, 30.0)), (ApplyError, *REFUSALS)

    # -- reconcile ---------------------------------------------------------

    def _keep(self) -> Callable[[str], bool]:
        """Containers' cgroups (and so their groups) survive --prune."""
        live = {r.cgroup for r in self.store.records() if r.state != "exited" or r.cleanup_pending}
        return lambda cg: cg in live

    def _apply(self) -> Any:
        if self._units is not None:
            return self._units.apply(self.policies.policies())
        host = self.host
        if self._checkpoint is not None:
            host = _Announcing(host, self._checkpoint)
        return apply(self.policies.policies(), host, timeout_s=self.timeout_s)

    def _prune(self) -> bool:
        """--prune, after the apply is recorded: a busy group must not undo the bookkeeping of
        writes that succeeded. Never while a file is not in force: its groups would go."""
        if not self.prune:
            return True
        if self.policies.invalid():
            if not self._prune_held:
                log.warning("not pruning while %d policy file(s) are not in force", self.policies.invalid())
            self._prune_held = True
            return True
        self._prune_held = False
        from ..reconcile.apply import prune
        try:
            pruned = self._units.prune(self.policies.policies()) if self._units is not None else \
                prune(self.policies.policies(), self.host, keep=self._keep())
            for cg in pruned:
                log.info("pruned %s (no longer in the files)", cg)
        except CgmanError as e:
            log.error("prune: %s (retrying in %gs)", e, self.interval_s)
            return False
        return True

    def reconcile(self, trigger: str) -> bool:
        """Scan the files, apply what is in force; True if everything in force was applied."""
        t0 = time.monotonic()
        h = self.health
        scan = self.policies.scan()
        self._rescan = scan.deferred
        edited = bool(scan.changed or scan.removed) or trigger == "start"
        for f in scan.removed:
            log.info("%s removed: its groups are no longer managed (they stay as they are%s)", f,
                     "; --prune removes them" if self.prune else "")
        ok = not scan.errors
        self._reached("before-apply")
        res: Any = None
        for _ in range(len(self.policies.files) + 1):
            try:
                res = self._apply()
                break
            except self._refusals as e:
                ok = False
                # Only the file the kernel refused goes back to its last applied version
                # (logged by the tracker); the others keep their new versions. Try again.
                file = getattr(e, "file", None)
                if file and self.policies.refuse(file, str(e)):
                    continue
                back = self.policies.refuse_changed(str(e))
                if back:                  # no file named: every changed file goes back
                    continue
                log.error("%s (retrying in %gs)", e, self.interval_s)    # the host changed, not a file
                break
            except CgmanError as e:           # a freeze that timed out, a vanished mount
                log.error("reconcile failed: %s (retrying in %gs)", e, self.interval_s)
                ok = False
                break
        if res is not None:
            self.policies.accepted()
            if self.on_policies is not None:
                self.on_policies(self.policies.policies())
            self._report(res, edited)
            self._save()
            ok = self._prune() and ok
        self._reached("after-apply")
        h.reconciles += 1
        h.reconcile_errors += not ok
        h.last_success = int(ok and self.policies.invalid() == 0)
        h.last_duration_s = time.monotonic() - t0
        h.last_reconcile = time.time()
        h.policy_files = len(self.policies.files)
        h.policy_files_invalid = self.policies.invalid()
        return ok

    def _reached(self, point: str) -> None:
        if self._checkpoint is not None:
            self._checkpoint(point)

    def _report(self, res: Any, edited: bool) -> None:
        """Log each change; a change to a setting whose wanted value did not move since the
        last apply is drift (someone wrote the cgroup file by hand), whatever woke us."""
        if self._units is not None:
            drift, applied = self._units.report(res, edited, len(self.policies.policies().files))
            self.health.drift_corrections += drift
            self.health.changes_applied += applied
            return
        prev, known = self._desired, self._groups
        if edited:
            for warn in res.plan.warnings:
                log.warning("%s", warn)
        drift = applied = 0
        for cg in res.created:
            if cg in known:
                drift += 1
                log.warning("drift: group %s was missing; created it again", cg)
            else:
                applied += 1
                log.info("created %s", cg)
        for ch in res.changes:
            old = (ch.old or "").strip().replace("\n", "; ") or "-"
            w = ch.write
            if prev.get((w.cgroup, w.file)) == w.value:
                drift += 1
                log.warning("drift corrected: %s/%s was %s, set back to %s", w.cgroup, w.file, old, w.value)
            else:
                applied += 1
                log.info("set %s/%s = %s (was %s)", w.cgroup, w.file, w.value, old)
        self.health.drift_corrections += drift
        self.health.changes_applied += applied
        if edited or applied:
            log.info("applied %d file(s): %d groups created, %d settings changed, %d already matched",
                     len(self.policies.policies().files), len(res.created), len(res.changes), res.unchanged)
        self._desired = {(w.cgroup, w.file): w.value for w in res.plan.writes}
        self._groups = set(res.plan.groups) | {"."}

    def _save(self) -> None:
        """Let `cgman run -p GROUP` find the agent's groups without -f (state/applied.py)."""
        ps = self.policies.policies()
        key = (repr(ps.groups),)
        if key == self._saved:
            return
        from ..containers.spec import save_applied
        try:
            save_applied(self.store, self.host.root, ps, replace=True)
            self._saved = key
        except OSError as e:
            log.error("cannot save the applied policies in %s: %s", self.store.run, e.strerror)

    # -- containers --------------------------------------------------------

    def collect(self) -> None:
        """Collect containers whose supervisor died; refresh the container gauges."""
        from ..drivers import open_host
        from ..containers.manage import gc
        others: dict[str, Any] = {self.host.root: self.host}

        def hosts(root: str) -> Any:          # records remember their root; most are ours
            if root not in others:
                others[root] = open_host(root)
            return others[root]

        def one(name: str) -> None:
            self.health.collected += 1
            log.info("collected %s: its supervisor was gone; final usage is in the ledger", name)
            self._reached("collected")
        def failed(name: str, e: Exception) -> None:
            self.health.collect_errors += 1
            log.error("cannot collect %s now: %s (retrying in %gs)", name, e, self.interval_s)
        try:
            gc(self.store, hosts, on_collected=one, on_error=failed)
        except Exception as e:      # the gc lock, the run dir: never the end of the agent
            self.health.collect_errors += 1
            log.error("collecting containers failed: %s (retrying in %gs)", e, self.interval_s)
        now = time.time()
        running = [r for r in self.store.records() if r.state == "running"]
        self.health.containers_running = len(running)
        ages = [now - (r.memory_sampled_at or r.started or now) for r in running]
        self.health.oldest_sample_age_s = max(ages, default=0.0)

    def adopt(self) -> None:
        running = [r for r in self.store.records() if r.state == "running"]
        if running:
            log.info("adopted %d running container(s): %s", len(running),
                     ", ".join(sorted(r.name for r in running)[:10]) + (" …" if len(running) > 10 else ""))
        self.collect()

    # -- loop --------------------------------------------------------------

    def wake(self) -> None:
        try:
            os.write(self._wake_w, b"x")
        except BlockingIOError:
            pass

    def stop(self) -> None:
        self._stop.set()
        self.wake()

    def run(self) -> None:
        """Reconcile and collect until stop(); the caller serves metrics."""
        from .policies import QUIET_S
        watcher = Watcher(self.policies.directory, poll=self.poll)
        log.info("watching %s (%s); drift check every %gs", self.policies.directory, watcher.mode,
                 self.interval_s)
        self._reload = False
        link = os.path.islink(self.policies.directory.rstrip("/"))
        try:
            self.reconcile("start")
            self.adopt()
            next_tick = time.monotonic() + self.interval_s
            while not self._stop.is_set():
                until = next_tick if not self._rescan else min(next_tick, time.monotonic() + QUIET_S)
                if link:        # a swap of the link is an event in its parent, which nobody watches
                    until = min(until, time.monotonic() + 1.0)
                changed = watcher.wait(max(0.0, until - time.monotonic()), self._wake_r)
                if link and watcher.retarget():
                    log.info("%s now points to %s", self.policies.directory,
                             os.path.realpath(self.policies.directory))
                    changed = True
                try:
                    while os.read(self._wake_r, 64):
                        pass
                except BlockingIOError:
                    pass
                if self._stop.is_set():
                    break
                if self._reload:
                    self._reload = False
                    self.policies.forget()            # refused files are tried again too
                    changed = True
                if changed or self._rescan:
                    self.reconcile("file")
                if time.monotonic() >= next_tick:
                    self.reconcile("timer")
                    self.collect()
                    next_tick = time.monotonic() + self.interval_s
        finally:
            watcher.close()

    def stalled(self) -> str | None:
        """Why the loop looks stuck, for /healthz: no reconcile for 3 intervals (and 10 s)."""
        since = time.time() - (self.health.last_reconcile or self.health.started)
        if since > 3 * self.interval_s + 10:
            return f"no reconcile for {since:.0f}s (interval {self.interval_s:g}s)"
        return None

    def reload(self) -> None:
        """SIGHUP: re-read the files now."""
        self._reload = True
        self.wake()
