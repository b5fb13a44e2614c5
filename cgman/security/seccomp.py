"""seccomp profiles in the JSON format Docker, Podman, runc and crun read, compiled for one container.

A profile (``default``: cgman's own, ``seccomp-default.json`` beside this file, with the
semantics of Docker's default; or an operator's FILE) is checked strictly, reduced to the
rules that apply to this container (``includes``/``excludes`` by the capabilities it holds,
the architecture and the kernel version), compiled by libseccomp (cgman._secure) into a
BPF program, and cached by the hash of that reduced input, as crun does: in memory for
the life of the process and in ``<state-dir>/seccomp/<sha256>.bpf`` across processes.
The launch helper loads the bytes with seccomp(2); libseccomp never runs on the launch path
once a program is cached.
"""

from __future__ import annotations

import json
import os
import re

from ..errors import CgmanError
from ..kernel import version as kernel_version
from . import caps as C

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

try:             # the built-in sha256: hashlib loads OpenSSL first (~3 ms of every direct `cgman run`)
    from _sha256 import sha256
except ImportError:                     # Python 3.12 renamed it
    try:
        from _sha2 import sha256        # type: ignore[no-redef]
    except ImportError:
        from hashlib import sha256      # type: ignore[no-redef]

DEFAULT = "default"
UNCONFINED = "unconfined"
DEFAULT_FILE = os.path.join(os.path.dirname(__file__), "seccomp-default.json")
MAX_PROFILE_BYTES = 1 << 20
# libseccomp's SCMP_ARCH_* names -> the GOARCH names Docker's ``arches`` conditions use.
GO_ARCH = {"SCMP_ARCH_X86_64": "amd64", "SCMP_ARCH_X86": "386", "SCMP_ARCH_X32": "x32",
           "SCMP_ARCH_AARCH64": "arm64", "SCMP_ARCH_ARM": "arm", "SCMP_ARCH_PPC64LE": "ppc64le",
           "SCMP_ARCH_S390X": "s390x", "SCMP_ARCH_S390": "s390", "SCMP_ARCH_RISCV64": "riscv64",
           "SCMP_ARCH_MIPS64": "mips64", "SCMP_ARCH_MIPSEL64": "mips64le"}
_TOP_KEYS = {"defaultAction", "defaultErrnoRet", "architectures", "archMap", "syscalls", "flags", "comment"}
_RULE_KEYS = {"names", "name", "action", "errnoRet", "args", "includes", "excludes", "comment"}
_ARG_KEYS = {"index", "value", "valueTwo", "op"}
_COND_KEYS = {"caps", "arches", "minKernel"}
_MEMO: dict[str, bytes] = {}
_SEEN: dict[tuple[Any, ...], tuple[bytes, str]] = {}    # (the file read, as fstat saw it; caps) -> program


def forget() -> None:
    """Drop what this process remembers of profiles and programs (the next use reads the file)."""
    _MEMO.clear()
    _SEEN.clear()


class ProfileError(CgmanError):
    """A seccomp profile that cannot be used: names the file and the key."""


def _secure() -> Any:
    from .. import _secure
    return _secure


_COMPILER: list[str] = []


def _compiler() -> str:
    """Which build of the compiler (cgman._secure) made a program: its path, size and mtime, so
    that a rebuilt one (other options, another libseccomp) never reuses an older one's output."""
    if not _COMPILER:
        path = _secure().__file__
        st = os.stat(path)
        _COMPILER.append(f"{path}|{st.st_size}|{st.st_mtime_ns}")
    return _COMPILER[0]


class _Checker:
    def __init__(self, file: str) -> None:
        self.file = file

    def fail(self, key: str, msg: str) -> ProfileError:
        return ProfileError(f"{self.file}: {key}: {msg}" if key else f"{self.file}: {msg}")

    def keys(self, d: Any, allowed: set[str], key: str) -> dict[str, Any]:
        if not isinstance(d, dict):
            raise self.fail(key, "expected an object")
        for k in d:
            if k not in allowed:
                where = f"{key}.{k}" if key else k
                raise self.fail(where, f"unknown key; expected one of: {', '.join(sorted(allowed))}")
        return d

    def name(self, kind: str, v: Any, key: str) -> str:
        if not isinstance(v, str) or not _secure().check_name(kind, v):
            shown = repr(v)[:60]
            raise self.fail(key, f"unknown {kind} {shown}" + (" (libseccomp does not know it on this host)"
                                                              if kind == "syscall" else ""))
        return v

    def integer(self, v: Any, key: str, lo: int, hi: int) -> int:
        if isinstance(v, bool) or not isinstance(v, int) or not lo <= v <= hi:
            raise self.fail(key, f"expected an integer in {lo}..{hi}, got {repr(v)[:40]}")
        return v

    def str_list(self, v: Any, key: str) -> list[str]:
        if not isinstance(v, list) or not all(isinstance(x, str) for x in v):
            raise self.fail(key, "expected a list of strings")
        return v


