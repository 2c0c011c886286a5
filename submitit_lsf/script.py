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
from pathlib import Path

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


def _directives(
    job_name: str,
    folder: Path,
    walltime_min: int,
    nodes: int,
    tasks_per_node: int,
    gpus_per_node: int | None,
    cpus_per_task: int | None,
    mem_gb: int | None,
    queue: str | None,
    project: str | None,
    allocation: str,
    alloc_flags: str | None,
    warning_signal: str | None,
    warning_time_min: int,
    requeue_exit_code: int,
    directives: Sequence[str],
    stderr_to_stdout: bool,
    map_count: int | None,
    array_parallelism: int,
) -> list[str]:
    name = job_name
    if map_count is not None:
        name = f"{job_name}[1-{map_count}]%{min(map_count, array_parallelism)}"
    lines = [f"-J {shlex.quote(name)}", f"-W {walltime_min}"]
    if allocation == "nnodes":  # whole nodes (Summit's CSM allocation)
        lines.append(f"-nnodes {nodes}")
    else:  # a slot is a core: each rank takes cpus_per_task of them
        per_host = tasks_per_node * (cpus_per_task or 1)
        lines += [f"-n {nodes * per_host}", f'-R "span[ptile={per_host}]"']
        # "/host" (LSF 10.1.0.9): per host even where RESOURCE_RESERVE_PER_TASK=Y would
        # otherwise multiply the request by the host's slots.
        if gpus_per_node:
            lines.append(f'-gpu "num={gpus_per_node}/host"')
        if mem_gb is not None:
            lines.append(f'-R "rusage[mem={mem_gb}GB/host]"')
    if queue:
        lines.append(f"-q {shlex.quote(queue)}")
    if project:
        lines.append(f"-P {shlex.quote(project)}")
    if alloc_flags:
        lines.append(f'-alloc_flags "{alloc_flags}"')
    log = str(folder / "lsf_%J_%I")
    lines.append(f"-o {_quoted_path(log + '.out')}")
    if not stderr_to_stdout:
        lines.append(f"-e {_quoted_path(log + '.err')}")
    if warning_signal:
        lines += [f"-wa {warning_signal}", f"-wt {warning_time_min}"]
    lines.append(f'-Q "{requeue_exit_code}"')
    lines += list(directives)
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


