"""``ue-sweep --help`` prints Hydra's app help, with the groups listed once (cli/help.py)."""

from __future__ import annotations

import copy

import pytest
from hydra import initialize_config_module
from hydra._internal.utils import get_args_parser
from hydra.core.global_hydra import GlobalHydra
from hydra.types import RunMode

from ue_sweep.cli.help import app_help
from ue_sweep.errors import UserError


def _hydras_help(argv: list[str]) -> str:
    """What Hydra's own ``--help`` prints (``Hydra.app_help`` without the print)."""
    parser = get_args_parser()
    args = parser.parse_args(argv)
    with initialize_config_module("ue_sweep.conf", version_base="1.3"):
        hydra = GlobalHydra.instance().hydra
        cfg = hydra.compose_config("config", args.overrides, RunMode.RUN)
        job = hydra.get_sanitized_cfg(copy.deepcopy(cfg), "job")
        return hydra.get_help(cfg.hydra.help, job, parser, resolve=args.resolve)


@pytest.mark.parametrize("argv", [["--help"], ["experiment=smoke", "dataset=pathmnist", "-h"]])
def test_the_help_is_hydras(argv):
    ours = app_help(argv)
    assert ours == _hydras_help(argv)
    assert "\ndataset: bloodmnist, cifar10, digits" in ours and "\nhydra/launcher:" not in ours


def test_a_bad_override_with_help_is_one_line():
    with pytest.raises(UserError, match=r"^config error: .*dataset/nope"):
        app_help(["dataset=nope", "--help"])


@pytest.mark.parametrize(
    ("argv", "needed"),
    [
        (["batch_size.per_device=-1"], False),
        (["--help"], False),
        (["seed=3", "clusters=5"], False),
        (["-m", "seed=0,1"], True),
        (["--multirun", "seed=0,1"], True),
        (["hydra/launcher=slurm"], True),
        (["hydra.launcher.check_only=true"], True),
        (["experiment=smoke"], True),
        (["--hydra-help"], True),
        (["--cfg", "hydra"], True),
        (["--cfg=hydra"], True),
        (["hydra.mode=MULTIRUN", "seed=0,1"], True),
        (["hydra.run.dir=job", "seed=1"], False),
        (["--config-name=mine"], True),
        (["-cd", "/somewhere"], True),
    ],
)
def test_only_a_command_line_that_can_reach_a_launcher_registers_them(argv, needed):
    from ue_sweep.cli.compose import needs_launchers

    assert needs_launchers(argv) is needed
