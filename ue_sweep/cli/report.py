"""``ue-sweep report SWEEP_DIR``: a sweep's result files -> the paper's table and figures.

Written to ``SWEEP_DIR/report/`` (or ``--out``):

- ``report.md``: Table 1 of the HPC study, the evaluations' sections, the figures, and the jobs
  without a result (``ue_sweep.report.tables``);
- ``table.csv``: the same table as numbers; ``jobs.csv``: one row per job;
- ``protected_by_batch.png`` and ``accuracy_vs_batch.png``: the study's Figures 3 and 4
  (``ue_sweep.report.figures``);
- ``wandb_workspace.json``: when the sweep logged to W&B, its workspace
  (``ue_sweep.report.dashboard``).

A partial sweep gives a partial table; the jobs behind the gaps are listed as ``failed``,
``interrupted`` (stopped by a signal, or status ``running`` on this host while its process is
gone), ``missing`` (status ``running`` and never completed: still running, or killed elsewhere),
``cancelled`` (by the scheduler, e.g. ``ue-sweep cancel``), ``unreadable`` (a result file that is
not a ue-sweep record) and ``incomplete`` (grid points of the sweep's ``multirun.yaml`` without
any result file).
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence
from pathlib import Path

from ue_sweep.evals.registry import evaluations
from ue_sweep.report.collect import Job, Report, collect, group_jobs
from ue_sweep.report.figures import plot_boxes, plot_curves
from ue_sweep.report.section import EvalOutcome, ReportSection
from ue_sweep.report.tables import markdown_report, write_jobs_csv, write_table_csv
from ue_sweep.report.upload import log_to_wandb
from ue_sweep.runtime.tracking import RESULT_FILE
from ue_sweep.uc.diagnostics_table import diagnostics_section

log = logging.getLogger(__name__)


REPORT_DIR = "report"


BOXPLOT_PNG = "protected_by_batch.png"


CURVES_PNG = "accuracy_vs_batch.png"


def eval_sections(completed: Sequence[Job]) -> list[ReportSection]:
    """What each evaluation with a report adds: its tables and figures over the sweep's jobs;
    then the UC diagnostics of every completed job that computed a protection."""
    groups = group_jobs(completed)
    sections = []
    for name, evaluation in evaluations().items():
        if evaluation.report is None:
            continue
        outcomes = {
            f"{dataset} ({label})" if label else dataset: [
                EvalOutcome(j.dir, j.seed, j.global_batch, j.evals[name])
                for j in jobs
                if name in j.evals
            ]
            for (dataset, label), jobs in groups.items()
        }
        section = evaluation.report({k: v for k, v in outcomes.items() if v})
        if section is not None:
            sections.append(section)
    diagnostics = diagnostics_section([(j.dir, j.diagnostics or {}) for j in completed])
    if diagnostics is not None:
        sections.append(diagnostics)
    return sections


def write_report(sweep_dir: Path, out_dir: Path, use_wandb: bool = True) -> Report:
    out_dir.mkdir(parents=True, exist_ok=True)
    report = collect(sweep_dir, skip=out_dir, sections=eval_sections)
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
        from ue_sweep.report.dashboard import write_dashboard

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
