"""The sweep's figures (matplotlib, Agg): the study's Figures 3 and 4."""

from __future__ import annotations

import math
from pathlib import Path

from ue_sweep.report.collect import Report


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
