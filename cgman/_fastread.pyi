"""Types of the C extension cgman/_fastread.c."""
from typing import Sequence

NSLOTS: int
SLOTS: tuple[str, ...]     # the per-container int64 slots, by name, in order
KINDS: tuple[str, ...]     # the file kinds read_parse knows, by statfiles parser name; 0 is "skip"

def pread_all(fds: Sequence[int], nthreads: int = 2) -> list[bytes | int]: ...
def read_parse(fds: Sequence[int], kinds: bytes, nthreads: int = 2) -> bytearray: ...
def render(values: bytes | bytearray, labels: Sequence[bytes],
           metrics: Sequence[tuple[bytes, bytes, int, bool]]) -> bytes: ...
