"""Structured configs of the launchers, in Hydra's ``hydra/launcher`` group."""

from __future__ import annotations

from dataclasses import dataclass, field

from hydra.core.config_store import ConfigStore
from omegaconf import MISSING

from hydra_plugins.hydra_submitit_launcher.config import (
    BaseQueueConf,
    LocalQueueConf,
    SlurmQueueConf,
)

_LAUNCHERS = "hydra_plugins.ue_sweep_launchers.launchers"


@dataclass
class InlineConf:
    _target_: str = f"{_LAUNCHERS}.InlineLauncher"
    # Print the plan (jobs, directories, which are skipped) and run nothing.
    check_only: bool = False
    # Only true: the jobs run in this process (the preflight refuses false with a reason).
    wait: bool = True


@dataclass
class SweepOps:
    """Settings every scheduling launcher adds to submitit's."""

    # Print the plan (jobs, directories, skipped and queued ones, resources) and submit nothing.
    check_only: bool = False
    # false: submit, write SWEEP_DIR/jobs.json and return; follow with `ue-sweep status`.
    wait: bool = True


@dataclass
class LocalConf(SweepOps, LocalQueueConf):
    _target_: str = f"{_LAUNCHERS}.LocalLauncher"


@dataclass
class SlurmConf(SweepOps, SlurmQueueConf):
    _target_: str = f"{_LAUNCHERS}.SlurmLauncher"
    # Jobs checkpoint every epoch, so time-outs may requeue them.
    max_num_timeout: int = 3


@dataclass
class LSFConf(SweepOps, BaseQueueConf):
    """bsub options for plain LSF; see submitit_lsf.script.make_bsub_script."""

    _target_: str = f"{_LAUNCHERS}.LSFLauncher"
    queue: str | None = None
    # -P: the allocation (project) the job is charged to.
    project: str | None = None
    # slots: -n (tasks_per_node x cpus_per_task slots per host) with span[ptile]; nnodes: whole
    # nodes (-nnodes), only under IBM CSM (Summit).
    allocation: str = "slots"
    alloc_flags: str | None = None
    # blaunch (any LSF), jsrun (one resource set per task; needs IBM CSM/JSM) or mpirun (Open MPI).
    task_launcher: str = "blaunch"
    # jsrun only: --smpiargs="..." for Spectrum MPI.
    smpiargs: str | None = None
    launcher_args: list[str] = field(default_factory=list)
    # -wa/-wt: signal sent this many minutes before the walltime; the job checkpoints and
    # requeues on it.
    warning_signal: str = "USR2"
    warning_time_min: int = 5
    # Extra "#BSUB" lines, without the prefix (e.g. "-G mygroup").
    directives: list[str] = field(default_factory=list)
    setup: list[str] = field(default_factory=list)
    array_parallelism: int = 256
    # LSF's MAX_JOB_ARRAY_SIZE (lsb.params): larger sweeps go out as several arrays.
    max_array_size: int = 1000
    max_num_timeout: int = 3


@dataclass
class SummitConf(LSFConf):
    """A Summit-like machine (IBM CSM): 6 GPUs per node, whole-node allocations (-nnodes), jsrun
    resource sets of one task, one GPU and 7 cores bound to it, SMT4, and Spectrum MPI's CUDA
    hooks off (DDP over NCCL uses CUDA without MPI_Init, which the hooks refuse). Every job is
    charged to a project, so it must be given: ``hydra.launcher.project=ABC123``. (A structured
    config, not YAML: merging ``???`` over the ``lsf`` default would leave the default in place.)"""

    nodes: int = 8
    tasks_per_node: int = 6
    gpus_per_node: int = 6
    cpus_per_task: int = 7
    timeout_min: int = 120
    allocation: str = "nnodes"
    task_launcher: str = "jsrun"
    smpiargs: str | None = "-disable_gpu_hooks"
    alloc_flags: str | None = "smt4"
    queue: str | None = "batch"
    project: str | None = MISSING


def register() -> None:
    """Store the launcher configs; ``basic`` too, replacing Hydra's basic launcher as default.

    Taking over ``basic`` (rather than overriding ``hydra/launcher`` in the primary config) keeps
    the launcher overridable from ``experiment`` configs: Hydra applies the first override of a
    group it meets, and the primary config's would shadow every preset's. Call it after Hydra has
    registered its own core plugins.
    """
    store = ConfigStore.instance()
    for name, node in (
        ("basic", InlineConf),
        ("inline", InlineConf),
        ("local", LocalConf),
        ("slurm", SlurmConf),
        ("lsf", LSFConf),
        ("summit", SummitConf),
    ):
        store.store(group="hydra/launcher", name=name, node=node, provider="ue_sweep")


register()
