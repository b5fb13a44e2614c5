"""The command line's plumbing: the option tables of the typer-free paths (run, exporter,
agent, and the global options) match the typer definitions, the one parser reads what
typer would and leaves the rest to it, global options may follow the command, the command
table imports only what a line runs, and cli/ has no import cycle and borrows no private
names."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path
from typing import Optional

import pytest

from cgman.cli import options
from cgman.cli.commands import COMMANDS
from cgman.cli.common import BadOption
from cgman.cli.runcmd import run_request

from .conftest import REPO

CLI = REPO / "cgman" / "cli"


def typer_table(command: Optional[str]) -> options.Table:
    """The option table typer's own definitions imply for ``cgman COMMAND`` (None: the global
    options): each name with its parameter, arity, constant and environment variable."""
    import typer.main

    from cgman.cli.app import build
    group = typer.main.get_command(build(command))
    params = group.params if command is None else group.commands[command].params  # type: ignore[attr-defined]
    table: options.Table = {}
    for p in params:
        if not p.opts[0].startswith("-"):
            continue                                            # an argument
        if p.is_flag:
            assert p.is_bool_flag, f"{p.name}: a flag the tables cannot hold"
            arity = options.FLAG
        else:
            arity = options.MULTI if p.multiple else options.VALUE
            assert p.nargs == 1, f"{p.name}: takes {p.nargs} words"
        table.update({n: options.Opt(p.name, arity, True, p.envvar) for n in p.opts})
        table.update({n: options.Opt(p.name, arity, False, p.envvar) for n in p.secondary_opts})
    return table


@pytest.mark.parametrize("command", [None, *options.COMMANDS])
def test_every_option_table_is_its_typer_command(command):
    """Same names, destinations (typer's parameter names), arity and environment variables."""
    table = options.GLOBAL if command is None else options.COMMANDS[command]
    assert table == typer_table(command)


def test_the_typer_free_paths_are_the_tabled_commands():
    assert {name for name, c in COMMANDS.items() if c.fast} == set(options.COMMANDS)


def test_the_command_table_is_what_typer_serves():
    import typer.main

    from cgman.cli.app import build
    everything = typer.main.get_command(build())
    assert list(everything.commands) == list(COMMANDS)  # type: ignore[attr-defined]
    for name in COMMANDS:
        assert list(typer.main.get_command(build(name)).commands) == [name]  # type: ignore[attr-defined]


MODULES_AT_EXIT = ("import atexit, sys\n"
                   "atexit.register(lambda: print('modules:', *sorted(sys.modules), file=sys.stderr))\n"
                   "sys.argv[0] = 'cgman'\n"
                   "from cgman.cli import main\n"
                   "main()\n")


def _imported(*argv: str, env: Optional[dict[str, str]] = None) -> tuple[subprocess.CompletedProcess, set[str]]:
    """Run `cgman ARGV`; its result and every module it had imported when it exited."""
    p = subprocess.run([sys.executable, "-c", MODULES_AT_EXIT, *argv], capture_output=True, text=True,
                       timeout=60, cwd=REPO, env=env)
    last = p.stderr.splitlines()[-1] if p.stderr else ""
    assert last.startswith("modules:"), p.stderr[-2000:]
    return p, set(last.split()[1:])


def test_a_command_imports_only_its_own_module():
    p, mods = _imported("schema")
    assert p.returncode == 0 and '"$schema"' in p.stdout, p.stderr[-2000:]
    assert "cgman.cli.policy" in mods and "typer" in mods
    others = {f"cgman.cli.{c.module}" for c in COMMANDS.values()} - {"cgman.cli.policy"}
    assert not others & mods


def test_run_takes_the_typer_free_path(tmp_path):
    import os
    (tmp_path / "policies").mkdir()
    (tmp_path / "policies" / "p.yaml").write_text("version: 1\npolicies:\n  acme: {}\n")
    env = dict(os.environ, PYTHONPATH=str(REPO), CGMAN_RUN_DIR=str(tmp_path / "run"),
               CGMAN_STATE_DIR=str(tmp_path / "state"), CGMAN_POLICY_DIR=str(tmp_path / "policies"),
               CGMAN_CGROUP_ROOT="cgman-test-never-made")
    p, mods = _imported("run", "-p", "nosuch", "--", "true", env=env)
    assert p.returncode == 1 and "cgman: error: no group 'nosuch'" in p.stderr, p.stderr[-2000:]
    assert "cgman.cli.runcmd" in mods and not {m for m in mods if m.split(".")[0] in ("typer", "click", "rich")}


# ------------------------------------------------------------------ the parser
@pytest.mark.parametrize("argv, want", [
    (["run", "-p", "acme/web", "--", "sleep", "1"], {"policy": "acme/web", "command": ["sleep", "1"]}),
    (["run", "--policy=acme/web", "-d", "--name", "x", "sleep", "1"],
     {"policy": "acme/web", "detach": True, "name": "x", "command": ["sleep", "1"]}),
    (["--cgroup-root", "r", "run", "-p", "g", "-e", "A=1", "-e", "B=2", "--layer", "/a", "--layer", "/b",
      "--no-init", "--", "ls", "-l"],
     {"cgroup_root": "r", "policy": "g", "env": ["A=1", "B=2"], "layer": ["/a", "/b"], "init": False,
      "command": ["ls", "-l"]}),
    (["run", "-p", "g", "--", "sh", "-c", "--help"], {"policy": "g", "command": ["sh", "-c", "--help"]}),
    (["--cgroup-root", "run", "run", "-p", "g", "-f", "a.yaml", "x"],
     {"cgroup_root": "run", "policy": "g", "files": ["a.yaml"], "command": ["x"]}),
])
def test_fast_parser_reads_what_typer_would(argv, want):
    got = options.parse(argv, "run")
    assert got is not None
    for k, v in want.items():
        assert got[k] == v, k


@pytest.mark.parametrize("argv", [
    ["run", "--help"], ["run", "-h"], ["run", "-p", "g", "--bogus", "--", "x"], ["run", "--name"],
    ["run", "--", "true"],                     # no --policy: typer says it is required
    ["validate", "run"], ["run", "-p", "g", "--rm=yes", "--", "x"], ["--help", "run", "-p", "g"],
])
def test_fast_parser_leaves_the_rest_to_typer(argv):
    assert options.parse(argv, "run") is None


@pytest.mark.parametrize("argv", [
    ["run", "-p", "g", "--memory", "lots", "--", "x"], ["run", "-p", "g", "--cpus", "one", "--", "x"],
    ["run", "-p", "g", "--timeout", "soon", "--", "x"], ["run", "-p", "g", "-e", "=v", "--", "x"],
    ["run", "-p", "g", "--memory", "max", "--", "x"], ["run", "-p", "g", "--volume", "/x:rx", "--", "x"],
])
def test_bad_values_fall_back_to_typer_for_its_usage_error(argv):
    o = options.parse(argv, "run")
    assert o is not None
    with pytest.raises(BadOption):
        run_request(o)


def test_the_environment_fills_what_the_line_leaves_out():
    env = {"CGMAN_POLICY_DIR": "/etc/p", "CGMAN_EXPORTER_LISTEN": ":1", "CGMAN_CGROUP_ROOT": "r",
           "CGMAN_LEDGER_URL": ""}                   # empty: not set, as typer reads it
    assert options.parse(["agent"], "agent", env) == {"policy_dir": "/etc/p", "listen": ":1", "cgroup_root": "r"}
    assert options.parse(["agent", "-l", ":2"], "agent", env)["listen"] == ":2", "the line wins"


@pytest.mark.parametrize("argv,want", [
    (["apply", "--cgroup-root", "x", "f.yaml"], ["--cgroup-root", "x", "apply", "f.yaml"]),
    (["status", "-v", "--cgroup-root=y"], ["-v", "--cgroup-root=y", "status"]),
    (["attach", "g", "--", "cmd", "-v", "--cgroup-root", "z"],
     ["attach", "g", "--", "cmd", "-v", "--cgroup-root", "z"]),
    (["-v", "plan", "p.yaml"], ["-v", "plan", "p.yaml"]),
])
def test_global_options_may_follow_the_command(argv, want):
    assert options.hoist(argv) == want


@pytest.mark.parametrize("argv,want", [(["-v", "--cgroup-root", "run", "run"], "run"), (["--run-dir=/r", "ps"], "ps"),
                                       (["--cgroup-root"], None), (["-h", "run"], None), ([], None)])
def test_the_command_is_the_first_word_after_the_global_options(argv, want):
    assert options.command_of(argv) == want


# ------------------------------------------------------------------ the package's shape
def _cli_imports(path: Path) -> list[tuple[str, list[str]]]:
    """(cli module, names) of every import of a sibling module, lazy ones included."""
    out = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.ImportFrom) and node.level == 1:
            if node.module:
                out.append((node.module, [a.name for a in node.names]))
            else:
                out += [(a.name, []) for a in node.names]
    return out


def test_cli_modules_import_each_other_one_way_and_no_private_names():
    graph = {p.stem: {m for m, _ in _cli_imports(p)} - {p.stem} for p in CLI.glob("*.py")}
    private = [f"{p.name}: {m}.{n}" for p in CLI.glob("*.py") for m, names in _cli_imports(p)
               for n in names if n.startswith("_")]
    assert not private
    done: set[str] = set()

    def visit(mod: str, path: tuple[str, ...]) -> None:
        assert mod not in path, f"import cycle: {' -> '.join(path + (mod,))}"
        if mod not in done:
            for dep in graph.get(mod, ()):
                visit(dep, path + (mod,))
            done.add(mod)
    for mod in graph:
        visit(mod, ())


def test_no_module_of_cli_imports_after_its_definitions():
    """Commands are found through the table, not registered by imports at the bottom of a file."""
    for p in CLI.glob("*.py"):
        body = ast.parse(p.read_text()).body
        first_def = next((i for i, n in enumerate(body) if isinstance(n, (ast.FunctionDef, ast.ClassDef))),
                         len(body))
        late = [n.lineno for n in body[first_def:] if isinstance(n, (ast.Import, ast.ImportFrom))]
        assert not late, f"{p.name}: imports at lines {late}"
