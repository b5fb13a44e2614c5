"""The code of dataclass methods, compiled once per install instead of on every start.

``@dataclass`` writes each class's ``__init__``, ``__repr__``, ``__eq__`` (and for a frozen one
``__setattr__``, ``__delattr__``, ``__hash__``) as source text and compiles it with ``exec`` when
the module is imported: 216 compilations, 12-13 ms, a third of what a direct `cgman run`
imports (measured by timing dataclasses._create_fn over the direct path's imports). The text is the same on every start,
so its compiled code can be kept like a module's .pyc: ``dataclasses`` looks ``exec`` up among
its module globals, and ``install`` puts this module's ``exec`` there, which compiles a text it
has not seen (as ``exec`` would: no ``__future__`` flags inherited, file ``<string>``) and runs
the kept code of one it has. The methods are the same functions; only the compile is skipped.

The kept code lives beside the package's .pyc files, one file per module,
``cgman/__pycache__/<module>.dataclasses.<tag>.marshal`` (marshal, as .pyc files are, behind
the interpreter's bytecode magic number and a CRC of the rest; only cgman's own classes are
kept). It is read only if it is a regular file owned by root or us, in a directory that only
root or we may write (loading it runs code, as a .pyc does), and anything else about it
(corrupt, another Python's, entries that are not code) means compiling as usual. It is written
when a process compiled something new and may write bytecode (not under PYTHONDONTWRITEBYTECODE)
and the directory is one it would read: at exit, or by ``warm()``, which setup.sh runs after
compileall. A file holds the texts its module made when it was last written, so an old version
of a class does not linger.
"""

from __future__ import annotations

import builtins
import marshal
import os
import stat
import sys

MAX_BYTES = 4 << 20                  # one module's kept code (cgman.model's: ~60 KB)
MAX_ENTRIES = 1024
FORMAT = b"cgdc1"
CACHE_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "__pycache__")
_codes: dict[str, dict[str, object]] = {}      # module -> text -> code, read at its first dataclass
_used: dict[str, set[str]] = {}                # module -> the texts this process made
_new: set[str] = set()                         # modules with code compiled by this process
_hooked: list[bool] = []


def _path(module: str) -> str:
    return os.path.join(CACHE_DIR, f"{module}.dataclasses.{sys.implementation.cache_tag}.marshal")


def _trusted(st: os.stat_result) -> bool:
    return st.st_uid in (0, os.geteuid()) and not st.st_mode & (stat.S_IWGRP | stat.S_IWOTH)


def _header() -> bytes:
    from importlib.util import MAGIC_NUMBER
    return FORMAT + MAGIC_NUMBER


def _load(module: str) -> dict[str, object]:
    """The kept code of ``module``, or {} if there is none we may trust (it compiles as usual)."""
    path = _path(module)
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError:
        return {}
    try:
        st = os.fstat(fd)
        if not (stat.S_ISREG(st.st_mode) and _trusted(st) and _trusted(os.stat(CACHE_DIR))
                and st.st_size <= MAX_BYTES):
            return {}
        data = os.read(fd, MAX_BYTES + 1)
    except OSError:
        return {}
    finally:
        os.close(fd)
    import zlib
    head = _header()
    body = data[len(head) + 4:]
    if data[:len(head)] != head or data[len(head):len(head) + 4] != zlib.crc32(body).to_bytes(4, "big"):
        return {}
    try:
        codes = marshal.loads(body)
    except Exception:                  # not what save() wrote: compile as usual
        return {}
    if not isinstance(codes, dict) or not all(isinstance(k, str) and isinstance(v, _CODE) for k, v in codes.items()):
        return {}
    return codes


def _exec(source: object, globals: object = None, locals: object = None, /) -> None:
    """``exec`` for dataclasses: for a cgman module's class, the kept code of a text seen
    before, else compiled now (and kept). Every text compiles as ``exec`` compiles it for
    dataclasses.py: no ``__future__`` flag of this module's is inherited."""
    if not isinstance(source, str):
        return builtins.exec(source, globals, locals)   # type: ignore[arg-type, call-overload]
    module = globals.get("__name__") if isinstance(globals, dict) else None
    if not isinstance(module, str) or not module.startswith("cgman."):
        code: object = compile(source, "<string>", "exec", dont_inherit=True)
        return builtins.exec(code, globals, locals)     # type: ignore[arg-type, call-overload]
    codes = _codes.get(module)
    if codes is None:
        codes = _codes[module] = _load(module)
    _used.setdefault(module, set()).add(source)
    code = codes.get(source)
    if code is None:
        code = codes[source] = compile(source, "<string>", "exec", dont_inherit=True)
        if not _new:
            import atexit
            atexit.register(save)
        _new.add(module)
    return builtins.exec(code, globals, locals)     # type: ignore[arg-type, call-overload]


