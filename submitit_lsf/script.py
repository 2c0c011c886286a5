"""The ``bsub`` job script: ``#BSUB`` directives, then one task per rank.

Formats follow IBM Spectrum LSF 10.1 (bsub: -J name[1-N]%P, -nnodes, -n with span[ptile],
-W minutes, -P, -q, -alloc_flags, -R rusage[mem=<n>GB/host], -gpu "num=<n>/host", -Q requeue
exit values, -wa/-wt warning action; blaunch -z host -no-shell) and IBM Job Step Manager's jsrun
(resource sets: -n total, -a tasks, -c CPUs, -g GPUs per set, -r sets per host, -b binding,
--smpiargs).

The job script needs no LSF command on a compute node and none after its tasks end: a requeue is
the job shell's exit code, which ``#BSUB -Q`` makes LSF requeue (``brequeue`` from a shell that
is already exiting may land after the job ended, and the job is then recorded as failed). The
warning signal reaches the job shell only (jsrun's forwarding of USR2 to its tasks is not
documented, and blaunch'd tasks run on other hosts): the shell writes a marker file on the shared
job folder, and every task raises the signal in itself when it sees the file (``task.py``).

Two allocations: ``slots`` is plain LSF (``-n`` slots, ``span[ptile]``, the job shell runs on the
first compute host, tasks start through ``blaunch``); ``nnodes`` is IBM CSM (Summit: whole nodes,
the job shell runs on a launch node that is not a compute node, tasks start through jsrun).
"""

from __future__ import annotations

import shlex
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from submitit.core.utils import JobPaths

TASK_LAUNCHERS = ("jsrun", "mpirun", "blaunch")
ALLOCATIONS = ("nnodes", "slots")
# jsrun resource sets: one per task (each sees its own GPU), or one per node (its tasks share the
# node's GPUs, so CUDA IPC works between them; each task takes the GPU of its local rank).
RESOURCE_SETS = ("task", "node")
# EX_TEMPFAIL (sysexits.h): "try again later". The job shell exits with it to be requeued.
REQUEUE_EXIT_CODE = 75
# LSF's MAX_JOB_ARRAY_SIZE default (lsb.params).
MAX_ARRAY_SIZE = 1000
# Variables every task needs; mpirun forwards only what it is told to (-x).
FORWARDED = (
    "SUBMITIT_EXECUTOR",
    "LSB_JOBID",
    "LSB_JOBINDEX",
    "LSB_DJOB_HOSTFILE",
    "LSB_HOSTS",
    "UE_LSF_LAUNCH_HOST",
    "UE_LSF_REQUEUE_MARKER",
    "UE_LSF_SIGNAL_MARKER",
    "PATH",
    "PYTHONPATH",
    "VIRTUAL_ENV",
)


def _quoted_path(path: str) -> str:
    """A path for a #BSUB line, in double quotes (LSF keeps %J/%I inside them)."""
    if '"' in path:
        raise ValueError(f"LSF log path {path!r} must not contain a double quote")
    return f'"{path}"'


@dataclass(frozen=True)
class BsubOptions:
    """Everything a job script can ask of LSF; checked when made, before anything is submitted.

    The fields are the LSF executor's parameters (``LSFExecutor.update_parameters``), as
    submitit's SLURM parameters are those of its ``sbatch`` script.
    """

    job_name: str = "submitit"
    walltime_min: int = 60
    nodes: int = 1
    tasks_per_node: int = 1
    gpus_per_node: int | None = None
    cpus_per_task: int | None = None
    mem_gb: int | None = None
    queue: str | None = None
    project: str | None = None
    allocation: str = "slots"
    alloc_flags: str | None = None
    task_launcher: str = "blaunch"
    smpiargs: str | None = None
    launcher_args: Sequence[str] = ()
    resource_sets: str = "task"
    warning_signal: str | None = "USR2"
    warning_time_min: int = 5
    requeue_exit_code: int = REQUEUE_EXIT_CODE
    directives: Sequence[str] = ()
    setup: Sequence[str] = ()
    array_parallelism: int = 256
    max_array_size: int = MAX_ARRAY_SIZE
    stderr_to_stdout: bool = False
    # Jobs in the array this script submits; None: a plain job. Set per submission.
    map_count: int | None = None

    def __post_init__(self) -> None:
        _validate(self)


