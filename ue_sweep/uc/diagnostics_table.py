"""The report's table of UC diagnostics (``uc/diagnostics.py``); imports no torch."""

from __future__ import annotations

from typing import Any

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


CAPTION = (
    "Per job, overall: NMI and purity (majority-label share) of the clusters w.r.t. the training "
    "labels; sign agreement and correlation of the published noise with the untrained bank's "
    "output; target hit rate and saturated share of the published noise; share of noise pixels "
    "that ever received a gradient. Per-cluster values are in each job's result.json."
)


def diagnostics_markdown(jobs: list[tuple[str, dict[str, Any]]]) -> str:
    """A table of every completed job's overall diagnostics: ``(job dir, diagnostics)``."""
    head = "| job | " + " | ".join(h for _, h in COLUMNS) + " |"
    rule = "| --- |" + " ---: |" * len(COLUMNS)
    rows = [
        f"| `{name}` | "
        + " | ".join("" if d.get(key) is None else f"{d[key]:.3f}" for key, _ in COLUMNS)
        + " |"
        for name, d in jobs
    ]
    return "\n".join([head, rule, *rows])
