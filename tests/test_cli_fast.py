"""The typer-free `cgman run` parser must know exactly the typer command's options."""

from __future__ import annotations

import pytest

from cgman.cli import fast
from cgman.cli.main import app


def _typer_run_options() -> set[str]:
    import typer.main
    cmd = typer.main.get_command(app)
    run = cmd.commands["run"]  # type: ignore[attr-defined]
    names: set[str] = set()
    for p in run.params:
        names.update(getattr(p, "opts", []))
        names.update(getattr(p, "secondary_opts", []))
    names.discard("--help")
    names.discard("-h")
    return {n for n in names if n.startswith("-")}


def test_fast_parser_knows_every_run_option_and_no_other():
    assert set(fast.RUN_OPTIONS) == _typer_run_options()


@pytest.mark.parametrize("argv, want", [
    (["run", "-p", "acme/web", "--", "sleep", "1"], {"policy": "acme/web", "command": ["sleep", "1"]}),
    (["run", "--policy=acme/web", "-d", "--name", "x", "sleep", "1"],
     {"policy": "acme/web", "detach": True, "name": "x", "command": ["sleep", "1"]}),
    (["--cgroup-root", "r", "run", "-p", "g", "-e", "A=1", "-e", "B=2", "--layer", "/a", "--layer", "/b",
      "--no-init", "--", "ls", "-l"],
     {"root": "r", "policy": "g", "env": ["A=1", "B=2"], "layer": ["/a", "/b"], "init": False,
      "command": ["ls", "-l"]}),
    (["run", "-p", "g", "--", "sh", "-c", "--help"], {"policy": "g", "command": ["sh", "-c", "--help"]}),
])
def test_fast_parser_reads_what_typer_would(argv, want):
    got = fast.parse(argv)
    assert got is not None
    for k, v in want.items():
        assert got[k] == v, k


@pytest.mark.parametrize("argv", [
    ["run", "--help"], ["run", "-h"], ["run", "-p", "g", "--bogus", "--", "x"], ["run", "--name"],
    ["run", "--", "true"],                     # no --policy: typer says it is required
    ["validate", "run"], ["run", "-p", "g", "--rm=yes", "--", "x"],
])
def test_fast_parser_leaves_the_rest_to_typer(argv):
    assert fast.parse(argv) is None


@pytest.mark.parametrize("argv", [
    ["run", "-p", "g", "--memory", "lots", "--", "x"], ["run", "-p", "g", "--cpus", "one", "--", "x"],
    ["run", "-p", "g", "--timeout", "soon", "--", "x"], ["run", "-p", "g", "-e", "=v", "--", "x"],
    ["run", "-p", "g", "--memory", "max", "--", "x"],
])
def test_bad_values_fall_back_to_typer_for_its_usage_error(argv):
    o = fast.parse(argv)
    assert o is not None and fast.run_kwargs(o) is None
