"""Process-group set-up shared by every way a job can start.

The same job runs as one process, under ``torchrun``, or as ``trainer.devices`` processes spawned
here; the ranks come from :func:`env_from_launcher` (or :func:`spawn`), and :func:`runtime` opens
a process group in every case, world size 1 included, so that training code has one path. gloo
serves CPUs, nccl GPUs. The rendezvous and every collective carry ``trainer.timeout_s``, so a rank
that dies fails the job instead of hanging it.
"""

from __future__ import annotations

import datetime
import hashlib
import logging
import os
import socket
from collections.abc import Callable, Iterator, Mapping
from contextlib import AbstractContextManager, contextmanager, nullcontext
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from ue_sweep.config import TrainerConfig

log = logging.getLogger(__name__)


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


def pick_device(accelerator: str, env: DistEnv) -> torch.device:
    use_cuda = accelerator == "cuda" or (accelerator == "auto" and torch.cuda.is_available())
    if not use_cuda:
        return torch.device("cpu")
    count = torch.cuda.device_count()
    # A launcher that pins one GPU per task (jsrun resource sets, srun --gpus-per-task) leaves a
    # single visible device: that one is ours, whatever the local rank.
    if count == 1:
        return torch.device("cuda", 0)
    if env.local_rank >= count:
        raise DistributedSetupError(
            f"local rank {env.local_rank} needs a GPU, but only {count} are visible"
        )
    return torch.device("cuda", env.local_rank)


@dataclass
class Runtime:
    """A started process group: the rank's device and the collectives the stages need."""

    env: DistEnv
    device: torch.device
    backend: str
    precision: str = "fp32"

    @property
    def rank(self) -> int:
        return self.env.rank

    @property
    def world_size(self) -> int:
        return self.env.world_size

    @property
    def is_main(self) -> bool:
        return self.env.is_main

    def all_reduce_sum(self, tensor: torch.Tensor) -> torch.Tensor:
        out = tensor.to(self.device).clone()
        dist.all_reduce(out, op=dist.ReduceOp.SUM)
        return out

    def broadcast(self, tensor: torch.Tensor, src: int = 0) -> torch.Tensor:
        """Rank ``src``'s tensor on every rank (others pass a tensor of the same shape)."""
        out = tensor.to(self.device).contiguous()
        dist.broadcast(out, src=src)
        return out

    def all_gather_rows(self, local: torch.Tensor) -> torch.Tensor:
        """Concatenate every rank's rows in rank order; ranks may hold different row counts."""
        local = local.to(self.device).contiguous()
        if self.world_size == 1:
            return local
        counts = [
            torch.zeros(1, dtype=torch.long, device=self.device) for _ in range(self.world_size)
        ]
        dist.all_gather(counts, torch.tensor([local.shape[0]], device=self.device))
        sizes = [int(c.item()) for c in counts]
        padded = local.new_zeros((max(sizes), *local.shape[1:]))
        padded[: local.shape[0]] = local
        gathered = [torch.empty_like(padded) for _ in range(self.world_size)]
        dist.all_gather(gathered, padded)
        return torch.cat([g[:n] for g, n in zip(gathered, sizes, strict=True)])

    def barrier(self) -> None:
        dist.barrier()

    def average_buffers(self, module: nn.Module) -> None:
        """Replace every floating-point buffer (BN running statistics) by its mean over ranks."""
        if self.world_size == 1:
            return
        for buffer in module.buffers():
            if buffer.is_floating_point():
                dist.all_reduce(buffer.data, op=dist.ReduceOp.SUM)
                buffer.data.div_(self.world_size)

    def wrap(self, module: nn.Module) -> DistributedDataParallel:
        device_ids = [self.device.index] if self.device.type == "cuda" else None
        return DistributedDataParallel(module, device_ids=device_ids)

    def autocast(self) -> AbstractContextManager[Any]:
        if self.precision == "bf16" and self.device.type == "cuda":
            return torch.autocast("cuda", dtype=torch.bfloat16)
        return nullcontext()

    def solo(self) -> SoloRuntime:
        """This process alone as a world of size 1 (same device and precision), for work a rank
        does by itself: a SISA constituent trained there gives the same model whatever the
        job's world size."""
        return SoloRuntime(
            env=DistEnv(launcher=self.env.launcher),
            device=self.device,
            backend=self.backend,
            precision=self.precision,
        )


