"""The ``ue-sweep`` command: a Hydra app running one UC job per (multirun) grid point.

``ue-sweep report | status | cancel SWEEP_DIR`` are plain sub-commands, dispatched before Hydra
parses argv.
"""

from __future__ import annotations

import logging
import os
import sys
from pathlib import Path
from typing import Any

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf

from ue_sweep.cli.compose import launcher_rank, quote_numeric_choices, register
from ue_sweep.cli.failures import one_line, resume_command
from ue_sweep.cli.preflight import check_command_line
from ue_sweep.cli.validation import to_root_config
from ue_sweep.errors import MachineError, UserError
from ue_sweep.runtime.loggers import JobIdentity
from ue_sweep.runtime.preemption import Interrupted, Preempted
from ue_sweep.runtime.tracking import ResultRecorder
from ue_sweep.store.sweep import SWEEP_NAME_ENV, plain_override, sweep_name

log = logging.getLogger(__name__)

# Exit status of a job that stopped at a checkpoint to be requeued (sysexits' EX_TEMPFAIL).
EXIT_PREEMPTED = 75
# Exit status of a job ended by SIGTERM, as the shell reports a process the signal killed.
EXIT_INTERRUPTED = 128 + 15


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
    # Imported here: a command line refused by preflight never pays for torch.
    from ue_sweep.cli.summary import format_job_summary
    from ue_sweep.job.run import run_job

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
        if launcher_rank() == 0:
            recorder.failed(err)
        if hydra_cfg.mode == RunMode.RUN:
            # One line and a usage exit status; in a multirun Hydra names the failing job and the
            # sibling jobs carry on.
            print(err, file=sys.stderr)
            raise SystemExit(2) from err
        raise
    except MachineError as err:
        # Recorded by the job; one line in the terminal, the traceback in the job's log. In a
        # multirun Hydra names the failing job after the others ran.
        resume = resume_command(sys.argv[1:], job_dir, multirun)
        line = one_line(err, job_dir / f"{hydra_cfg.job.name}.log", resume)
        if multirun:
            raise line from None
        print(line, file=sys.stderr)
        raise SystemExit(1) from None
    if record is None:
        return None
    log.info("\n%s", format_job_summary(record, str(recorder.path)))
    return record.get("metrics", {}).get("accuracy")


def main() -> None:
    if sys.argv[1:2] == ["report"]:
        from ue_sweep.cli.report import main as report_main

        raise SystemExit(report_main(sys.argv[2:]))
    if sys.argv[1:2] in (["status"], ["cancel"]):
        from ue_sweep.ops import cancel, status

        command = status if sys.argv[1] == "status" else cancel
        raise SystemExit(command.main(sys.argv[2:]))
    register(sys.argv[1:])
    sys.argv[1:] = quote_numeric_choices(sys.argv[1:])
    # The same multirun command line maps to the same sweep directory (see conf/config.yaml).
    os.environ.setdefault(SWEEP_NAME_ENV, sweep_name(sys.argv[1:]))
    try:
        if {"--help", "-h"} & set(sys.argv[1:]):
            from ue_sweep.cli.help import app_help

            print(app_help(sys.argv[1:]))
            raise SystemExit(0)
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
