"""The ``bsub`` job script: ``#BSUB`` directives, then one task per rank.

Formats follow IBM Spectrum LSF 10.1 (bsub: -J name[1-N]%P, -nnodes, -W minutes, -P, -q,
-alloc_flags, -wa/-wt warning action) and IBM Job Step Manager's jsrun (resource sets: -n total,
-a tasks, -c CPUs, -g GPUs per set, -r sets per host).
"""

from __future__ import annotations

import shlex
from collections.abc import Sequence
from pathlib import Path

from submitit.core.utils import JobPaths

TASK_LAUNCHERS = ("jsrun", "mpirun", "blaunch")
ALLOCATIONS = ("nnodes", "slots")
# Variables every task needs; mpirun forwards only what it is told to (-x).
FORWARDED = (
    "SUBMITIT_EXECUTOR",
    "LSB_JOBID",
    "LSB_JOBINDEX",
    "LSB_DJOB_HOSTFILE",
    "LSB_HOSTS",
    "PATH",
    "PYTHONPATH",
    "VIRTUAL_ENV",
)


def _directives(
    job_name: str,
    folder: Path,
    walltime_min: int,
    nodes: int,
    tasks_per_node: int,
    gpus_per_node: int | None,
    mem_gb: int | None,
    queue: str | None,
    project: str | None,
    allocation: str,
    alloc_flags: str | None,
    warning_signal: str | None,
    warning_time_min: int,
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
    else:
        lines += [f"-n {nodes * tasks_per_node}", f'-R "span[ptile={tasks_per_node}]"']
        if gpus_per_node:
            lines.append(f'-gpu "num={gpus_per_node}"')
    if mem_gb is not None:
        lines.append(f"-M {mem_gb}GB")
    if queue:
        lines.append(f"-q {shlex.quote(queue)}")
    if project:
        lines.append(f"-P {shlex.quote(project)}")
    if alloc_flags:
        lines.append(f'-alloc_flags "{alloc_flags}"')
    log = folder / "lsf_%J_%I"
    lines.append(f"-o {log}.out")
    if not stderr_to_stdout:
        lines.append(f"-e {log}.err")
    if warning_signal:
        lines += [f"-wa {warning_signal}", f"-wt {warning_time_min}"]
    lines += list(directives)
    return [f"#BSUB {line}" for line in lines]


def _background(*parts: str) -> str:
    return " ".join(part for part in (*parts, "&") if part)


def _task_lines(
    command: str,
    task_launcher: str,
    nodes: int,
    tasks_per_node: int,
    gpus_per_node: int | None,
    cpus_per_task: int | None,
    launcher_args: Sequence[str],
) -> list[str]:
    total = nodes * tasks_per_node
    extra = " ".join(launcher_args)
    if task_launcher == "jsrun":  # one resource set per task, one GPU each when there are GPUs
        gpus = 1 if gpus_per_node else 0
        prefix = f"jsrun -n {total} -a 1 -c {cpus_per_task or 1} -g {gpus} -r {tasks_per_node}"
        return [_background(prefix, extra, command), 'tasks+=("$!")']
    if task_launcher == "mpirun":
        forward = " ".join(f"-x {var}" for var in FORWARDED)
        prefix = f"mpirun -np {total} --map-by ppr:{tasks_per_node}:node {forward}"
        return [_background(prefix, extra, command), 'tasks+=("$!")']
    ranks = f"env UE_LSF_RANK=$rank UE_LSF_LOCAL_RANK=$local_rank UE_LSF_SIZE={total}"
    return [  # blaunch: one task per slot, ranks numbered here
        'hosts=$(if [ -r "$LSB_DJOB_HOSTFILE" ]; then cat "$LSB_DJOB_HOSTFILE"; '
        "else echo $LSB_HOSTS; fi | tr ' ' '\\n' | grep -v -E '^(batch|login)' "
        "| awk 'NF && !seen[$0]++')",
        "rank=0",
        "for host in $hosts; do",
        f"  for local_rank in $(seq 0 {tasks_per_node - 1}); do",
        "    " + _background('blaunch -z "$host"', extra, ranks, command),
        '    tasks+=("$!")',
        "    rank=$((rank + 1))",
        "  done",
        "done",
    ]


# The job shell forwards the warning signal to its tasks (trapped before any task starts: an
# untrapped USR2 would end the shell) and waits for all of them; `wait` returns early when a
# trapped signal arrives, hence the loop.
FORWARD_WARNING = """tasks=()
trap 'kill -USR2 "${tasks[@]}" 2>/dev/null' USR2"""
WAIT_FOR_TASKS = """status=0
for pid in "${tasks[@]}"; do
  while true; do
    wait "$pid"; code=$?
    kill -0 "$pid" 2>/dev/null || break
  done
  [ "$code" -ne 0 ] && status=$code
done
exit $status"""


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
    allocation: str = "nnodes",
    alloc_flags: str | None = None,
    task_launcher: str = "jsrun",
    launcher_args: Sequence[str] = (),
    warning_signal: str | None = "USR2",
    warning_time_min: int = 5,
    directives: Sequence[str] = (),
    setup: Sequence[str] = (),
    array_parallelism: int = 256,
    stderr_to_stdout: bool = False,
    map_count: int | None = None,
) -> str:
    """Text of the job script ``bsub`` reads from stdin; ``command`` runs once per task."""
    if task_launcher not in TASK_LAUNCHERS:
        raise ValueError(f"task_launcher={task_launcher!r}: expected one of {TASK_LAUNCHERS}")
    if allocation not in ALLOCATIONS:
        raise ValueError(f"allocation={allocation!r}: expected one of {ALLOCATIONS}")
    if walltime_min < 1 or nodes < 1 or tasks_per_node < 1:
        raise ValueError("walltime_min, nodes and tasks_per_node must be >= 1")
    if warning_signal and not 0 < warning_time_min < walltime_min:
        raise ValueError(
            f"warning_time_min={warning_time_min} must be between 0 and walltime_min="
            f"{walltime_min} (exclusive): the job needs time to run before the warning"
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
        mem_gb,
        queue,
        project,
        allocation,
        alloc_flags,
        warning_signal,
        warning_time_min,
        directives,
        stderr_to_stdout,
        map_count,
        array_parallelism,
    )
    lines += ["", "export SUBMITIT_EXECUTOR=lsf", FORWARD_WARNING]
    if setup:
        lines += ["", "# setup", *setup]
    lines += ["", f"# {nodes * tasks_per_node} tasks ({task_launcher}), one rank each"]
    lines += _task_lines(
        command, task_launcher, nodes, tasks_per_node, gpus_per_node, cpus_per_task, launcher_args
    )
    lines += ["", WAIT_FOR_TASKS, ""]
    return "\n".join(lines)
