"""Shared fixtures: composed configs, a runner for the real `ue-sweep` command, tiny datasets."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

# Idle OpenMP threads sleep instead of spinning: on a shared or small CI machine, spinning threads
# of concurrent test processes (the CLI jobs a test starts, spawned ranks) slow training by 10-100x.
# Numerics do not depend on it. Set before torch starts its thread pool; inherited by subprocesses.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import pytest
from hydra import compose, initialize_config_module
from omegaconf import DictConfig

from ue_sweep.cli.compose import quote_numeric_choices, register
from ue_sweep.config import TrainerConfig
from ue_sweep.runtime.distributed import Runtime, runtime
from ue_sweep.runtime.env import DistEnv

register()  # what every entry point does before composing a config

REPO = Path(__file__).resolve().parents[1]
# Seconds-sized settings shared by tests that run the whole pipeline.
SMOKE = ["experiment=smoke", "trainer.progress=log"]


@pytest.fixture
def compose_cfg() -> Callable[..., DictConfig]:
    def _compose(*overrides: str) -> DictConfig:
        with initialize_config_module("ue_sweep.conf", version_base="1.3"):
            return compose("config", overrides=quote_numeric_choices(overrides))

    return _compose


@pytest.fixture
def rt() -> Iterator[Runtime]:
    """A single-process gloo process group on the CPU."""
    with runtime(DistEnv(), TrainerConfig(accelerator="cpu")) as started:
        yield started


def ue_sweep_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK")}
    env.update(PYTHONUNBUFFERED="1", HYDRA_FULL_ERROR="0", **extra)
    return env


def run_cli(
    args: list[str], cwd: Path, timeout: float = 300, **env: str
) -> subprocess.CompletedProcess:
    """Run the installed `ue-sweep` command as a user would."""
    return subprocess.run(
        [sys.executable, "-m", "ue_sweep", *args],
        cwd=cwd,
        env=ue_sweep_env(**env),
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def refusal(args: list[str], cwd: Path, monkeypatch: pytest.MonkeyPatch, **env: str) -> str:
    """The one message ``ue-sweep ARGS`` run in ``cwd`` is refused with, as ``main`` checks the
    command line before Hydra starts, in this process: a real command costs seconds to start and
    adds only its exit status 2 and the line on stderr (tests/test_bad_input.py runs it)."""
    from ue_sweep.cli.preflight import check_command_line
    from ue_sweep.errors import UserError
    from ue_sweep.store.sweep import SWEEP_NAME_ENV, sweep_name

    argv = quote_numeric_choices(args)
    monkeypatch.chdir(cwd)
    monkeypatch.setenv(SWEEP_NAME_ENV, sweep_name(argv))
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    with pytest.raises(UserError) as err:
        check_command_line(argv)
    return str(err.value)


def read_results(root: Path) -> list[dict]:
    return [json.loads(p.read_text()) for p in sorted(root.rglob("result.json"))]


@pytest.fixture
def lsf(tmp_path, monkeypatch) -> Path:
    """The emulated LSF commands first on PATH, with their own state directory (used by
    test_lsf.py and test_lsf_defects.py)."""
    from submitit_lsf.executor import LSFJob
    from submitit_lsf.watcher import LSFInfoWatcher
    from tests import lsf_emulator

    bin_dir = tmp_path / "lsf-bin"
    bin_dir.mkdir()
    lsf_emulator.install(str(bin_dir))
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.setenv("LSF_EMULATOR_STATE", str(tmp_path / "lsf-state"))
    # a watcher of this test's jobs only: emulated job ids start again at 1000 in every test
    monkeypatch.setattr(LSFJob, "watcher", LSFInfoWatcher(delay_s=1))
    monkeypatch.setattr(LSFJob, "_results_timeout_s", 1)
    return tmp_path
