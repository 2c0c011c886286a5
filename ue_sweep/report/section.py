"""An evaluation's part of a sweep report, and the outcomes it is built from."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any


@dataclass(frozen=True)
class EvalOutcome:
    """One completed job's outcome of an evaluation, as a report sees it."""

    dir: str
    seed: int | None
    global_batch: int | None
    outcome: Mapping[str, Any]


@dataclass
class ReportSection:
    """An evaluation's part of ``ue-sweep report``: a table (Markdown and CSV) and figures."""

    title: str
    caption: str
    header: list[str]
    rows: list[list[str]]
    #: file name -> function that draws the figure into that path
    figures: dict[str, Callable[[Path], None]]
    csv_name: str
    #: leading columns that name the row (left-aligned); the others are numbers
    label_columns: int = 1

    def markdown(self) -> str:
        return "\n".join(
            [
                "| " + " | ".join(self.header) + " |",
                "|"
                + " --- |" * self.label_columns
                + " ---: |" * (len(self.header) - self.label_columns),
                *("| " + " | ".join(r) + " |" for r in self.rows),
            ]
        )

    def write(self, out_dir: Path) -> None:
        import csv

        with (out_dir / self.csv_name).open("w", newline="") as f:
            writer = csv.writer(f)
            writer.writerow(self.header)
            writer.writerows(self.rows)
        for name, draw in self.figures.items():
            draw(out_dir / name)
