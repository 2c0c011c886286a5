"""Privacy: what a differentially private victim learns from clean, protected and control data.

For each epsilon of ``evals.privacy.epsilons`` a DP-SGD victim (Opacus; ``train/private.py``)
trains from scratch on the clean set, the UC-protected set and the strongest control, and is
scored on the clean test set per class (accuracy, worst-class accuracy, head / medium / tail).
``inf`` is the same recipe without noise or clipping: the baseline the privacy costs are read
against. The strongest control is the one whose (non-private) victim scores lowest: taken from
the victims this job already trained (the ``victims`` evaluation, when it ran before), or found
here by training the candidates' non-private victims (artifacts: reused when present).

Each DP victim is a stage of the artifact store (its key: the victim's, plus the DP settings)
and joins ``ctx.victims`` (``dp_safe``), so later evaluations can attack it.
"""

from __future__ import annotations

import math
import statistics
from collections import defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch

from ue_sweep.evals.context import EvalContext, TrainedVictim
from ue_sweep.evals.privacy.config import PrivacyConfig
from ue_sweep.evals.privacy.public_init import copy_public_weights, freeze_first, public_state
from ue_sweep.evals.privacy.training import PrivacySpec, train_private_classifier
from ue_sweep.report.section import EvalOutcome, ReportSection
from ue_sweep.report.stats import Stat, percent
from ue_sweep.runtime.seeding import derive_seed
from ue_sweep.uc.controls import control_noises
from ue_sweep.uc.noise import apply_cluster_noise

CURVES_PNG = "privacy_vs_epsilon.png"
RECALL_PNG = "privacy_recall.png"
CONDITIONS = ("clean", "protected", "control")


def eps_text(epsilon: float) -> str:
    return "inf" if math.isinf(epsilon) else f"{epsilon:g}"


def setting_text(spec: PrivacySpec) -> str:
    """The outcome's name of a privacy setting: ``8``, ``inf``, or ``sigma1`` (sigma given)."""
    if spec.noise_multiplier is not None:
        return f"sigma{spec.noise_multiplier:g}"
    return eps_text(spec.epsilon)


def privacy_specs(cfg: PrivacyConfig, delta: float) -> list[PrivacySpec]:
    """The DP settings the evaluation trains, in order: one per target epsilon, or the given
    noise multiplier (then only ``.inf`` of the epsilons stays, as the baseline)."""

    def spec(epsilon: float, sigma: float | None = None) -> PrivacySpec:
        return PrivacySpec(
            epsilon, delta, cfg.max_grad_norm, cfg.accountant, cfg.physical_batch, sigma
        )

    if cfg.noise_multiplier is None:
        return [spec(e) for e in cfg.epsilons]
    baseline = [spec(math.inf) for e in cfg.epsilons if math.isinf(e)][:1]
    return [spec(math.inf, cfg.noise_multiplier), *baseline]


def _mean_last(victim: Mapping[str, Any], key: str) -> float | None:
    value = victim["mean_last"].get(key)
    return None if value is None else float(value)


def _control_images(ctx: EvalContext, names: list[str]) -> dict[str, torch.Tensor]:
    """The published images of controls ``names``, as the victims evaluation makes them."""
    p = ctx.protection
    with torch.no_grad():
        noises = control_noises(names, p.noise, p.eps, ctx.cfg.seed, p.untrained)
        return {
            name: apply_cluster_noise(ctx.data.train_images, p.cluster_ids, noise)
            for name, noise in noises.items()
        }


def _strongest_control(ctx: EvalContext, cfg: PrivacyConfig) -> tuple[str, torch.Tensor, str]:
    """(name, images, where the choice came from) of the control the DP victims train on."""
    if cfg.control is not None:
        name = cfg.control
        if name in ctx.victims:
            return name, ctx.victims[name].images, "evals.privacy.control"
        return name, _control_images(ctx, [name])[name], "evals.privacy.control"
    trained = [c for c in cfg.controls if c in ctx.victims]
    if trained:
        candidates, source = trained, "victims trained earlier in this job"
    else:  # their non-private victims decide (artifacts: reused when trained before)
        candidates, source = list(cfg.controls), "non-private victims trained here"
        for name, images in _control_images(ctx, candidates).items():
            ctx.train_victim(name, images)
    name = min(candidates, key=lambda c: _mean_last(ctx.victims[c].result, "accuracy") or 0.0)
    return name, ctx.victims[name].images, source


def _recipe_key(spec: PrivacySpec, overrides: dict[str, Any]) -> dict[str, Any]:
    """What a DP victim depends on beyond the plain victim's key (inf: no delta, no accountant,
    so one baseline serves every privacy setting)."""
    private = spec.private
    sigma = {} if spec.noise_multiplier is None else {"noise_multiplier": spec.noise_multiplier}
    return {
        "method": "dp-sgd",
        "epsilon": None if sigma else eps_text(spec.epsilon),
        **sigma,
        "delta": spec.delta if private else None,
        "max_grad_norm": spec.max_grad_norm if private else None,
        "accountant": spec.accountant if private else None,
        **overrides,
    }


