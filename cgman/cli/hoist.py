"""Global options may follow the command too; typer wants them first."""

from __future__ import annotations

_GLOBAL_FLAGS = ("-v", "--verbose")
_GLOBAL_VALUED = ("--cgroup-root", "--run-dir", "--state-dir")


def hoist_global_options(argv: list[str]) -> list[str]:
    """Let global options follow the command too (`cgman apply --cgroup-root X f.yaml`).

    Only arguments before a `--` are looked at, so `attach g -- cmd -v` is left alone.
    """
    cut = argv.index("--") if "--" in argv else len(argv)
    head, tail, moved = [], argv[cut:], []
    i = 0
    while i < cut:
        a = argv[i]
        if a in _GLOBAL_FLAGS or any(a.startswith(v + "=") for v in _GLOBAL_VALUED):
            moved.append(a)
        elif a in _GLOBAL_VALUED and i + 1 < cut:
            moved += [a, argv[i + 1]]
            i += 1
        else:
            head.append(a)
        i += 1
    return moved + head + tail
