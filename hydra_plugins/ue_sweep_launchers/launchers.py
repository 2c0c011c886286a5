"""The launchers. Job planning and the summary live in ``ue_sweep.store.sweep``; the job table, the
plan of ``check_only`` and the scheduler queries in ``ue_sweep.ops``."""

from __future__ import annotations

import copy
import logging
import os
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from hydra._internal.core_plugins.basic_launcher import BasicLauncher
from hydra.core.singleton import Singleton
from hydra.core.utils import JobReturn, JobStatus
from hydra.errors import CompactHydraException
from omegaconf import DictConfig, OmegaConf, open_dict, read_write
from submitit.core.utils import JobPaths

from hydra_plugins.hydra_submitit_launcher.config import BaseQueueConf
from hydra_plugins.hydra_submitit_launcher.submitit_launcher import BaseSubmititLauncher
from hydra_plugins.ue_sweep_launchers import config as _config  # noqa: F401 (registers configs)
from ue_sweep.ops.plan import format_detached, format_plan
from ue_sweep.ops.schedulers import ACTIVE, Scheduler
from ue_sweep.ops.table import JobTable
from ue_sweep.runtime import preemption
from ue_sweep.runtime.preemption import Preempted
from ue_sweep.store.sweep import JobOutcome, PlannedJob, format_sweep_summary, plain_override

log = logging.getLogger(__name__)
# Seconds between scheduler polls while waiting on jobs an earlier launch submitted, and how long
# such a job that ended unseen by the scheduler has to leave its final record.
ATTACH_POLL_S = 10.0
ATTACH_GRACE_S = 60.0


def plan_jobs(
    launcher: Any, job_overrides: Sequence[Sequence[str]], initial_job_idx: int, tasks: int
) -> list[PlannedJob]:
    """Each job's number, directory and fingerprint, resolved as the job will resolve them."""
    planned = []
    for offset, overrides in enumerate(job_overrides):
        num = initial_job_idx + offset
        sweep_config = launcher.hydra_context.config_loader.load_sweep_config(
            launcher.config, list(overrides)
        )
        with open_dict(sweep_config):
            sweep_config.hydra.job.num = num
        job_dir = Path(str(sweep_config.hydra.sweep.dir)) / str(sweep_config.hydra.sweep.subdir)
        planned.append(
            PlannedJob.plan(
                num, overrides, job_dir, _job_config(sweep_config), _world_size(sweep_config, tasks)
            )
        )
    return planned


def _job_config(sweep_config: DictConfig) -> dict[str, Any]:
    job = copy.deepcopy(sweep_config)
    with read_write(job), open_dict(job):
        del job["hydra"]
    return OmegaConf.to_container(job, resolve=True)  # type: ignore[return-value]


def _world_size(sweep_config: DictConfig, tasks: int) -> int:
    return tasks if tasks > 1 else int(sweep_config.trainer.devices)


def _skipped(job: PlannedJob, record: dict[str, Any]) -> JobReturn:
    log.info("\t#%d : %s already completed: skipped", job.num, job.label)
    return _completed(job, record)


def _completed(job: PlannedJob, record: dict[str, Any]) -> JobReturn:
    return JobReturn(
        overrides=job.overrides,
        working_dir=str(job.job_dir),
        status=JobStatus.COMPLETED,
        _return_value=record.get("metrics", {}).get("accuracy"),
    )


def _skip_completed(planned: list[PlannedJob]) -> tuple[dict[int, JobReturn], list[PlannedJob]]:
    """The returns of jobs an earlier run completed, and the jobs left to run."""
    skipped: dict[int, JobReturn] = {}
    todo = []
    for job in planned:
        record = job.completed_record()
        if record is None:
            todo.append(job)
        else:
            skipped[job.num] = _skipped(job, record)
    return skipped, todo


def _finish(
    launcher: Any,
    planned: list[PlannedJob],
    skipped: dict[int, JobReturn],
    ran: dict[int, JobReturn],
) -> list[JobReturn]:
    outcomes = [JobOutcome.from_record(job, skipped=job.num in skipped) for job in planned]
    log.info("%s", format_sweep_summary(launcher.config.hydra.sweep.dir, outcomes))
    returns = skipped | ran
    return [returns[job.num] for job in planned]


def task_miopen_cache(root: str, environ: Any) -> Path:
    """Point MIOpen's user database and kernel cache at this task's own directory under
    ``root`` (node-local storage, ``$VARS`` expanded): ranks sharing one database on a shared
    file system fail with disk I/O errors, as OLCF's PyTorch guide warns."""
    rank = environ.get("SLURM_PROCID") or environ.get("RANK") or "0"
    path = Path(os.path.expandvars(root)) / f"rank{rank}"
    path.mkdir(parents=True, exist_ok=True)
    environ["MIOPEN_USER_DB_PATH"] = str(path)
    environ["MIOPEN_CUSTOM_CACHE_DIR"] = str(path)
    return path


