"""The Dockerfile subset that needs no registry: FROM (scratch, NAME:TAG, oci:DIR:TAG), RUN,
COPY, ADD, ENV, ARG, WORKDIR, USER, LABEL, EXPOSE, ENTRYPOINT, CMD; comments, parser
directives (read as comments) and line continuations. Pure: text in, instructions out;
anything else is an error at ``file:line`` naming the instruction."""

from __future__ import annotations

import json
import re
import shlex
from dataclasses import dataclass, field

from ..errors import CgmanError

MAX_BYTES = 1 << 20
SUPPORTED = ("FROM", "RUN", "COPY", "ADD", "ENV", "ARG", "WORKDIR", "USER", "LABEL", "EXPOSE", "ENTRYPOINT", "CMD")
KNOWN_OTHER = ("ONBUILD", "STOPSIGNAL", "HEALTHCHECK", "SHELL", "VOLUME", "MAINTAINER")


class DockerfileError(CgmanError):
    """``file:line: INSTRUCTION: what is wrong``."""


@dataclass(frozen=True)
class Instruction:
    """One Dockerfile instruction as parsed, with where it was written."""

    cmd: str                          # upper case
    rest: str                         # the arguments as written (continuations joined)
    line: int
    where: str                        # file:line
    exec_form: tuple[str, ...] | None = None
    flags: dict[str, str] = field(default_factory=dict)
    args: tuple[str, ...] = ()

    @property
    def text(self) -> str:
        return f"{self.cmd} {self.rest}"


def _logical_lines(text: str) -> list[tuple[int, str]]:
    out: list[tuple[int, str]] = []
    buf, start = "", 0
    for n, raw in enumerate(text.splitlines(), 1):
        line = raw.strip()
        if not buf and (not line or line.startswith("#")):
            continue
        if buf and (not line or line.startswith("#")):
            continue                   # comments and blank lines inside a continuation
        if not buf:
            start = n
        if line.endswith("\\"):
            buf += line[:-1].rstrip() + " "
            continue
        out.append((start, buf + line))
        buf = ""
    if buf.strip():
        out.append((start, buf.strip()))
    return out


def _fail(where: str, cmd: str, msg: str) -> DockerfileError:
    return DockerfileError(f"{where}: {cmd}: {msg}")


def _json_form(rest: str) -> tuple[str, ...] | None:
    if not rest.startswith("["):
        return None
    try:
        v = json.loads(rest)
    except ValueError:
        return None                     # Docker: not JSON, so shell form
    if isinstance(v, list) and v and all(isinstance(x, str) for x in v):
        return tuple(v)
    return None


def _flags(rest: str, allowed: tuple[str, ...], where: str, cmd: str) -> tuple[dict[str, str], str]:
    flags: dict[str, str] = {}
    while rest.startswith("--"):
        word, _, rest = rest.partition(" ")
        rest = rest.lstrip()
        key, eq, value = word[2:].partition("=")
        if key not in allowed or not eq:
            raise _fail(where, cmd, f"option --{key} is not supported (supported: "
                        f"{', '.join('--' + a + '=...' for a in allowed) or 'none'})")
        flags[key] = value
    return flags, rest


def parse(text: str, name: str = "Dockerfile") -> list[Instruction]:
    """Instructions of a Dockerfile, or DockerfileError at the first bad line."""
    if len(text.encode()) > MAX_BYTES:
        raise DockerfileError(f"{name}: larger than {MAX_BYTES} bytes")
    out: list[Instruction] = []
    for line, logical in _logical_lines(text):
        where = f"{name}:{line}"
        word, _, rest = logical.partition(" ")
        cmd, rest = word.upper(), rest.strip()
        if cmd not in SUPPORTED:
            hint = " (not supported by cgman build)" if cmd in KNOWN_OTHER else " (unknown instruction)"
            raise _fail(where, word[:40], f"instruction not supported{hint}; supported: {' '.join(SUPPORTED)}")
        if not rest:
            raise _fail(where, cmd, "needs arguments")
        out.append(_one(cmd, rest, line, where))
    if not out:
        raise DockerfileError(f"{name}: no instructions")
    first = next((i for i in out if i.cmd != "ARG"), None)
    if first is None or first.cmd != "FROM":
        raise _fail(f"{name}:{(first or out[0]).line}", (first or out[0]).cmd, "the first instruction must be "
                    "FROM (only ARG may come before it)")
    extra = [i for i in out if i.cmd == "FROM"][1:]
    if extra:
        raise _fail(extra[0].where, "FROM", "multi-stage builds are not supported: one FROM per file")
    return out


