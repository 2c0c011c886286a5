"""``ue-sweep report SWEEP_DIR``: a sweep's result files -> the paper's table and figures.

Written to ``SWEEP_DIR/report/`` (or ``--out``):

- ``report.md``: Table 1 of the HPC study, the figures, and the jobs without a result;
- ``table.csv``: the same table as numbers; ``jobs.csv``: one row per job;
- ``protected_by_batch.png``: box plots of protected accuracy per batch size, a panel per row
  (the study's Figure 3); ``accuracy_vs_batch.png``: mean, min and max over batch size (Figure 4);
- ``wandb_workspace.json``: when the sweep logged to W&B, its workspace (``ue_sweep.dashboard``).

The table: a row per dataset (and per value of any other setting the sweep varies, e.g.
``clusters=5``), a column per global batch size. A cell is the protected (UC) victim's clean-test
accuracy, mean ± sample standard deviation (n - 1) over the cell's completed jobs, i.e. over
seeds. Accuracies are a job's headline numbers: each victim's test accuracy averaged over its
last epochs (``victim.average_last``). The clean-data victim does not depend on the generator's
batch size (the victim recipe has a fixed global batch), yet every job retrains it; its column
therefore first averages each seed's jobs of the row over batch sizes, then gives mean ± std
over seeds. The control victims (uniform, sign, untrained-generator noise) are treated the same
way, and the table shows the row's *strongest* control: the one with the lowest mean accuracy.

A partial sweep gives a partial table; the jobs behind the gaps are listed as ``failed``,
``interrupted`` (stopped by a signal, or status ``running`` on this host while its process is
gone), ``missing`` (status ``running`` and never completed: still running, or killed elsewhere),
``cancelled`` (by the scheduler, e.g. ``ue-sweep cancel``), ``unreadable`` (a result file that is
not a ue-sweep record) and ``incomplete`` (grid points of the sweep's ``multirun.yaml`` without
any result file).
"""

from __future__ import annotations

import argparse
import csv
import json
import logging
import math
import statistics
import sys
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ue_sweep.evals import JobOutcome, ReportSection, evaluations
from ue_sweep.stats import Stat
from ue_sweep.sweep import grid_overrides, plain_override
from ue_sweep.tracking import RESULT_FILE, process_gone
from ue_sweep.uc.diagnostics_table import CAPTION as DIAGNOSTICS_CAPTION
from ue_sweep.uc.diagnostics_table import diagnostics_markdown

log = logging.getLogger(__name__)

REPORT_DIR = "report"
BOXPLOT_PNG = "protected_by_batch.png"
CURVES_PNG = "accuracy_vs_batch.png"
# Conditions of every job; the others in a job's accuracy map are its controls.
BASE_CONDITIONS = ("clean", "protected")
# Overrides that are table axes (row dataset, column batch, seeds) or change no result: they
# do not split rows.
_AXES = ("seed", "dataset", "dataset.name", "batch_size", "batch_size.per_device")
# `evals` picks what is measured, not the protection: it never splits a row.
_NOT_SETTINGS = ("hydra", "logger", "trainer.progress", "trainer.devices", "evals", "paths")
# Statuses the report lists by name; any other (unreadable, unknown) is listed as unreadable.
_LISTED = ("completed", "failed", "interrupted", "running", "cancelled")


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


def eval_sections(completed: Sequence[Job]) -> list[ReportSection]:
    """What each evaluation with a report adds: its tables and figures over the sweep's jobs."""
    groups = group_jobs(completed)
    sections = []
    for name, evaluation in evaluations().items():
        if evaluation.report is None:
            continue
        outcomes = {
            f"{dataset} ({label})" if label else dataset: [
                JobOutcome(j.dir, j.seed, j.global_batch, j.evals[name])
                for j in jobs
                if name in j.evals
            ]
            for (dataset, label), jobs in groups.items()
        }
        section = evaluation.report({k: v for k, v in outcomes.items() if v})
        if section is not None:
            sections.append(section)
    return sections


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


def collect(sweep_dir: Path, skip: Path | None = None) -> Report:
    """Read every result file under ``sweep_dir`` (``skip``: a directory to leave out)."""
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
    return Report(sweep_dir, jobs, rows, batches, incomplete, note, eval_sections(completed))


# --------------------------------------------------------------------------------------------
# Output
# --------------------------------------------------------------------------------------------


