"""Dependencies point one way (STYLE.md): model → policy → plan → drivers → state → reconcile →
accounting → containers → fleet → hostcheck → interfaces (exporter, images, agent, cli); each
third-party library stays in its layer; no package imports another's private names, and no
packages import each other in a circle; nothing below cli/ reads the environment.
Lazy imports inside functions count too: the test walks every node."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PKG = Path(__file__).resolve().parent.parent / "cgman"

# layer of each top-level module or package; a module may import only from layers <= its own
LAYER = {"errors": 0, "units": 0, "kernel": 0, "model": 0, "schema": 1, "convert": 1, "inputs": 1, "security": 1,
         "_secure": 1, "settings": 1,
         "policy": 2,
         "plan": 3, "drivers": 4, "state": 5, "reconcile": 6, "accounting": 7,
         "containers": 8, "_spawn": 8, "_fastread": 8, "fleet": 9, "hostcheck": 10,
         "exporter": 11, "images": 12, "agent": 13, "cli": 14, "__main__": 15, "__init__": 0, "_dcache": 0,
         "lazylog": 0, "_importhook": 0}
# third-party libraries and the only places that may import them
THIRD_PARTY = {"typer": {"cli"}, "click": {"cli"}, "prometheus_client": {"exporter"},
               "yaml": {"policy", "accounting/prices.py", "exporter/server.py"},
               "pyroute2": {"containers/network.py"}, "bcrypt": {"exporter/server.py"},
               "psycopg": {"fleet/db.py"}, "jeepney": {"drivers/systemd/bus.py"}}


def _modules() -> list[Path]:
    return sorted(p for p in PKG.rglob("*.py"))


def _top(path: Path) -> str:
    rel = path.relative_to(PKG)
    return rel.parts[0].removesuffix(".py")


def _imports(path: Path) -> list[tuple[int, str]]:
    """(line, absolute module) of every import in the file."""
    tree = ast.parse(path.read_text(), str(path))
    pkg_parts = ("cgman",) + path.relative_to(PKG).parent.parts
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out += [(node.lineno, a.name) for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = pkg_parts[:len(pkg_parts) - node.level + 1]
                mod = ".".join(base + ((node.module,) if node.module else ()))
                if not node.module:      # from . import x: x is a module of that package
                    out += [(node.lineno, f"{mod}.{a.name}") for a in node.names]
                    continue
            else:
                mod = node.module or ""
            out.append((node.lineno, mod))
    return out


def test_every_module_has_a_layer():
    assert {_top(p) for p in _modules()} <= set(LAYER), "add new modules to LAYER"


@pytest.mark.parametrize("path", _modules(), ids=lambda p: str(p.relative_to(PKG)))
def test_imports_point_one_way(path):
    mine = LAYER[_top(path)]
    bad = []
    for line, mod in _imports(path):
        parts = mod.split(".")
        if parts[0] == "cgman" and len(parts) > 1 and LAYER[parts[1]] > mine:
            bad.append(f"{path.relative_to(PKG)}:{line}: imports {mod} (layer {parts[1]} is above {_top(path)})")
    assert not bad, "\n".join(bad)


@pytest.mark.parametrize("lib", sorted(THIRD_PARTY))
def test_each_third_party_library_stays_in_its_layer(lib):
    allowed = THIRD_PARTY[lib]
    bad = []
    for path in _modules():
        rel = str(path.relative_to(PKG))
        if any(rel == a or rel.startswith(a + "/") or rel.removesuffix(".py") == a for a in allowed):
            continue
        for line, mod in _imports(path):
            if mod.split(".")[0] == lib:
                bad.append(f"{rel}:{line}: imports {mod}")
    assert not bad, "\n".join(bad)


# --- packages talk through public names, and never in a circle -------------------------------------------

def _package(mod: str) -> str:
    """The package a dotted cgman module belongs to: its first component below cgman."""
    parts = mod.split(".")
    return parts[1] if len(parts) > 1 else parts[0]


def _is_module(mod: str) -> bool:
    rel = Path(*mod.split(".")[1:])
    return (PKG / rel).with_suffix(".py").exists() or (PKG / rel / "__init__.py").exists() or \
        any(PKG.glob(f"{rel}.*.so")) or (PKG / f"{rel}.c").exists()


def private_names_across_packages(rel: str, text: str) -> list[str]:
    """`from other_package import _name`, or `other_module._name`, in the module at ``rel``
    (a path below cgman/): each one a line naming it."""
    tree = ast.parse(text, rel)
    pkg_parts = ("cgman",) + Path(rel).parent.parts
    mine = _package(".".join(("cgman",) + Path(rel).with_suffix("").parts))
    bad, aliases = [], {}
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            base = ".".join(pkg_parts[:len(pkg_parts) - node.level + 1] + ((node.module,) if node.module else ())) \
                if node.level else (node.module or "")
            if not base.startswith("cgman"):
                continue
            for a in node.names:
                full = f"{base}.{a.name}"
                if _is_module(full):
                    aliases[a.asname or a.name] = full
                elif a.name.startswith("_") and not a.name.startswith("__") and _package(base) != mine:
                    bad.append(f"{rel}:{node.lineno}: imports {a.name} from {base}")
        elif isinstance(node, ast.Import):
            for a in node.names:
                if a.name.startswith("cgman.") and a.asname:
                    aliases[a.asname] = a.name
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id in aliases \
                and node.attr.startswith("_") and not node.attr.startswith("__"):
            target = aliases[node.value.id]
            if _package(target) != mine:
                bad.append(f"{rel}:{node.lineno}: uses {node.value.id}.{node.attr} of {target}")
    return bad


@pytest.mark.parametrize("path", _modules(), ids=lambda p: str(p.relative_to(PKG)))
def test_no_private_name_crosses_a_package(path):
    bad = private_names_across_packages(str(path.relative_to(PKG)), path.read_text())
    assert not bad, "\n".join(bad)


def test_the_private_name_rule_catches_a_planted_violation():
    planted = "from ..plan import _ancestors\nfrom .. import plan\nx = plan._subtree\n"
    found = private_names_across_packages("containers/planted.py", planted)
    assert len(found) == 2 and "_ancestors" in found[0] and "plan._subtree" in found[1]
    # the same names inside their own package are fine
    assert not private_names_across_packages("plan_helpers.py", "from .errors import shown\n")
    assert not private_names_across_packages("containers/other.py", "from .launch import _x\n")


def package_graph(modules: dict[str, str]) -> dict[str, set[str]]:
    """Which package imports which, from {path below cgman/: source text}."""
    graph: dict[str, set[str]] = {}
    for rel, text in modules.items():
        mine = _package(".".join(("cgman",) + Path(rel).with_suffix("").parts))
        pkg_parts = ("cgman",) + Path(rel).parent.parts
        for node in ast.walk(ast.parse(text, rel)):
            targets = []
            if isinstance(node, ast.ImportFrom):
                base = ".".join(pkg_parts[:len(pkg_parts) - node.level + 1] + ((node.module,) if node.module else ())) \
                    if node.level else (node.module or "")
                targets = [f"{base}.{a.name}" if base.count(".") == 0 else base for a in node.names]
            elif isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            for t in targets:
                if t.startswith("cgman.") and _package(t) != mine:
                    graph.setdefault(mine, set()).add(_package(t))
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Every elementary cycle found by a depth-first walk (each reported once, from its smallest name)."""
    found: set[tuple[str, ...]] = set()

    def walk(node: str, path: list[str]) -> None:
        for nxt in sorted(graph.get(node, ())):
            if nxt == path[0]:
                found.add(tuple(path))
            elif nxt not in path and nxt > path[0]:
                walk(nxt, path + [nxt])
    for start in sorted(graph):
        walk(start, [start])
    return [list(c) + [c[0]] for c in sorted(found)]


