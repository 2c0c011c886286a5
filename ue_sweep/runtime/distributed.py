"""Process-group set-up shared by every way a job can start.

The same job runs as one process, under ``torchrun``, or as ``trainer.devices`` processes spawned
here; the ranks come from :func:`env_from_launcher` (or :func:`spawn`), and :func:`runtime` opens
a process group in every case, world size 1 included, so that training code has one path. gloo
serves CPUs, nccl GPUs. The rendezvous and every collective carry ``trainer.timeout_s``, so a rank
that dies fails the job instead of hanging it.
"""

from __future__ import annotations

import datetime
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
from ue_sweep.runtime.env import DistEnv, DistributedSetupError

log = logging.getLogger(__name__)


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
    except BaseException:
        dist.destroy_process_group()  # a failed rank leaves at once; its peers' next op fails
        raise
    _leave_together(env)


def _leave_together(env: DistEnv) -> None:
    """Close the process group on every rank only after every rank's last collective.

    Otherwise a rank with nothing left to do after the last collective (rank 1, while rank 0
    still saves results) closes its connections while a peer may still work in the group. One
    CI run saw rank 0 of a 2-rank gloo test abort at its end (SIGABRT, "terminate called
    without an active exception"); the cause is not pinned down (it did not recur locally, CPU
    loaded or not), and this removes the one teardown race the job itself creates.
    """
    if env.world_size > 1:
        dist.barrier()
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
