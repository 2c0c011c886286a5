"""The report's table of UC diagnostics (``uc/diagnostics.py``); imports no torch."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import replace
from typing import Any

from ue_sweep.report.section import ReportSection

# Columns of the report's diagnostics table: (result key, header).
COLUMNS = (
    ("label_nmi", "NMI"),
    ("purity", "purity"),
    ("sign_agreement", "sign agreement"),
    ("correlation", "correlation"),
    ("target_hit_rate", "hit rate"),
    ("saturated_fraction", "saturated"),
    ("gradient_share", "gradient share"),
)

TITLE = "UC diagnostics"

CAPTION = (
    "Per job, overall: NMI and purity (majority-label share) of the clusters w.r.t. the training "
    "labels; sign agreement and correlation of the published noise with the untrained bank's "
    "output; target hit rate and saturated share of the published noise; share of noise pixels "
    "that ever received a gradient. Per-cluster values are in each job's result.json. On "
    "digits, the pre-registered study (docs/DEMO_STUDY.md: k 3 and 10, three surrogates, bank "
    "and direct patterns, 10 seeds each) supports UC's optimisation in no cell: protection "
    "comes from a fixed pattern per cluster, and only when the clusters are close to the "
    "classes."
)

CSV_NAME = "diagnostics.csv"


def _row(name: str, d: Mapping[str, Any]) -> list[str]:
    return [name, *("" if d.get(key) is None else f"{d[key]:.3f}" for key, _ in COLUMNS)]


class DiagnosticsSection(ReportSection):
    """The table of a sweep's jobs; the Markdown shows each job's directory as code."""

    def markdown(self) -> str:
        shown = [[f"`{r[0]}`", *r[1:]] for r in self.rows]
        return ReportSection.markdown(replace(self, rows=shown))


def diagnostics_section(jobs: Sequence[tuple[str, Mapping[str, Any]]]) -> ReportSection | None:
    """The report's section of every completed job's overall diagnostics, ``(job dir,
    diagnostics)``; None when no job has any."""
    diagnosed = [(name, d) for name, d in jobs if d]
    if not diagnosed:
        return None
    return DiagnosticsSection(
        title=TITLE,
        caption=CAPTION,
        header=["job", *(h for _, h in COLUMNS)],
        rows=[_row(name, d) for name, d in diagnosed],
        figures={},
        csv_name=CSV_NAME,
    )


def diagnostics_markdown(jobs: list[tuple[str, dict[str, Any]]]) -> str:
    """A table of every completed job's overall diagnostics: ``(job dir, diagnostics)``."""
    section = diagnostics_section(jobs)
    return section.markdown() if section is not None else ""
