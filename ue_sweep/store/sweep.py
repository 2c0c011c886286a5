"""Sweep bookkeeping shared by the launchers: what each job is, what became of it, the summary.

A launcher plans every job of a multirun the way the job itself will resolve it (directory,
resolved config, fingerprint), skips jobs whose ``result.json`` already says ``completed`` with
the same fingerprint, runs the rest, and ends with one summary of completed, skipped, failed,
cancelled and resumed jobs. A job the scheduler ended before it could record itself (cancelled,
killed at its time limit) is recorded here, so the sweep directory tells the whole story.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING, Any

from ue_sweep.errors import UserError
from ue_sweep.runtime.tracking import RESULT_FILE, atomic_write_json, now
from ue_sweep.store.checkpoint import NON_SEMANTIC_KEYS, earlier_attempt, fingerprint

if TYPE_CHECKING:
    from ue_sweep.config import RootConfig

SWEEP_NAME_ENV = "UE_SWEEP_NAME"


def sweep_name(args: Sequence[str]) -> str:
    """A stable directory name for the sweep a command line describes.

    The same ``ue-sweep -m ...`` command maps to the same directory, so running it again finds
    its finished jobs. Launcher choice and other ``hydra`` settings do not change the name, nor
    do the reporting keys that leave a job's results alone (progress display, W&B logging).
    """
    overrides = sorted(
        a for a in args if not a.startswith(("-", "hydra")) and not _reporting_override(a)
    )
    experiment = next(
        (a.split("=", 1)[1] for a in overrides if a.startswith("experiment=")), "sweep"
    )
    digest = hashlib.sha256("\n".join(overrides).encode()).hexdigest()[:8]
    return f"{experiment}-{digest}"


def _reporting_override(override: str) -> bool:
    key = override.split("=", 1)[0].lstrip("+~")
    return any(
        key == dotted or key.startswith(f"{dotted}.")
        for dotted in (".".join(path) for path in NON_SEMANTIC_KEYS)
    )


def check_sweep_name(name: str) -> None:
    """Refuse a sweep name (``UE_SWEEP_NAME``) whose directory would leave ``multirun/``."""
    parts = PurePosixPath(name).parts
    if not parts or PurePosixPath(name).is_absolute() or ".." in parts:
        raise UserError(
            f"{SWEEP_NAME_ENV}={name!r} is not accepted; expected a name inside multirun/ "
            "(not empty, not absolute, no '..'); set hydra.sweep.dir to put a sweep elsewhere"
        )


def artifact_dir(cfg: RootConfig, job_dir: Path) -> Path:
    """``paths.artifact_dir``, or ``artifacts/`` next to the job: shared by a sweep's jobs."""
    if cfg.paths.artifact_dir:
        return Path(cfg.paths.artifact_dir).expanduser().absolute()
    return job_dir.absolute().parent / "artifacts"


def grid_overrides(hydra_cfg: Any) -> list[list[str]]:
    """Each job's overrides, as Hydra's basic sweeper splits a multirun's ``hydra`` config."""
    from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
    from hydra.core.override_parser.overrides_parser import OverridesParser

    params = [f"{k}={v}" for k, v in (hydra_cfg.sweeper.get("params") or {}).items()]
    overrides = OverridesParser.create().parse_overrides([*params, *hydra_cfg.overrides.task])
    (batch,) = BasicSweeper.split_arguments(overrides, None)
    return [list(job) for job in batch]


def plain_override(override: str) -> str:
    """``batch_size="256"`` -> ``batch_size=256``, for records and run names."""
    return re.sub(r"=([\"'])(\d+)\1$", r"=\2", override)


@dataclass(frozen=True)
class PlannedJob:
    num: int
    overrides: list[str]
    job_dir: Path
    fingerprint: str

    @classmethod
    def plan(
        cls,
        num: int,
        overrides: Sequence[str],
        job_dir: Path,
        config: dict[str, Any],
        world_size: int,
    ) -> PlannedJob:
        return cls(num, list(overrides), job_dir, fingerprint(config, world_size))

    @property
    def label(self) -> str:
        """The job's overrides as the user typed them."""
        return " ".join(plain_override(o) for o in self.overrides)

    def record(self) -> dict[str, Any] | None:
        try:
            record = json.loads((self.job_dir / RESULT_FILE).read_text())
        except (FileNotFoundError, json.JSONDecodeError):
            return None
        return record if isinstance(record, dict) else None

    def completed_record(self) -> dict[str, Any] | None:
        """The job's result if an earlier run completed this exact job, else None."""
        record = earlier_attempt(self.record(), self.fingerprint)
        return record if record is not None and record.get("status") == "completed" else None

    def record_unfinished(self, status: str, reason: str) -> None:
        """Record an end the job could not record itself (scheduler cancel, kill, timeout)."""
        record = self.record() or {"overrides": self.label.split(), "job_dir": str(self.job_dir)}
        if record.get("status") in ("completed", "failed", "cancelled"):
            return
        record.update(
            status=status, error={"type": "Scheduler", "message": reason}, updated_at=now()
        )
        atomic_write_json(self.job_dir / RESULT_FILE, record)


@dataclass(frozen=True)
class JobOutcome:
    num: int
    label: str
    status: str  # completed, skipped, failed, cancelled, preempted, interrupted, running
    restarts: int = 0
    detail: str = ""

    @classmethod
    def from_record(cls, job: PlannedJob, skipped: bool = False) -> JobOutcome:
        record = job.record() or {}
        status = "skipped" if skipped else record.get("status", "missing")
        error = record.get("error") or {}
        detail = f"{error.get('type', '')}: {error.get('message', '')}".strip(": ")
        return cls(
            job.num,
            job.label,
            status,
            record.get("restarts", 0),
            detail.splitlines()[0] if detail else "",
        )


def format_sweep_summary(sweep_dir: str | Path, outcomes: Sequence[JobOutcome]) -> str:
    counts = Counter(o.status for o in outcomes)
    resumed = sum(1 for o in outcomes if o.restarts)
    order = (
        "completed",
        "skipped",
        "failed",
        "cancelled",
        "preempted",
        "interrupted",
        "running",
        "missing",
    )
    parts = [f"{counts[s]} {s}" for s in order if counts[s]]
    lines = [
        f"sweep {sweep_dir}: {len(outcomes)} jobs: "
        + ", ".join(parts)
        + f"; {resumed} resumed from checkpoints"
    ]
    for o in sorted(outcomes, key=lambda o: o.num):
        note = f" (resumed {o.restarts}x)" if o.restarts else ""
        detail = f"  {o.detail}" if o.detail and o.status not in ("completed", "skipped") else ""
        lines.append(f"  #{o.num:<3} {o.status:<9} {o.label}{note}{detail}")
    return "\n".join(lines)