def _directives(o: BsubOptions, folder: Path) -> list[str]:
    name = o.job_name
    if o.map_count is not None:
        name = f"{o.job_name}[1-{o.map_count}]%{min(o.map_count, o.array_parallelism)}"
    lines = [f"-J {shlex.quote(name)}", f"-W {o.walltime_min}"]
    if o.allocation == "nnodes":  # whole nodes (Summit's CSM allocation)
        lines.append(f"-nnodes {o.nodes}")
    else:  # a slot is a core: each rank takes cpus_per_task of them
        per_host = o.tasks_per_node * (o.cpus_per_task or 1)
        lines += [f"-n {o.nodes * per_host}", f'-R "span[ptile={per_host}]"']
        # "/host" (LSF 10.1.0.9): per host even where RESOURCE_RESERVE_PER_TASK=Y would
        # otherwise multiply the request by the host's slots.
        if o.gpus_per_node:
            lines.append(f'-gpu "num={o.gpus_per_node}/host"')
        if o.mem_gb is not None:
            lines.append(f'-R "rusage[mem={o.mem_gb}GB/host]"')
    if o.queue:
        lines.append(f"-q {shlex.quote(o.queue)}")
    if o.project:
        lines.append(f"-P {shlex.quote(o.project)}")
    if o.alloc_flags:
        lines.append(f'-alloc_flags "{o.alloc_flags}"')
    log = str(folder / "lsf_%J_%I")
    lines.append(f"-o {_quoted_path(log + '.out')}")
    if not o.stderr_to_stdout:
        lines.append(f"-e {_quoted_path(log + '.err')}")
    if o.warning_signal:
        lines += [f"-wa {o.warning_signal}", f"-wt {o.warning_time_min}"]
    lines.append(f'-Q "{o.requeue_exit_code}"')
    lines += list(o.directives)
    return [f"#BSUB {line}" for line in lines]


def _background(*parts: str) -> str:
    return " ".join(part for part in (*parts, "&") if part)


# The compute hosts of the job, in allocation order, without the job shell's launch host (short
# names compared, since `hostname` may print an FQDN where the host file has the short name).
COMPUTE_HOSTS = (
    'hosts=$(if [ -r "$LSB_DJOB_HOSTFILE" ]; then cat "$LSB_DJOB_HOSTFILE"; '
    "else echo $LSB_HOSTS; fi | tr ' ' '\\n' | awk -v launch=\"$UE_LSF_LAUNCH_HOST\" "
    '\'function short(h) { return h ~ /^[0-9.]+$/ ? h : substr(h, 1, index(h ".", ".") - 1) } '
    'NF && (launch == "" || short($0) != short(launch)) && !seen[$0]++\')'
)


def _task_lines(command: str, o: BsubOptions) -> list[str]:
    total = o.nodes * o.tasks_per_node
    extra = " ".join(o.launcher_args)
    if o.task_launcher == "jsrun":  # each task bound to its own cpus_per_task cores
        cpus = o.cpus_per_task or 1
        if o.resource_sets == "node":
            sets, tasks, set_cpus = o.nodes, o.tasks_per_node, o.tasks_per_node * cpus
            set_gpus, per_host = o.gpus_per_node or 0, 1
        else:
            sets, tasks, set_cpus, set_gpus = total, 1, cpus, 1 if o.gpus_per_node else 0
            per_host = o.tasks_per_node
        prefix = (
            f"jsrun -n {sets} -a {tasks} -c {set_cpus} -g {set_gpus} -r {per_host} -b packed:{cpus}"
        )
        if o.smpiargs:  # OLCF's spelling: --smpiargs="-disable_gpu_hooks"
            prefix += f' --smpiargs="{o.smpiargs}"'
        return [_background(prefix, extra, command), 'tasks+=("$!")']
    if o.task_launcher == "mpirun":
        variables = (*FORWARDED, "UE_LSF_CPUS_PER_TASK") if o.cpus_per_task else FORWARDED
        forward = " ".join(f"-x {var}" for var in variables)
        prefix = f"mpirun -np {total} --map-by ppr:{o.tasks_per_node}:node {forward}"
        return [_background(prefix, extra, command), 'tasks+=("$!")']
    ranks = f"env UE_LSF_RANK=$rank UE_LSF_LOCAL_RANK=$local_rank UE_LSF_SIZE={total}"
    return [  # blaunch: tasks_per_node tasks on each compute host, ranks numbered here
        COMPUTE_HOSTS,
        "rank=0",
        "for host in $hosts; do",
        f"  for local_rank in $(seq 0 {o.tasks_per_node - 1}); do",
        # -no-shell: blaunch would otherwise re-split the command through a shell.
        "    " + _background('blaunch -z "$host" -no-shell', extra, ranks, command),
        '    tasks+=("$!")',
        "    rank=$((rank + 1))",
        "  done",
        "done",
    ]


def _job_variables(folder: Path, allocation: str, cpus_per_task: int | None) -> list[str]:
    """What the tasks learn from the job shell: its launch host, their CPUs, the requeue and
    signal markers.

    Under CSM the job shell runs on a launch node listed first in the host file, whatever the
    site names it; under plain LSF it runs on the first compute host, which must stay.
    """
    marker = shlex.quote(str(folder / "lsf_")) + '"${LSB_JOBID}_${LSB_JOBINDEX:-0}'
    lines = [
        "export SUBMITIT_EXECUTOR=lsf",
        "export UE_LSF_LAUNCH_HOST=" + ("$(hostname)" if allocation == "nnodes" else ""),
        f'export UE_LSF_REQUEUE_MARKER={marker}.requeue"',
        f'export UE_LSF_SIGNAL_MARKER={marker}.signal"',
        'rm -f "$UE_LSF_REQUEUE_MARKER" "$UE_LSF_SIGNAL_MARKER"',
    ]
    if cpus_per_task:
        lines.append(f"export UE_LSF_CPUS_PER_TASK={cpus_per_task}")
    return lines


