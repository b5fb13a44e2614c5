"""Pure unit conversions between cgroup v1 and v2 scales (SPEC §2).

Each function has table tests at min, default, max and out of range.
"""

from __future__ import annotations

import math

from .model import Unlimited

TYPE_CHECKING = False
if TYPE_CHECKING:
    from .model import WeightFormula

SHARES_MIN, SHARES_DEFAULT, SHARES_MAX = 2, 1024, 262144
WEIGHT_MIN, WEIGHT_DEFAULT, WEIGHT_MAX = 1, 100, 10000
BFQ_MIN, BFQ_MAX = 1, 1000
BLKIO_WEIGHT_MIN, BLKIO_WEIGHT_MAX = 10, 1000
CFS_QUOTA_MAX_USEC = (1 << 44) - 1      # kernel/sched/core.c max_cfs_quota_period / runtime limit


def _check(name: str, value: int, lo: int, hi: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or not lo <= value <= hi:
        raise ValueError(f"{name} must be an integer in {lo}..{hi}, got {value!r}")


def shares_to_weight(shares: int, formula: WeightFormula = "oci") -> int:
    """cpu.shares (v1, 2..262144) -> cpu.weight (v2, 1..10000)."""
    _check("cpu shares", shares, SHARES_MIN, SHARES_MAX)
    if formula == "systemd":
        return max(WEIGHT_MIN, min(WEIGHT_MAX, shares * 100 // 1024))
    if formula != "oci":
        raise ValueError(f"unknown cpu weight formula {formula!r}")
    # opencontainers/cgroups ConvertCPUSharesToCgroupV2Value: a quadratic in
    # log2 space through (2,1), (1024,100), (262144,10000).
    if shares <= SHARES_MIN:
        return WEIGHT_MIN
    if shares >= SHARES_MAX:
        return WEIGHT_MAX
    log = math.log2(shares)
    exponent = (log * log + 125 * log) / 612.0 - 7.0 / 34.0
    return int(math.ceil(10 ** exponent))


def cpu_weight(weight: int | None, shares: int | None, formula: WeightFormula = "oci") -> int | None:
    """The cgroup v2 cpu weight a policy asks for: its weight, else its v1 shares converted;
    None when it names neither (leave the kernel's value)."""
    if weight is not None:
        return weight
    return None if shares is None else shares_to_weight(shares, formula)


def weight_to_shares(weight: int, formula: WeightFormula = "oci") -> int:
    """cpu.weight (v2) -> cpu.shares (v1).

    Under ``oci`` the inverse is the largest shares value whose forward
    conversion does not exceed ``weight``; the forward map is monotonic, so a
    binary search over 2..262144 finds it.
    """
    _check("cpu weight", weight, WEIGHT_MIN, WEIGHT_MAX)
    if formula == "systemd":
        return max(SHARES_MIN, min(SHARES_MAX, weight * 1024 // 100))
    if formula != "oci":
        raise ValueError(f"unknown cpu weight formula {formula!r}")
    lo, hi = SHARES_MIN, SHARES_MAX
    while lo < hi:          # find the largest s with shares_to_weight(s) <= weight
        mid = (lo + hi + 1) // 2
        if shares_to_weight(mid) <= weight:
            lo = mid
        else:
            hi = mid - 1
    return lo


def bfq_weight(weight: int) -> int:
    """io.weight (1..10000) -> BFQ weight (1..1000)."""
    _check("io weight", weight, WEIGHT_MIN, WEIGHT_MAX)
    if weight <= 100:
        return weight
    return 100 + (weight - 100) * 900 // 9900


def blkio_cfq_weight(weight: int) -> int:
    """io.weight (1..10000) -> legacy CFQ blkio.weight (10..1000)."""
    _check("io weight", weight, WEIGHT_MIN, WEIGHT_MAX)
    return max(BLKIO_WEIGHT_MIN, min(BLKIO_WEIGHT_MAX, weight // 10))


def cpu_quota_usec(cpus: float | Unlimited, period_usec: int) -> int | None:
    """CPUs and period -> CFS quota in µs; None for unlimited."""
    if isinstance(cpus, Unlimited):
        return None
    if period_usec < 1000 or period_usec > 1_000_000:
        raise ValueError(f"cpu period must be 1ms..1s, got {period_usec}us")
    quota = round(cpus * period_usec)
    if quota > CFS_QUOTA_MAX_USEC:
        raise ValueError(f"cpu quota {quota}us is above the kernel maximum of {CFS_QUOTA_MAX_USEC}us "
                         f"(use max for unlimited)")
    if quota < 1000:
        raise ValueError(f"cpu quota {quota}us is below the kernel minimum of 1000us "
                         f"(raise cpu.max or cpu.period)")
    return quota
