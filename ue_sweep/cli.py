"""The ``ue-sweep`` command: a Hydra app running one UC job per (multirun) grid point.

``ue-sweep report | status | cancel SWEEP_DIR`` are plain sub-commands, dispatched before Hydra
parses argv.
"""

from __future__ import annotations

import logging
import os
import re
import sys
from collections.abc import Sequence
from functools import cache
from importlib import resources
from pathlib import Path
from typing import Any

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf

from ue_sweep.distributed import env_from_launcher
from ue_sweep.errors import UserError
from ue_sweep.job import run_job
from ue_sweep.loggers import JobIdentity
from ue_sweep.preemption import Interrupted, Preempted
from ue_sweep.preflight import check_command_line
from ue_sweep.summary import format_summary
from ue_sweep.sweep import SWEEP_NAME_ENV, plain_override, sweep_name
from ue_sweep.tracking import ResultRecorder
from ue_sweep.validation import register_schemas, to_root_config

log = logging.getLogger(__name__)

# Exit status of a job that stopped at a checkpoint to be requeued (sysexits' EX_TEMPFAIL).
EXIT_PREEMPTED = 75
# Exit status of a job ended by SIGTERM, as the shell reports a process the signal killed.
EXIT_INTERRUPTED = 128 + 15


@cache
def numeric_groups() -> frozenset[str]:
    """Config groups whose option names are numbers (``batch_size``, ``clusters``)."""
    conf = resources.files("ue_sweep.conf")
    return frozenset(
        group.name
        for group in conf.iterdir()
        if group.is_dir()
        and (
            stems := [
                f.name.removesuffix(".yaml") for f in group.iterdir() if f.name.endswith(".yaml")
            ]
        )
        and all(stem.isdigit() for stem in stems)
    )


def quote_numeric_choices(args: Sequence[str]) -> list[str]:
    """Let ``batch_size=256`` and ``-m clusters=5,10`` pick numeric config-group options.

    Hydra's override parser reads ``256`` as an integer and refuses it as a group choice; the
    documented workaround is quoting (``batch_size='"256"'``), which this does for the user.
    """
    pattern = re.compile(r"^(?P<group>[\w/]+)=(?P<values>\d+(?:,\d+)*)$")
    out = []
    for arg in args:
        match = pattern.match(arg)
        if match and match["group"] in numeric_groups():
            values = ",".join(f'"{v}"' for v in match["values"].split(","))
            arg = f"{match['group']}={values}"
        out.append(arg)
    return out


def _launcher_rank() -> int:
    env = env_from_launcher()
    return env.rank if env is not None else 0


def _register_resolvers() -> None:
    # `eps: ${div:16,255}` reads like the papers write it.
    OmegaConf.register_new_resolver("div", lambda a, b: a / b, replace=True)
    # Ranks started by an external launcher share one Hydra run directory politely.
    OmegaConf.register_new_resolver(
        "ue_sweep.rank_zero_only",
        lambda value: value if _launcher_rank() == 0 else None,
        replace=True,
    )
    OmegaConf.register_new_resolver(
        "ue_sweep.rank_suffix",
        lambda: "" if _launcher_rank() == 0 else f".rank{_launcher_rank()}",
        replace=True,
    )
    # A world size on any launcher preset: `nodes: ${ue_sweep.nodes_for:48,${.tasks_per_node}}`.
    OmegaConf.register_new_resolver("ue_sweep.nodes_for", nodes_for, replace=True)


def nodes_for(world_size: int, tasks_per_node: int) -> int:
    """The nodes that give ``world_size`` ranks at ``tasks_per_node``; refused if none does."""
    if tasks_per_node < 1 or world_size % tasks_per_node:
        raise ValueError(
            f"a world size of {world_size} is not a whole number of nodes of {tasks_per_node} "
            "tasks: set hydra.launcher.nodes and tasks_per_node yourself"
        )
    return world_size // tasks_per_node


def _register_launchers() -> None:
    """Make ue-sweep's launchers known to Hydra.

    Hydra finds plugins by scanning the ``hydra_plugins`` namespace package, which misses editable
    installs; registering the classes explicitly works for every kind of install. The configs
    are stored again once Hydra's own are in place (see ``register``).
    """
    from hydra.core.plugins import Plugins
    from hydra_plugins.ue_sweep_launchers.config import register
    from hydra_plugins.ue_sweep_launchers.launchers import LAUNCHERS

    plugins = Plugins.instance()
    for launcher in LAUNCHERS:
        plugins.register(launcher)
    register()


register_schemas()
_register_resolvers()
_register_launchers()


@hydra.main(version_base="1.3", config_path="pkg://ue_sweep.conf", config_name="config")
def hydra_job(cfg: DictConfig) -> dict[str, Any] | None:
    hydra_cfg = HydraConfig.get()
    job_dir = Path(hydra_cfg.runtime.output_dir)
    overrides = [plain_override(o) for o in hydra_cfg.overrides.task]
    config = OmegaConf.to_container(cfg, resolve=True)
    recorder = ResultRecorder.for_job(job_dir, config, overrides)
    # A single run is a sweep of one job; the ids of its tracker runs derive from these two.
    multirun = hydra_cfg.mode == RunMode.MULTIRUN
    identity = JobIdentity(
        sweep_dir=str(Path(hydra_cfg.sweep.dir if multirun else hydra_cfg.run.dir).resolve()),
        job_num=hydra_cfg.job.num if multirun else 0,
        overrides=tuple(overrides),
        config=config,
        job_dir=str(job_dir),
    )
    try:
        root = to_root_config(cfg)
        record = run_job(
            root,
            job_dir,
            recorder,
            log_file=job_dir / f"{hydra_cfg.job.name}.log",
            identity=identity,
        )
    except UserError as err:
        if _launcher_rank() == 0:
            recorder.failed(err)
        if hydra_cfg.mode == RunMode.RUN:
            # One line and a usage exit status; in a multirun Hydra names the failing job and the
            # sibling jobs carry on.
            print(err, file=sys.stderr)
            raise SystemExit(2) from err
        raise
    if record is None:
        return None
    log.info("\n%s", format_summary(record, str(recorder.path)))
    return record.get("metrics", {}).get("accuracy")


def main() -> None:
    if sys.argv[1:2] == ["report"]:
        from ue_sweep.report import main as report_main

        raise SystemExit(report_main(sys.argv[2:]))
    if sys.argv[1:2] in (["status"], ["cancel"]):
        from ue_sweep.ops import cancel, status

        command = status if sys.argv[1] == "status" else cancel
        raise SystemExit(command.main(sys.argv[2:]))
    sys.argv[1:] = quote_numeric_choices(sys.argv[1:])
    # The same multirun command line maps to the same sweep directory (see conf/config.yaml).
    os.environ.setdefault(SWEEP_NAME_ENV, sweep_name(sys.argv[1:]))
    try:
        check_command_line(sys.argv[1:])
    except UserError as err:
        print(err, file=sys.stderr)
        raise SystemExit(2) from None
    try:
        hydra_job()
    except Preempted as stop:
        print(f"preempted: {stop}", file=sys.stderr)
        raise SystemExit(EXIT_PREEMPTED) from None
    except Interrupted as stop:
        print(f"interrupted: {stop}", file=sys.stderr)
        raise SystemExit(EXIT_INTERRUPTED) from None