# The job shell forwards the warning signal to its tasks through a marker file (trapped before
# any task starts: an untrapped USR2 would end the shell) and waits for all of them; `wait`
# returns early when a trapped signal arrives, hence the loop.
def _forward_warning(signal_name: str | None) -> str:
    if not signal_name:
        return "tasks=()"
    return f"tasks=()\ntrap 'echo {signal_name} > \"$UE_LSF_SIGNAL_MARKER\"' {signal_name}"


WAIT_FOR_TASKS = """status=0
for pid in "${tasks[@]}"; do
  while true; do
    wait "$pid"; code=$?
    kill -0 "$pid" 2>/dev/null || break
  done
  [ "$code" -ne 0 ] && status=$code
done"""


def _requeue(code: int) -> str:
    """Rank 0 asks for a requeue by leaving the marker; the shell exits with the code that
    ``#BSUB -Q`` names, and LSF requeues the job. A task's own exit with that code is a failure."""
    return f"""if [ -e "$UE_LSF_REQUEUE_MARKER" ]; then
  rm -f "$UE_LSF_REQUEUE_MARKER"
  exit {code}
fi
[ "$status" -eq {code} ] && status=1
exit $status"""


def _validate(o: BsubOptions) -> None:
    if o.task_launcher not in TASK_LAUNCHERS:
        raise ValueError(f"task_launcher={o.task_launcher!r}: expected one of {TASK_LAUNCHERS}")
    if o.allocation not in ALLOCATIONS:
        raise ValueError(f"allocation={o.allocation!r}: expected one of {ALLOCATIONS}")
    if o.resource_sets not in RESOURCE_SETS:
        raise ValueError(f"resource_sets={o.resource_sets!r}: expected one of {RESOURCE_SETS}")
    if o.resource_sets == "node" and o.task_launcher != "jsrun":
        raise ValueError("resource_sets=node is a jsrun setting: use it with task_launcher=jsrun")
    if not 1 <= o.requeue_exit_code <= 255:
        raise ValueError(f"requeue_exit_code={o.requeue_exit_code}: expected 1..255 (bsub -Q)")
    if o.walltime_min < 1 or o.nodes < 1 or o.tasks_per_node < 1:
        raise ValueError("walltime_min, nodes and tasks_per_node must be >= 1")
    if o.gpus_per_node and o.gpus_per_node != o.tasks_per_node:
        raise ValueError(
            f"gpus_per_node={o.gpus_per_node} with tasks_per_node={o.tasks_per_node}: a DDP rank "
            "uses one GPU, so a GPU job needs one task per GPU (set both to the same number)"
        )
    if o.mem_gb is not None and o.allocation == "nnodes":
        raise ValueError(
            "mem_gb with allocation=nnodes: whole-node allocations get all of the node's memory; "
            "drop mem_gb"
        )
    if o.warning_signal and not 0 < o.warning_time_min < o.walltime_min:
        raise ValueError(
            f"warning_time_min={o.warning_time_min} must be between 0 and walltime_min="
            f"{o.walltime_min} (exclusive): the job needs time to run before the warning"
        )
    if o.map_count is not None and o.map_count > o.max_array_size:
        raise ValueError(
            f"an array of {o.map_count} jobs exceeds max_array_size={o.max_array_size}"
        )


def make_bsub_script(command: str, folder: str | Path, **options: Any) -> str:
    """Text of the job script ``bsub`` reads from stdin; ``command`` runs once per task.

    ``options`` are the fields of :class:`BsubOptions`; a wrong name or value raises here.
    """
    return render(command, folder, BsubOptions(**options))


def render(command: str, folder: str | Path, o: BsubOptions) -> str:
    """The job script of ``o``: directives, the job's variables, one task per rank, the wait."""
    logs = JobPaths.get_first_id_independent_folder(folder)
    lines = ["#!/bin/bash", *_directives(o, logs)]
    lines += ["", *_job_variables(logs, o.allocation, o.cpus_per_task)]
    lines.append(_forward_warning(o.warning_signal))
    if o.setup:
        lines += ["", "# setup", *o.setup]
    lines += ["", f"# {o.nodes * o.tasks_per_node} tasks ({o.task_launcher}), one rank each"]
    lines += _task_lines(command, o)
    lines += ["", WAIT_FOR_TASKS, _requeue(o.requeue_exit_code), ""]
    return "\n".join(lines)