def table_rows(report: Report) -> tuple[list[str], list[list[str]]]:
    """The Markdown table's header and cells."""
    header = ["dataset", *(str(b) for b in report.batches), "clean", "strongest control"]
    cells = [
        [
            row.label,
            *(
                row.protected[b].text(report.full_n) if b in row.protected else "–"
                for b in report.batches
            ),
            row.clean.text(report.full_n),
            _strongest_text(row, report.full_n),
        ]
        for row in report.rows
    ]
    return header, cells


def _strongest_text(row: Row, full_n: int) -> str:
    strongest = row.strongest
    return "–" if strongest is None else f"{strongest[0]}: {strongest[1].text(full_n)}"


def markdown_table(report: Report) -> str:
    header, cells = table_rows(report)
    lines = [
        "| " + " | ".join(header) + " |",
        "| --- |" + " ---: |" * (len(header) - 1),
        *("| " + " | ".join(c) + " |" for c in cells),
    ]
    return "\n".join(lines)


def _pct(x: float | None) -> str:
    return "" if x is None else f"{100 * x:.4f}"


def write_table_csv(report: Report, path: Path) -> None:
    header = ["dataset", "setting"]
    for b in report.batches:
        header += [f"protected_{b}_mean", f"protected_{b}_std", f"protected_{b}_n"]
    for c in ("clean", *report.controls):
        header += [f"{c}_mean", f"{c}_std", f"{c}_n"]
    header.append("strongest_control")
    with path.open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(header)
        for row in report.rows:
            line: list[Any] = [row.dataset, row.setting]
            for b in report.batches:
                s = row.protected.get(b)
                line += [_pct(s.mean), _pct(s.std), s.n] if s else ["", "", 0]
            for s in (row.clean, *(row.controls.get(c) for c in report.controls)):
                line += [_pct(s.mean), _pct(s.std), s.n] if s else ["", "", 0]
            strongest = row.strongest
            writer.writerow([*line, strongest[0] if strongest else ""])


def write_jobs_csv(report: Report, path: Path) -> None:
    header = [
        "job",
        "status",
        "dataset",
        "overrides",
        "seed",
        "per_device_batch",
        "world_size",
        "global_batch",
        *(f"{c}_accuracy" for c in report.conditions),
        "error",
    ]
    with path.open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(header)
        for j in report.jobs:
            writer.writerow(
                [
                    j.dir,
                    j.status,
                    j.dataset or "",
                    ",".join(j.overrides),
                    "" if j.seed is None else j.seed,
                    j.per_device or "",
                    j.world_size or "",
                    j.global_batch or "",
                    *(_pct(j.accuracy.get(c)) for c in report.conditions),
                    j.error or "",
                ]
            )


def problems(report: Report) -> list[str]:
    """Markdown list items for every job that did not complete."""
    items = []
    for j in report.by_status("failed"):
        items.append(f"- failed: `{j.dir}` ({','.join(j.overrides)}): {j.error}")
    for j in report.by_status("interrupted"):
        items.append(f"- interrupted: `{j.dir}` ({','.join(j.overrides)}): {j.error}")
    for j in report.by_status("cancelled"):
        items.append(f"- cancelled: `{j.dir}` ({','.join(j.overrides)}): {j.error}")
    for j in report.by_status("running"):
        items.append(
            f"- missing: `{j.dir}` ({','.join(j.overrides)}): status running since "
            f"{j.updated_at}, never completed (still running, or killed)"
        )
    for j in report.jobs:
        if j.status not in _LISTED:
            items.append(f"- unreadable: `{j.dir}`: result file {j.status}: {j.error or ''}")
    for overrides in report.incomplete:
        items.append(f"- incomplete: {overrides}: in the sweep's grid, no result file")
    return items


def _counts(report: Report) -> str:
    """The header's count of every kind of job that :func:`problems` lists."""
    n = {s: len(report.by_status(s)) for s in _LISTED}
    unreadable = len(report.jobs) - sum(n.values())
    return (
        f"{len(report.jobs)} result files: {n['completed']} completed, {n['failed']} failed, "
        f"{n['interrupted']} interrupted, {n['running']} missing (running, never completed), "
        f"{n['cancelled']} cancelled, {unreadable} unreadable; "
        f"{len(report.incomplete)} grid points without a result file."
    )


