"""ROC curves on log-log axes, as the LiRA paper draws them: the low-FPR corner is what counts."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

#: line style per attack; colour per victim
_STYLES = {"loss": ":", "max_posterior": "-.", "lira_online": "-", "lira_offline": "--"}

Curve = tuple[Sequence[float], Sequence[float]]


def plot_rocs(panels: Mapping[str, Mapping[tuple[str, str], Curve]], path: Path) -> None:
    """One panel per title; in each, a curve (FPR, TPR) per (victim, attack)."""
    from matplotlib import colormaps
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    n = max(1, len(panels))
    fig = Figure(figsize=(5.2 * min(n, 3), 4.6 * -(-n // 3)), layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(-(-n // 3), min(n, 3), squeeze=False)
    colors = colormaps["tab10"]
    for ax, (title, curves) in zip(axes.flat, panels.items(), strict=False):
        victims = list(dict.fromkeys(v for v, _ in curves))
        lowest = 1.0
        for (victim, attack), (fpr, tpr) in curves.items():
            points = [(f, t) for f, t in zip(fpr, tpr, strict=True) if f > 0 and t > 0]
            if not points:
                continue
            lowest = min(lowest, points[0][0])
            ax.plot(
                *zip(*points, strict=True),
                _STYLES.get(attack, "-"),
                color=colors(victims.index(victim) % 10),
                drawstyle="steps-post",
                lw=1.2,
                label=f"{victim} · {attack}",
            )
        ax.plot([lowest, 1], [lowest, 1], color="gray", lw=0.8, ls="-", alpha=0.6)
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlim(lowest, 1)
        ax.set_ylim(lowest, 1)
        ax.set_xlabel("false-positive rate")
        ax.set_ylabel("true-positive rate")
        ax.set_title(title, fontsize="medium")
        ax.grid(alpha=0.3, which="both")
        ax.legend(fontsize="x-small", loc="lower right")
    for ax in axes.flat[n:]:
        ax.set_visible(False)
    fig.savefig(path, dpi=150)