class JobNotCompletedError(CompactHydraException):
    """A cluster job that ended without a result: Hydra reports it in one line after the sweep."""


def _collect(job: PlannedJob, submitted: Any) -> JobReturn:
    """The job's JobReturn once it has ended; an end without one is recorded, never raised.

    A cancelled job is taken at the scheduler's word: submitit would first wait 15 s for a
    result file that cannot come.
    """
    submitted.wait()
    state = submitted.state
    if state.upper().startswith("CANCELLED"):
        status, reason = "cancelled", f"scheduler state {state}"
    else:
        try:
            return submitted.results()[0]
        except Exception as err:  # one job's end, however it came, never stops the sweep
            status, reason = "failed", f"scheduler state {state}; {type(err).__name__}"
    job.record_unfinished(status, reason)
    return JobReturn(
        overrides=job.overrides,
        working_dir=str(job.job_dir),
        status=JobStatus.FAILED,
        _return_value=JobNotCompletedError(f"job #{job.num} ({job.label}) {status}: {reason}"),
    )


def _planned_returns(planned: Sequence[PlannedJob]) -> list[JobReturn]:
    """Returns for jobs that were planned (check_only) or handed to the scheduler (detached):
    nothing failed here, and Hydra needs one per job."""
    return [
        JobReturn(overrides=j.overrides, working_dir=str(j.job_dir), status=JobStatus.COMPLETED)
        for j in planned
    ]


def _table(
    sweep_dir: Path, launcher: str, folder: str | None, planned: Sequence[PlannedJob]
) -> JobTable:
    table = JobTable.for_launch(sweep_dir, launcher, folder)
    for job in planned:
        overrides = [plain_override(o) for o in job.overrides]
        table.plan(job.num, overrides, job.job_dir, job.fingerprint)
    return table


def _attach(job: PlannedJob, job_id: str, scheduler: Scheduler) -> JobReturn:
    """Wait for a job an earlier launch submitted, then take its outcome from its record; an
    end the job could not record (a cancel, a kill) is recorded from the scheduler's state."""
    state = scheduler.states([job_id]).get(job_id)
    while state in ACTIVE:
        time.sleep(ATTACH_POLL_S)
        state = scheduler.states([job_id]).get(job_id)
    if state is None:
        # Gone without a final word from the scheduler (local, or forgotten): whoever ended it
        # (``ue-sweep cancel``) records it right after; a job that records nothing is failed.
        deadline = time.monotonic() + ATTACH_GRACE_S
        while (job.record() or {}).get("status") == "running" and time.monotonic() < deadline:
            time.sleep(1.0)
    record = job.completed_record()
    if record is not None:
        return _completed(job, record)
    ended = "cancelled" if state == "CANCELLED" else "failed"
    job.record_unfinished(ended, f"scheduler state {state or 'unknown'}")
    status = (job.record() or {}).get("status", "missing")
    return JobReturn(
        overrides=job.overrides,
        working_dir=str(job.job_dir),
        status=JobStatus.FAILED,
        _return_value=JobNotCompletedError(f"job #{job.num} ({job.label}) {status}"),
    )


class InlineLauncher(BasicLauncher):
    """Hydra's in-process launcher with skip-completed, the job table and the sweep summary."""

    def __init__(self, check_only: bool = False, wait: bool = True) -> None:
        super().__init__()
        self.check_only = check_only
        assert wait, "the preflight refuses wait=false for jobs that run in this process"

    def launch(
        self, job_overrides: Sequence[Sequence[str]], initial_job_idx: int
    ) -> Sequence[JobReturn]:
        planned = plan_jobs(self, job_overrides, initial_job_idx, tasks=1)
        skipped, todo = _skip_completed(planned)
        sweep_dir = Path(str(self.config.hydra.sweep.dir))
        if self.check_only:
            log.info("%s", format_plan(sweep_dir, "basic", {}, planned, list(skipped), {}))
            return _planned_returns(planned)
        _table(sweep_dir, "basic", None, planned).write()
        ran = {}
        for job in todo:
            ran[job.num] = super().launch([job.overrides], initial_job_idx=job.num)[0]
        return _finish(self, planned, skipped, ran)