def _caption(report: Report) -> str:
    worlds = sorted({j.world_size for j in report.by_status("completed") if j.world_size})
    n = report.full_n
    return (
        "Protected (UC) clean-test accuracy (%) of victims trained from scratch, by global batch "
        f"size (per-device batch x world size {', '.join(map(str, worlds))}); mean ± std over "
        f"{n} seed{'s' if n != 1 else ''} unless marked (n=...); each victim's accuracy is the "
        "mean of its last epochs. Clean and the strongest control (the control noise whose "
        "victims score lowest): each seed's jobs averaged over batch sizes, then mean ± std "
        "over seeds."
    )


def markdown_report(report: Report, figures: Sequence[str]) -> str:
    lines = [f"# Sweep report: {report.sweep_dir}", "", _counts(report), ""]
    if report.rows:
        lines += [_caption(report), "", markdown_table(report), ""]
    else:
        lines += ["No completed job yet: no table.", ""]
    lines += [f"![{name}]({name})" for name in figures]
    for section in report.sections:
        lines += ["", f"## {section.title}", "", section.caption, "", section.markdown()]
        lines += [f"![{name}]({name})" for name in section.figures]
    diagnosed = [(j.dir, dict(j.diagnostics)) for j in report.jobs if j.diagnostics]
    if diagnosed:
        lines += ["", "## UC diagnostics", "", DIAGNOSTICS_CAPTION, ""]
        lines += [diagnostics_markdown(diagnosed)]
    items = problems(report)
    lines += ["", "## Jobs without a result", "", *(items or ["None."])]
    if report.grid_note:
        lines += ["", f"Note: {report.grid_note}."]
    return "\n".join(lines) + "\n"


def plot_boxes(report: Report, path: Path) -> None:
    """The study's Figure 3: protected accuracy per batch size, one panel per row."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    n = len(report.rows)
    ncols = min(n, 3)
    nrows = math.ceil(n / ncols)
    fig = Figure(figsize=(4.4 * ncols, 3.6 * nrows), layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(nrows, ncols, squeeze=False, sharey=True)
    positions = {b: i for i, b in enumerate(report.batches)}
    for ax, row in zip(axes.flat, report.rows, strict=False):
        batches = list(row.protected)
        values = [[100 * v for v in row.protected[b].values] for b in batches]
        ax.boxplot(values, positions=[positions[b] for b in batches], widths=0.55)
        for b, vals in zip(batches, values, strict=True):
            ax.plot([positions[b]] * len(vals), vals, "o", ms=3.5, alpha=0.6, color="tab:blue")
        ax.axhline(100 * row.clean.mean, ls="--", color="tab:green", lw=1, label="clean data")
        if (strongest := row.strongest) is not None:
            name, stat = strongest
            ax.axhline(100 * stat.mean, ls=":", color="tab:gray", lw=1.2, label=f"{name} control")
        ax.set_xticks(range(len(report.batches)), [str(b) for b in report.batches])
        ax.set_title(row.label, fontsize="medium")
        ax.set_xlabel("global batch size")
        ax.set_ylabel("protected test accuracy (%)")
        ax.set_ylim(0, 100)
        ax.grid(axis="y", alpha=0.3)
    axes.flat[0].legend(fontsize="small", loc="best")
    for ax in axes.flat[n:]:
        ax.set_visible(False)
    fig.savefig(path, dpi=150)


def plot_curves(report: Report, path: Path) -> None:
    """The study's Figure 4: mean (line) and min-max (band) of protected accuracy over batch."""
    from matplotlib import colormaps
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(6.4, 4.4), layout="constrained")
    FigureCanvasAgg(fig)
    ax = fig.subplots()
    colors = colormaps["tab10"]
    for i, row in enumerate(report.rows):
        batches = list(row.protected)
        stats = [row.protected[b] for b in batches]
        lo = [100 * min(s.values) for s in stats]
        hi = [100 * max(s.values) for s in stats]
        color = colors(i % 10)
        ax.plot(batches, [100 * s.mean for s in stats], "o-", color=color, label=row.label)
        ax.fill_between(batches, lo, hi, color=color, alpha=0.18, lw=0)
        ax.plot(batches, lo, "--", color=color, lw=0.8)
        ax.plot(batches, hi, "--", color=color, lw=0.8)
    ax.set_xscale("log", base=2)
    ax.set_xticks(report.batches, [str(b) for b in report.batches])
    ax.minorticks_off()
    ax.set_xlabel("global batch size")
    ax.set_ylabel("protected test accuracy (%)")
    ax.set_title("mean (line), min and max (dashed) over seeds", fontsize="medium")
    ax.grid(alpha=0.3)
    ax.legend(fontsize="small", loc="best")
    fig.savefig(path, dpi=150)


