"""Where a task of an LSF job sits: job id, array index, rank, hosts.

Ranks come from the task launcher: jsrun (``JSM_NAMESPACE_*``), Open MPI's mpirun
(``OMPI_COMM_WORLD_*``) or the ``blaunch`` loop of our job script (``UE_LSF_*``). Hosts come from
``LSB_DJOB_HOSTFILE`` (or ``LSB_HOSTS``) without the launch node: on Summit-like machines the
first entry is the ``batch``/``login`` node that runs the job script, not a compute node.
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Mapping
from typing import ClassVar

from submitit.core import job_environment, logger

# (rank, local rank, size) variables of each task launcher, in order of preference.
RANK_VARIABLES = (
    ("JSM_NAMESPACE_RANK", "JSM_NAMESPACE_LOCAL_RANK", "JSM_NAMESPACE_SIZE"),
    ("OMPI_COMM_WORLD_RANK", "OMPI_COMM_WORLD_LOCAL_RANK", "OMPI_COMM_WORLD_SIZE"),
    ("UE_LSF_RANK", "UE_LSF_LOCAL_RANK", "UE_LSF_SIZE"),
)
LAUNCH_HOST_PREFIXES = ("batch", "login")


def compute_hosts(environ: Mapping[str, str]) -> list[str]:
    """Distinct compute hosts of the job, in allocation order, launch node excluded."""
    hostfile = environ.get("LSB_DJOB_HOSTFILE")
    if hostfile and os.path.exists(hostfile):
        with open(hostfile) as handle:
            entries = handle.read().split()
    else:
        entries = environ.get("LSB_HOSTS", "").split()
    hosts = [h for h in entries if not h.startswith(LAUNCH_HOST_PREFIXES)]
    return list(dict.fromkeys(hosts))


def lsf_job_ref(job_id: str) -> str:
    """submitit's ``123_4`` (array element, 0-based) as LSF's ``123[5]`` (1-based)."""
    main, _, index = job_id.partition("_")
    return f"{main}[{int(index) + 1}]" if index else main


class LSFJobEnvironment(job_environment.JobEnvironment):
    """submitit's view of a running LSF task (``name() == "lsf"``)."""

    _env: ClassVar[dict[str, str]] = {"job_id": "LSB_JOBID"}

    def _ranks(self) -> tuple[int, int, int]:
        for rank, local, size in RANK_VARIABLES:
            if size in os.environ:
                return int(os.environ[rank]), int(os.environ[local]), int(os.environ[size])
        return 0, 0, 1

    @property
    def array_job_id(self) -> str | None:
        return os.environ["LSB_JOBID"] if self._array_index() else None

    @property
    def array_task_id(self) -> str | None:
        index = self._array_index()
        return str(index - 1) if index else None

    @staticmethod
    def _array_index() -> int:
        # LSF numbers array elements from 1; a plain job has LSB_JOBINDEX=0 (or none).
        return int(os.environ.get("LSB_JOBINDEX", "0") or 0)

    @property
    def global_rank(self) -> int:
        return self._ranks()[0]

    @property
    def local_rank(self) -> int:
        return self._ranks()[1]

    @property
    def num_tasks(self) -> int:
        return self._ranks()[2]

    @property
    def hostnames(self) -> list[str]:
        return compute_hosts(os.environ) or [self.hostname]

    @property
    def num_nodes(self) -> int:
        return len(self.hostnames)

    @property
    def node(self) -> int:
        hosts = self.hostnames
        return hosts.index(self.hostname) if self.hostname in hosts else 0

    def _requeue(self, countdown: int) -> None:
        ref = lsf_job_ref(self.job_id)
        subprocess.check_call(["brequeue", ref], timeout=60)
        logger.get_logger().info(f"Requeued job {ref} ({countdown} remaining timeouts)")
