"""Settings at the edge: global flags and CGMAN_* variables resolve into one Settings (flags
first, then the environment, else the library's default), a malformed variable is one
error line naming it, and the Store hands the settings to the code that launches and bills."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from cgman.accounting.usage import DEFAULT_SAMPLE_INTERVAL_S, sample_interval_s
from cgman.errors import CgmanError
from cgman.inputs import DEFAULT_LIMITS, Limits
from cgman.settings import Settings
from cgman.state.records import BRIDGE_DIR, RUN_DIR, STATE_DIR, Store

from .conftest import REPO

ENV = {"CGMAN_CGROUP_ROOT": "env-root", "CGMAN_RUN_DIR": "/env/run", "CGMAN_STATE_DIR": "/env/state",
       "CGMAN_BRIDGE_DIR": "/env/br", "CGMAN_POLICY_DIR": "/env/pol", "CGMAN_SAMPLE_INTERVAL": "0.5",
       "CGMAN_LEDGER_TIMEOUT": "0.2", "CGMAN_MAX_INPUT_BYTES": "8Mi", "CGMAN_MAX_GROUPS": "7", "TERM": "vt100"}


def test_the_environment_fills_every_setting():
    assert Settings.resolve(ENV) == Settings(
        cgroup_root="env-root", run_dir="/env/run", state_dir="/env/state", bridge_dir="/env/br",
        policy_dir="/env/pol", sample_interval_s=0.5, ledger_timeout_s=0.2,
        input_limits=Limits(max_input_bytes=8 << 20, max_groups=7), term="vt100")


def test_flags_win_over_the_environment():
    s = Settings.resolve(ENV, cgroup_root="flag-root", run_dir="/flag/run", state_dir="/flag/state", verbose=True)
    assert (s.cgroup_root, s.run_dir, s.state_dir, s.verbose) == ("flag-root", "/flag/run", "/flag/state", True)


def test_nothing_set_leaves_the_library_defaults():
    s = Settings.resolve({"CGMAN_RUN_DIR": "", "HOME": "/root"})       # empty is unset, as typer reads it
    assert s == Settings() and s.input_limits == DEFAULT_LIMITS and s.term is None
    st = Store(s)
    assert (st.run, st.state, st.bridges.path, st.root) == (RUN_DIR, STATE_DIR, BRIDGE_DIR, "cgman")
    assert sample_interval_s(s.sample_interval_s) == DEFAULT_SAMPLE_INTERVAL_S
    assert sample_interval_s(0.0) == 0.0, "0 turns sampling off; it is not 'unset'"


def test_the_store_carries_the_settings_it_was_made_from():
    s = Settings.resolve(ENV)
    st = Store(s)
    assert st.settings is s and (st.run, st.state, st.bridges.path) == ("/env/run", "/env/state", "/env/br")
    assert st.root == "env-root"


@pytest.mark.parametrize("name, value, message", [
    ("CGMAN_SAMPLE_INTERVAL", "often", "CGMAN_SAMPLE_INTERVAL='often': expected seconds, e.g. 5 or 0.5"),
    ("CGMAN_SAMPLE_INTERVAL", "-1", "CGMAN_SAMPLE_INTERVAL='-1': must be >= 0"),
    ("CGMAN_SAMPLE_INTERVAL", "inf", "CGMAN_SAMPLE_INTERVAL='inf': expected seconds, e.g. 5 or 0.5"),
    ("CGMAN_SAMPLE_INTERVAL", "nan", "CGMAN_SAMPLE_INTERVAL='nan': expected seconds, e.g. 5 or 0.5"),
    ("CGMAN_MAX_INPUT_BYTES", "huge", "CGMAN_MAX_INPUT_BYTES='huge': expected a size such as 4194304 or 8Mi"),
    ("CGMAN_MAX_GROUPS", "0", "CGMAN_MAX_GROUPS='0': expected a positive number such as 10000"),
])
def test_a_malformed_variable_is_named(name, value, message):
    with pytest.raises(CgmanError) as e:
        Settings.resolve({name: value})
    assert str(e.value) == message


def test_a_ledger_timeout_that_is_no_number_is_ignored():
    for raw in ("soon", "inf", "nan", "-1"):
        assert Settings.resolve({"CGMAN_LEDGER_TIMEOUT": raw}).ledger_timeout_s is None, raw
    assert Settings.resolve({"CGMAN_LEDGER_TIMEOUT": "0.5"}).ledger_timeout_s == 0.5


def test_the_command_line_says_which_variable_is_malformed(tmp_path):
    env = dict(os.environ, PYTHONPATH=str(REPO), CGMAN_RUN_DIR=str(tmp_path / "run"),
               CGMAN_STATE_DIR=str(tmp_path / "state"), CGMAN_SAMPLE_INTERVAL="often")
    for argv in (["ps"], ["run", "-p", "g", "--", "true"]):        # the typer path and the typer-free one
        p = subprocess.run([sys.executable, "-m", "cgman", *argv], capture_output=True, text=True, env=env,
                           timeout=60, cwd=REPO)
        assert (p.returncode, p.stderr) == (1, "cgman: error: CGMAN_SAMPLE_INTERVAL='often': expected seconds, "
                                               "e.g. 5 or 0.5\n"), argv
