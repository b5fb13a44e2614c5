"""Linux capabilities by name (<linux/capability.h> numbering) and cgman's default set."""

from __future__ import annotations

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Iterable


# Index = capability number, as the kernel numbers them.
NAMES = ("CHOWN", "DAC_OVERRIDE", "DAC_READ_SEARCH", "FOWNER", "FSETID", "KILL", "SETGID", "SETUID",
         "SETPCAP", "LINUX_IMMUTABLE", "NET_BIND_SERVICE", "NET_BROADCAST", "NET_ADMIN", "NET_RAW",
         "IPC_LOCK", "IPC_OWNER", "SYS_MODULE", "SYS_RAWIO", "SYS_CHROOT", "SYS_PTRACE", "SYS_PACCT",
         "SYS_ADMIN", "SYS_BOOT", "SYS_NICE", "SYS_RESOURCE", "SYS_TIME", "SYS_TTY_CONFIG", "MKNOD",
         "LEASE", "AUDIT_WRITE", "AUDIT_CONTROL", "SETFCAP", "MAC_OVERRIDE", "MAC_ADMIN", "SYSLOG",
         "WAKE_ALARM", "BLOCK_SUSPEND", "AUDIT_READ", "PERFMON", "BPF", "CHECKPOINT_RESTORE")
ALL = frozenset(NAMES)
# Podman's default list. Docker adds AUDIT_WRITE, MKNOD and NET_RAW; cgman leaves them out
# (ping needs NET_RAW: `--cap-add NET_RAW` where the group allows it).
DEFAULT = frozenset({"CHOWN", "DAC_OVERRIDE", "FOWNER", "FSETID", "KILL", "NET_BIND_SERVICE", "SETFCAP",
                     "SETGID", "SETPCAP", "SETUID", "SYS_CHROOT"})


def normalize(name: str) -> str:
    """'cap_net_raw', 'NET_RAW' -> 'NET_RAW'; 'all' -> 'ALL'. ValueError for an unknown name."""
    n = str(name).strip().upper()
    n = n[4:] if n.startswith("CAP_") else n
    if n != "ALL" and n not in ALL:
        shown = n if len(n) <= 40 else n[:40] + "…"
        raise ValueError(f"unknown capability {shown!r} (e.g. NET_RAW, SYS_PTRACE or ALL; see capabilities(7))")
    return n


def apply(base: Iterable[str], add: Iterable[str] = (), drop: Iterable[str] = ()) -> frozenset[str]:
    """Docker's rule: ``drop: [ALL]`` starts from nothing, ``add: [ALL]`` from everything;
    otherwise the base plus ``add`` minus ``drop``."""
    add_s, drop_s = {normalize(c) for c in add}, {normalize(c) for c in drop}
    caps = set(ALL) if "ALL" in add_s else set(base)
    if "ALL" in drop_s:
        caps = set()
    else:
        caps -= drop_s
    caps |= add_s - {"ALL"}
    return frozenset(caps)


def mask(caps: Iterable[str]) -> int:
    """The kernel's bit mask of a set of names."""
    m = 0
    for c in caps:
        m |= 1 << NAMES.index(c)
    return m


def names_of(m: int) -> list[str]:
    return [n for i, n in enumerate(NAMES) if m >> i & 1]