class _SubmititSweepLauncher(BaseSubmititLauncher):
    def __init__(self, **params: Any) -> None:
        # check_only: print the plan, submit nothing; wait: false returns once submitted;
        # miopen_cache_root: where each task's MIOpen cache goes (frontier).
        self.check_only = bool(params.pop("check_only", False))
        self.wait = bool(params.pop("wait", True))
        self.miopen_cache_root = params.pop("miopen_cache_root", None)
        super().__init__(**params)

    def __call__(self, *args: Any, **kwargs: Any) -> JobReturn:
        """Runs inside the cluster job, once per task."""
        if self.miopen_cache_root:
            task_miopen_cache(self.miopen_cache_root, os.environ)
        try:
            return super().__call__(*args, **kwargs)
        except Preempted:
            # The job saved a checkpoint; submitit's handler asks this launcher for a
            # resubmission (checkpoint()) and requeues the job on rank 0.
            signum, handler = preemption.previous_handler()
            if callable(handler) and signum is not None:
                handler(signum, None)
            raise SystemExit(-1) from None

    def _executor(self) -> Any:
        import submitit

        init_keys = {"max_num_timeout"}
        executor = submitit.AutoExecutor(
            cluster=self._EXECUTOR,
            folder=self.params["submitit_folder"],
            **{f"{self._EXECUTOR}_{k}": v for k, v in self.params.items() if k in init_keys},
        )
        generic = set(OmegaConf.structured(BaseQueueConf).keys())
        executor.update_parameters(
            **{
                (k if k in generic else f"{self._EXECUTOR}_{k}"): v
                for k, v in self.params.items()
                if k not in init_keys | {"submitit_folder"}
            }
        )
        return executor

    def launch(
        self, job_overrides: Sequence[Sequence[str]], initial_job_idx: int
    ) -> Sequence[JobReturn]:
        """Submit the jobs that are neither completed nor still queued or running from an
        earlier launch, write the job table, and (unless ``wait=false``) wait for every job."""
        assert self.config is not None
        tasks = int(self.params.get("nodes", 1)) * int(self.params.get("tasks_per_node", 1))
        planned = plan_jobs(self, job_overrides, initial_job_idx, tasks)
        sweep_dir = Path(str(self.config.hydra.sweep.dir))
        skipped, todo = _skip_completed(planned)
        folder = str(Path(str(self.params["submitit_folder"])).absolute())
        table = _table(sweep_dir, self._EXECUTOR, folder, planned)
        active = table.active(job.num for job in todo)
        if self.check_only:
            params = {**self.params, "miopen_cache_root": self.miopen_cache_root}
            plan = format_plan(sweep_dir, self._EXECUTOR, params, planned, list(skipped), active)
            log.info("%s", plan)
            return _planned_returns(planned)
        sweep_dir.mkdir(parents=True, exist_ok=True)
        for job in todo:
            note = f" (already queued or running as {active[job.num]})" if job.num in active else ""
            log.info("\t#%d : %s%s", job.num, job.label, note)
        submit = [job for job in todo if job.num not in active]
        log.info("submitting %d %s jobs to %s", len(submit), self._EXECUTOR, sweep_dir)
        jobs = self._submit(submit) if submit else []
        ids = {job.num: s.job_id for job, s in zip(submit, jobs, strict=True)}
        table.submitted(ids)
        table.write()
        if not self.wait:
            log.info("%s", format_detached(sweep_dir, ids, len(active)))
            return _planned_returns(planned)
        ran = {job.num: _collect(job, s) for job, s in zip(submit, jobs, strict=True)}
        scheduler = table.scheduler
        for job in todo:
            if job.num in active:
                ran[job.num] = _attach(job, active[job.num], scheduler)
        return _finish(self, planned, skipped, ran)

    def _submit(self, jobs: Sequence[PlannedJob]) -> list[Any]:
        state = Singleton.get_state()
        return self._executor().map_array(
            self,
            [job.overrides for job in jobs],
            ["hydra.sweep.dir"] * len(jobs),
            [job.num for job in jobs],
            [f"job_id_for_{job.num}" for job in jobs],
            [state] * len(jobs),
        )


class LocalLauncher(_SubmititSweepLauncher):
    _EXECUTOR = "local"

    def _submit(self, jobs: Sequence[PlannedJob]) -> list[Any]:
        """Detached, the job controllers outlive this process: they must not hold its stdout and
        stderr, or whoever reads them (a pipe, a test) waits for the last job. submitit starts
        them with this process's descriptors, so those point at a log file meanwhile."""
        if self.wait:
            return super()._submit(jobs)
        folder = JobPaths.get_first_id_independent_folder(Path(str(self.params["submitit_folder"])))
        folder.mkdir(parents=True, exist_ok=True)
        sys.stdout.flush()
        sys.stderr.flush()
        saved = [os.dup(1), os.dup(2)]
        with open(folder / "local-controllers.log", "ab") as log_file:
            os.dup2(log_file.fileno(), 1)
            os.dup2(log_file.fileno(), 2)
            try:
                return super()._submit(jobs)
            finally:
                os.dup2(saved[0], 1)
                os.dup2(saved[1], 2)
                for fd in saved:
                    os.close(fd)


class SlurmLauncher(_SubmititSweepLauncher):
    _EXECUTOR = "slurm"


class LSFLauncher(_SubmititSweepLauncher):
    _EXECUTOR = "lsf"


LAUNCHERS = (InlineLauncher, LocalLauncher, SlurmLauncher, LSFLauncher)