def _read(path: str, seen: list[os.stat_result] | None = None) -> tuple[bytes, str]:
    """The profile's bytes and how errors name it; ``seen`` gets what fstat said of the file read."""
    shown = "cgman's default profile" if path == DEFAULT_FILE else path
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC | os.O_NONBLOCK)
    except OSError as e:
        raise ProfileError(f"{shown}: cannot open the seccomp profile: {e.strerror}") from None
    try:
        import stat
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise ProfileError(f"{shown}: not a regular file")
        if seen is not None:
            seen.append(st)
        data = os.read(fd, MAX_PROFILE_BYTES + 1)
    finally:
        os.close(fd)
    if len(data) > MAX_PROFILE_BYTES:
        raise ProfileError(f"{shown}: larger than {MAX_PROFILE_BYTES} bytes; is it a seccomp profile?")
    return data, shown


def parse(data: bytes, shown: str) -> dict[str, Any]:
    try:
        doc = json.loads(data)
    except (ValueError, UnicodeDecodeError) as e:
        where = f":{e.lineno}:{e.colno}" if isinstance(e, json.JSONDecodeError) else ""
        msg = e.msg if isinstance(e, json.JSONDecodeError) else str(e)
        raise ProfileError(f"{shown}{where}: not valid JSON: {msg}") from None
    check(doc, shown)
    return doc


def load(path: str) -> dict[str, Any]:
    """Read and check a profile file strictly; ProfileError names the file and key."""
    return parse(*_read(path))


def check(doc: Any, file: str) -> None:
    """Every key known, every action, operator, architecture and syscall known to libseccomp."""
    c = _Checker(file)
    c.keys(doc, _TOP_KEYS, "")
    if "defaultAction" not in doc:
        raise c.fail("defaultAction", "required key is missing")
    c.name("action", doc["defaultAction"], "defaultAction")
    c.integer(doc.get("defaultErrnoRet", 1), "defaultErrnoRet", 0, 4095)
    for i, a in enumerate(c.str_list(doc.get("architectures", []), "architectures")):
        c.name("arch", a, f"architectures[{i}]")
    if not isinstance(doc.get("archMap", []), list):
        raise c.fail("archMap", "expected a list")
    for i, m in enumerate(doc.get("archMap", [])):
        c.keys(m, {"architecture", "subArchitectures"}, f"archMap[{i}]")
        c.name("arch", m.get("architecture"), f"archMap[{i}].architecture")
        for j, a in enumerate(c.str_list(m.get("subArchitectures") or [], f"archMap[{i}].subArchitectures")):
            c.name("arch", a, f"archMap[{i}].subArchitectures[{j}]")
    if doc.get("flags") not in (None, []):
        raise c.fail("flags", "seccomp filter flags are not supported by cgman; remove the key")
    rules = doc.get("syscalls", [])
    if not isinstance(rules, list):
        raise c.fail("syscalls", "expected a list")
    for i, r in enumerate(rules):
        _check_rule(c, r, f"syscalls[{i}]")


def _check_rule(c: _Checker, r: Any, key: str) -> None:
    c.keys(r, _RULE_KEYS, key)
    names = c.str_list(r.get("names", [r["name"]] if "name" in r else []), f"{key}.names")
    if not names:
        raise c.fail(f"{key}.names", "no syscall named")
    for j, n in enumerate(names):
        c.name("syscall", n, f"{key}.names[{j}]")
    if "action" not in r:
        raise c.fail(f"{key}.action", "required key is missing")
    c.name("action", r["action"], f"{key}.action")
    c.integer(r.get("errnoRet", 1), f"{key}.errnoRet", 0, 4095)
    args = r.get("args") or []
    if not isinstance(args, list) or len(args) > 6:
        raise c.fail(f"{key}.args", "expected a list of at most 6 conditions")
    for j, a in enumerate(args):
        ak = f"{key}.args[{j}]"
        c.keys(a, _ARG_KEYS, ak)
        c.integer(a.get("index"), f"{ak}.index", 0, 5)
        c.integer(a.get("value", 0), f"{ak}.value", 0, 2**64 - 1)
        c.integer(a.get("valueTwo", 0), f"{ak}.valueTwo", 0, 2**64 - 1)
        c.name("op", a.get("op"), f"{ak}.op")
    for cond in ("includes", "excludes"):
        d = c.keys(r.get(cond) or {}, _COND_KEYS, f"{key}.{cond}")
        for j, cap in enumerate(c.str_list(d.get("caps", []), f"{key}.{cond}.caps")):
            try:
                C.normalize(cap)
            except ValueError as e:
                raise c.fail(f"{key}.{cond}.caps[{j}]", str(e)) from None
        c.str_list(d.get("arches", []), f"{key}.{cond}.arches")
        mk = d.get("minKernel")
        if mk is not None and (not isinstance(mk, str) or not re.fullmatch(r"[0-9]{1,4}\.[0-9]{1,4}", mk)):
            raise c.fail(f"{key}.{cond}.minKernel", "expected a kernel version such as \"4.8\"")


