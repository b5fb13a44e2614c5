"""The code of dataclass methods, compiled once per install instead of on every start.

``@dataclass`` writes each class's ``__init__``, ``__repr__``, ``__eq__`` (and for a frozen one
``__setattr__``, ``__delattr__``, ``__hash__``) as source text and compiles it with ``exec`` when
the module is imported: 216 compilations, 12-13 ms, a third of what a direct `cgman run`
imports (measured: /tmp benchmarks in the issue 13 note). The text is the same on every start,
so its compiled code can be kept like a module's .pyc: ``dataclasses`` looks ``exec`` up among
its module globals, and ``install`` puts this module's ``exec`` there, which compiles a text it
has not seen (as ``exec`` would: no ``__future__`` flags inherited, file ``<string>``) and runs
the kept code of one it has. The methods are the same functions; only the compile is skipped.

The kept code lives beside the package's .pyc files, one file per module,
``cgman/__pycache__/<module>.dataclasses.<tag>.marshal`` (marshal, as .pyc files are; only cgman's
own classes are kept), is read only if owned by root or us and writable by nobody else
(loading it runs code, as a .pyc does), and is written when a process compiled something new
and may write bytecode (not under PYTHONDONTWRITEBYTECODE): at exit, or by
``warm()``, which setup.sh runs after compileall.
"""

from __future__ import annotations

import builtins
import marshal
import os
import stat
import sys

MAX_BYTES = 4 << 20                  # one module's kept code (cgman.model's: ~60 KB)
MAX_ENTRIES = 1024
_codes: dict[str, dict[str, object]] = {}      # module -> text -> code, read at its first dataclass
_new: set[str] = set()                         # modules with code compiled by this process


CACHE_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "__pycache__")


def _path(module: str) -> str:
    return os.path.join(CACHE_DIR, f"{module}.dataclasses.{sys.implementation.cache_tag}.marshal")


def _trusted(st: os.stat_result) -> bool:
    return st.st_uid in (0, os.geteuid()) and not st.st_mode & (stat.S_IWGRP | stat.S_IWOTH)


def _load(module: str) -> dict[str, object]:
    """The kept code of ``module``, or {} if there is none we may trust (it compiles as usual)."""
    path = _path(module)
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError:
        return {}
    try:
        st = os.fstat(fd)
        if not (stat.S_ISREG(st.st_mode) and _trusted(st) and _trusted(os.stat(os.path.dirname(path)))
                and st.st_size <= MAX_BYTES):
            return {}
        data = os.read(fd, MAX_BYTES + 1)
    finally:
        os.close(fd)
    try:
        codes = marshal.loads(data)
    except (ValueError, EOFError, TypeError):
        return {}
    return codes if isinstance(codes, dict) else {}


def _exec(source: object, globals: object = None, locals: object = None, /) -> None:
    """``exec`` for dataclasses: for a cgman module's class, the kept code of a text seen
    before, else compiled now (and kept); anyone else's compiles as ``exec`` would."""
    module = globals.get("__name__") if isinstance(globals, dict) else None
    if not isinstance(source, str) or not isinstance(module, str) or not module.startswith("cgman."):
        return builtins.exec(source, globals, locals)   # type: ignore[arg-type, call-overload]
    codes = _codes.get(module)
    if codes is None:
        codes = _codes[module] = _load(module)
    code = codes.get(source)
    if code is None:
        code = compile(source, "<string>", "exec", dont_inherit=True)
        if len(codes) < MAX_ENTRIES:
            codes[source] = code
            if not _new:
                import atexit
                atexit.register(save)
            _new.add(module)
    return builtins.exec(code, globals, locals)     # type: ignore[arg-type, call-overload]


def save(force: bool = False) -> None:
    """Write the kept code of each module this process compiled new texts for, if it may write
    bytecode (``force``: even under PYTHONDONTWRITEBYTECODE); atomically; errors ignored: the
    cache only saves time."""
    if sys.dont_write_bytecode and not force:
        return
    for module in sorted(_new):
        path = _path(module)
        tmp = f"{path}.{os.getpid()}.tmp"
        try:
            os.makedirs(os.path.dirname(path), exist_ok=True)
            data = marshal.dumps({**_load(module), **_codes[module]})
            if len(data) > MAX_BYTES:
                continue
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW | os.O_CLOEXEC, 0o644)
            with os.fdopen(fd, "wb") as f:
                f.write(data)
            os.replace(tmp, path)
        except OSError:
            try:
                os.unlink(tmp)
            except OSError:
                pass
    _new.clear()


class _Finder:
    """Puts ``_exec`` into the dataclasses module as it is imported (it is not imported here:
    the thin client never loads it)."""

    @staticmethod
    def find_spec(name: str, path: object = None, target: object = None) -> object:
        if name != "dataclasses":
            return None
        sys.meta_path.remove(_Finder)          # type: ignore[arg-type]
        import importlib.util
        spec = importlib.util.find_spec(name)
        if spec is None or spec.loader is None:
            return spec
        run = spec.loader.exec_module

        def exec_module(module: object) -> None:
            run(module)                            # type: ignore[arg-type]
            module.exec = _exec                    # type: ignore[attr-defined]
        spec.loader.exec_module = exec_module   # type: ignore[method-assign]
        return spec


def install() -> None:
    """Have every dataclass made from now on use the kept code (CPython only; once)."""
    if sys.implementation.name != "cpython" or _Finder in sys.meta_path:   # type: ignore[comparison-overlap]
        return
    if "dataclasses" in sys.modules:
        sys.modules["dataclasses"].exec = _exec        # type: ignore[attr-defined]
    else:
        sys.meta_path.insert(0, _Finder)               # type: ignore[arg-type]


def warm() -> None:
    """Compile every cgman dataclass once and keep the code, whatever PYTHONDONTWRITEBYTECODE
    says (as compileall writes .pyc files): setup.sh runs it after compileall."""
    import importlib
    import pkgutil

    import cgman
    install()
    for m in pkgutil.walk_packages(cgman.__path__, "cgman."):
        if not m.name.endswith("__main__"):
            try:
                importlib.import_module(m.name)
            except Exception:           # an optional dependency (psycopg) missing: its classes compile later
                pass
    save(force=True)
