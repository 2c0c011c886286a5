"""``evals=privacy``: the console summary of a job and the sweep report's section."""

from __future__ import annotations

import math
import statistics
from collections import defaultdict
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from ue_sweep.report.section import EvalOutcome, ReportSection
from ue_sweep.report.stats import Stat, percent

CONDITIONS = ("clean", "protected", "control")
CURVES_PNG = "privacy_vs_epsilon.png"
RECALL_PNG = "privacy_recall.png"


def summary(record: Mapping[str, Any], m: Mapping[str, Any]) -> Sequence[str]:
    first = m["victims"]["clean"][m["epsilons"][0]]["privacy"]
    lines = [
        f"privacy (DP-SGD victims, Opacus {first['accountant']} accountant, delta "
        f"{m['delta']:.2g}, q {first['sample_rate']:.3g}, {first['steps']} steps; clean-test "
        "accuracy / worst-class accuracy, %, mean of the last epochs):",
        f"  {'epsilon':>8} {'spent':>6}  {'clean':>13}  {'protected':>13}  "
        f"{'control (' + m['control'] + ')':>18}",
    ]
    for e in m["epsilons"]:
        spent = m["epsilon_spent"]["clean"][e]
        cells = [
            f"{percent(m['accuracy'][c][e], suffix='')} / "
            f"{percent(m['worst_class_accuracy'][c][e], suffix='')}"
            for c in CONDITIONS
        ]
        lines.append(
            f"  {e:>8} {'–' if spent is None else f'{spent:.2f}':>6}  {cells[0]:>13}  "
            f"{cells[1]:>13}  {cells[2]:>18}"
        )
    return lines


# --------------------------------------------------------------------------------------------
# Report
# --------------------------------------------------------------------------------------------


def _eps_value(text: str) -> tuple[int, float]:
    """Sort key of a setting's name: given noise multipliers first, then epsilons, inf last."""
    if text.startswith("sigma"):
        return 0, -float(text.removeprefix("sigma"))
    return 1, math.inf if text == "inf" else float(text)


def _cells(jobs: Sequence[EvalOutcome]) -> dict[tuple[str, str, str], Stat]:
    """(condition, epsilon, metric) -> Stat over the jobs (seeds)."""
    values: dict[tuple[str, str, str], list[float]] = defaultdict(list)
    for job in jobs:
        for metric in ("accuracy", "worst_class_accuracy"):
            for condition, by_eps in job.outcome[metric].items():
                for e, v in by_eps.items():
                    if v is not None:
                        values[(condition, e, metric)].append(float(v))
        for e, v in job.outcome["epsilon_spent"]["clean"].items():
            if v is not None:
                values[("clean", e, "spent")].append(float(v))
    return {k: Stat(tuple(v)) for k, v in values.items()}


def report(groups: Mapping[str, Sequence[EvalOutcome]]) -> ReportSection | None:
    if not groups:
        return None
    rows, per_row = [], {}
    full_n = max(len(jobs) for jobs in groups.values())
    for label, jobs in groups.items():
        cells = _cells(jobs)
        epsilons = sorted({e for (_, e, _) in cells}, key=_eps_value)
        per_row[label] = (jobs, cells, epsilons)
        for e in epsilons:
            spent = cells.get(("clean", e, "spent"))
            row = [label, e, "–" if spent is None else f"{spent.mean:.2f}"]
            for c in CONDITIONS:
                for metric in ("accuracy", "worst_class_accuracy"):
                    stat = cells.get((c, e, metric))
                    row.append("–" if stat is None else stat.text(full_n))
            rows.append(row)
    controls = sorted({j.outcome["control"] for jobs in groups.values() for j in jobs})

    def curves(path: Path) -> None:
        _plot_curves(per_row, path)

    def recall(path: Path) -> None:
        _plot_recall(per_row, path)

    return ReportSection(
        title="Privacy (DP-SGD victims)",
        caption=(
            "Clean-test accuracy and worst-class accuracy (%) of DP-SGD victims (Opacus) trained "
            "from scratch on clean, UC-protected and control data, per target epsilon (mean ± "
            "std over seeds); `inf`: the same recipe without noise or clipping. Spent: the "
            "accountant's epsilon of the clean victim, mean over seeds. Control: "
            f"{', '.join(controls)} (the strongest of each job)."
        ),
        header=[
            "dataset",
            "epsilon",
            "spent",
            "clean",
            "clean worst",
            "protected",
            "protected worst",
            "control",
            "control worst",
        ],
        rows=rows,
        figures={CURVES_PNG: curves, RECALL_PNG: recall},
        csv_name="privacy.csv",
        label_columns=2,
    )


