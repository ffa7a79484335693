"""Settings reach the runner as values; the environment is read in one place and only at the edge."""

import os
import subprocess
import sys

import pytest

from mobilellm.course.notebooks import kernel_env
from mobilellm.course.settings import Settings


def test_from_env_reads_each_variable():
    env = {
        "MOBILELLM_QUICK": "1",
        "MOBILELLM_SEEDS": "2",
        "FRESH": "1",
        "MOBILELLM_FRESH_SINCE": "123.5",
        "MOBILELLM_DEVICE": "cuda",
        "MOBILELLM_HEADLESS": "1",
        "MOBILELLM_COMMAND": "make figures",
    }
    assert Settings.from_env(env) == Settings(
        quick=True, seeds=2, fresh=True, fresh_since=123.5, device="cuda", progress=False, command="make figures"
    )
    plain = Settings.from_env({"MOBILELLM_QUICK": "0", "FRESH": ""})
    assert (plain.quick, plain.seeds, plain.fresh, plain.device, plain.progress, plain.command) == (
        False,
        None,
        False,
        "cpu",
        True,
        None,
    )


@pytest.mark.parametrize("bad", ["two", "0", "-1"])
def test_a_bad_seed_count_names_the_variable_and_the_fix(bad):
    with pytest.raises(ValueError, match=rf"MOBILELLM_SEEDS \('{bad}'\) must be a positive integer, e.g. SEEDS=1"):
        Settings.from_env({"MOBILELLM_SEEDS": bad})


def test_a_child_process_gets_the_same_settings():
    for s in (
        Settings(),
        Settings(quick=True, seeds=1, fresh=True, fresh_since=5.25, device="mps", progress=False, command="pytest"),
    ):
        assert Settings.from_env(s.to_env()) == s


def test_notebook_kernels_get_the_settings_without_progress_bars():
    env = kernel_env(Settings(fresh=True, seeds=1, fresh_since=7.0))
    child = Settings.from_env(env)
    assert child == Settings(
        fresh=True, seeds=1, fresh_since=7.0, progress=False, command="make figures FRESH=1 SEEDS=1"
    )
    assert env["TQDM_DISABLE"] == "1" and env["OMP_WAIT_POLICY"] and "PATH" in env


def test_importing_the_package_changes_nothing():
    env = {k: v for k, v in os.environ.items() if k != "OMP_WAIT_POLICY"}
    code = (
        "import os, sys; before = dict(os.environ); import mobilellm, mobilellm.course.settings; "
        "assert dict(os.environ) == before, 'the environment changed'; "
        "assert 'torch' not in sys.modules, 'torch was imported'; "
        "assert mobilellm.ModelConfig().n_layers == 30"
    )
    run = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    assert run.returncode == 0, run.stderr
