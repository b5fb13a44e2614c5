"""One finding of `cgman doctor`: what was checked, whether it holds, and the fix."""

from __future__ import annotations

from dataclasses import asdict, dataclass


@dataclass(frozen=True)
class Check:
    """One line of `cgman doctor`: what was checked, whether it passed, and the fix."""

    name: str
    ok: bool
    detail: str
    fix: str = ""
    warn: bool = False         # a limitation worth knowing, not a failure (exit 0)

    def as_dict(self) -> dict[str, object]:
        return asdict(self)