def log_to_wandb(report: Report, out_dir: Path, figures: Mapping[str, Path]) -> str | None:
    """Log the table and figures as the sweep's ``report`` run, in the jobs' W&B group.

    Only when a job of the sweep logged to W&B; returns the run id, or None.
    """
    job = next((j for j in report.jobs if j.wandb and j.logger), None)
    if job is None or job.wandb is None or job.logger is None:
        return None
    import numpy as np
    from omegaconf import OmegaConf
    from PIL import Image

    from ue_sweep.config import LoggerConfig
    from ue_sweep.loggers import JobIdentity, WandbLogger

    cfg = OmegaConf.to_object(OmegaConf.merge(OmegaConf.structured(LoggerConfig), job.logger))
    assert isinstance(cfg, LoggerConfig)
    cfg.group, cfg.name = job.wandb["group"], "report"
    identity = JobIdentity(
        sweep_dir=str(report.sweep_dir.resolve()),
        job_num=None,
        overrides=(),
        config={"sweep_dir": str(report.sweep_dir), "jobs": len(report.jobs)},
        job_dir=str(out_dir),
    )
    tracker = WandbLogger(cfg, identity)
    tracker.start_stage("report")
    header, cells = table_rows(report)
    tracker.log_table("report/table", header, cells)
    tracker.log_table(
        "report/protected_accuracy",
        ["dataset", "setting", "global_batch", "mean", "std", "min", "max", "n"],
        [
            [r.dataset, r.setting, b, s.mean, s.std, min(s.values), max(s.values), s.n]
            for r in report.rows
            for b, s in r.protected.items()
        ],
    )
    tracker.log_images(
        {k: np.asarray(Image.open(p).convert("RGB")) for k, p in figures.items()}, captions={}
    )
    tracker.close()
    described = tracker.describe()
    return None if tracker.warning else described["runs"]["report"]["id"]


def write_report(sweep_dir: Path, out_dir: Path, use_wandb: bool = True) -> Report:
    out_dir.mkdir(parents=True, exist_ok=True)
    report = collect(sweep_dir, skip=out_dir)
    figures: dict[str, Path] = {}
    if report.rows:
        figures = {"boxplot": out_dir / BOXPLOT_PNG, "curves": out_dir / CURVES_PNG}
        plot_boxes(report, figures["boxplot"])
        plot_curves(report, figures["curves"])
        write_table_csv(report, out_dir / "table.csv")
    for section in report.sections:
        section.write(out_dir)
    write_jobs_csv(report, out_dir / "jobs.csv")
    text = markdown_report(report, [p.name for p in figures.values()])
    (out_dir / "report.md").write_text(text)
    if use_wandb and report.rows:
        run = log_to_wandb(report, out_dir, figures)
        if run is not None:
            log.info("logged to W&B as run %s", run)
        from ue_sweep.dashboard import write_dashboard

        write_dashboard(report.jobs, report.conditions, out_dir)
    return report


def main(argv: Sequence[str]) -> int:
    parser = argparse.ArgumentParser(
        prog="ue-sweep report",
        description="Turn a sweep directory's result.json files into the paper's table and plots.",
    )
    parser.add_argument("sweep_dir", type=Path, help="a multirun directory (or any parent)")
    parser.add_argument(
        "--out", type=Path, help=f"output directory (default SWEEP_DIR/{REPORT_DIR})"
    )
    parser.add_argument("--no-wandb", action="store_true", help="do not log the report to W&B")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    sweep_dir: Path = args.sweep_dir
    if not sweep_dir.is_dir():
        parser.error(f"{sweep_dir} is not a directory")
    if not any(sweep_dir.rglob(RESULT_FILE)) and not (sweep_dir / "multirun.yaml").exists():
        parser.error(f"no {RESULT_FILE} and no multirun.yaml under {sweep_dir}")
    out_dir = args.out or sweep_dir / REPORT_DIR
    try:
        write_report(sweep_dir, out_dir, use_wandb=not args.no_wandb)
    except OSError as err:
        print(f"ue-sweep report: cannot write to {out_dir}: {err.strerror or err}", file=sys.stderr)
        return 2
    print((out_dir / "report.md").read_text(), end="")
    print(f"\nwritten to {out_dir}", file=sys.stderr)
    return 0
