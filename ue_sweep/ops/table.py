"""The sweep's job table, ``SWEEP_DIR/jobs.json``: every job of the grid and where it went.

Written by the launcher right after it submits (and before it waits), so ``ue-sweep status``
and ``cancel`` work from any shell. A job keeps the scheduler id of its latest submission while
the grid is re-run; a job whose configuration changed starts a fresh entry. An id counts only
together with its submission time: the scheduler's job of that id must not have been submitted
after it (ids roll over, LSF's at 999999 by default, and an old id may name another job).
"""

from __future__ import annotations

import datetime
import json
import socket
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

from ue_sweep.ops.schedulers import ACTIVE, Scheduler, scheduler_for
from ue_sweep.runtime.tracking import atomic_write_json, now

JOB_TABLE = "jobs.json"
FORMAT = 1
# How much later than the recorded submission the scheduler may date the same job (clocks, a
# grid submitted as several arrays); a job of that id submitted later is another one.
SUBMIT_SLACK_S = 3600.0


@dataclass(frozen=True)
class TableJob:
    num: int
    overrides: list[str]
    # Relative to the sweep directory when it lies inside it.
    dir: str
    fingerprint: str
    scheduler_id: str | None = None
    submitted_at: str | None = None

    @property
    def label(self) -> str:
        return " ".join(self.overrides)


@dataclass
class JobTable:
    sweep_dir: Path
    # Which scheduler holds the ids: basic (in-process), local, slurm or lsf.
    launcher: str
    # submitit's folder (logs, pickles; LSF job reports) and the submitting host.
    submitit_folder: str | None = None
    host: str | None = None
    jobs: dict[int, TableJob] = field(default_factory=dict)

    @classmethod
    def read(cls, sweep_dir: Path) -> JobTable | None:
        """The sweep's table; None if it has none or the file is no table (edited, truncated)."""
        try:
            data = json.loads((sweep_dir / JOB_TABLE).read_text())
            jobs = [
                TableJob(
                    num=int(j["num"]),
                    overrides=[str(o) for o in j["overrides"]],
                    dir=str(j["dir"]),
                    fingerprint=str(j["fingerprint"]),
                    scheduler_id=None if j.get("scheduler_id") is None else str(j["scheduler_id"]),
                    submitted_at=j.get("submitted_at"),
                )
                for j in data["jobs"]
            ]
            return cls(
                sweep_dir=sweep_dir,
                launcher=str(data["launcher"]),
                submitit_folder=data.get("submitit_folder"),
                host=data.get("host"),
                jobs={j.num: j for j in jobs},
            )
        except (OSError, ValueError, KeyError, TypeError, AttributeError):
            return None

    @classmethod
    def for_launch(cls, sweep_dir: Path, launcher: str, submitit_folder: str | None) -> JobTable:
        """The table a launch updates: the existing one if it is this launcher's."""
        table = cls.read(sweep_dir)
        fresh = cls(sweep_dir, launcher, submitit_folder, socket.gethostname())
        if table is None or table.launcher != launcher:
            return fresh
        return replace(table, submitit_folder=submitit_folder, host=fresh.host)

    @property
    def scheduler(self) -> Scheduler:
        folder = None if self.submitit_folder is None else Path(self.submitit_folder)
        return scheduler_for(self.launcher, folder, self.host)

    def job_dir(self, job: TableJob) -> Path:
        return self.sweep_dir / job.dir

    def plan(self, num: int, overrides: Iterable[str], job_dir: Path, fingerprint: str) -> None:
        """Enter a planned job; an entry of another configuration loses its scheduler id."""
        try:
            rel = str(job_dir.relative_to(self.sweep_dir))
        except ValueError:
            rel = str(job_dir)
        old = self.jobs.get(num)
        keep = old is not None and old.fingerprint == fingerprint
        self.jobs[num] = TableJob(
            num,
            list(overrides),
            rel,
            fingerprint,
            old.scheduler_id if keep and old else None,
            old.submitted_at if keep and old else None,
        )

    def submitted(self, ids: Mapping[int, str]) -> None:
        at = now()
        for num, job_id in ids.items():
            self.jobs[num] = replace(self.jobs[num], scheduler_id=job_id, submitted_at=at)

    def trusted(self, nums: Iterable[int]) -> dict[int, str]:
        """num -> scheduler id, for the jobs among ``nums`` whose id still names their own job:
        recorded with its submission time, and not dated later than that by the scheduler."""
        known = {
            n: (job.scheduler_id, job.submitted_at)
            for n in nums
            if (job := self.jobs.get(n)) is not None and job.scheduler_id and job.submitted_at
        }
        if not known:
            return {}
        times = self.scheduler.submit_times([i for i, _ in known.values()])
        out = {}
        for num, (job_id, at) in known.items():
            try:
                ours = datetime.datetime.fromisoformat(at).timestamp()
            except ValueError:
                continue
            if times.get(job_id, ours) <= ours + SUBMIT_SLACK_S:
                out[num] = job_id
        return out

    def active(self, nums: Iterable[int]) -> dict[int, str]:
        """Jobs among ``nums`` whose latest submission is still queued or running: num -> id."""
        known = self.trusted(nums)
        states = self.scheduler.states(list(known.values())) if known else {}
        return {n: i for n, i in known.items() if states.get(i) in ACTIVE}

    def write(self) -> None:
        payload: dict[str, Any] = {
            "format": FORMAT,
            "launcher": self.launcher,
            "submitit_folder": self.submitit_folder,
            "host": self.host,
            "updated_at": now(),
            "jobs": [asdict(self.jobs[n]) for n in sorted(self.jobs)],
        }
        atomic_write_json(self.sweep_dir / JOB_TABLE, payload)
