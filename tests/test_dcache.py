"""cgman/_dcache.py: the code of dataclass methods kept across starts.

Each case runs in a fresh interpreter whose cache dir is a temp dir, so that what is kept,
loaded or refused is this test's alone."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def run(cache_dir, body: str) -> str:
    code = textwrap.dedent(f"""
        import sys
        sys.dont_write_bytecode = False
        import cgman._dcache as D
        D.CACHE_DIR = {str(cache_dir)!r}
    """) + textwrap.dedent(body)
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, timeout=60,
                       env={k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"})
    assert p.returncode == 0, p.stderr
    return p.stdout.strip()


MODEL = """
    from cgman.model import MemoryLimits, Resources
    a = Resources(memory=MemoryLimits(max_bytes=5))
    print(a == Resources(memory=MemoryLimits(max_bytes=5)), repr(a.memory), sorted(D._new))
"""


def test_kept_code_is_written_then_used_and_the_classes_behave_the_same(tmp_path):
    first = run(tmp_path, MODEL)
    assert first.startswith("True MemoryLimits(max_bytes=5") and "cgman.model" in first
    assert any(n.startswith("cgman.model.dataclasses.") for n in os.listdir(tmp_path))
    second = run(tmp_path, MODEL)
    assert second == first.replace(first[first.index("["):], "[]")    # every text found: nothing compiled


PLANT = """
    import marshal, os, stat
    from cgman.model import MemoryLimits
    os.remove(D._path("cgman.model"))
    import importlib, sys
    # the kept __repr__ of the classes with a max_bytes field (MemoryLimits among them), swapped
    # for one that says it was planted
    keys = [k for k in D._codes["cgman.model"] if "def __repr__" in k and "max_bytes=" in k]
    assert keys
    for key in keys:
        evil = compile(key.replace("  return ", "  return 'PLANTED' or "), "<string>", "exec", dont_inherit=True)
        D._codes["cgman.model"][key] = evil
    D._new.add("cgman.model")
    D.save()
    os.chmod(D._path("cgman.model"), MODE)
"""


def test_a_planted_file_is_used_only_when_nobody_else_could_write_it(tmp_path):
    """The check is what protects: the same planted code runs when its mode is 0644, and is
    ignored (compiled afresh) when others could have written it (0666)."""
    for mode, planted in ((0o644, True), (0o666, False)):
        d = tmp_path / f"m{mode:o}"
        d.mkdir()
        run(d, MODEL)
        run(d, PLANT.replace("MODE", oct(mode)))
        out = run(d, "from cgman.model import MemoryLimits\nprint(repr(MemoryLimits(max_bytes=1)))\n")
        assert (out == "PLANTED") is planted, (mode, out)


def test_other_packages_dataclasses_are_compiled_as_exec_would(tmp_path):
    """Not kept, and compiled without this module's __future__ annotations: their __init__'s
    annotations stay objects (get_type_hints works), as without cgman."""
    out = run(tmp_path, """
        import dataclasses, typing
        @dataclasses.dataclass
        class Mine:
            x: int = 1
        print(Mine() == Mine(), typing.get_type_hints(Mine.__init__), sorted(D._new), D._codes)
    """)
    assert out == "True {'x': <class 'int'>, 'return': <class 'NoneType'>} [] {}"


def test_a_corrupt_foreign_or_odd_file_means_compiling_as_usual(tmp_path):
    """A flipped byte, a file whose entries are not code, and a FIFO in its place: the import
    works, compiles, and nothing hangs."""
    run(tmp_path, MODEL)
    path = next(tmp_path / n for n in os.listdir(tmp_path) if n.startswith("cgman.model."))
    good = path.read_bytes()
    flipped = bytearray(good)
    flipped[len(flipped) // 2] ^= 0xFF
    import marshal
    import zlib
    body = marshal.dumps({"def __create_fn__(): pass": 42})
    head = good[:good.index(b"cgdc1") + 9]
    for bad in (bytes(flipped), head + zlib.crc32(body).to_bytes(4, "big") + body, good[:20]):
        path.write_bytes(bad)
        assert "cgman.model" in run(tmp_path, MODEL)            # compiled again
    path.unlink()
    os.mkfifo(path)
    assert "cgman.model" in run(tmp_path, MODEL)


def test_nothing_is_written_where_it_would_not_be_read(tmp_path):
    d = tmp_path / "shared"
    d.mkdir()
    os.chmod(d, 0o777)
    assert "cgman.model" in run(d, MODEL) and "cgman.model" in run(d, MODEL)
    assert os.listdir(d) == []


def test_dataclasses_loads_inspect_only_when_a_class_needs_its_signature(tmp_path):
    """dataclasses imports inspect for one use: the signature it writes as the docstring of a
    class without one. cgman's classes all have one, so inspect stays unloaded; a class
    without one still gets the same docstring, and ``import inspect`` gets the real module."""
    out = run(tmp_path, """
        import dataclasses
        import cgman.model
        loaded = type(sys.modules["inspect"]).__name__
        @dataclasses.dataclass
        class NoDoc:
            a: int
            b: str = "x"
        import inspect
        print(loaded, NoDoc.__doc__, inspect.signature(NoDoc), type(sys.modules["inspect"]).__name__)
    """)
    assert out == "_Deferred NoDoc(a: int, b: str = 'x') (a: int, b: str = 'x') -> None module"


def test_inspect_loaded_before_cgman_is_left_alone(tmp_path):
    out = run(tmp_path, """
        import inspect
        import dataclasses, cgman.model
        print(sys.modules["inspect"] is inspect, type(inspect).__name__)
    """)
    assert out == "True module"


def test_the_inspect_stand_in_answers_dunders_without_loading_and_takes_the_names_once_loaded(tmp_path):
    """Code that walks sys.modules asking each for __file__ must not see it change under it;
    a module that imported the stand-in sees inspect's names once it is loaded."""
    out = run(tmp_path, """
        import dataclasses, cgman.model
        import inspect as early
        files = [getattr(m, "__file__", None) for m in list(sys.modules.values())]
        still = type(sys.modules["inspect"]).__name__
        early.signature(len)
        print(still, "signature" in vars(early), sys.modules["inspect"] is not early)
    """)
    assert out == "_Deferred True True"
