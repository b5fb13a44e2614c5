"""Types of the C extension cgman/_fastread.c."""
from typing import Sequence

def pread_all(fds: Sequence[int], nthreads: int = 2) -> list[bytes | int]: ...
