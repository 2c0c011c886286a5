"""The sweep's tables as Markdown and CSV: the paper's Table 1, one row per job, the report page."""

from __future__ import annotations

import csv
from collections.abc import Sequence
from functools import partial
from pathlib import Path
from typing import Any

from ue_sweep.report.collect import LISTED_STATUSES, Report, Row
from ue_sweep.report.stats import percent

# Percent in CSV cells: more digits, no unit, empty when missing.
_csv_percent = partial(percent, digits=4, width=0, suffix="", missing="")


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
                line += [_csv_percent(s.mean), _csv_percent(s.std), s.n] if s else ["", "", 0]
            for s in (row.clean, *(row.controls.get(c) for c in report.controls)):
                line += [_csv_percent(s.mean), _csv_percent(s.std), s.n] if s else ["", "", 0]
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
                    *(_csv_percent(j.accuracy.get(c)) for c in report.conditions),
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
        if j.status not in LISTED_STATUSES:
            items.append(f"- unreadable: `{j.dir}`: result file {j.status}: {j.error or ''}")
    for overrides in report.incomplete:
        items.append(f"- incomplete: {overrides}: in the sweep's grid, no result file")
    return items


def _counts(report: Report) -> str:
    """The header's count of every kind of job that :func:`problems` lists."""
    n = {s: len(report.by_status(s)) for s in LISTED_STATUSES}
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
    items = problems(report)
    lines += ["", "## Jobs without a result", "", *(items or ["None."])]
    if report.grid_note:
        lines += ["", f"Note: {report.grid_note}."]
    return "\n".join(lines) + "\n"