def test_no_cycle_between_packages():
    found = cycles(package_graph({str(p.relative_to(PKG)): p.read_text() for p in _modules()}))
    assert not found, "\n".join(" -> ".join(c) for c in found)


def test_the_cycle_rule_catches_a_planted_violation():
    planted = {"state/a.py": "from ..accounting import ledger\n",
               "accounting/b.py": "def f():\n    from ..containers.launch import launch\n",
               "containers/c.py": "from ..state.records import Store\n"}
    assert cycles(package_graph(planted)) == [["accounting", "containers", "state", "accounting"]]
    del planted["containers/c.py"]
    assert cycles(package_graph(planted)) == []


# ------------------------------------------------------------- cgroup files are opened in drivers/ only
# drivers/ owns every cgroup file cgman reads or writes, and drivers/cgfs.py opens them all,
# beneath the mount without following symlinks. Nothing else may open a path built from a
# cgroup interface file name or from a hierarchy's mountpoint. The rule follows a path through
# the assignments of the function that builds it, and through a module's own helpers that open
# what they are given (``def _read(path): open(path)``).

def _cgroup_vocabulary() -> tuple[object, frozenset[str]]:
    """(a pattern of the cgroup file names drivers/ knows and of the cgroup mount path, the
    attribute names that hold a hierarchy's mountpoint), both taken from drivers/, so that a
    file drivers learns, or a rename there, is seen here."""
    import dataclasses
    import re

    from cgman.drivers.cgfs import CgroupTree
    from cgman.drivers.detect import V1_SUBSYS, HostInfo
    from cgman.drivers.statfiles import StatFile
    mounts = frozenset({"unified", "v1_mounts"} & {f.name for f in dataclasses.fields(HostInfo)}
                       | {"mount"} & {f.name for f in dataclasses.fields(StatFile)}
                       | {"mount"} & set(vars(CgroupTree("/", "x"))))
    assert mounts == {"unified", "v1_mounts", "mount"}, "drivers renamed where a mountpoint is held"
    # the string constants of drivers/ that look like interface files of a controller it knows
    controller = re.compile(rf"({'|'.join(sorted(set(V1_SUBSYS) | set(V1_SUBSYS.values()) | {'cgroup'}))})"
                            r"\.[a-z_.]+")
    files = {node.value for p in (PKG / "drivers").glob("*.py") for node in ast.walk(ast.parse(p.read_text()))
             if isinstance(node, ast.Constant) and isinstance(node.value, str) and controller.fullmatch(node.value)}
    assert {"memory.stat", "cgroup.procs", "io.max", "cpuacct.usage", "freezer.state"} <= files
    pattern = re.compile(rf"(^|/)({'|'.join(map(re.escape, sorted(files)))})$|/sys/fs/cgroup")
    return pattern, mounts


