"""The plan a launcher prints for ``hydra.launcher.check_only=true``, and the lines a detached
sweep ends with."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from ue_sweep.ops.table import JOB_TABLE
from ue_sweep.store.sweep import PlannedJob

# Launcher settings that say what a job asks the scheduler for, in the order they are shown.
RESOURCE_KEYS = (
    "nodes",
    "tasks_per_node",
    "gpus_per_node",
    "gpus_per_task",
    "cpus_per_task",
    "mem_gb",
    "timeout_min",
    "partition",
    "qos",
    "account",
    "constraint",
    "gres",
    "queue",
    "project",
    "allocation",
    "alloc_flags",
    "task_launcher",
    "resource_sets",
    "srun_args",
    "additional_parameters",
    "setup",
    "miopen_cache_root",
    "array_parallelism",
)


def resources(params: Mapping[str, Any]) -> str:
    """``nodes=2 tasks_per_node=4 ...``: the launcher settings each job is submitted with."""
    shown = [
        f"{key}={_value(params[key])}"
        for key in RESOURCE_KEYS
        if params.get(key) not in (None, "", [], {})
    ]
    return " ".join(shown) or "no scheduler resources (runs in this process)"


def _value(value: Any) -> str:
    """A setting as it would be typed: lists and mappings without Python's quotes."""
    if isinstance(value, Mapping):
        return "{" + ",".join(f"{k}:{v}" for k, v in value.items()) + "}"
    if isinstance(value, Sequence) and not isinstance(value, str):
        return "[" + ",".join(str(v) for v in value) + "]"
    return str(value)


def format_plan(
    sweep_dir: str | Path,
    launcher: str,
    params: Mapping[str, Any],
    planned: Sequence[PlannedJob],
    skipped: Sequence[int],
    active: Mapping[int, str],
) -> str:
    """What a launch would do, job by job; ``active``: jobs already queued or running -> id."""
    todo = [j for j in planned if j.num not in skipped and j.num not in active]
    lines = [
        f"plan for sweep {sweep_dir} ({launcher}): {len(planned)} jobs: {len(todo)} to submit, "
        f"{len(skipped)} completed (skipped), {len(active)} already queued or running",
        f"each job asks for: {resources(params)}",
    ]
    for job in planned:
        if job.num in skipped:
            action, note = "skip", "  (completed with this configuration)"
        elif job.num in active:
            action, note = "queued", f"  (already queued or running as {active[job.num]})"
        else:
            action, note = "submit", ""
        lines.append(f"  #{job.num:<3} {action:<6} {job.job_dir}  {job.label}{note}")
    lines.append("check only (hydra.launcher.check_only=true): nothing was submitted")
    return "\n".join(lines)


def format_detached(sweep_dir: str | Path, submitted: Mapping[int, str], active: int) -> str:
    """Where a detached sweep is and how to follow it."""
    ids = ", ".join(f"#{num}: {job_id}" for num, job_id in sorted(submitted.items()))
    return "\n".join(
        [
            f"sweep {sweep_dir}: submitted {len(submitted)} jobs ({ids or 'none'}); "
            f"{active} already queued or running; not waiting (hydra.launcher.wait=false)",
            f"  job table: {Path(sweep_dir) / JOB_TABLE}",
            f"  follow:    ue-sweep status {sweep_dir} --watch",
            f"  cancel:    ue-sweep cancel {sweep_dir} [JOB ...]",
            f"  report:    ue-sweep report {sweep_dir}",
        ]
    )
