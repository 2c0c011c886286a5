"""``ue-sweep cancel SWEEP_DIR [JOB ...]``: cancel a sweep's queued and running jobs.

Through the scheduler (``scancel``, ``bkill``, the local controller), for the jobs given by number
or every job of the sweep's table. Only jobs the scheduler still holds are cancelled; once they
have left it, each one's ``result.json`` says ``cancelled``. A completed job is never touched,
and a job that ended by itself keeps the record it wrote. A job the scheduler refuses to cancel
(it ended meanwhile) is named with the scheduler's reason; the others are still cancelled and
recorded. An id whose job was submitted after the table's record of it is not this sweep's and
is never cancelled.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ue_sweep.ops.schedulers import ACTIVE, SchedulerError
from ue_sweep.ops.status import read_json
from ue_sweep.ops.table import JOB_TABLE, JobTable, TableJob
from ue_sweep.runtime.tracking import RESULT_FILE, atomic_write_json, now

POLL_S = 1.0


def record_cancelled(table: JobTable, job: TableJob, reason: str) -> bool:
    """Write ``cancelled`` into the job's result, unless it completed; whether it was written."""
    path = table.job_dir(job) / RESULT_FILE
    record: dict[str, Any] = read_json(path) or {
        "overrides": job.overrides,
        "job_dir": str(table.job_dir(job)),
        "fingerprint": job.fingerprint,
    }
    if record.get("status") == "completed":
        return False
    record.update(
        status="cancelled", error={"type": "Cancelled", "message": reason}, updated_at=now()
    )
    atomic_write_json(path, record)
    return True


def _wait_until_gone(table: JobTable, ids: Sequence[str], timeout_s: float) -> list[str]:
    """Wait for the scheduler to let go of ``ids``; the ids still held after ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    held = list(ids)
    while held:
        states = table.scheduler.states(held)
        held = [i for i in held if states.get(i) in ACTIVE]
        if not held or time.monotonic() >= deadline:
            break
        time.sleep(POLL_S)
    return held


def cancel(table: JobTable, nums: Sequence[int], timeout_s: float) -> list[str]:
    """Cancel jobs ``nums`` of the sweep; one line per job saying what became of it."""
    jobs = [table.jobs[n] for n in nums]
    trusted = table.trusted(nums)
    states = table.scheduler.states(list(trusted.values())) if trusted else {}
    lines: dict[int, str] = {}
    targets = []
    for job in jobs:
        record = read_json(table.job_dir(job) / RESULT_FILE) or {}
        state = states.get(trusted[job.num]) if job.num in trusted else None
        if record.get("status") == "completed":
            lines[job.num] = "completed: left as it is"
        elif state in ACTIVE:
            targets.append(job)
        else:
            ended = record.get("status") or "not submitted"
            lines[job.num] = f"not queued or running ({ended}): nothing to cancel"
    if targets:
        target_ids = [str(j.scheduler_id) for j in targets]
        refused = table.scheduler.cancel(target_ids)
        killed = [i for i in target_ids if i not in refused]
        held = set(_wait_until_gone(table, killed, timeout_s)) if killed else set()
        command = {"slurm": "scancel", "lsf": "bkill"}.get(table.launcher, "ue-sweep cancel")
        for job in targets:
            if job.scheduler_id in refused:
                why = refused[str(job.scheduler_id)]
                lines[job.num] = f"could not be cancelled: {job.scheduler_id}: {why}"
                continue
            reason = f"cancelled with {command} {job.scheduler_id} by ue-sweep cancel"
            written = record_cancelled(table, job, reason)
            what = "cancelled" if written else "completed before the cancel reached it"
            late = " (the scheduler still holds it)" if job.scheduler_id in held else ""
            lines[job.num] = f"{what}: {job.scheduler_id}{late}"
    return [f"#{num:<3} {lines[num]}" for num in sorted(lines)]


def main(argv: Sequence[str]) -> int:
    parser = argparse.ArgumentParser(
        prog="ue-sweep cancel",
        description="Cancel a sweep's queued and running jobs through the scheduler; completed "
        "jobs are left as they are.",
    )
    parser.add_argument("sweep_dir", type=Path, help="a multirun directory")
    parser.add_argument("jobs", nargs="*", type=int, metavar="JOB", help="job numbers (all)")
    parser.add_argument(
        "--timeout",
        type=float,
        default=120.0,
        metavar="SECONDS",
        help="how long to wait for the scheduler to end the jobs (default 120)",
    )
    args = parser.parse_args(argv)
    table = JobTable.read(args.sweep_dir)
    if table is None:
        parser.error(
            f"no job table ({args.sweep_dir / JOB_TABLE}): not a sweep a launcher submitted"
        )
    unknown = sorted(set(args.jobs) - set(table.jobs))
    if unknown:
        parser.error(f"no job {', '.join(map(str, unknown))} in {args.sweep_dir}")
    try:
        if table.launcher == "basic":
            table.scheduler.cancel([])  # refuses: the jobs run inside the sweep's own process
        lines = cancel(table, args.jobs or sorted(table.jobs), args.timeout)
    except SchedulerError as err:
        print(f"ue-sweep cancel: {err}", file=sys.stderr)
        return 2
    print("\n".join(lines))
    return 1 if any("could not be cancelled" in line for line in lines) else 0