_OPEN_FUNCS = {"open", "os.open", "io.open"}
_OPEN_METHODS = {"open", "read_text", "read_bytes", "write_text", "write_bytes"}    # pathlib


def _assignments(scope: ast.AST) -> dict[str, list[ast.expr]]:
    """name -> every expression assigned to it in ``scope`` (element-wise for tuples)."""
    out: dict[str, list[ast.expr]] = {}

    def bind(target: ast.expr, value: ast.expr) -> None:
        if isinstance(target, ast.Name):
            out.setdefault(target.id, []).append(value)
        elif isinstance(target, (ast.Tuple, ast.List)):
            same = isinstance(value, (ast.Tuple, ast.List)) and len(value.elts) == len(target.elts)
            for i, t in enumerate(target.elts):
                bind(t, value.elts[i] if same else value)     # type: ignore[union-attr]
    for node in ast.walk(scope):
        if isinstance(node, ast.Assign):
            for t in node.targets:
                bind(t, node.value)
        elif isinstance(node, (ast.AnnAssign, ast.AugAssign, ast.NamedExpr)) and node.value is not None:
            bind(node.target, node.value)
        elif isinstance(node, (ast.For, ast.comprehension)):
            bind(node.target, node.iter)
    return out


def _mentions(expr: ast.expr, assigned: dict[str, list[ast.expr]], pattern, mounts: frozenset[str],
              names: frozenset[str] = frozenset(), seen: set[str] | None = None) -> bool:
    """Does ``expr`` (through the assignments it uses) involve a cgroup file name or mount
    path, or, when ``names`` is given, one of those names?"""
    seen = set() if seen is None else seen
    for node in ast.walk(expr):
        if isinstance(node, ast.Constant) and isinstance(node.value, str) and pattern.search(node.value):
            return True
        if isinstance(node, ast.Attribute) and node.attr in mounts:
            return True
        if isinstance(node, ast.Name):
            if node.id in mounts or node.id in names:
                return True
            if node.id not in seen:
                seen.add(node.id)
                if any(_mentions(v, assigned, pattern, mounts, names, seen) for v in assigned.get(node.id, ())):
                    return True
    return False


def _opened(call: ast.Call, wrappers: dict[str, int]) -> ast.expr | None:
    """The path a call opens, if it is an opener (or a wrapper of one, by argument index)."""
    name = ast.unparse(call.func)
    if name in _OPEN_FUNCS or name in wrappers:
        i = wrappers.get(name, 0)
        return call.args[i] if len(call.args) > i else next(
            (k.value for k in call.keywords if k.arg in ("file", "path")), None)
    if isinstance(call.func, ast.Attribute) and call.func.attr in _OPEN_METHODS and \
            not (isinstance(call.func.value, ast.Name) and call.func.value.id in ("os", "io")):
        return call.func.value
    return None


