"""House rules for the size of code (STYLE.md: "~60 lines is a signal to split"; issue 12):
no function in cgman/ over 60 lines, Python (by ast) or C (by a brace-matching scan of
top-level function bodies), and no Python module over 450 lines.

Each rule is a plain function over source text, and each has a test that plants a violation
in synthetic text, so a rule that stopped seeing anything would fail here rather than pass.
Pure: reads the sources, runs nothing.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

PKG = Path(__file__).resolve().parent.parent / "cgman"
MAX_FUNCTION_LINES = 60
MAX_MODULE_LINES = 450

# Exceptions to the rules, for code that must stay long: (file relative to cgman/, function name)
# and module paths relative to cgman/, each with its reason in a comment beside it. None is needed
# now; test_every_exception_is_still_needed fails on an entry that is no longer over its limit.
LONG_FUNCTIONS_ALLOWED: set[tuple[str, str]] = set()
LONG_MODULES_ALLOWED: set[str] = set()


# ------------------------------------------------------------------------------ the rules
def python_functions(source: str) -> list[tuple[str, int, int]]:
    """(qualified name, first line, lines) of every def and async def in ``source``: from the
    ``def`` line to the last line of the body (decorators are not counted)."""
    out: list[tuple[str, int, int]] = []

    def visit(node: ast.AST, prefix: str) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                name = prefix + child.name
                if not isinstance(child, ast.ClassDef):
                    assert child.end_lineno is not None
                    out.append((name, child.lineno, child.end_lineno - child.lineno + 1))
                visit(child, name + ".")
            else:
                visit(child, prefix)
    visit(ast.parse(source), "")
    return out


def _blank_c(source: str) -> str:
    """``source`` with comments, string and character literals and preprocessor lines blanked
    out (newlines kept, so line numbers stay), leaving only the braces that are code."""
    out: list[str] = []
    i, n = 0, len(source)
    at_line_start = True
    while i < n:
        ch = source[i]
        if source.startswith("/*", i):
            end = source.find("*/", i + 2)
            end = n if end < 0 else end + 2
        elif source.startswith("//", i):
            end = source.find("\n", i)
            end = n if end < 0 else end
        elif ch in "\"'":
            end = i + 1
            while end < n and source[end] != ch and source[end] != "\n":
                end += 2 if source[end] == "\\" else 1
            end = min(end + 1, n)
        elif ch == "#" and at_line_start:
            end = i
            while True:                        # a directive runs on over backslash-newlines
                nl = source.find("\n", end)
                if nl < 0:
                    end = n
                    break
                if source[nl - 1] != "\\":
                    end = nl
                    break
                end = nl + 1
        else:
            out.append(ch)
            at_line_start = ch == "\n" or (at_line_start and ch in " \t")
            i += 1
            continue
        out.append(re.sub(r"[^\n]", " ", source[i:end]))
        at_line_start = False
        i = end
    return "".join(out)


_C_FUNCTION_HEAD = re.compile(r"([A-Za-z_]\w*)\s*\([^;{}]*\)\s*$")


def c_functions(source: str) -> list[tuple[str, int, int]]:
    """(name, first line, lines) of every function defined at the top level of C ``source``: a
    top-level ``{`` whose preceding text ends in ``name(...)`` (no ``=``: not an initializer;
    a struct or enum has no parentheses), from the line of its name to its closing brace."""
    text = _blank_c(source)
    out: list[tuple[str, int, int]] = []
    depth, head_start = 0, 0
    current: tuple[str, int] | None = None
    for i, ch in enumerate(text):
        if ch == "{":
            if depth == 0:
                head = text[head_start:i]
                m = _C_FUNCTION_HEAD.search(head)
                current = None
                if m and "=" not in head:
                    current = (m.group(1), text.count("\n", 0, head_start + m.start(1)) + 1)
            depth += 1
        elif ch == "}":
            depth -= 1
            if depth == 0:
                if current is not None:
                    last = text.count("\n", 0, i) + 1
                    out.append((current[0], current[1], last - current[1] + 1))
                    current = None
                head_start = i + 1
        elif ch == ";" and depth == 0:
            head_start = i + 1
    return out


def long_functions(path: Path, source: str, limit: int = MAX_FUNCTION_LINES) -> list[tuple[str, int, int]]:
    """The functions of one file (Python or C, by its suffix) longer than ``limit`` lines."""
    found = python_functions(source) if path.suffix == ".py" else c_functions(source)
    return [f for f in found if f[2] > limit]


def long_module(source: str, limit: int = MAX_MODULE_LINES) -> int | None:
    """The number of lines of a module longer than ``limit`` lines; None for one within it."""
    lines = len(source.splitlines())
    return lines if lines > limit else None


# ------------------------------------------------------------------------------ the tree
def _sources() -> list[Path]:
    return sorted(p for p in PKG.rglob("*") if p.suffix in (".py", ".c", ".h") and p.is_file())


def _rel(path: Path) -> str:
    return str(path.relative_to(PKG))


def _long_functions_in_tree() -> dict[tuple[str, str], str]:
    out = {}
    for path in _sources():
        for name, line, lines in long_functions(path, path.read_text()):
            out[(_rel(path), name)] = f"cgman/{_rel(path)}:{line}: {name} is {lines} lines"
    return out


def _long_modules_in_tree() -> dict[str, str]:
    out = {}
    for path in _sources():
        if path.suffix == ".py" and (lines := long_module(path.read_text())):
            out[_rel(path)] = f"cgman/{_rel(path)} is {lines} lines"
    return out


def test_no_function_is_over_60_lines():
    found = _long_functions_in_tree()
    bad = [text for key, text in sorted(found.items()) if key not in LONG_FUNCTIONS_ALLOWED]
    assert not bad, f"split these (over {MAX_FUNCTION_LINES} lines):\n" + "\n".join(bad)


def test_no_module_is_over_450_lines():
    found = _long_modules_in_tree()
    bad = [text for key, text in sorted(found.items()) if key not in LONG_MODULES_ALLOWED]
    assert not bad, f"split these by what they hold (over {MAX_MODULE_LINES} lines):\n" + "\n".join(bad)


def test_every_exception_is_still_needed():
    stale = sorted(LONG_FUNCTIONS_ALLOWED - set(_long_functions_in_tree()))
    stale += sorted(LONG_MODULES_ALLOWED - set(_long_modules_in_tree()))
    assert not stale, f"no longer over the limit: remove from the allow lists: {stale}"


def test_the_scan_sees_the_c_sources():
    """A scan that found no C function at all would pass the rule for the wrong reason."""
    names = {name for name, _, _ in c_functions((PKG / "_spawn.c").read_text())}
    assert {"child_main", "py_spawn", "run_ops", "PyInit__spawn"} <= names


# ------------------------------------------------------------------------------ planted violations
def _python_function(name: str, body_lines: int, indent: str = "") -> str:
    body = "".join(f"{indent}    x{i} = {i}\n" for i in range(body_lines))
    return f"{indent}def {name}():\n{body}"


def test_the_python_rule_catches_a_long_function():
    source = (_python_function("short", 59) + "\n"                       # 60 lines: allowed
              + "class Box:\n" + _python_function("long", 60, "    ") + "\n"   # 61 lines
              + "@decorated\nasync def a_long_coroutine():\n"
              + "".join(f"    await x{i}\n" for i in range(70)))
    assert long_functions(Path("m.py"), source) == [("Box.long", 63, 61), ("a_long_coroutine", 126, 71)]
    assert ("short", 1, 60) in python_functions(source)


def test_the_python_rule_catches_a_long_inner_function():
    source = "def outer():\n" + _python_function("inner", 61, "    ") + "    return inner\n"
    assert [name for name, _, _ in long_functions(Path("m.py"), source)] == ["outer", "outer.inner"]


C_SAMPLE = r'''#include <stdio.h>
#define BLOCK { if (x) { y(); } }
#define LONG_MACRO(a) \
    do { a; } while (0)

struct pair { int a, b; };                      /* a struct: no function */
enum { ONE = 1, TWO };
static const char *names[] = {"{", "}", "{{"};  // an initializer: no function

/* a comment with { braces } that do not count */
static int short_one(int x)
{
    return x + '}';
}

static PyObject *long_one(PyObject *self,
                          PyObject *args)
{
    char c = '{';
    const char *s = "}}}\"{";
'''


def test_the_c_rule_catches_a_long_function():
    body = "".join("    if (args) { c++; }   /* { */\n" for _ in range(57))
    source = C_SAMPLE + body + "    return NULL;\n}\n\nint after(void) { return 0; }\n"
    found = c_functions(source)
    assert [name for name, _, _ in found] == ["short_one", "long_one", "after"]
    assert found[0] == ("short_one", 11, 4)
    assert found[1] == ("long_one", 16, 2 + 1 + 2 + 57 + 2)       # head, {, c and s, body, return and }
    assert found[2] == ("after", source.count("\n"), 1)
    assert long_functions(Path("m.c"), source) == [found[1]]
    assert long_functions(Path("m.c"), source, limit=64) == []


def test_the_module_rule_catches_a_long_module():
    assert long_module("x = 1\n" * MAX_MODULE_LINES) is None
    assert long_module("x = 1\n" * MAX_MODULE_LINES + "y = 2") == MAX_MODULE_LINES + 1


# ------------------------------------------------------------------------------ dataclass docstrings
def undocumented_dataclasses(source: str) -> list[str]:
    """Classes decorated with @dataclass (in any spelling) that have no docstring. Without one,
    @dataclass makes it from inspect.signature: ~0.4 ms more per class at every import, and a
    `cgman run` imports dozens."""
    out = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.ClassDef) and not ast.get_docstring(node) and any(
                "dataclass" in ast.unparse(d) for d in node.decorator_list):
            out.append(node.name)
    return out


def test_every_dataclass_has_a_docstring():
    missing = [f"{p.relative_to(PKG)}: {name}" for p in sorted(PKG.rglob("*.py"))
               for name in undocumented_dataclasses(p.read_text())]
    assert not missing, "give these dataclasses a docstring (what they hold):\n" + "\n".join(missing)


def test_the_docstring_rule_catches_an_undocumented_dataclass():
    source = ('from dataclasses import dataclass, field\nimport dataclasses\n\n'
              '@dataclass(frozen=True)\nclass A:\n    """held."""\n    x: int = 0\n\n'
              '@dataclasses.dataclass\nclass B:\n    x: int = 0\n\n'
              'class C:\n    x: int = 0\n')
    assert undocumented_dataclasses(source) == ["B"]
