"""Types of the C extension cgman/_spawn.c."""
from typing import Any, Sequence

OP_MOUNT: int
OP_MKDIR: int
OP_TOUCH: int
OP_PIVOT: int
OP_CHDIR: int
OP_UMOUNT: int
OP_SYMLINK: int
OP_OPTIONAL: int
OP_HOLD: int
OP_BIND_HELD: int
OP_RDONLY_TREE: int
OP_OVERLAY_HELD: int
OP_TOLERANT: int
MS_RDONLY: int
MS_NOSUID: int
MS_NODEV: int
MS_NOEXEC: int
MS_REMOUNT: int
MS_BIND: int
MS_REC: int
MS_PRIVATE: int
MS_NOATIME: int
MS_NODIRATIME: int
MS_RELATIME: int
MS_STRICTATIME: int
CLONE_NEWCGROUP: int
CLONE_NEWUTS: int
CLONE_NEWIPC: int
CLONE_NEWPID: int
CLONE_NEWNET: int
CLONE_NEWNS: int
CLONE_NEWUSER: int
STAGES: tuple[str, ...]

def spawn(argv: Sequence[bytes], envp: Sequence[bytes], clone_flags: int = ..., cgroup_fd: int = ...,
          unshare_flags: int = ..., hostname: bytes | None = ..., lo_up: bool = ...,
          ops: Sequence[tuple[Any, ...]] | None = ..., init_fd: int = ..., setsid: bool = ...,
          pdeathsig: int = ..., uid: int = ..., gid: int = ...,
          setns_fds: Sequence[int] | None = ..., drop_caps: bool = ..., cap_keep: int = ...,
          no_new_privs: bool = ..., seccomp: bytes | None = ..., run_uid: int = ...,
          run_gid: int = ..., join_fds: Sequence[int] | None = ...,
          held: bool = ..., netns_fd: int = ...) -> tuple[int, bool, int, int]: ...

def new_netns(lo_up: bool = ...) -> int: ...

def populate_write(ranges: bytes) -> int: ...