class SoloRuntime(Runtime):
    """A world of one process: its collectives are the identity and touch no process group, and
    models train unwrapped (DDP over one rank would synchronise nothing)."""

    def all_reduce_sum(self, tensor: torch.Tensor) -> torch.Tensor:
        return tensor.to(self.device).clone()

    def broadcast(self, tensor: torch.Tensor, src: int = 0) -> torch.Tensor:
        return tensor.to(self.device).contiguous()

    def all_gather_rows(self, local: torch.Tensor) -> torch.Tensor:
        return local.to(self.device).contiguous()

    def barrier(self) -> None:
        pass

    def wrap(self, module: nn.Module) -> nn.Module:  # type: ignore[override]
        return module


def cpu_threads(
    trainer: TrainerConfig, env: DistEnv, environ: Mapping[str, str] = os.environ
) -> int:
    """Threads per process: ``trainer.threads``, else the scheduler's CPUs per task (SLURM's
    ``--cpus-per-task``, our LSF job script's ``cpus_per_task``), else the cores this process may
    run on: all of them under jsrun, which binds each task to its own resource set, otherwise
    an even share among the node's tasks.

    SLURM without CPU binding leaves every core in a job's affinity mask; sizing by it would have
    each job of a node-sharing sweep run one thread per core of the node.
    """
    if trainer.threads:
        return trainer.threads
    for variable in ("SLURM_CPUS_PER_TASK", "UE_LSF_CPUS_PER_TASK"):
        if environ.get(variable, "").isdigit():
            return max(1, int(environ[variable]))
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    sharing = 1 if "JSM_NAMESPACE_LOCAL_RANK" in environ else max(1, env.local_world_size)
    return max(1, (cores or 1) // sharing)


@contextmanager
def runtime(env: DistEnv, trainer: TrainerConfig) -> Iterator[Runtime]:
    """Open the process group for ``env`` (world size 1 included) and close it afterwards."""
    device = pick_device(trainer.accelerator, env)
    backend = (
        trainer.backend
        if trainer.backend != "auto"
        else ("nccl" if device.type == "cuda" else "gloo")
    )
    if device.type == "cuda":
        torch.cuda.set_device(device)
    torch.set_num_threads(cpu_threads(trainer, env))
    timeout = datetime.timedelta(seconds=trainer.timeout_s)
    try:
        if env.world_size == 1:
            dist.init_process_group(
                backend, store=dist.HashStore(), rank=0, world_size=1, timeout=timeout
            )
        else:
            dist.init_process_group(
                backend,
                init_method=f"tcp://{env.master_addr}:{env.master_port}",
                rank=env.rank,
                world_size=env.world_size,
                timeout=timeout,
            )
    except (RuntimeError, ValueError) as err:
        raise DistributedSetupError(
            f"rank {env.rank} of {env.world_size} could not join the process group at "
            f"{env.master_addr}:{env.master_port} within {trainer.timeout_s:g}s "
            f"(backend {backend}): {str(err).splitlines()[0]}"
        ) from err
    try:
        yield Runtime(env=env, device=device, backend=backend, precision=trainer.precision)
    finally:
        dist.destroy_process_group()


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _spawned(
    local_rank: int, fn: Callable[..., None], nprocs: int, port: int, args: tuple[Any, ...]
) -> None:
    env = DistEnv(
        rank=local_rank,
        local_rank=local_rank,
        world_size=nprocs,
        local_world_size=nprocs,
        master_port=port,
        launcher="spawn",
    )
    fn(env, *args)


def spawn(fn: Callable[..., None], nprocs: int, args: tuple[Any, ...] = ()) -> None:
    """Run ``fn(env, *args)`` in ``nprocs`` fresh local processes forming one process group.

    Raises torch.multiprocessing's ProcessRaisedException / ProcessExitedException when any rank
    fails; the remaining ranks are terminated.
    """
    mp.start_processes(
        _spawned,
        args=(fn, nprocs, free_port(), args),
        nprocs=nprocs,
        join=True,
        start_method="spawn",
    )