def cgroup_file_opens(rel: str, source: str) -> list[str]:
    """Where module ``rel`` (path below cgman/) opens a cgroup file: ``rel:line: what``."""
    pattern, mounts = _cgroup_vocabulary()
    tree = ast.parse(source, rel)
    funcs = [n for n in ast.walk(tree) if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef))]
    wrappers: dict[str, int] = {}
    for _ in range(3):           # a wrapper of a wrapper, too
        for f in funcs:
            params = [a.arg for a in f.args.args]
            params = params[1:] if params[:1] == ["self"] else params
            assigned = _assignments(f)
            for call in (n for n in ast.walk(f) if isinstance(n, ast.Call)):
                path = _opened(call, wrappers)
                for i, p in enumerate(params):
                    if path is not None and _mentions(path, assigned, pattern, frozenset(), frozenset({p})):
                        wrappers[f.name] = wrappers[f"self.{f.name}"] = i
    bad = []
    for scope in [tree, *funcs]:
        assigned = _assignments(scope)
        calls = ast.walk(scope) if scope is not tree else (n for stmt in tree.body if not isinstance(
            stmt, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)) for n in ast.walk(stmt))
        for call in (n for n in calls if isinstance(n, ast.Call)):
            path = _opened(call, wrappers)
            if path is not None and _mentions(path, assigned, pattern, mounts):
                bad.append(f"{rel}:{call.lineno}: opens {ast.unparse(path)}")
    return sorted(set(bad))


@pytest.mark.parametrize("path", [p for p in _modules() if p != PKG / "drivers" / "cgfs.py"],
                         ids=lambda p: str(p.relative_to(PKG)))
def test_no_cgroup_file_is_opened_outside_drivers(path):
    """Nor inside drivers/ but through cgfs.py, the one code that opens them (confined)."""
    bad = cgroup_file_opens(str(path.relative_to(PKG)), path.read_text())
    assert not bad, "read or write it through cgman.drivers (reads.py, statfiles.py, cgfs.py):\n" + "\n".join(bad)


_PLANTED = '''
import os
from pathlib import Path

def peak(info, root, leaf):
    with open(os.path.join(info.unified, root, leaf, "memory.peak"), "rb") as f:
        return int(f.read())

def stat(t, leaf):
    path = os.path.join(t.mount, leaf)
    fd = os.open(path, os.O_RDONLY)
    return os.read(fd, 4096)

def _read(where):
    with open(where) as f:
        return f.read()

def delegated(parent):
    return _read(f"{parent}/cgroup.subtree_control")

def procs(host, cg):
    mount, file = host.info.v1_mounts["pids"], "cgroup.procs"
    return Path(mount, cg, file).read_text()

LIMIT = open("/sys/fs/cgroup/memory/memory.limit_in_bytes").read()

def fine(run_dir, pid):
    open("/proc/meminfo").read()
    open(os.path.join(run_dir, "containers", "record.json"))
    open(f"/proc/{pid}/cgroup")
    return Path(run_dir, "io.json").read_text()
'''


def test_the_cgroup_file_rule_catches_a_planted_violation():
    found = cgroup_file_opens("accounting/planted.py", _PLANTED)
    lines = sorted(int(f.split(":")[1]) for f in found)
    assert lines == [6, 11, 19, 23, 25], found          # peak, stat, delegated (via _read), procs, LIMIT
    assert all(f.startswith("accounting/planted.py:") for f in found)


# ------------------------------------------------------------- the environment is read at the edge
# Flags and CGMAN_* variables become one Settings in cli/ (cgman/settings.py); the library below
# takes values and never reads (or changes) the process environment itself.
ENVIRONMENT_NAMES = {"environ", "environb", "getenv", "getenvb", "putenv", "unsetenv"}


def environment_reads(source: str, filename: str = "<module>") -> list[int]:
    """Lines of ``source`` that touch the process environment through the os module:
    os.environ, os.getenv, os.putenv... (also under another name for os, or imported from it)."""
    tree = ast.parse(source, filename)
    os_names = {a.asname or a.name for node in ast.walk(tree) if isinstance(node, ast.Import)
                for a in node.names if a.name == "os"}
    lines = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute) and node.attr in ENVIRONMENT_NAMES \
                and isinstance(node.value, ast.Name) and node.value.id in os_names:
            lines.append(node.lineno)
        elif isinstance(node, ast.ImportFrom) and node.module == "os" \
                and any(a.name in ENVIRONMENT_NAMES for a in node.names):
            lines.append(node.lineno)
    return sorted(lines)


@pytest.mark.parametrize("path", [p for p in _modules() if _top(p) != "cli"], ids=lambda p: str(p.relative_to(PKG)))
def test_no_environment_reads_below_cli(path):
    lines = environment_reads(path.read_text(), str(path))
    assert not lines, (f"{path.relative_to(PKG)} reads the environment at lines {lines}: resolve it in cli/ "
                       f"into Settings (cgman/settings.py) and pass the value down")


def test_the_environment_rule_catches_a_planted_read():
    planted = ("import os\nimport os as o\nfrom os import getenv\n\n"
               "def root():\n    return os.environ.get('CGMAN_CGROUP_ROOT') or o.getenv('X')\n")
    assert environment_reads(planted) == [3, 6, 6]
    assert environment_reads("import os\nenviron = {}\nos.path.join('environ')\ndef f(environ): return environ\n") == []
