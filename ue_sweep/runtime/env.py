"""Where this process sits among a job's processes, read from the launcher's environment.

Free of torch, so that the command line knows its rank (rank 0 alone writes Hydra's files)
before anything heavy is imported; :mod:`ue_sweep.runtime.distributed` opens the process group.
"""

from __future__ import annotations

import hashlib
import os
import socket
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any


class DistributedSetupError(RuntimeError):
    """The process group could not be formed (a rank missing, a port taken, a device absent)."""


@dataclass(frozen=True)
class DistEnv:
    """Where this process sits among the job's processes."""

    rank: int = 0
    local_rank: int = 0
    world_size: int = 1
    local_world_size: int = 1
    master_addr: str = "127.0.0.1"
    master_port: int = 0
    launcher: str = "none"

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def env_from_launcher(environ: Mapping[str, str] | None = None) -> DistEnv | None:
    """This task's place in the job when a launcher started it, else None.

    torchrun (and anything else exporting RANK/WORLD_SIZE) wins; then submitit's job environment
    (SLURM, local, or our LSF backend), plain ``srun`` steps, and ``jsrun``/``mpirun`` tasks of an
    LSF job.
    """
    environ = os.environ if environ is None else environ
    if "RANK" in environ and "WORLD_SIZE" in environ:
        return _torch_env(environ)
    job = _scheduler_job_environment(environ)
    if job is None:
        return None
    nodes = max(1, job.num_nodes)
    master = "127.0.0.1" if nodes == 1 else job.hostnames[0]
    if job.name() == "lsf" and job.global_rank == 0 and nodes > 1:
        _check_master_is_here(master, job.hostname)
    return DistEnv(
        rank=job.global_rank,
        local_rank=job.local_rank,
        world_size=job.num_tasks,
        local_world_size=max(1, job.num_tasks // nodes),
        master_addr=master,
        master_port=_job_port(job.job_id, environ),
        launcher=job.name(),
    )


def _check_master_is_here(master: str, hostname: str) -> None:
    """Rank 0 hosts the rendezvous, so the master address must be one of its own.

    LSF's host file may start with a launch node (IBM CSM); taken for a compute host, it would
    show up only as every rank timing out after ``trainer.timeout_s``.
    """
    try:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            sock.bind((master, 0))
    except OSError as err:
        raise DistributedSetupError(
            f"rank 0 runs on {hostname}, but the master address {master} (the job's first "
            f"compute host) is not an address of this host ({err}); the scheduler's host list "
            "probably starts with a launch node that was not recognised"
        ) from err


def _torch_env(environ: Mapping[str, str]) -> DistEnv:
    try:
        return DistEnv(
            rank=int(environ["RANK"]),
            local_rank=int(environ.get("LOCAL_RANK", "0")),
            world_size=int(environ["WORLD_SIZE"]),
            local_world_size=int(environ.get("LOCAL_WORLD_SIZE", "1")),
            master_addr=environ.get("MASTER_ADDR", "127.0.0.1"),
            master_port=int(environ.get("MASTER_PORT", "29500")),
            launcher="torchrun" if "TORCHELASTIC_RUN_ID" in environ else "env",
        )
    except ValueError as err:
        raise DistributedSetupError(f"malformed torch.distributed environment: {err}") from err


def _scheduler_job_environment(environ: Mapping[str, str]) -> Any:
    """submitit's JobEnvironment for the scheduler that started this task, or None."""
    if "SUBMITIT_EXECUTOR" in environ:
        import submitit

        return submitit.JobEnvironment()
    if "SLURM_STEP_NUM_TASKS" in environ:
        from submitit.slurm.slurm import SlurmJobEnvironment

        return SlurmJobEnvironment()
    if "LSB_JOBID" in environ and (
        "JSM_NAMESPACE_SIZE" in environ or "OMPI_COMM_WORLD_SIZE" in environ
    ):
        from submitit_lsf import LSFJobEnvironment

        return LSFJobEnvironment()
    return None


def _job_port(job_id: str, environ: Mapping[str, str]) -> int:
    """MASTER_PORT if set, else a port every task of the job derives from its id."""
    if "MASTER_PORT" in environ:
        return int(environ["MASTER_PORT"])
    digest = hashlib.sha256(job_id.encode()).digest()
    return 20000 + int.from_bytes(digest[:4], "big") % 40000
