"""``evals=learnability``: the console summary of a job and the sweep report's section."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from ue_sweep.evals.victims.evaluation import LABELS
from ue_sweep.report.section import EvalOutcome, ReportSection
from ue_sweep.report.stats import Stat

FIGURE = "learnability.png"


def summary(record: Mapping[str, Any], m: Mapping[str, Any]) -> Sequence[str]:
    s = m["settings"]
    lines = [
        f"learnability (SAL: eps {s['eps']}, {s['steps']} steps, {m['subset_size']} training "
        f"images, epochs {','.join(str(e + 1) for e in m['epochs'])}, {len(m['layers'])} "
        f"layers; beta {m['beta']:.4g} from {m['baseline']}):",
        f"  {'trained on':<26}{'accuracy':>9}{'#LP':>7}{'UD':>7}",
    ]
    for condition, c in m["conditions"].items():
        ud = "–" if c["ud"] is None else f"{c['ud']:.2f}"
        lines.append(
            f"  {LABELS.get(condition, condition):<26}{100 * c['accuracy']:>8.1f}%"
            f"{c['lp']:>7.2f}{ud:>7}"
        )
    if m["rank_agreement"] is not None:
        lines.append(
            f"  UD vs accuracy over the conditions: Kendall tau {m['rank_agreement']:.2f} "
            "(1: the same order)"
        )
    return lines


def _ud_text(stat: Stat, full_n: int) -> str:
    out = f"{stat.mean:.2f}" + (f" ± {stat.std:.2f}" if stat.std is not None else "")
    return out if stat.n >= full_n else f"{out} (n={stat.n})"


def _cells(
    groups: Mapping[str, Sequence[EvalOutcome]], field: str
) -> tuple[list[str], dict[tuple[str, int], dict[str, Stat]]]:
    """Conditions, and (row label, global batch) -> condition -> Stat of ``field`` over jobs."""
    conditions: list[str] = []
    values: dict[tuple[str, int], dict[str, list[float]]] = {}
    for label, jobs in groups.items():
        for job in jobs:
            row = values.setdefault((label, int(job.global_batch or 0)), defaultdict(list))
            for condition, value in job.outcome.get(field, {}).items():
                if value is not None:
                    row[condition].append(float(value))
                    conditions.append(condition)
    cells = {
        key: {c: Stat(tuple(v)) for c, v in row.items()} for key, row in sorted(values.items())
    }
    return list(dict.fromkeys(conditions)), cells


def report(groups: Mapping[str, Sequence[EvalOutcome]]) -> ReportSection | None:
    conditions, cells = _cells(groups, "ud")
    if not cells:
        return None
    full_n = max(s.n for row in cells.values() for s in row.values())
    _, accuracy = _cells(groups, "accuracy")

    def draw(path: Path) -> None:
        _plot(conditions, cells, accuracy, path)

    return ReportSection(
        title="Learnability (Unlearnable Distance)",
        caption=(
            "UD = #LP(victim) / #LP(clean victim) (Ye et al., ICLR 2025): the mean number of "
            "layers per epoch whose SAL exceeds the clean victim's 2-means threshold, relative "
            "to clean; 1 for clean data, lower is more unlearnable. Mean ± std over seeds, by "
            "global batch size of the UC generators. The figure sets it against each "
            "condition's clean-test accuracy."
        ),
        header=["dataset", "global batch", *conditions],
        rows=[
            [
                label,
                str(batch),
                *(_ud_text(row[c], full_n) if c in row else "–" for c in conditions),
            ]
            for (label, batch), row in cells.items()
        ],
        figures={FIGURE: draw},
        csv_name="learnability.csv",
        label_columns=2,
    )


def _plot(
    conditions: list[str],
    ud: Mapping[tuple[str, int], Mapping[str, Stat]],
    accuracy: Mapping[tuple[str, int], Mapping[str, Stat]],
    path: Path,
) -> None:
    """Per report row: each condition's UD against its accuracy (mean, ± std whiskers)."""
    from matplotlib import colormaps
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    keys = list(ud)
    fig = Figure(figsize=(5.6, 3.8 * len(keys)), layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(len(keys), 1, squeeze=False)[:, 0]
    colors = colormaps["tab10"]
    for ax, key in zip(axes, keys, strict=True):
        for i, c in enumerate(conditions):
            if c not in ud[key] or c not in accuracy.get(key, {}):
                continue
            u, a = ud[key][c], accuracy[key][c]
            ax.errorbar(
                100 * a.mean,
                u.mean,
                xerr=None if a.std is None else 100 * a.std,
                yerr=u.std,
                fmt="o",
                capsize=3,
                color=colors(i % 10),
                label=c,
            )
        ax.set_xlabel("clean-test accuracy (%)")
        ax.set_ylabel("UD")
        ax.set_title(f"{key[0]}, global batch {key[1]}", fontsize="medium")
        ax.grid(alpha=0.3)
        ax.legend(fontsize="small", loc="best")
    fig.savefig(path, dpi=150)