def _one(cmd: str, rest: str, line: int, where: str) -> Instruction:
    if cmd in ("RUN", "CMD", "ENTRYPOINT"):
        if cmd == "RUN" and rest.startswith("--"):
            raise _fail(where, cmd, "RUN options (--mount, --network) are not supported")
        return Instruction(cmd, rest, line, where, exec_form=_json_form(rest))
    if cmd in ("COPY", "ADD"):
        flags, rest = _flags(rest, ("chown", "chmod"), where, cmd)
        words = _json_form(rest)
        if words is None:
            words = tuple(rest.split())
        if len(words) < 2:
            raise _fail(where, cmd, "needs at least one source and a destination")
        if "chmod" in flags and not re.fullmatch(r"[0-7]{3,4}", flags["chmod"]):
            raise _fail(where, cmd, f"--chmod={flags['chmod'][:20]} must be octal, e.g. 0755")
        return Instruction(cmd, rest, line, where, flags=flags, args=words)
    if cmd in ("ENV", "LABEL"):
        return Instruction(cmd, rest, line, where, args=_pairs(cmd, rest, where))
    if cmd == "ARG":
        name, _, _default = rest.partition("=")
        if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", name):
            raise _fail(where, cmd, f"bad name {name[:40]!r}")
        return Instruction(cmd, rest, line, where, args=(name, rest) if "=" in rest else (name,))
    if cmd == "FROM":
        base = rest.split()
        if len(base) == 3 and base[1].upper() == "AS":
            base = base[:1]
        if len(base) != 1:
            raise _fail(where, cmd, "use FROM scratch, FROM NAME:TAG or FROM oci:DIR:TAG")
        return Instruction(cmd, rest, line, where, args=tuple(base))
    if cmd == "EXPOSE":
        for p in rest.split():
            if not re.fullmatch(r"(\$\{?\w+\}?|\d{1,5})(/(tcp|udp|sctp))?", p):
                raise _fail(where, cmd, f"bad port {p[:20]!r}: use 80, 80/tcp or 53/udp")
        return Instruction(cmd, rest, line, where, args=tuple(rest.split()))
    return Instruction(cmd, rest, line, where, args=(rest,))      # WORKDIR, USER


def _pairs(cmd: str, rest: str, where: str) -> tuple[str, ...]:
    """KEY=VALUE words (quotes as the shell's), or the old ``ENV KEY VALUE`` form."""
    first = rest.split(None, 1)
    if cmd == "ENV" and "=" not in first[0]:
        if len(first) < 2:
            raise _fail(where, cmd, "use ENV KEY=VALUE")
        return (f"{first[0]}={first[1]}",)
    try:
        words = shlex.split(rest, posix=True)
    except ValueError as e:
        raise _fail(where, cmd, f"{e}") from None
    for w in words:
        k, eq, _ = w.partition("=")
        if not eq or not k:
            raise _fail(where, cmd, f"{w[:40]!r}: use KEY=VALUE")
    return tuple(words)


_VAR = re.compile(r"\\\$|\$(?:\{(\w+)(?::([-+])([^}]*))?\}|(\w+))")


def expand(text: str, env: dict[str, str]) -> str:
    """$VAR, ${VAR}, ${VAR:-default}, ${VAR:+alt}; \\$ is a literal dollar (Docker's rules)."""
    def sub(m: re.Match[str]) -> str:
        if m.group(0) == "\\$":
            return "$"
        name = m.group(1) or m.group(4)
        value = env.get(name, "")
        if m.group(2) == "-":
            return value or m.group(3)
        if m.group(2) == "+":
            return m.group(3) if value else ""
        return value
    return _VAR.sub(sub, text)