def train_dp_victim(
    ctx: EvalContext,
    label: str,
    images: torch.Tensor,
    spec: PrivacySpec,
    overrides: dict[str, Any],
    init: str = "scratch",
    freeze: int = 0,
) -> dict[str, Any]:
    """A DP-SGD victim on ``images`` (a stage: reused when trained before), registered in
    ``ctx.victims``; returns its result with the ``privacy`` record. ``init``, ``freeze``: public
    pretraining (``evals/privacy/public_init.py``)."""
    cfg, rt, data = ctx.cfg, ctx.rt, ctx.data
    public: tuple[dict[str, Any], str] | None = None
    extra: dict[str, Any] = {}
    if init == "surrogate":
        public = public_state(cfg, data.channels, data.image_size)
        s = cfg.surrogate
        extra = {"init": {"surrogate": s.arch, "weights": s.weights, "source": public[1]}}
        extra["freeze"] = freeze
    recipe_key = _recipe_key(spec, overrides) | extra
    key = ctx.victim_key(images, recipe_key)
    stage = f"victim-{label}"
    recipe = replace(cfg.victim, **{k: v for k, v in overrides.items() if v is not None})

    def train() -> dict[str, Any]:
        torch.manual_seed(derive_seed(cfg.seed, "victim-init"))
        model = ctx.new_victim_model(dp_safe=True)
        pretraining: dict[str, Any] = {"init": init}
        if public is not None:
            pretraining["copied"] = len(copy_public_weights(model, public[0]))
            pretraining["frozen"] = freeze_first(model, freeze)
        result, privacy = train_private_classifier(
            model,
            images,
            data.train_labels,
            data.test_images,
            data.test_labels,
            data.num_classes,
            recipe,
            spec,
            cfg.dataset.augment,
            rt,
            seed=derive_seed(cfg.seed, "victim-data"),
            progress=ctx.progress,
            name=f"DP victim ({label})",
            checkpoint=ctx.checkpoints.stage(stage),
        )
        privacy["pretraining"] = pretraining
        return {"result": result.as_dict() | {"privacy": privacy}, "state": model.state_dict()}

    outcome = ctx.stages.run(stage, key, train)
    ctx.victims[label] = TrainedVictim(
        label, images, key, outcome["result"], outcome["state"], recipe_key, dp_safe=True
    )
    return outcome["result"]


def run(ctx: EvalContext, cfg: PrivacyConfig) -> dict[str, Any]:
    data = ctx.data
    n = len(data.train_images)
    delta = cfg.delta if cfg.delta is not None else 1.0 / (10 * n)
    control, control_images, control_source = _strongest_control(ctx, cfg)
    images = {"clean": data.train_images, "protected": ctx.protection.images}
    images["control"] = control_images
    overrides = {"epochs": cfg.epochs, "batch_size": cfg.batch_size, "lr": cfg.lr}
    victims: dict[str, dict[str, Any]] = defaultdict(dict)
    for spec in privacy_specs(cfg, delta):
        text = setting_text(spec)
        for condition, x in images.items():
            name = control if condition == "control" else condition
            label = f"dp-{name}-" + (text if text.startswith("sigma") else f"eps{text}")
            victims[condition][text] = train_dp_victim(
                ctx, label, x, spec, overrides, cfg.init, cfg.freeze
            )
    return privacy_metrics(dict(victims), control, control_source, delta)


def privacy_metrics(
    victims: dict[str, dict[str, dict[str, Any]]], control: str, source: str, delta: float
) -> dict[str, Any]:
    """Per condition and epsilon: accuracy and worst-class accuracy (means of the last epochs),
    the final epoch's per-class numbers, and the privacy spent."""

    def table(key: str) -> dict[str, dict[str, float | None]]:
        return {c: {e: _mean_last(v, key) for e, v in vs.items()} for c, vs in victims.items()}

    accuracy = table("accuracy")
    epsilons = list(victims["clean"])
    return {
        "epsilons": epsilons,
        "delta": delta,
        "control": control,
        "control_source": source,
        "accuracy": accuracy,
        "worst_class_accuracy": table("worst_class_accuracy"),
        "balanced_accuracy": table("balanced_accuracy"),
        "epsilon_spent": {
            c: {e: v["privacy"]["epsilon"] for e, v in by_eps.items()}
            for c, by_eps in victims.items()
        },
        "noise_multiplier": {
            e: victims["clean"][e]["privacy"]["noise_multiplier"] for e in epsilons
        },
        # how far protected data falls below clean data, and below the control, per epsilon
        "protection_gap": {e: accuracy["clean"][e] - accuracy["protected"][e] for e in epsilons},
        "control_gap": {e: accuracy["control"][e] - accuracy["protected"][e] for e in epsilons},
        "victims": victims,
    }


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
