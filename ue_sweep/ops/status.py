"""``ue-sweep status SWEEP_DIR [--watch [SECONDS]]``: where every job of a sweep stands.

One row per job: its state, the scheduler's id and word for it, the stage and epoch it is in
(``progress.json``), the elapsed time and status of its ``result.json``, its W&B run and its
overrides; then one summary line. The jobs come from the sweep's job table, or, for a sweep
without one, from its ``multirun.yaml`` grid and the result files under it. Every file is read
as untrusted: one that is missing, truncated or of another shape shows as such in its row.
"""

from __future__ import annotations

import argparse
import datetime
import json
import sys
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ue_sweep.ops.schedulers import PENDING, SchedulerError
from ue_sweep.ops.table import JobTable, TableJob
from ue_sweep.runtime.progress import PROGRESS_FILE
from ue_sweep.runtime.tracking import RESULT_FILE, process_gone

# The summary always counts these, in this order; other states follow when present.
MAIN_STATES = ("completed", "running", "pending", "failed", "cancelled")
# Scheduler states of a job that ended without completing.
_FAILED = ("FAILED", "TIMEOUT", "NODE_FAIL", "OUT_OF_MEMORY", "BOOT_FAIL", "DEADLINE", "LOST")
_FAILED += ("PREEMPTED", "COMPLETED")  # COMPLETED: the scheduler's, without a completed result


def read_json(path: Path) -> dict[str, Any] | None:
    """A JSON object file; None if it is missing, unreadable or holds anything else."""
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def job_state(result: str | None, scheduler: str | None, gone: bool) -> str:
    """One word for a job from its record's status, the scheduler's state and, for a record
    that says ``running`` on this host, whether its process is gone."""
    if result in ("completed", "cancelled"):
        return result
    if scheduler is not None:
        if scheduler in PENDING:
            return "pending"
        if scheduler == "CANCELLED":
            return "cancelled"
        if scheduler in _FAILED:
            return "failed"
        return "running" if scheduler != "UNKNOWN" else "unknown"
    if result == "running":
        return "interrupted" if gone else "running"
    if result in ("failed", "interrupted", "preempted", "unreadable"):
        return result
    return "not started"


def _parse_time(text: Any) -> datetime.datetime | None:
    try:
        return datetime.datetime.fromisoformat(str(text))
    except ValueError:
        return None


def elapsed(record: dict[str, Any], running: bool) -> str:
    """This attempt's time: since its start while it runs, else until its last record."""
    start = _parse_time(record.get("started_at"))
    end = datetime.datetime.now(datetime.UTC) if running else _parse_time(record.get("updated_at"))
    if start is None or end is None or start.tzinfo is None or end.tzinfo is None:
        return "-"
    seconds = max(0, int((end - start).total_seconds()))
    hours, rest = divmod(seconds, 3600)
    return f"{hours}h{rest // 60:02d}m" if hours else f"{rest // 60}m{rest % 60:02d}s"


def stage_text(progress: dict[str, Any] | None, state: str) -> str:
    if state == "completed":
        return "done"
    if progress is None or not isinstance(progress.get("stage"), str):
        return "-"
    epoch, epochs = progress.get("epoch"), progress.get("epochs")
    if isinstance(epoch, int) and isinstance(epochs, int) and epochs > 1:
        return f"{progress['stage']} {epoch}/{epochs}"
    return str(progress["stage"])


def wandb_text(tracked: Any) -> str:
    """``project/run-id (mode)`` of the job's latest W&B run, or ``-``."""
    if not isinstance(tracked, dict) or not isinstance(tracked.get("runs"), dict):
        return "-"
    ids = [r.get("id") for r in tracked["runs"].values() if isinstance(r, dict)]
    if not ids or not ids[-1]:
        return "-"
    return f"{tracked.get('project')}/{ids[-1]} ({tracked.get('mode') or '?'})"


@dataclass(frozen=True)
class JobRow:
    num: int | None
    state: str
    scheduler_id: str | None
    scheduler_state: str | None
    result: str | None
    stage: str
    elapsed: str
    wandb: str
    label: str
    dir: Path


def _row(
    num: int | None, label: str, job_dir: Path, sched_id: str | None, sched: str | None
) -> JobRow:
    result_file = job_dir / RESULT_FILE
    record = read_json(result_file)
    result = None if record is None else record.get("status")
    if (record is None and result_file.exists()) or not isinstance(result, str | None):
        result = "unreadable"
    gone = record is not None and result == "running" and process_gone(record) is not None
    state = job_state(result, sched, gone)
    progress = read_json(job_dir / PROGRESS_FILE)
    tracked = (record or {}).get("wandb") or (progress or {}).get("wandb")
    return JobRow(
        num=num,
        state=state,
        scheduler_id=sched_id,
        scheduler_state=sched,
        result=result,
        stage=stage_text(progress, state),
        elapsed=elapsed(record or {}, state == "running"),
        wandb=wandb_text(tracked),
        label=label,
        dir=job_dir,
    )


