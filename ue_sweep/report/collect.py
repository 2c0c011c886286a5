"""A sweep's result files, read and grouped into the rows of its tables.

Written to ``SWEEP_DIR/report/`` (or ``--out``):

- ``report.md``: Table 1 of the HPC study, the figures, and the jobs without a result;
- ``table.csv``: the same table as numbers; ``jobs.csv``: one row per job;
- ``protected_by_batch.png``: box plots of protected accuracy per batch size, a panel per row
  (the study's Figure 3); ``accuracy_vs_batch.png``: mean, min and max over batch size (Figure 4);
- ``wandb_workspace.json``: when the sweep logged to W&B, its workspace
  (``ue_sweep.report.dashboard``).
"""

from __future__ import annotations

import json
import logging
import statistics
from collections import defaultdict
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ue_sweep.report.section import ReportSection
from ue_sweep.report.stats import Stat
from ue_sweep.runtime.tracking import RESULT_FILE, process_gone
from ue_sweep.store.sweep import grid_overrides, plain_override

log = logging.getLogger(__name__)


# Conditions of every job; the others in a job's accuracy map are its controls.
BASE_CONDITIONS = ("clean", "protected")


# Overrides that are table axes (row dataset, column batch, seeds) or change no result: they
# do not split rows.
_AXES = ("seed", "dataset", "dataset.name", "batch_size", "batch_size.per_device")


# `evals` picks what is measured, not the protection: it never splits a row.
_NOT_SETTINGS = ("hydra", "logger", "trainer.progress", "trainer.devices", "evals", "paths")


# Statuses the report lists by name; any other (unreadable, unknown) is listed as unreadable.
LISTED_STATUSES = ("completed", "failed", "interrupted", "running", "cancelled")


def _key(override: str) -> str:
    return override.split("=", 1)[0].lstrip("+~")


def _is_setting(override: str) -> bool:
    key = _key(override)
    return key not in _AXES and not any(key == k or key.startswith(f"{k}.") for k in _NOT_SETTINGS)


@dataclass(frozen=True)
class Job:
    """One result file, reduced to what the report needs."""

    dir: str  # relative to the sweep directory
    status: str
    overrides: tuple[str, ...]
    dataset: str | None = None
    seed: int | None = None
    per_device: int | None = None
    world_size: int | None = None
    global_batch: int | None = None
    accuracy: Mapping[str, float] = field(default_factory=dict)
    error: str | None = None
    updated_at: str | None = None
    wandb: Mapping[str, Any] | None = None
    logger: Mapping[str, Any] | None = None
    #: the completed job's `evals` outcomes, by evaluation
    evals: Mapping[str, Any] = field(default_factory=dict)
    #: the completed job's UC diagnostics (uc/diagnostics.py), when it computed a protection
    diagnostics: Mapping[str, Any] | None = None

    @classmethod
    def read(cls, path: Path, sweep_dir: Path) -> Job:
        """The job of a result file; a file that is no readable ue-sweep record: ``unreadable``."""
        rel = str(path.parent.relative_to(sweep_dir)) or "."
        try:
            return cls._parse(rel, json.loads(path.read_text()))
        except (OSError, ValueError) as err:
            return cls(dir=rel, status="unreadable", overrides=(), error=str(err))

    @classmethod
    def _parse(cls, rel: str, record: Any) -> Job:
        # A result file is user-editable input: any shape a job never writes is a ValueError.
        try:
            config = record.get("config", {})
            error = record.get("error")
            status = record["status"]
            completed = status == "completed"
            gone = process_gone(record) if status == "running" else None
            if gone is not None:
                status, error = "interrupted", {"type": "Interrupted", "message": gone}
            return cls(
                dir=rel,
                status=str(status),
                overrides=tuple(str(o) for o in record.get("overrides", ())),
                dataset=record["dataset"]["name"]
                if completed
                else config.get("dataset", {}).get("name"),
                seed=record.get("seed"),
                per_device=config.get("batch_size", {}).get("per_device"),
                world_size=record.get("world_size"),
                global_batch=int(record["batch"]["global"]) if completed else None,
                accuracy=_accuracy(record["metrics"]["accuracy"])
                if completed and "metrics" in record
                else {},
                error=f"{error['type']}: {error['message']}" if error else None,
                updated_at=record.get("updated_at"),
                wandb=record.get("wandb"),
                logger=config.get("logger"),
                evals=dict(record.get("evals", {})) if completed else {},
                diagnostics=record.get("diagnostics") if completed else None,
            )
        except (AttributeError, KeyError, TypeError, ValueError) as err:
            raise ValueError(f"not a ue-sweep result ({type(err).__name__}: {err})") from err


def _accuracy(accuracy: Mapping[str, Any]) -> dict[str, float]:
    """Every condition's accuracy; clean and protected first, and required (KeyError)."""
    return {c: float(accuracy[c]) for c in BASE_CONDITIONS} | {
        c: float(a) for c, a in accuracy.items()
    }


