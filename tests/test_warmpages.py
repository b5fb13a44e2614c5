"""cgman/cli/warmpages.py on the real kernel: a forked child reports the pages it wrote, and a
later fork that copies them first (MADV_POPULATE_WRITE) takes no copy-on-write faults when it
writes them. Each child is a fork of this test process, as a supervisor is of the run server."""

from __future__ import annotations

import array
import ctypes
import mmap
import os
import resource

import pytest

from cgman.cli import warmpages

MIB = 1 << 20
PAGE = warmpages.PAGE


def in_child(fn) -> bytes:
    """fn() in a forked child; what it returned (bytes), through a pipe."""
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:
        code = 1
        try:
            os.write(w, fn())
            code = 0
        finally:
            os._exit(code)
    os.close(w)
    out = b""
    while chunk := os.read(r, 1 << 16):
        out += chunk
    os.close(r)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    return out


@pytest.fixture(scope="module")
def region():
    """4 MiB of private anonymous memory, in 4 KiB pages (no transparent huge page, whose pages
    pagemap calls exclusive by a heuristic), that this process has written (so a fork shares
    its pages), and its address."""
    buf = mmap.mmap(-1, 4 * MIB, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
    buf.madvise(mmap.MADV_NOHUGEPAGE)
    for i in range(0, len(buf), PAGE):
        buf[i] = 1
    return buf, ctypes.addressof(ctypes.c_char.from_buffer(buf))


def write_first_mib(buf: mmap.mmap) -> int:
    """Write one byte of each page of the first MiB; the minor faults that took."""
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    for i in range(0, MIB, PAGE):
        buf[i] = 2
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before


def test_a_child_reports_what_it_wrote_and_a_later_child_copies_it_ahead(region):
    buf, addr = region

    def report() -> bytes:
        write_first_mib(buf)
        return warmpages.written()
    pages = in_child(report)
    pairs = array.array("Q", pages)
    ranges = list(zip(pairs[::2], pairs[1::2], strict=True))
    covered = sum(max(0, min(a + n, addr + MIB) - max(a, addr)) for a, n in ranges)
    assert covered == MIB                       # every page written in the first MiB is listed
    not_written = sum(max(0, min(a + n, addr + 4 * MIB) - max(a, addr + 2 * MIB)) for a, n in ranges)
    assert not_written == 0                     # and none of the part left alone

    def faults_after(ranges: bytes) -> bytes:
        before = bytes(buf)
        copied = warmpages.populate(ranges)
        assert bytes(buf) == before                 # copied, not changed
        return f"{copied} {write_first_mib(buf)}".encode()
    copied, faults = map(int, in_child(lambda: faults_after(pages)).split())
    _, faults_without = map(int, in_child(lambda: faults_after(b"")).split())
    assert copied >= MIB and faults < 16 and faults_without >= MIB // PAGE - 16, (copied, faults, faults_without)


@pytest.mark.parametrize("ranges", [
    array.array("Q", [PAGE, 16 * PAGE]).tobytes(),              # not this process's memory
    array.array("Q", [0xFFFF_8000_0000_0000, PAGE]).tobytes(),  # the kernel's half
    b"\x00" * 15,                                               # not pairs of uint64s
    b"\x00" * (warmpages.MAX_BYTES + 16),                       # over the bound
])
def test_populate_copies_only_its_own_memory(ranges):
    assert int(in_child(lambda: str(warmpages.populate(ranges)).encode())) == 0


def test_one_spare_copies_at_most_max_copy(region, monkeypatch):
    buf, addr = region
    monkeypatch.setattr(warmpages, "MAX_COPY", 3 * PAGE)
    ranges = array.array("Q", [addr, MIB, addr + 2 * MIB, MIB]).tobytes()
    assert int(in_child(lambda: str(warmpages.populate(ranges)).encode())) == 3 * PAGE
