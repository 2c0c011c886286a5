"""One job: start its ranks (in this process, or ``trainer.devices`` spawned ones) and record it.

``result.json`` says ``running`` from the start, then ``completed`` with the outcome, ``failed``
with the error, ``preempted`` after a checkpoint-and-stop, or ``interrupted`` after a SIGTERM
outside a scheduler. Rank 0 writes it; when this process
spawned the ranks it also records a failure that rank 0 could not (another rank died and rank 0
was terminated). A job whose directory already holds a completed result with the same fingerprint
is skipped; one that was interrupted resumes from its checkpoints. Rank 0 alone also has a run
logger (``logger`` group); its runs are finished after the result file is written.
"""

from __future__ import annotations

import logging
import sys
from dataclasses import replace
from pathlib import Path
from typing import Any

from torch.multiprocessing import ProcessExitedException, ProcessRaisedException

from ue_sweep.config import RootConfig
from ue_sweep.errors import MachineError
from ue_sweep.job.pipeline import run_pipeline
from ue_sweep.runtime import preemption
from ue_sweep.runtime.distributed import runtime, spawn
from ue_sweep.runtime.env import DistEnv, env_from_launcher
from ue_sweep.runtime.loggers import JobIdentity, RunLogger, build_logger
from ue_sweep.runtime.preemption import Interrupted, Preempted
from ue_sweep.runtime.progress import PROGRESS_FILE, Progress
from ue_sweep.runtime.tracking import ResultRecorder
from ue_sweep.store.artifacts import ArtifactStore
from ue_sweep.store.checkpoint import CHECKPOINT_DIR, JobCheckpoints, earlier_attempt, fingerprint
from ue_sweep.store.sweep import artifact_dir

log = logging.getLogger(__name__)


class RankFailedError(MachineError):
    """A spawned rank raised or died; the job is failed and every rank stopped."""


def _describe(err: ProcessRaisedException | ProcessExitedException, world: int) -> str:
    if isinstance(err, ProcessExitedException):
        how = f"signal {err.signal_name}" if err.signal_name else f"exit code {err.exit_code}"
        return f"rank {err.error_index} of {world} died ({how}); the other ranks were stopped"
    last = [line for line in str(err).strip().splitlines() if line.strip()][-1]
    return f"rank {err.error_index} of {world} failed: {last}"


def _configure_spawned_logging(env: DistEnv, log_file: Path | None) -> None:
    """A spawned rank starts without Hydra's logging: rank 0 mirrors it, others warn only."""
    fmt = logging.Formatter(
        "[%(asctime)s][%(name)s][%(levelname)s] - %(message)s"
        if env.is_main
        else f"[rank {env.rank}][%(levelname)s] - %(message)s"
    )
    handlers: list[logging.Handler] = [logging.StreamHandler(sys.stdout)]
    if env.is_main and log_file is not None:
        handlers.append(logging.FileHandler(log_file, mode="a"))
    root = logging.getLogger()
    for handler in handlers:
        handler.setFormatter(fmt)
        root.addHandler(handler)
    root.setLevel(logging.INFO)


def _rank_main(
    env: DistEnv,
    cfg: RootConfig,
    job_dir: Path,
    recorder: ResultRecorder,
    log_file: Path | None,
    checkpoints: JobCheckpoints,
    identity: JobIdentity | None,
) -> dict[str, Any] | None:
    if env.launcher == "spawn":
        _configure_spawned_logging(env, log_file)
    if not env.is_main:
        logging.getLogger("ue_sweep").setLevel(logging.WARNING)
    run_logger = (
        build_logger(cfg.logger, identity) if env.is_main and identity is not None else RunLogger()
    )
    progress = Progress(
        cfg.trainer.progress,
        enabled=env.is_main,
        run_logger=run_logger,
        record=job_dir / PROGRESS_FILE,
    )
    writer = replace(checkpoints, writer=env.is_main)
    store = ArtifactStore(artifact_dir(cfg, job_dir), producer=str(job_dir))
    try:
        with runtime(env, cfg.trainer) as rt:
            outcome = run_pipeline(cfg, rt, job_dir, progress, writer, store)
    except Preempted as stop:
        if env.is_main:
            recorder.preempted(stop)
        raise
    except Interrupted as stop:
        if env.is_main:
            recorder.interrupted(stop)
        run_logger.close(failed=True)
        raise
    except BaseException as err:
        if env.is_main:
            recorder.failed(err)
        run_logger.close(failed=True)
        raise
    if not env.is_main:
        return None
    tracked = run_logger.describe()
    record = recorder.completed(outcome if tracked is None else {**outcome, "wandb": tracked})
    writer.clear()
    run_logger.close()
    return record


def run_job(
    cfg: RootConfig,
    job_dir: Path,
    recorder: ResultRecorder,
    log_file: Path | None = None,
    identity: JobIdentity | None = None,
) -> dict[str, Any] | None:
    """Run the job; returns the completed record on rank 0 (None on other ranks).

    ``identity`` names the job's tracker runs; without it nothing is tracked.
    """
    env = env_from_launcher()
    if env is not None and cfg.trainer.devices not in (1, env.local_world_size):
        log.warning(
            "trainer.devices=%d ignored: %s started %d local ranks",
            cfg.trainer.devices,
            env.launcher,
            env.local_world_size,
        )
    spawn_here = env is None and cfg.trainer.devices > 1
    world = cfg.trainer.devices if env is None else env.world_size
    fp = fingerprint(recorder.base["config"], world)
    previous = earlier_attempt(recorder.read(), fp)
    if previous is not None and previous["status"] == "completed":
        log.info("%s already completed with this configuration: skipped", job_dir)
        return previous if env is None or env.is_main else None
    checkpoints = JobCheckpoints(job_dir / CHECKPOINT_DIR, fp)
    # A restart is an attempt that resumes saved state; re-running a job that failed before
    # saving any (a config error found once the data is loaded) is not one.
    resumes = previous is not None and checkpoints.saved()
    recorder.base.update(
        fingerprint=fp, restarts=(previous or {}).get("restarts", 0) + int(resumes)
    )
    preemption.install()
    if env is None and not spawn_here:
        preemption.stop_on_sigterm()
    if spawn_here:
        recorder.running()
        try:
            spawn(_rank_main, world, args=(cfg, job_dir, recorder, log_file, checkpoints, identity))
        except (ProcessRaisedException, ProcessExitedException) as err:
            error = RankFailedError(_describe(err, world))
            record = recorder.read()
            if record is None or record["status"] != "failed":
                recorder.failed(error)
            raise error from err
        return recorder.read()
    env = env or DistEnv()
    if env.is_main:
        recorder.running()
    return _rank_main(env, cfg, job_dir, recorder, log_file, checkpoints, identity)
