"""``python -m ue_sweep.uc.study DIR...``: the pre-registered table of docs/DEMO_STUDY.md.

Reads every completed ``result.json`` under the given directories, groups the jobs into cells
(k, what the surrogate was fitted on, generator kind), and per cell gives mean ± std over seeds of
protected and each control, the paired gaps *strongest control - protected* and *untrained -
protected* with their 95% t-intervals, and the decision rule's verdict:

- ``supported``: gap to the strongest control >= 15 points on average, its interval above 0,
  and protected <= 60%;
- ``not supported``: the interval of that gap holds 0;
- ``controls protect better``: the interval lies below 0;
- ``inconclusive``: otherwise (interval above 0, but a smaller gap or protected > 60%);
- ``too few seeds``: fewer than 3.
"""

from __future__ import annotations

import json
import math
import statistics
import sys
from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path
from typing import Any

MIN_SEEDS = 3
SUPPORT_GAP = 0.15
SUPPORT_PROTECTED = 0.60


def t_interval(values: Sequence[float]) -> tuple[float, float] | None:
    """Two-sided 95% t-interval of the mean; None for fewer than 2 values."""
    if len(values) < 2:
        return None
    from scipy.stats import t

    half = t.ppf(0.975, len(values) - 1) * statistics.stdev(values) / math.sqrt(len(values))
    mean = statistics.fmean(values)
    return mean - half, mean + half


def verdict(gaps: Sequence[float], protected: Sequence[float]) -> str:
    if len(gaps) < MIN_SEEDS:
        return "too few seeds"
    low, high = t_interval(gaps) or (0.0, 0.0)
    if low <= 0 <= high:
        return "not supported"
    if high < 0:
        return "controls protect better"
    if statistics.fmean(gaps) >= SUPPORT_GAP and statistics.fmean(protected) <= SUPPORT_PROTECTED:
        return "supported"
    return "inconclusive"


def cell_of(record: dict[str, Any]) -> tuple[int, str, str]:
    cfg = record["config"]
    return (
        int(cfg["clusters"]["k"]),
        cfg["surrogate"].get("fit_on", "labels"),
        cfg["generator"].get("kind", "bank"),
    )


def read_jobs(dirs: Sequence[Path]) -> dict[tuple[int, str, str], dict[int, dict[str, Any]]]:
    """Completed jobs with victims, by cell and seed (a later file of the same seed wins)."""
    cells: dict[tuple[int, str, str], dict[int, dict[str, Any]]] = defaultdict(dict)
    for root in dirs:
        for path in sorted(root.rglob("result.json")):
            record = json.loads(path.read_text())
            if record.get("status") == "completed" and "metrics" in record:
                cells[cell_of(record)][int(record["seed"])] = record
    return cells


def _fmt(values: Sequence[float]) -> str:
    if not values:
        return ""
    out = f"{100 * statistics.fmean(values):.1f}"
    return out + (f" ± {100 * statistics.stdev(values):.1f}" if len(values) > 1 else "")


def _gap(values: Sequence[float]) -> str:
    interval = t_interval(values)
    if interval is None:
        return _fmt(values)
    low, high = (100 * x for x in interval)
    return f"{100 * statistics.fmean(values):+.1f} [{low:+.1f}, {high:+.1f}]"


def cell_row(cell: tuple[int, str, str], jobs: dict[int, dict[str, Any]]) -> list[str]:
    seeds = sorted(jobs)
    acc = [jobs[s]["metrics"]["accuracy"] for s in seeds]
    controls = [c for c in acc[0] if c not in ("clean", "protected")]
    protected = [a["protected"] for a in acc]
    strongest = [min(a[c] for c in controls) for a in acc]
    gap = [s - p for s, p in zip(strongest, protected, strict=True)]
    untrained = [a["untrained"] - a["protected"] for a in acc] if "untrained" in controls else []
    diag = [jobs[s].get("diagnostics", {}) for s in seeds]

    def mean_of(key: str) -> str:
        values = [d[key] for d in diag if d.get(key) is not None]
        return f"{statistics.fmean(values):.2f}" if values else ""

    k, fit_on, kind = cell
    return [
        str(k),
        fit_on,
        kind,
        f"{len(seeds)} ({','.join(map(str, seeds))})",
        _fmt([a["clean"] for a in acc]),
        _fmt(protected),
        *(_fmt([a[c] for a in acc]) for c in controls),
        _gap(gap),
        _gap(untrained),
        mean_of("label_nmi"),
        mean_of("purity"),
        mean_of("target_hit_rate"),
        mean_of("sign_agreement"),
        mean_of("gradient_share"),
        verdict(gap, protected),
    ]


def study_table(cells: dict[tuple[int, str, str], dict[int, dict[str, Any]]]) -> str:
    if not cells:
        return "No completed job."
    first = next(iter(next(iter(cells.values())).values()))
    controls = [c for c in first["metrics"]["accuracy"] if c not in ("clean", "protected")]
    head = [
        "k",
        "surrogate fit on",
        "output",
        "seeds",
        "clean",
        "protected",
        *controls,
        "strongest - protected [95% CI]",
        "untrained - protected [95% CI]",
        "NMI",
        "purity",
        "hit rate",
        "sign agreement",
        "gradient share",
        "verdict",
    ]
    lines = ["| " + " | ".join(head) + " |", "|" + " --- |" * len(head)]
    for cell in sorted(cells):
        lines.append("| " + " | ".join(cell_row(cell, cells[cell])) + " |")
    return "\n".join(lines)


def main(argv: Sequence[str]) -> int:
    if not argv:
        print("usage: python -m ue_sweep.uc.study DIR...", file=sys.stderr)
        return 2
    print(study_table(read_jobs([Path(a) for a in argv])))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
