"""The pages a served run writes: learned from one supervisor, copied ahead by the next.

A supervisor is a fork of the run server (served.py), and each page of the server it writes
(a reference count, an object, the interpreter's inline caches) is copied at that first
write: measured here, ~1,200 pages a `cgman run --rm -- /bin/true` at ~4.5 us each, 5 ms of a
served run that takes about 20. A run writes nearly the same pages each time, so:

- a supervisor whose client has its exit code lists the pages it holds alone in its private
  anonymous memory (``/proc/self/pagemap``: present and "exclusively mapped", bit 56: the
  pages it copied or filled) and sends the list to the server (``written``);
- the server keeps the latest list, and the spare supervisor it forks next copies those pages
  while it waits for its request (``populate``: madvise MADV_POPULATE_WRITE, Linux 5.14), so
  the run it then serves finds them copied.

Memory: a spare holds the pages a run writes, whether its own run writes them all or not
(measured: a supervisor ~0.5 MiB, ~12 %, more than without the copy); a page no longer in the
spare's own private anonymous memory is skipped, and a list and what one spare copies are bounded
(MAX_BYTES, MAX_COPY: for the pages of a huge page, pagemap's "exclusive" is a guess). Where
pagemap or the advice is missing, nothing is learned or copied and runs fault as before.
"""

from __future__ import annotations

import array
import os

PAGE = os.sysconf("SC_PAGE_SIZE")
PRESENT, EXCLUSIVE = 1 << 63, 1 << 56
MAX_BYTES = 64 << 10            # one list: 4,096 ranges, far more than a run writes (~300)
MAX_COPY = 32 << 20             # copied by one spare at most (a run writes ~5 MiB)


def _anonymous() -> list[tuple[int, int]]:
    """(start, end) of this process's private writable anonymous mappings and its heap."""
    out = []
    with open("/proc/self/maps", "rb") as f:
        for line in f:
            fields = line.split()
            if len(fields) >= 5 and fields[1][:2] == b"rw" and fields[1][3:4] == b"p" and \
                    (len(fields) == 5 or fields[5] == b"[heap]"):
                lo, _, hi = fields[0].partition(b"-")
                out.append((int(lo, 16), int(hi, 16)))
    return out


def written() -> bytes:
    """(address, length) pairs, native uint64s, of the pages this process holds alone; b""
    where pagemap cannot be read."""
    out = array.array("Q")
    try:
        fd = os.open("/proc/self/pagemap", os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        return b""
    try:
        for lo, hi in _anonymous():
            entries = array.array("Q", os.pread(fd, (hi - lo) // PAGE * 8, lo // PAGE * 8))
            start = -1
            for i, e in enumerate(entries):
                mine = e & PRESENT and e & EXCLUSIVE
                if mine and start < 0:
                    start = i
                elif not mine and start >= 0:
                    out.extend((lo + start * PAGE, (i - start) * PAGE))
                    start = -1
            if start >= 0:
                out.extend((lo + start * PAGE, (len(entries) - start) * PAGE))
    except (OSError, ValueError):
        return b""
    finally:
        os.close(fd)
    data = out.tobytes()
    return data if len(data) <= MAX_BYTES else b""


def populate(ranges: bytes) -> int:
    """Copy (fault in, writable) the pages of ``ranges`` that lie in this process's own private
    anonymous memory; the bytes copied."""
    if not ranges or len(ranges) > MAX_BYTES or len(ranges) % 16:
        return 0
    pairs = array.array("Q", ranges)
    mine = _anonymous()
    keep, total = array.array("Q"), 0
    for i in range(0, len(pairs), 2):
        lo, hi = pairs[i], pairs[i] + pairs[i + 1]
        for mlo, mhi in mine:
            a, b = max(lo, mlo), min(hi, mhi)
            b = min(b, a + MAX_COPY - total)
            if a < b and not a % PAGE:
                keep.extend((a, b - a))
                total += b - a
    from .._spawn import populate_write
    return populate_write(keep.tobytes())