@dataclass
class Row:
    dataset: str
    setting: str  # the sweep's other varying overrides, "" when there are none
    protected: dict[int, Stat]
    clean: Stat
    controls: dict[str, Stat]  # every control all the row's jobs trained

    @property
    def label(self) -> str:
        return f"{self.dataset} ({self.setting})" if self.setting else self.dataset

    @property
    def strongest(self) -> tuple[str, Stat] | None:
        """The control whose victims score lowest on average: the honest comparison for UC."""
        if not self.controls:
            return None
        return min(self.controls.items(), key=lambda item: item[1].mean)


@dataclass
class Report:
    sweep_dir: Path
    jobs: list[Job]
    rows: list[Row]
    batches: list[int]
    incomplete: list[str]  # overrides of grid points without a result file
    grid_note: str | None
    sections: list[ReportSection] = field(default_factory=list)  # the evaluations' tables

    def by_status(self, status: str) -> list[Job]:
        return [j for j in self.jobs if j.status == status]

    @property
    def controls(self) -> list[str]:
        """Controls of any row, in the order the jobs list them."""
        return list(dict.fromkeys(c for r in self.rows for c in r.controls))

    @property
    def conditions(self) -> list[str]:
        return [*BASE_CONDITIONS, *self.controls]

    @property
    def full_n(self) -> int:
        """The most jobs any cell has: fewer than this is marked in the table."""
        return max((s.n for r in self.rows for s in r.protected.values()), default=0)


def _seed_means(jobs: Iterable[Job], condition: str) -> Stat:
    per_seed: dict[int | None, list[float]] = defaultdict(list)
    for job in jobs:
        per_seed[job.seed].append(job.accuracy[condition])
    return Stat(tuple(statistics.fmean(v) for _, v in sorted(per_seed.items(), key=_seed_order)))


def _seed_order(item: tuple[int | None, Any]) -> tuple[bool, int]:
    return item[0] is None, item[0] or 0


def group_jobs(completed: Sequence[Job]) -> dict[tuple[str, str], list[Job]]:
    """Jobs by (dataset, the sweep's other varying overrides): one row of every table each."""
    settings = [dict(o.split("=", 1) for o in j.overrides if _is_setting(o)) for j in completed]
    keys = sorted({k for s in settings for k in s})
    varying = [k for k in keys if len({s.get(k) for s in settings}) > 1]
    groups: dict[tuple[str, str], list[Job]] = defaultdict(list)
    for job, setting in zip(completed, settings, strict=True):
        label = ",".join(f"{k}={setting.get(k, 'default')}" for k in varying)
        groups[(str(job.dataset), label)].append(job)
    return dict(sorted(groups.items()))


def build_rows(completed: Sequence[Job]) -> list[Row]:
    rows = []
    for (dataset, label), jobs in group_jobs([j for j in completed if j.accuracy]).items():
        cells: dict[int, list[float]] = defaultdict(list)
        for job in jobs:
            cells[int(job.global_batch or 0)].append(job.accuracy["protected"])
        controls = [
            c
            for c in jobs[0].accuracy
            if c not in BASE_CONDITIONS and all(c in j.accuracy for j in jobs)
        ]
        rows.append(
            Row(
                dataset=dataset,
                setting=label,
                protected={b: Stat(tuple(v)) for b, v in sorted(cells.items())},
                clean=_seed_means(jobs, "clean"),
                controls={c: _seed_means(jobs, c) for c in controls},
            )
        )
    return rows


def expected_grid(sweep_dir: Path) -> tuple[list[tuple[str, ...]] | None, str | None]:
    """The job overrides Hydra's basic sweeper made of ``multirun.yaml``, or why not known."""
    path = sweep_dir / "multirun.yaml"
    if not path.exists():
        return None, "no multirun.yaml: jobs that never started cannot be listed"
    from omegaconf import OmegaConf

    hydra_cfg = OmegaConf.load(path).hydra
    sweeper = hydra_cfg.sweeper.get("_target_", "")
    if not sweeper.endswith("BasicSweeper"):
        return None, f"sweeper {sweeper}: its grid is not known, jobs that never started unlisted"
    return [tuple(plain_override(o) for o in job) for job in grid_overrides(hydra_cfg)], None


def collect(
    sweep_dir: Path,
    skip: Path | None = None,
    sections: Callable[[Sequence[Job]], list[ReportSection]] | None = None,
) -> Report:
    """Read every result file under ``sweep_dir`` (``skip``: a directory to leave out);
    ``sections`` adds the evaluations' tables from the completed jobs."""
    paths = [
        p for p in sorted(sweep_dir.rglob(RESULT_FILE)) if skip is None or skip not in p.parents
    ]
    jobs = [Job.read(p, sweep_dir) for p in paths]
    completed = [j for j in jobs if j.status == "completed"]
    grid, note = expected_grid(sweep_dir)
    seen = {frozenset(j.overrides) for j in jobs}
    incomplete = [",".join(g) for g in grid or () if frozenset(g) not in seen]
    rows = build_rows(completed)
    batches = sorted({b for r in rows for b in r.protected})
    extra = sections(completed) if sections is not None else []
    return Report(sweep_dir, jobs, rows, batches, incomplete, note, extra)
