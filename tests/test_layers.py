"""Dependencies point one way (STYLE.md): model → policy → plan → drivers → runtime →
interfaces (exporter, agent, cli), and each third-party library stays in its layer.
Lazy imports inside functions count too: the test walks every node."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PKG = Path(__file__).resolve().parent.parent / "cgman"

# layer of each top-level module or package; a module may import only from layers <= its own
LAYER = {"errors": 0, "units": 0, "kernel": 0, "model": 0, "schema": 1, "convert": 1, "inputs": 1, "security": 1,
         "_secure": 1,
         "policy": 2,
         "plan": 3, "drivers": 4, "state": 5, "reconcile": 6, "accounting": 7,
         "containers": 8, "_spawn": 8, "_fastread": 8, "fleet": 9, "hostcheck": 10,
         "exporter": 11, "images": 12, "agent": 13, "cli": 14, "__main__": 15, "__init__": 0}
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
