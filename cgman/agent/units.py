"""The agent's reconcile through the systemd driver (`cgman agent --cgroup-driver systemd`).

The same loop as with cgroupfs (service.Agent): each reconcile applies the files in force as
unit properties (drivers/systemd/reconcile.apply_units: only properties systemd reports otherwise
are set), so drift correction compares unit properties. A change to a property whose wanted value
did not move since the last apply is drift (someone ran `systemctl set-property`), and a slice
the last apply had made that is gone again is drift too. One D-Bus connection per reconcile.
"""

from __future__ import annotations

import logging

from ..drivers.systemd.bus import SystemdBus
from ..drivers.systemd.reconcile import ApplyRolledBack, UnitResult, apply_units, prune_units
from ..drivers.systemd.units import UnitPlanError
from ..model import PolicySet

log = logging.getLogger("cgman.agent")

# What the agent treats as "the files' new version was refused": that version goes back to the
# last one applied (policies.PolicyDir.refuse_changed), as a kernel refusal does with cgroupfs.
REFUSALS = (UnitPlanError, ApplyRolledBack)


class UnitApplier:
    def __init__(self, root: str, timeout_s: float = 30.0) -> None:
        self.root, self.timeout_s = root, timeout_s
        self._desired: dict[tuple[str, str], str] = {}      # (unit, property) -> value of the last apply
        self._units: set[str] = set()

    @staticmethod
    def check() -> None:
        """At start: no system bus or no systemd is one line with the fix (BusUnavailable)."""
        with SystemdBus():
            pass

    def apply(self, policies: PolicySet) -> UnitResult:
        with SystemdBus(timeout_s=self.timeout_s) as bus:
            return apply_units(policies, self.root, bus)

    def prune(self, policies: PolicySet) -> list[str]:
        with SystemdBus(timeout_s=self.timeout_s) as bus:
            return prune_units(policies, self.root, bus)

    def report(self, res: UnitResult, edited: bool, files: int) -> tuple[int, int]:
        """Log each change as drift or as applied; returns (drift, applied)."""
        drift = applied = 0
        for name in res.created:
            if name in self._units:
                drift += 1
                log.warning("drift: slice %s was gone; started it again", name)
            else:
                applied += 1
                log.info("started %s", name)
        for ch in res.changes:
            if self._desired.get((ch.unit, ch.prop)) == ch.new:
                drift += 1
                log.warning("drift corrected: %s %s was %s, set back to %s", ch.unit, ch.prop, ch.old, ch.new)
            else:
                applied += 1
                log.info("set %s", ch)
        if edited or applied:
            log.info("applied %d file(s) through systemd: %d slices started, %d properties changed, %d already "
                     "matched", files, len(res.created), len(res.changes), res.unchanged)
        self._desired = dict(res.wanted)
        self._units = {unit for unit, _ in res.wanted} | set(res.created)
        return drift, applied
