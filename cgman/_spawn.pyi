"""Types of the C extension cgman/_spawn.c."""
from typing import Any, Sequence

OP_MOUNT: int
OP_MKDIR: int
OP_TOUCH: int
OP_PIVOT: int
OP_CHDIR: int
OP_UMOUNT: int
OP_SYMLINK: int
STAGES: tuple[str, ...]

def spawn(argv: Sequence[bytes], envp: Sequence[bytes], clone_flags: int = ..., cgroup_fd: int = ...,
          unshare_flags: int = ..., hostname: bytes | None = ..., lo_up: bool = ...,
          ops: Sequence[tuple[Any, ...]] | None = ..., init: bool = ..., setsid: bool = ...,
          pdeathsig: int = ..., uid: int = ..., gid: int = ...,
          setns_fds: Sequence[int] | None = ...) -> tuple[int, bool, int, int]: ...
