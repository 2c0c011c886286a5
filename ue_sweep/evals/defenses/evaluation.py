"""Defenses: does the protection survive a defender who knows about unlearnable examples?

Each method of ``evals.defenses.methods`` (``ue_sweep/defenses``: EPIC, image shortcut squeezing,
adversarial training, UEraser) trains a victim from scratch on the protected set, and on clean
data for the defense's own cost, reporting clean-test accuracy. Next to them the undefended
victims on the same images (reused from the ``victims`` evaluation when it ran: same images,
same artifact), so each defense's ``recovered`` share is the part of the accuracy that UC took
which the defense gives back: (defended - undefended) / (clean - undefended) on protected data.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

from ue_sweep.evals.context import EvalContext
from ue_sweep.evals.defenses.config import NONE
from ue_sweep.evals.defenses.registry import build_defense
from ue_sweep.report.section import EvalOutcome, ReportSection
from ue_sweep.report.stats import Stat
from ue_sweep.runtime.seeding import derive_seed

FIGURE = "defenses.png"


def _accuracy(victim: Mapping[str, Any]) -> float:
    return float(victim["mean_last"]["accuracy"])


def run(ctx: EvalContext, cfg: Any) -> dict[str, Any]:
    images = {"protected": ctx.protection.images}
    if cfg.on_clean:
        images["clean"] = ctx.data.train_images
    plain = {c: ctx.train_victim(f"{NONE}-{c}", x) for c, x in images.items()}
    if "clean" not in plain:  # `recovered` needs the undefended victim on clean data
        plain["clean"] = ctx.train_victim(f"{NONE}-clean", ctx.data.train_images)
    taken = _accuracy(plain["clean"]) - _accuracy(plain["protected"])
    methods: dict[str, Any] = {NONE: {"accuracy": {c: _accuracy(v) for c, v in plain.items()}}}
    for method in cfg.methods:
        settings = getattr(cfg, method)
        key = {"method": method, **asdict(settings)}
        victims = {}
        for condition, x in images.items():
            # A fresh recipe per victim: recipes hold per-run state (EPIC's drops, statistics).
            recipe = build_defense(method, settings, seed=derive_seed(ctx.cfg.seed, method))
            victims[condition] = ctx.train_victim(f"{method}-{condition}", x, recipe, key)
        accuracy = {c: _accuracy(v) for c, v in victims.items()}
        methods[method] = {
            "accuracy": accuracy,
            "recovered": (accuracy["protected"] - _accuracy(plain["protected"])) / taken
            if taken > 0
            else None,
            "defense": {c: v.get("defense", {}) for c, v in victims.items()},
            "victims": victims,
        }
    best = max(cfg.methods, key=lambda m: methods[m]["accuracy"]["protected"], default=None)
    return {"methods": methods, "strongest": best, "accuracy_taken": taken}


def summary(record: Mapping[str, Any], outcome: Mapping[str, Any]) -> Sequence[str]:
    lines = [
        "defenses (victims trained from scratch; clean-test accuracy, mean of the last epochs):",
        f"  {'defense':<14}{'protected':>10}{'clean':>8}{'recovered':>11}",
    ]
    for name, m in outcome["methods"].items():
        acc, recovered = m["accuracy"], m.get("recovered")
        lines.append(
            f"  {name:<14}{100 * acc['protected']:>9.1f}%"
            + (f"{100 * acc['clean']:>7.1f}%" if "clean" in acc else f"{'-':>8}")
            + (f"{100 * recovered:>10.0f}%" if recovered is not None else f"{'-':>11}")
        )
    if outcome["strongest"]:
        lines.append(f"  strongest defense: {outcome['strongest']}")
    return lines


def _table(groups: Mapping[str, Sequence[EvalOutcome]]) -> tuple[list[int], dict[Any, Any]]:
    """(row label, method) -> {global batch: Stat of protected accuracy, "clean": Stat}."""
    batches = sorted({int(j.global_batch or 0) for jobs in groups.values() for j in jobs})
    cells: dict[tuple[str, str], dict[Any, Stat]] = {}
    for label, jobs in groups.items():
        methods = list(dict.fromkeys(m for j in jobs for m in j.outcome["methods"]))
        for method in methods:
            protected: dict[int, list[float]] = defaultdict(list)
            clean: dict[int | None, list[float]] = defaultdict(list)
            for j in jobs:
                acc = j.outcome["methods"].get(method, {}).get("accuracy", {})
                if "protected" in acc:
                    protected[int(j.global_batch or 0)].append(acc["protected"])
                if "clean" in acc:
                    clean[j.seed].append(acc["clean"])
            row: dict[Any, Stat] = {b: Stat(tuple(v)) for b, v in protected.items()}
            if clean:  # each seed's clean victims (one per batch size, all alike) averaged
                row["clean"] = Stat(tuple(math.fsum(v) / len(v) for v in clean.values()))
            cells[(label, method)] = row
    return batches, cells


def report(groups: Mapping[str, Sequence[EvalOutcome]]) -> ReportSection | None:
    batches, cells = _table(groups)
    if not cells:
        return None
    full_n = max(s.n for row in cells.values() for s in row.values())
    rows = [
        [
            label,
            method,
            *(row[b].text(full_n) if b in row else "–" for b in batches),
            row["clean"].text(full_n) if "clean" in row else "–",
        ]
        for (label, method), row in cells.items()
    ]

    def draw(path: Path) -> None:
        _plot(cells, batches, path)

    return ReportSection(
        title="Defenses",
        caption=(
            "Clean-test accuracy (%) of victims trained from scratch on the protected set under "
            "each defense, by global batch size of the UC generators (mean ± std over seeds); "
            f"`{NONE}`: no defense. Last column: the defense on clean data (its own cost), "
            "each seed averaged over batch sizes."
        ),
        header=["dataset", "defense", *map(str, batches), "clean (defended)"],
        rows=rows,
        figures={FIGURE: draw},
        csv_name="defenses.csv",
        label_columns=2,
    )


def _plot(cells: Mapping[Any, Mapping[Any, Stat]], batches: list[int], path: Path) -> None:
    """Per dataset row: protected accuracy under each defense (bars, mean over batch sizes and
    seeds, min-max whiskers) and the defense's clean accuracy (markers)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    labels = list(dict.fromkeys(label for label, _ in cells))
    fig = Figure(figsize=(max(5.0, 1.1 * len(cells) / len(labels) + 2), 3.4 * len(labels)))
    FigureCanvasAgg(fig)
    axes = fig.subplots(len(labels), 1, squeeze=False)[:, 0]
    for ax, label in zip(axes, labels, strict=True):
        methods = [m for lab, m in cells if lab == label]
        values = [
            [v for b in batches if b in cells[(label, m)] for v in cells[(label, m)][b].values]
            for m in methods
        ]
        means = [100 * math.fsum(v) / len(v) if v else 0.0 for v in values]
        low = [m - 100 * min(v) if v else 0.0 for m, v in zip(means, values, strict=True)]
        high = [100 * max(v) - m if v else 0.0 for m, v in zip(means, values, strict=True)]
        x = range(len(methods))
        ax.bar(x, means, yerr=[low, high], capsize=3, alpha=0.75, label="protected")
        clean = [cells[(label, m)].get("clean") for m in methods]
        ax.plot(
            [i for i, c in zip(x, clean, strict=True) if c],
            [100 * c.mean for c in clean if c],
            "D",
            color="tab:green",
            label="clean (defended)",
        )
        ax.set_xticks(list(x), methods)
        ax.set_ylim(0, 100)
        ax.set_ylabel("test accuracy (%)")
        ax.set_title(label, fontsize="medium")
        ax.grid(axis="y", alpha=0.3)
    axes[0].legend(fontsize="small", loc="best")
    fig.tight_layout()
    fig.savefig(path, dpi=150)