def _rows_from_table(table: JobTable) -> list[JobRow]:
    try:
        ids = table.trusted(table.jobs)
        states = table.scheduler.states(list(ids.values()))
    except SchedulerError:
        ids, states = {}, {}
    return [_table_row(table, job, ids, states) for _, job in sorted(table.jobs.items())]


def _table_row(
    table: JobTable, job: TableJob, ids: dict[int, str], states: dict[str, str]
) -> JobRow:
    """A job whose id names another job now (a rolled-over id) shows no scheduler state."""
    sched = states.get(ids[job.num]) if job.num in ids else None
    return _row(job.num, job.label, table.job_dir(job), job.scheduler_id, sched)


def _rows_without_table(sweep_dir: Path) -> list[JobRow]:
    """Jobs of the ``multirun.yaml`` grid matched to result files, then unmatched result files."""
    from ue_sweep.report.collect import expected_grid

    results = {}
    for path in sorted(sweep_dir.rglob(RESULT_FILE)):
        record = read_json(path) or {}
        overrides = record.get("overrides")
        key = frozenset(map(str, overrides)) if isinstance(overrides, list) else path
        results.setdefault(key, path.parent)
    try:
        grid, _ = expected_grid(sweep_dir)
    except Exception:  # a multirun.yaml of any shape: the result files still tell
        grid = None
    rows = []
    for num, overrides in enumerate(grid or ()):
        job_dir = results.pop(frozenset(overrides), sweep_dir / str(num))
        rows.append(_row(num, " ".join(overrides), job_dir, None, None))
    for job_dir in results.values():
        rows.append(_row(None, str(job_dir.relative_to(sweep_dir)), job_dir, None, None))
    return rows


@dataclass(frozen=True)
class SweepStatus:
    sweep_dir: Path
    launcher: str
    rows: list[JobRow]

    @property
    def counts(self) -> Counter[str]:
        return Counter(r.state for r in self.rows)

    @property
    def busy(self) -> bool:
        """Whether any job is still pending or running (what ``--watch`` waits for)."""
        return any(r.state in ("pending", "running") for r in self.rows)


def sweep_status(sweep_dir: Path) -> SweepStatus:
    table = JobTable.read(sweep_dir)
    if table is not None:
        return SweepStatus(sweep_dir, table.launcher, _rows_from_table(table))
    return SweepStatus(sweep_dir, "unknown (no job table)", _rows_without_table(sweep_dir))


def summary_line(status: SweepStatus) -> str:
    counts = status.counts
    others = sorted(set(counts) - set(MAIN_STATES))
    parts = [f"{counts[s]} {s}" for s in (*MAIN_STATES, *others) if s in MAIN_STATES or counts[s]]
    return f"{len(status.rows)} jobs: " + ", ".join(parts)


def format_status(status: SweepStatus) -> str:
    header = ("job", "state", "scheduler", "stage", "elapsed", "result", "W&B", "overrides")
    cells = [
        (
            "-" if r.num is None else f"#{r.num}",
            r.state,
            f"{r.scheduler_id} {r.scheduler_state or '-'}" if r.scheduler_id else "-",
            r.stage,
            r.elapsed,
            r.result or "-",
            r.wandb,
            r.label,
        )
        for r in status.rows
    ]
    widths = [max(len(row[i]) for row in (header, *cells)) for i in range(len(header) - 1)]
    lines = [f"sweep {status.sweep_dir} ({status.launcher})"]
    for row in (header, *cells):
        lines.append("  ".join([*(c.ljust(w) for c, w in zip(row, widths, strict=False)), row[-1]]))
    lines.append(summary_line(status))
    return "\n".join(lines)


def main(argv: Sequence[str]) -> int:
    parser = argparse.ArgumentParser(
        prog="ue-sweep status",
        description="Show where every job of a sweep stands: scheduler state, stage, result.",
    )
    parser.add_argument("sweep_dir", type=Path, help="a multirun directory")
    parser.add_argument(
        "--watch",
        nargs="?",
        type=float,
        const=30.0,
        metavar="SECONDS",
        help="refresh every SECONDS (default 30) until no job is pending or running",
    )
    args = parser.parse_args(argv)
    if not args.sweep_dir.is_dir():
        parser.error(f"{args.sweep_dir} is not a directory")
    if args.watch is not None and args.watch <= 0:
        parser.error("--watch takes a positive number of seconds")
    try:
        while True:
            status = sweep_status(args.sweep_dir)
            if args.watch is not None and sys.stdout.isatty():
                print("\033[H\033[J", end="")  # clear the screen, as watch(1) does
            print(format_status(status), flush=True)
            if args.watch is None or not status.busy:
                return 0
            time.sleep(args.watch)
            print()
    except KeyboardInterrupt:
        return 0