def _applies(r: dict[str, Any], held: frozenset[str], arch: str) -> bool:
    inc, exc = r.get("includes") or {}, r.get("excludes") or {}
    if any(C.normalize(c) not in held for c in inc.get("caps", [])):
        return False
    if inc.get("arches") and arch not in inc["arches"]:
        return False
    if inc.get("minKernel") and kernel_version() < tuple(int(x) for x in inc["minKernel"].split(".")):
        return False
    if any(C.normalize(c) in held for c in exc.get("caps", [])):
        return False
    return not (exc.get("arches") and arch in exc["arches"])


def reduce(doc: dict[str, Any], held: frozenset[str]) -> tuple[Any, ...]:
    """(default action, default errno, architectures, rules) for a container holding ``held``."""
    native = _secure().native_arch()
    arches = [native] + [a for a in doc.get("architectures", []) if a != native]
    for m in doc.get("archMap", []):
        if m["architecture"] == native:
            arches += [a for a in (m.get("subArchitectures") or []) if a not in arches]
    rules = tuple((tuple(r.get("names", [r.get("name")])), r["action"], r.get("errnoRet", 1),
                   tuple((a["index"], a["op"], a.get("value", 0), a.get("valueTwo", 0)) for a in r.get("args") or []))
                  for r in doc.get("syscalls", []) if _applies(r, held, GO_ARCH.get(native, native)))
    return (doc["defaultAction"], doc.get("defaultErrnoRet", 1), tuple(arches), rules)


def profile_path(setting: str) -> str | None:
    """``default`` -> the packaged file; ``unconfined`` -> None; else the operator's file."""
    if setting == UNCONFINED:
        return None
    return DEFAULT_FILE if setting == DEFAULT else setting


def program(setting: str, held: frozenset[str], cache_dir: str | None) -> tuple[bytes, str] | None:
    """The compiled BPF program for a container holding ``held`` and its sha256; None when unconfined.

    The cache key hashes the profile's bytes with everything that changes what it compiles to
    (the capabilities held, this kernel, this libseccomp build), so a hit needs no parsing."""
    path = profile_path(setting)
    if path is None:
        return None
    # The same file as last time? Its ctime moves on any change and cannot be set back (a rewrite
    # within the clock tick of the last read is the one it misses, as make's timestamps do).
    try:
        hit = _SEEN.get(_identity(path, os.stat(path), held))
    except OSError:
        hit = None
    if hit is not None:
        return hit
    read: list[os.stat_result] = []
    data, shown = _read(path, read)
    h = sha256(data)
    h.update(f"|{C.mask(held)}|{os.uname().release}|{os.uname().machine}|{_compiler()}".encode())
    key = h.hexdigest()
    prog = _MEMO.get(key) or _read_cache(cache_dir, key)
    if prog is None:
        try:
            prog = _secure().compile_seccomp(*reduce(parse(data, shown), held))
        except ValueError as e:
            raise ProfileError(f"{shown}: {e}") from None
        _write_cache(cache_dir, key, prog)
    _MEMO[key] = prog
    out = prog, sha256(prog).hexdigest()
    if len(_SEEN) >= 64:
        _SEEN.clear()
    _SEEN[_identity(path, read[0], held)] = out     # as fstat saw the file read, not as stat saw the path
    return out


def _identity(path: str, st: os.stat_result, held: frozenset[str]) -> tuple[Any, ...]:
    return (path, st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns, C.mask(held))


def _read_cache(cache_dir: str | None, key: str) -> bytes | None:
    """A cached program, if its stored digest matches its bytes (a corrupt or planted file is ignored)."""
    if not cache_dir:
        return None
    try:
        fd = os.open(os.path.join(cache_dir, "seccomp", f"{key}.bpf"), os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError:
        return None
    try:
        data = os.read(fd, 32 + 8 * 4096 + 1)
    finally:
        os.close(fd)
    digest, prog = data[:32], data[32:]
    if not prog or len(prog) % 8 or len(prog) > 8 * 4096 or sha256(prog).digest() != digest:
        return None
    return prog


def _write_cache(cache_dir: str | None, key: str, prog: bytes) -> None:
    """Best effort: a cache that cannot be written costs a compile next time, nothing else."""
    if not cache_dir:
        return
    d = os.path.join(cache_dir, "seccomp")
    tmp = os.path.join(d, f".{key}.{os.getpid()}.tmp")
    try:
        os.makedirs(d, mode=0o700, exist_ok=True)
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
        try:
            os.write(fd, sha256(prog).digest() + prog)
        finally:
            os.close(fd)
        os.replace(tmp, os.path.join(d, f"{key}.bpf"))
    except OSError:
        try:
            os.unlink(tmp)
        except OSError:
            pass
