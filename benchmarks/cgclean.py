"""Shared by the benchmarks: remove a benchmark's own cgroup tree, deepest first."""

from __future__ import annotations

import os
import time


def rmdir_tree(top: str) -> tuple[list[str], list[str]]:
    """rmdir ``top`` and everything below it, deepest first, retrying briefly while a
    just-exited task keeps a group busy. Returns (removed, failures with the reason)."""
    removed: list[str] = []
    failed: list[str] = []
    if not os.path.isdir(top) or os.path.islink(top):
        return removed, failed
    dirs = [os.path.join(cur, d) for cur, subs, _ in os.walk(top, followlinks=False) for d in subs]
    dirs.sort(key=lambda p: -p.count("/"))
    for d in dirs + [top]:
        for attempt in range(50):
            try:
                os.rmdir(d)
                removed.append(d)
                break
            except FileNotFoundError:
                break
            except OSError as e:
                if attempt == 49:
                    failed.append(f"{d}: {e.strerror}")
                else:
                    time.sleep(0.02)
    return removed, failed
