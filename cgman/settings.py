"""What the operator set: global flags and CGMAN_* variables, resolved once into one value.

Only the command line reads the environment: it hands its flags and ``os.environ`` to
``Settings.resolve`` and passes the result down (a ``Store`` carries it to the code that
launches, waits on and bills containers). Library code never reads ``os.environ``
(tests/test_layers.py holds it to that). ``None`` in a field means "not set": the library
that owns the setting applies its own default (records.py the run and state dirs,
drivers the cgroup root, accounting the sample interval and the ledger's lock timeout).

Each variable is named here once; the typer options and the typer-free option tables of
the CLI name the same constants.
"""

from __future__ import annotations

import math

from dataclasses import dataclass

from .errors import CgmanError
from .inputs import DEFAULT_LIMITS, Limits

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Mapping

CGROUP_ROOT_ENV = "CGMAN_CGROUP_ROOT"
RUN_DIR_ENV = "CGMAN_RUN_DIR"
STATE_DIR_ENV = "CGMAN_STATE_DIR"
BRIDGE_DIR_ENV = "CGMAN_BRIDGE_DIR"
POLICY_DIR_ENV = "CGMAN_POLICY_DIR"
SAMPLE_INTERVAL_ENV = "CGMAN_SAMPLE_INTERVAL"
LEDGER_TIMEOUT_ENV = "CGMAN_LEDGER_TIMEOUT"
MAX_INPUT_BYTES_ENV = "CGMAN_MAX_INPUT_BYTES"
MAX_GROUPS_ENV = "CGMAN_MAX_GROUPS"
CGROUP_DRIVER_ENV = "CGMAN_CGROUP_DRIVER"
CGROUP_DRIVERS = ("cgroupfs", "systemd")     # --cgroup-driver / CGMAN_CGROUP_DRIVER


@dataclass(frozen=True)
class Settings:
    """One command's settings. Built by ``resolve`` at the edge, or directly in tests."""

    cgroup_root: str | None = None          # --cgroup-root, CGMAN_CGROUP_ROOT (validated where opened)
    run_dir: str | None = None              # --run-dir, CGMAN_RUN_DIR: live container records
    state_dir: str | None = None            # --state-dir, CGMAN_STATE_DIR: ledger, overlay scratch
    bridge_dir: str | None = None           # CGMAN_BRIDGE_DIR: the host's bridge address leases
    policy_dir: str | None = None           # CGMAN_POLICY_DIR (else /etc/cgman/policies, ./policies)
    sample_interval_s: float | None = None  # CGMAN_SAMPLE_INTERVAL: memory samples; 0 turns them off
    ledger_timeout_s: float | None = None   # CGMAN_LEDGER_TIMEOUT: wait for the ledger's lock
    input_limits: Limits = DEFAULT_LIMITS   # CGMAN_MAX_INPUT_BYTES, CGMAN_MAX_GROUPS
    term: str | None = None                 # the operator's TERM, passed on to containers
    verbose: bool = False                   # -v: every cgroup write logged, tracebacks shown
    cgroup_driver: str = "cgroupfs"         # CGMAN_CGROUP_DRIVER: systemd makes containers transient scopes

    @classmethod
    def resolve(cls, environ: Mapping[str, str], *, cgroup_root: str | None = None, run_dir: str | None = None,
                state_dir: str | None = None, verbose: bool = False, cgroup_driver: str | None = None) -> "Settings":
        """Flags first, then the environment; CgmanError naming the variable if one is malformed."""
        return cls(cgroup_root=cgroup_root or environ.get(CGROUP_ROOT_ENV) or None,
                   run_dir=run_dir or environ.get(RUN_DIR_ENV) or None,
                   state_dir=state_dir or environ.get(STATE_DIR_ENV) or None,
                   bridge_dir=environ.get(BRIDGE_DIR_ENV) or None,
                   policy_dir=environ.get(POLICY_DIR_ENV) or None,
                   sample_interval_s=sample_interval_s(environ.get(SAMPLE_INTERVAL_ENV)),
                   ledger_timeout_s=ledger_timeout_s(environ.get(LEDGER_TIMEOUT_ENV)),
                   input_limits=input_limits(environ.get(MAX_INPUT_BYTES_ENV, ""), environ.get(MAX_GROUPS_ENV, "")),
                   term=environ.get("TERM"), verbose=verbose,
                   cgroup_driver=driver_of(cgroup_driver, "--cgroup-driver") if cgroup_driver
                   else driver_of(environ.get(CGROUP_DRIVER_ENV), CGROUP_DRIVER_ENV))


class BadFlag(CgmanError):
    """A flag's value no command takes: a usage error (exit 2), as typer's own."""

    exit_code = 2


def driver_of(raw: str | None, where: str) -> str:
    """--cgroup-driver or CGMAN_CGROUP_DRIVER (``where``): cgroupfs (the default) or systemd."""
    if raw in (None, ""):
        return "cgroupfs"
    if raw not in CGROUP_DRIVERS:
        if where.startswith("--"):
            raise BadFlag(f"{where}: {raw!r} is not one of {', '.join(CGROUP_DRIVERS)}")
        raise CgmanError(f"{where}={raw!r}: use {' or '.join(CGROUP_DRIVERS)}")
    return raw


def sample_interval_s(raw: str | None) -> float | None:
    """CGMAN_SAMPLE_INTERVAL: seconds between a running container's memory samples (0: none)."""
    if raw is None:
        return None
    try:
        v = float(raw)
    except ValueError:
        v = math.nan
    if not math.isfinite(v):          # inf would overflow the supervisor's poll, nan never compares
        raise CgmanError(f"{SAMPLE_INTERVAL_ENV}={raw!r}: expected seconds, e.g. 5 or 0.5")
    if v < 0:
        raise CgmanError(f"{SAMPLE_INTERVAL_ENV}={raw!r}: must be >= 0")
    return v


def ledger_timeout_s(raw: str | None) -> float | None:
    """CGMAN_LEDGER_TIMEOUT: seconds to wait for the ledger's lock (tests shorten it). A value
    that is no number is ignored, as it always was: it only tunes how long to wait."""
    try:
        v = None if raw is None else float(raw)
    except ValueError:
        return None
    return v if v is None or math.isfinite(v) and v >= 0 else None


def input_limits(size: str, groups: str) -> Limits:
    """Bounds on policy files and price sheets: CGMAN_MAX_INPUT_BYTES (bytes, or 8Mi) per file
    and CGMAN_MAX_GROUPS per apply; empty strings keep the defaults."""
    limits = DEFAULT_LIMITS
    if size:
        from .units import UnitError, parse_quantity    # units imports the model: not on every run
        try:
            n = parse_quantity(size)
        except UnitError:
            n = 0
        if not isinstance(n, int) or n < 1:
            raise CgmanError(f"{MAX_INPUT_BYTES_ENV}={size[:40]!r}: expected a size such as 4194304 or 8Mi")
        limits = Limits(max_input_bytes=n, max_groups=limits.max_groups)
    if groups:
        if not (groups.isascii() and groups.isdigit() and len(groups) < 10 and int(groups) > 0):
            raise CgmanError(f"{MAX_GROUPS_ENV}={groups[:40]!r}: expected a positive number such as 10000")
        limits = Limits(max_input_bytes=limits.max_input_bytes, max_groups=int(groups))
    return limits
