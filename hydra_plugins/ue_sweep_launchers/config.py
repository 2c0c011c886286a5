"""Structured configs of the launchers, in Hydra's ``hydra/launcher`` group."""

# No `from __future__ import annotations`: Hydra's plugin scanner (a wheel install, or the
# checkout on sys.path) executes this module before it is in sys.modules, and dataclasses
# cannot resolve string annotations then.

from dataclasses import dataclass, field
from typing import Any

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
    # blaunch (any LSF), jsrun (needs IBM CSM/JSM) or mpirun (Open MPI).
    task_launcher: str = "blaunch"
    # jsrun only: one resource set per task (each sees its own GPU) or per node (the node's
    # tasks share its GPUs, so CUDA IPC works between them; each uses its local rank's GPU).
    resource_sets: str = "task"
    # jsrun only: --smpiargs="..." for Spectrum MPI.
    smpiargs: str | None = None
    launcher_args: list[str] = field(default_factory=list)
    # -wa/-wt: signal sent this many minutes before the walltime; the job checkpoints and
    # requeues on it.
    warning_signal: str = "USR2"
    warning_time_min: int = 5
    # The job shell exits with this code to be requeued; #BSUB -Q names it.
    requeue_exit_code: int = 75
    # Extra "#BSUB" lines, without the prefix (e.g. "-G mygroup").
    directives: list[str] = field(default_factory=list)
    setup: list[str] = field(default_factory=list)
    array_parallelism: int = 256
    # LSF's MAX_JOB_ARRAY_SIZE (lsb.params): larger sweeps go out as several arrays.
    max_array_size: int = 1000
    max_num_timeout: int = 3


@dataclass
class JsmConf(LSFConf):
    """A machine with IBM CSM and jsrun (LSF with whole-node allocations, ``-nnodes``): one task
    per GPU, one resource set per node, so that the node's GPUs reach each other over CUDA IPC,
    each task bound to ``cpus_per_task`` cores, and Spectrum MPI's CUDA hooks off (DDP over NCCL
    uses CUDA without MPI_Init, which the hooks refuse). The default shape is 4 GPUs per node,
    12 nodes (world size 48); set ``tasks_per_node``/``gpus_per_node``/``cpus_per_task`` to the
    node's. Every job is charged to a project, so it must be given:
    ``hydra.launcher.project=ABC123``. (Structured configs, not YAML: merging ``???`` over the
    ``lsf`` default would leave the default in place.)"""

    nodes: int = 12
    tasks_per_node: int = 4
    gpus_per_node: int = 4
    cpus_per_task: int = 10
    timeout_min: int = 120
    allocation: str = "nnodes"
    task_launcher: str = "jsrun"
    resource_sets: str = "node"
    smpiargs: str | None = "-disable_gpu_hooks"
    project: str | None = MISSING


@dataclass
class SummitConf(JsmConf):
    """HISTORICAL: the shape of OLCF's Summit, decommissioned on November 15, 2024 (OLCF's Summit
    User Guide), kept as an alias so that the HPC study's original setup can be read and re-run
    on a machine of that shape: 8 nodes x 6 GPUs, jsrun resource sets of one task, one GPU and 7
    cores, SMT4, queue ``batch``. For machines in service use ``jsm``, ``frontier`` or
    ``perlmutter``."""

    nodes: int = 8
    tasks_per_node: int = 6
    gpus_per_node: int = 6
    cpus_per_task: int = 7
    resource_sets: str = "task"
    alloc_flags: str | None = "smt4"
    queue: str | None = "batch"


@dataclass
class FrontierConf(SlurmConf):
    """A Frontier-class machine (OLCF's Frontier User Guide): SLURM, 8 AMD GCDs per node seen as
    8 GPUs, one task per GCD bound to its closest CPU cores (``--gpus-per-task=1
    --gpu-bind=closest``, on sbatch and srun), 7 cores per task, charged to an account that
    must be given: ``hydra.launcher.account=ABC123``. Needs a ROCm build of torch, where
    ``backend=nccl`` runs RCCL. MIOpen's cache goes to node-local storage, one directory per
    task, so that the ranks of a node do not share one database; the master address is the
    first node of ``SLURM_JOB_NODELIST`` (submitit's SLURM environment). 6 nodes: world size
    48."""

    nodes: int = 6
    tasks_per_node: int = 8
    gpus_per_task: int | None = 1
    cpus_per_task: int | None = 7
    timeout_min: int = 120
    account: str | None = MISSING
    additional_parameters: dict[str, Any] = field(default_factory=lambda: {"gpu-bind": "closest"})
    srun_args: list[str] = field(
        default_factory=lambda: ["--gpus-per-task=1", "--gpu-bind=closest"]
    )
    # RCCL's bootstrap over the Slingshot interface (OLCF's PyTorch-on-Frontier example).
    setup: list[str] | None = field(default_factory=lambda: ["export NCCL_SOCKET_IFNAME=hsn0"])
    # Node-local root of the per-task MIOpen caches ($VARS expanded in the task).
    miopen_cache_root: str | None = "/tmp/ue-sweep-miopen-$SLURM_JOB_ID"


@dataclass
class PerlmutterConf(SlurmConf):
    """A Perlmutter-style SLURM machine (NERSC's Perlmutter documentation): 4 NVIDIA GPUs per
    GPU node (``-C gpu``), one task per GPU with the node's 4 GPUs visible to each (NVLink
    between them; each task uses its local rank's), 32 CPUs per task, a QOS (``regular``) and
    an account that must be given: ``hydra.launcher.account=m1234``. 12 nodes: world size 48."""

    nodes: int = 12
    tasks_per_node: int = 4
    gpus_per_node: int | None = 4
    cpus_per_task: int | None = 32
    timeout_min: int = 120
    constraint: str | None = "gpu"
    qos: str | None = "regular"
    account: str | None = MISSING


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
        ("frontier", FrontierConf),
        ("perlmutter", PerlmutterConf),
        ("lsf", LSFConf),
        ("jsm", JsmConf),
        ("summit", SummitConf),
    ):
        store.store(group="hydra/launcher", name=name, node=node, provider="ue_sweep")


register()
