"""The running kernel's version, for features that depend on it (one parser for all callers)."""

from __future__ import annotations

import os
import re


def version(release: str | None = None) -> tuple[int, int]:
    """(major, minor) of ``release`` (default: this kernel's); (0, 0) if it does not parse."""
    m = re.match(r"([0-9]+)\.([0-9]+)", release if release is not None else os.uname().release)
    return (int(m.group(1)), int(m.group(2))) if m else (0, 0)


def at_least(major: int, minor: int) -> bool:
    return version() >= (major, minor)
