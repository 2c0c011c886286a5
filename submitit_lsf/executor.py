"""submitit executor and job for LSF; the state watcher is in watcher.py."""

from __future__ import annotations

import re
import shlex
import shutil
import subprocess
import sys
import typing as tp
import uuid
from collections.abc import Sequence
from dataclasses import fields
from functools import cache
from pathlib import Path

from submitit.core import core, utils

from submitit_lsf.environment import lsf_job_ref
from submitit_lsf.script import MAX_ARRAY_SIZE, BsubOptions, make_bsub_script
from submitit_lsf.watcher import LSFInfoWatcher


class LSFJob(core.Job[core.R]):
    _cancel_command = "bkill"
    watcher = LSFInfoWatcher(delay_s=60)

    def __init__(self, folder: str | Path, job_id: str, tasks: Sequence[int] = (0,)) -> None:
        super().__init__(folder=folder, job_id=job_id, tasks=tasks)
        main, _, index = job_id.partition("_")
        lsf_index = int(index) + 1 if index else 0  # the %I of the job script's -o path
        logs = utils.JobPaths.get_first_id_independent_folder(folder)
        self.watcher.register_log(job_id, logs / f"lsf_{main}_{lsf_index}.out")

    def cancel(self, check: bool = True) -> None:
        (subprocess.check_call if check else subprocess.call)(
            ["bkill", lsf_job_ref(self.job_id)], shell=False
        )


@cache
def _default_parameters() -> dict[str, tp.Any]:
    return {f.name: f.default for f in fields(BsubOptions) if f.name != "map_count"}


class LSFExecutor(core.PicklingExecutor):
    """Submits pickled callables to LSF; every task of a job runs the callable.

    Parameters are the fields of :class:`submitit_lsf.script.BsubOptions` (``walltime_min``,
    ``nodes``, ``tasks_per_node``, ``queue``, ``project``, ``alloc_flags``, ``task_launcher``...).
    """

    job_class = LSFJob

    def __init__(
        self,
        folder: str | Path,
        max_num_timeout: int = 3,
        max_pickle_size_gb: float = 1.0,
        python: str | None = None,
    ) -> None:
        super().__init__(
            folder, max_num_timeout=max_num_timeout, max_pickle_size_gb=max_pickle_size_gb
        )
        self.python = shlex.quote(sys.executable) if python is None else python
        if self.affinity() < 0:
            raise RuntimeError('Could not find "bsub": is this an LSF login node?')

    @classmethod
    def _equivalence_dict(cls) -> core.EquivalenceDict:
        return {
            "name": "job_name",
            "timeout_min": "walltime_min",
            "mem_gb": "mem_gb",
            "nodes": "nodes",
            "cpus_per_task": "cpus_per_task",
            "gpus_per_node": "gpus_per_node",
            "tasks_per_node": "tasks_per_node",
        }

    @classmethod
    def _valid_parameters(cls) -> set[str]:
        return set(_default_parameters())

    def _internal_update_parameters(self, **kwargs: tp.Any) -> None:
        unknown = sorted(set(kwargs) - set(_default_parameters()))
        if unknown:
            valid = ", ".join(sorted(_default_parameters()))
            raise ValueError(f"Unavailable LSF parameter(s) {unknown}; valid: {valid}")
        make_bsub_script(command="true", folder=self.folder, **kwargs)  # validates values
        super()._internal_update_parameters(**kwargs)

    @property
    def _submitit_command_str(self) -> str:
        return f"{self.python} -u -m submitit_lsf.task {shlex.quote(str(self.folder))}"

    def _make_submission_file_text(self, command: str, uid: str) -> str:
        return make_bsub_script(command=command, folder=self.folder, **self.parameters)

    def _num_tasks(self) -> int:
        return self.parameters.get("nodes", 1) * max(1, self.parameters.get("tasks_per_node", 1))

    def _make_submission_command(self, submission_file_path: Path) -> list[str]:
        return ["bsub"]  # the script goes to stdin: only then does bsub read its #BSUB lines

    def _submit_command(self, command: str) -> core.Job[tp.Any]:
        uid = uuid.uuid4().hex
        folder = utils.JobPaths.get_first_id_independent_folder(self.folder)
        folder.mkdir(parents=True, exist_ok=True)
        script = folder / f".submission_file_{uid}.sh"
        script.write_text(self._make_submission_file_text(command, uid))
        with script.open() as stdin:
            output = subprocess.run(
                self._make_submission_command(script),
                stdin=stdin,
                capture_output=True,
                text=True,
                check=False,
            )
        if output.returncode != 0:
            raise utils.FailedSubmissionError(
                f"bsub failed ({output.returncode}): {output.stderr.strip() or output.stdout}"
            )
        job_id = self._get_job_id_from_submission_command(output.stdout)
        job: core.Job[tp.Any] = self.job_class(
            folder=self.folder, job_id=job_id, tasks=list(range(self._num_tasks()))
        )
        job.paths.move_temporary_file(script, "submission_file", keep_as_symlink=True)
        return job

    def _internal_process_submissions(
        self, delayed_submissions: list[utils.DelayedSubmission]
    ) -> list[core.Job[tp.Any]]:
        if len(delayed_submissions) == 1:
            return super()._internal_process_submissions(delayed_submissions)
        # Job arrays of at most max_array_size elements (LSF's MAX_JOB_ARRAY_SIZE refuses more).
        size = self.parameters.get("max_array_size", MAX_ARRAY_SIZE)
        jobs: list[core.Job[tp.Any]] = []
        for start in range(0, len(delayed_submissions), size):
            jobs += self._submit_array(delayed_submissions[start : start + size])
        return jobs

    def _submit_array(
        self, delayed_submissions: list[utils.DelayedSubmission]
    ) -> list[core.Job[tp.Any]]:
        """One job array; element i runs the i-th pickle."""
        folder = utils.JobPaths.get_first_id_independent_folder(self.folder)
        folder.mkdir(parents=True, exist_ok=True)
        timeout_min = self.parameters.get("walltime_min", 60)
        pickles = []
        for delayed in delayed_submissions:
            path = folder / f"{uuid.uuid4().hex}.pkl"
            delayed.set_timeout(timeout_min, self.max_num_timeout)
            delayed.dump(path)
            pickles.append(path)
        array = LSFExecutor(self.folder, self.max_num_timeout, python=self.python)
        array.update_parameters(**self.parameters)
        array.parameters["map_count"] = len(delayed_submissions)
        self._throttle()
        first = array._submit_command(self._submitit_command_str)
        tasks = list(range(first.num_tasks))
        jobs: list[core.Job[tp.Any]] = [
            LSFJob(folder=self.folder, job_id=f"{first.job_id}_{i}", tasks=tasks)
            for i in range(len(delayed_submissions))
        ]
        for job, path in zip(jobs, pickles, strict=True):
            job.paths.move_temporary_file(path, "submitted_pickle")
        return jobs

    @staticmethod
    def _get_job_id_from_submission_command(string: bytes | str) -> str:
        """The id in ``Job <123> is submitted to queue <batch>.``"""
        if not isinstance(string, str):
            string = string.decode()
        match = re.search(r"Job <(?P<id>\d+)>", string)
        if match is None:
            raise utils.FailedSubmissionError(f'Could not make sense of bsub output "{string}"')
        return match.group("id")

    @classmethod
    def affinity(cls) -> int:
        return -1 if shutil.which("bsub") is None else 2