_CODE = type(_exec.__code__)


def save(force: bool = False) -> None:
    """Write the kept code of each module this process compiled new texts for, if it may write
    bytecode (``force``: even under PYTHONDONTWRITEBYTECODE) into a directory it would read
    from; atomically; errors ignored: the cache only saves time."""
    if sys.dont_write_bytecode and not force:
        return
    try:
        os.makedirs(CACHE_DIR, exist_ok=True)
        if not _trusted(os.stat(CACHE_DIR)):
            return
    except OSError:
        return
    for module in sorted(_new):
        keep = {t: _codes[module][t] for t in sorted(_used.get(module, ()))[:MAX_ENTRIES]}
        _write(_path(module), marshal.dumps(keep))
    _new.clear()


def _write(path: str, body: bytes) -> None:
    import zlib
    data = _header() + zlib.crc32(body).to_bytes(4, "big") + body
    if len(data) > MAX_BYTES:
        return
    tmp = f"{path}.{os.getpid()}.tmp"
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW | os.O_CLOEXEC, 0o644)
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.replace(tmp, path)
    except OSError:
        try:
            os.unlink(tmp)
        except OSError:
            pass


class _Finder:
    """Puts ``_exec`` into the dataclasses module as it is imported (it is not imported here:
    a command that makes no dataclass never loads it), and defers its import of inspect (_importhook.py)."""

    @staticmethod
    def find_spec(name: str, path: object = None, target: object = None) -> object:
        if name != "dataclasses" or _hooked:
            return None
        _hooked.append(True)
        from ._importhook import spec_with_hooks
        return spec_with_hooks(_Finder, name, path, target, before=lambda: _defer("inspect"),
                               after=lambda module: setattr(module, "exec", _exec))


def _defer(name: str) -> None:
    """Import the stdlib module ``name`` only when it is used. dataclasses imports ``inspect``
    (3.5 ms: ast, dis, tokenize, linecache) for one use, the signature it puts in the docstring
    of a class that has none; cgman's classes all have one (tests/test_house.py), so a
    `cgman run` never loads it. Not when it is loaded already."""
    if name not in sys.modules:
        sys.modules[name] = _deferred_type()(name)


def _deferred_type() -> type:
    import types      # here: every command imports this module, and types only with dataclasses

    class _Deferred(types.ModuleType):
        """Stands in sys.modules for a stdlib module until one of its names is used, then
        imports it (and puts it there instead), takes its names (so that a module that imported
        the stand-in sees them) and hands that one over. An ``import`` of it meanwhile gets the
        stand-in without loading anything (importlib's LazyLoader would load the module there
        already: the import system reads ``__spec__``); so does a dunder lookup. Its limits:
        ``importlib.util.find_spec`` of it says its ``__spec__`` is None, and it stays a
        distinct object from the real module."""

        def __getattr__(self, attr: str) -> object:
            if attr.startswith("__") and attr.endswith("__"):
                # __file__, __path__, ...: asked by code that walks sys.modules, which must not
                # change under it. The module's own names load it.
                raise AttributeError(attr)
            import importlib
            name = self.__name__
            if sys.modules.get(name) is self:
                sys.modules.pop(name, None)
            real = importlib.import_module(name)
            self.__dict__.update({k: v for k, v in vars(real).items() if k not in ("__name__", "__spec__")})
            return getattr(real, attr)
    return _Deferred


def install() -> None:
    """Have every dataclass made from now on use the kept code (CPython only; once)."""
    if sys.implementation.name != "cpython" or _Finder in sys.meta_path:   # type: ignore[comparison-overlap]
        return
    if "dataclasses" in sys.modules:
        _hooked.append(True)
        sys.modules["dataclasses"].exec = _exec        # type: ignore[attr-defined]
    else:
        sys.meta_path.insert(0, _Finder)               # type: ignore[arg-type]


def warm() -> None:
    """Compile every cgman dataclass once and keep the code, whatever PYTHONDONTWRITEBYTECODE
    says (as compileall writes .pyc files): setup.sh runs it after compileall. Every module's
    file is written again, without the texts of classes that changed since."""
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
    _new.update(_used)
    save(force=True)
