"""Where a task of an LSF job sits: job id, array index, rank, hosts.

Ranks come from the task launcher: jsrun (``JSM_NAMESPACE_*``), Open MPI's mpirun
(``OMPI_COMM_WORLD_*``) or the ``blaunch`` loop of our job script (``UE_LSF_*``). Hosts come from
``LSB_DJOB_HOSTFILE`` (or ``LSB_HOSTS``) without the launch node: under IBM CSM (Summit) the
first entry is the node that runs the job shell, not a compute node. Our job script exports that
node's name as ``UE_LSF_LAUNCH_HOST`` (empty under plain LSF, where the job shell runs on the
first compute host); for tasks started by other scripts, names starting with ``batch``/``login``
are taken for launch nodes, as on Summit.
"""

from __future__ import annotations

import ipaddress
import os
from collections.abc import Mapping
from pathlib import Path
from typing import ClassVar

from submitit.core import job_environment, logger

# (rank, local rank, size) variables of each task launcher, in order of preference.
RANK_VARIABLES = (
    ("JSM_NAMESPACE_RANK", "JSM_NAMESPACE_LOCAL_RANK", "JSM_NAMESPACE_SIZE"),
    ("OMPI_COMM_WORLD_RANK", "OMPI_COMM_WORLD_LOCAL_RANK", "OMPI_COMM_WORLD_SIZE"),
    ("UE_LSF_RANK", "UE_LSF_LOCAL_RANK", "UE_LSF_SIZE"),
)
LAUNCH_HOST_PREFIXES = ("batch", "login")


def short_name(host: str) -> str:
    """``h1.site.org`` as ``h1``; an IP address as it is."""
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return host.split(".")[0]
    return host


def _is_launch_host(host: str, environ: Mapping[str, str]) -> bool:
    if "UE_LSF_LAUNCH_HOST" in environ:
        launch = environ["UE_LSF_LAUNCH_HOST"]
        return bool(launch) and short_name(host) == short_name(launch)
    return host.startswith(LAUNCH_HOST_PREFIXES)


def compute_hosts(environ: Mapping[str, str]) -> list[str]:
    """Distinct compute hosts of the job, in allocation order, launch node excluded."""
    hostfile = environ.get("LSB_DJOB_HOSTFILE")
    if hostfile and os.path.exists(hostfile):
        with open(hostfile) as handle:
            entries = handle.read().split()
    else:
        entries = environ.get("LSB_HOSTS", "").split()
    hosts = [h for h in entries if not _is_launch_host(h, environ)]
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
        """Leave the marker on which the job shell, once every task is done, exits with the
        code ``#BSUB -Q`` names, so that LSF requeues the job: no LSF command on a compute node,
        and none racing the job's end."""
        Path(os.environ["UE_LSF_REQUEUE_MARKER"]).touch()
        logger.get_logger().info(
            f"Asked the job shell to requeue job {lsf_job_ref(self.job_id)} "
            f"({countdown} remaining timeouts)"
        )