def _task_lines(
    command: str,
    task_launcher: str,
    nodes: int,
    tasks_per_node: int,
    gpus_per_node: int | None,
    cpus_per_task: int | None,
    smpiargs: str | None,
    launcher_args: Sequence[str],
    resource_sets: str,
) -> list[str]:
    total = nodes * tasks_per_node
    extra = " ".join(launcher_args)
    if task_launcher == "jsrun":  # each task bound to its own cpus_per_task cores
        cpus = cpus_per_task or 1
        if resource_sets == "node":
            sets, tasks, set_cpus = nodes, tasks_per_node, tasks_per_node * cpus
            set_gpus, per_host = gpus_per_node or 0, 1
        else:
            sets, tasks, set_cpus, set_gpus = total, 1, cpus, 1 if gpus_per_node else 0
            per_host = tasks_per_node
        prefix = (
            f"jsrun -n {sets} -a {tasks} -c {set_cpus} -g {set_gpus} -r {per_host} -b packed:{cpus}"
        )
        if smpiargs:  # OLCF's spelling: --smpiargs="-disable_gpu_hooks"
            prefix += f' --smpiargs="{smpiargs}"'
        return [_background(prefix, extra, command), 'tasks+=("$!")']
    if task_launcher == "mpirun":
        variables = (*FORWARDED, "UE_LSF_CPUS_PER_TASK") if cpus_per_task else FORWARDED
        forward = " ".join(f"-x {var}" for var in variables)
        prefix = f"mpirun -np {total} --map-by ppr:{tasks_per_node}:node {forward}"
        return [_background(prefix, extra, command), 'tasks+=("$!")']
    ranks = f"env UE_LSF_RANK=$rank UE_LSF_LOCAL_RANK=$local_rank UE_LSF_SIZE={total}"
    return [  # blaunch: tasks_per_node tasks on each compute host, ranks numbered here
        COMPUTE_HOSTS,
        "rank=0",
        "for host in $hosts; do",
        f"  for local_rank in $(seq 0 {tasks_per_node - 1}); do",
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


def _validate(
    task_launcher: str,
    allocation: str,
    walltime_min: int,
    nodes: int,
    tasks_per_node: int,
    gpus_per_node: int | None,
    mem_gb: int | None,
    warning_signal: str | None,
    warning_time_min: int,
    map_count: int | None,
    max_array_size: int,
    resource_sets: str,
    requeue_exit_code: int,
) -> None:
    if task_launcher not in TASK_LAUNCHERS:
        raise ValueError(f"task_launcher={task_launcher!r}: expected one of {TASK_LAUNCHERS}")
    if allocation not in ALLOCATIONS:
        raise ValueError(f"allocation={allocation!r}: expected one of {ALLOCATIONS}")
    if resource_sets not in RESOURCE_SETS:
        raise ValueError(f"resource_sets={resource_sets!r}: expected one of {RESOURCE_SETS}")
    if resource_sets == "node" and task_launcher != "jsrun":
        raise ValueError("resource_sets=node is a jsrun setting: use it with task_launcher=jsrun")
    if not 1 <= requeue_exit_code <= 255:
        raise ValueError(f"requeue_exit_code={requeue_exit_code}: expected 1..255 (bsub -Q)")
    if walltime_min < 1 or nodes < 1 or tasks_per_node < 1:
        raise ValueError("walltime_min, nodes and tasks_per_node must be >= 1")
    if gpus_per_node and gpus_per_node != tasks_per_node:
        raise ValueError(
            f"gpus_per_node={gpus_per_node} with tasks_per_node={tasks_per_node}: a DDP rank uses "
            "one GPU, so a GPU job needs one task per GPU (set both to the same number)"
        )
    if mem_gb is not None and allocation == "nnodes":
        raise ValueError(
            "mem_gb with allocation=nnodes: whole-node allocations get all of the node's memory; "
            "drop mem_gb"
        )
    if warning_signal and not 0 < warning_time_min < walltime_min:
        raise ValueError(
            f"warning_time_min={warning_time_min} must be between 0 and walltime_min="
            f"{walltime_min} (exclusive): the job needs time to run before the warning"
        )
    if map_count is not None and map_count > max_array_size:
        raise ValueError(f"an array of {map_count} jobs exceeds max_array_size={max_array_size}")


def make_bsub_script(
    command: str,
    folder: str | Path,
    job_name: str = "submitit",
    walltime_min: int = 60,
    nodes: int = 1,
    tasks_per_node: int = 1,
    gpus_per_node: int | None = None,
    cpus_per_task: int | None = None,
    mem_gb: int | None = None,
    queue: str | None = None,
    project: str | None = None,
    allocation: str = "slots",
    alloc_flags: str | None = None,
    task_launcher: str = "blaunch",
    smpiargs: str | None = None,
    launcher_args: Sequence[str] = (),
    resource_sets: str = "task",
    warning_signal: str | None = "USR2",
    warning_time_min: int = 5,
    requeue_exit_code: int = REQUEUE_EXIT_CODE,
    directives: Sequence[str] = (),
    setup: Sequence[str] = (),
    array_parallelism: int = 256,
    max_array_size: int = MAX_ARRAY_SIZE,
    stderr_to_stdout: bool = False,
    map_count: int | None = None,
) -> str:
    """Text of the job script ``bsub`` reads from stdin; ``command`` runs once per task."""
    _validate(
        task_launcher,
        allocation,
        walltime_min,
        nodes,
        tasks_per_node,
        gpus_per_node,
        mem_gb,
        warning_signal,
        warning_time_min,
        map_count,
        max_array_size,
        resource_sets,
        requeue_exit_code,
    )
    logs = JobPaths.get_first_id_independent_folder(folder)
    lines = ["#!/bin/bash"]
    lines += _directives(
        job_name,
        logs,
        walltime_min,
        nodes,
        tasks_per_node,
        gpus_per_node,
        cpus_per_task,
        mem_gb,
        queue,
        project,
        allocation,
        alloc_flags,
        warning_signal,
        warning_time_min,
        requeue_exit_code,
        directives,
        stderr_to_stdout,
        map_count,
        array_parallelism,
    )
    lines += ["", *_job_variables(logs, allocation, cpus_per_task)]
    lines.append(_forward_warning(warning_signal))
    if setup:
        lines += ["", "# setup", *setup]
    lines += ["", f"# {nodes * tasks_per_node} tasks ({task_launcher}), one rank each"]
    lines += _task_lines(
        command,
        task_launcher,
        nodes,
        tasks_per_node,
        gpus_per_node,
        cpus_per_task,
        smpiargs,
        launcher_args,
        resource_sets,
    )
    lines += ["", WAIT_FOR_TASKS, _requeue(requeue_exit_code), ""]
    return "\n".join(lines)