_COLORS = {"clean": "tab:green", "protected": "tab:red", "control": "tab:gray"}


def _tick(setting: str) -> str:
    return f"σ={setting.removeprefix('sigma')}" if setting.startswith("sigma") else f"ε={setting}"


def _plot_curves(per_row: Mapping[str, Any], path: Path) -> None:
    """Per dataset row: accuracy (solid) and worst-class accuracy (dashed) against epsilon,
    ``inf`` at the right end; whiskers: min-max over seeds."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    n = len(per_row)
    fig = Figure(figsize=(5.2, 3.6 * n), layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(n, 1, squeeze=False)[:, 0]
    for ax, (label, (_, cells, epsilons)) in zip(axes, per_row.items(), strict=True):
        x = list(range(len(epsilons)))
        for c in CONDITIONS:
            for metric, style in (("accuracy", "o-"), ("worst_class_accuracy", "s--")):
                stats = [cells.get((c, e, metric)) for e in epsilons]
                pts = [(i, s) for i, s in zip(x, stats, strict=True) if s is not None]
                if not pts:
                    continue
                means = [100 * s.mean for _, s in pts]
                low = [m - 100 * min(s.values) for m, (_, s) in zip(means, pts, strict=True)]
                high = [100 * max(s.values) - m for m, (_, s) in zip(means, pts, strict=True)]
                ax.errorbar(
                    [i for i, _ in pts],
                    means,
                    yerr=[low, high],
                    fmt=style,
                    color=_COLORS[c],
                    capsize=3,
                    label=f"{c} {'worst class' if metric != 'accuracy' else 'accuracy'}",
                )
        ax.set_xticks(x, [_tick(e) for e in epsilons])
        ax.set_ylim(0, 100)
        ax.set_ylabel("clean-test accuracy (%)")
        ax.set_title(label, fontsize="medium")
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize="x-small", loc="best", ncol=2)
    fig.savefig(path, dpi=150)


def _plot_recall(per_row: Mapping[str, Any], path: Path) -> None:
    """Per dataset row: each class's recall at the smallest epsilon (final epoch, mean over
    seeds) for the three conditions, classes ordered by training frequency."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    n = len(per_row)
    fig = Figure(figsize=(7.0, 3.4 * n), layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(n, 1, squeeze=False)[:, 0]
    for ax, (label, (jobs, _, epsilons)) in zip(axes, per_row.items(), strict=True):
        e = epsilons[0]
        counts = jobs[0].outcome["victims"]["clean"][e].get("train_class_counts") or []
        classes = sorted(range(len(counts)), key=lambda c: (-counts[c], c))
        width = 0.8 / len(CONDITIONS)
        for k, c in enumerate(CONDITIONS):
            recalls = [j.outcome["victims"][c][e]["per_class_accuracy"] for j in jobs]
            means = [
                100 * statistics.fmean(r[cls] for r in recalls if r[cls] is not None)
                if any(r[cls] is not None for r in recalls)
                else 0.0
                for cls in classes
            ]
            ax.bar(
                [i + (k - 1) * width for i in range(len(classes))],
                means,
                width,
                color=_COLORS[c],
                label=c,
            )
        ax.set_xticks(range(len(classes)), [f"{cls}\n({counts[cls]})" for cls in classes])
        ax.set_xlabel("class (training images), most frequent first")
        ax.set_ylabel("recall (%)")
        ax.set_ylim(0, 100)
        ax.set_title(f"{label}: per-class recall at {_tick(e)}", fontsize="medium")
        ax.grid(axis="y", alpha=0.3)
    axes[0].legend(fontsize="small", loc="best")
    fig.savefig(path, dpi=150)
