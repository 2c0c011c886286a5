"""One task of an LSF job: log to submitit's per-task files, then run the pickled callable.

The job script starts this module once per rank (through jsrun, mpirun or blaunch), so log and
result files get submitit's usual names (``<job>_<rank>_log.out``) whatever the task launcher.
"""

from __future__ import annotations

import os
import sys

from submitit.core.submission import process_job
from submitit.core.utils import JobPaths

from submitit_lsf.environment import LSFJobEnvironment


def _redirect(fd: int, path: os.PathLike[str]) -> None:
    target = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    os.dup2(target, fd)
    os.close(target)


def main(folder: str) -> None:
    os.environ["SUBMITIT_EXECUTOR"] = "lsf"
    env = LSFJobEnvironment()
    paths = JobPaths(folder, job_id=env.job_id, task_id=env.global_rank)
    paths.folder.mkdir(parents=True, exist_ok=True)
    sys.stdout.flush()
    sys.stderr.flush()
    _redirect(1, paths.stdout)
    _redirect(2, paths.stderr)
    process_job(folder)


if __name__ == "__main__":
    main(sys.argv[1])
