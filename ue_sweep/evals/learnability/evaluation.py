"""Learnability: SAL per layer and epoch, #LP and the Unlearnable Distance of every victim.

Ye, Su, Qian ("How Far Are We from True Unlearnability?", ICLR 2025) read how unlearnable a
training set is from the loss landscape of the victim trained on it: after each epoch, how far a
small relative perturbation of one layer's weight can move the training loss (SAL, see
``ue_sweep/learnability/search.py``). The clean victim's SALs set the threshold beta of a
learnable layer; #LP counts a victim's learnable layers (mean over epochs) and UD = #LP(victim)
/ #LP(clean): 1 for clean data, lower is more unlearnable.

Every victim the job trained before this evaluation (``ctx.victims``: clean, protected,
controls, defended ones) is measured on its own training images (after its recipe's
``prepare``), from the per-epoch weights its training kept (``EvalContext.snapshot_epochs``):
no victim is trained twice. Each victim's table is an artifact (keyed by its snapshots and the
search settings), so a batch-size grid searches the shared clean victim once.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict
from typing import Any

import torch

from ue_sweep.config import RootConfig
from ue_sweep.errors import ConfigError
from ue_sweep.evals.context import EvalContext, TrainedVictim
from ue_sweep.evals.learnability import heatmap, metrics
from ue_sweep.evals.learnability.config import LearnabilityConfig, snapshot_epochs
from ue_sweep.evals.learnability.search import SearchSettings
from ue_sweep.evals.learnability.table import SalRun, layer_names, sal_table, subset
from ue_sweep.report.media import save_png
from ue_sweep.store.artifacts import StageKey
from ue_sweep.store.keys import snapshots_key

BASELINE = "clean"


def _layers_of(cfg: RootConfig, pattern: str) -> tuple[list[str], list[str]]:
    """(every searchable layer, those ``pattern`` picks) of the victim architecture, built on
    the meta device (no memory, no compute)."""
    from ue_sweep.models.classifiers import build_classifier

    with torch.device("meta"):
        model = build_classifier(cfg.victim, in_channels=3, num_classes=10, image_size=32)
    return layer_names(model), layer_names(model, pattern)


def check(key: str, lc: LearnabilityConfig, cfg: RootConfig) -> None:
    every, picked = _layers_of(cfg, lc.layers)
    if not picked:
        raise ConfigError(
            f"{key}.layers",
            lc.layers,
            f"all, or a glob matching Conv2d/Linear layers of {cfg.victim.arch}: "
            + ", ".join(every[:8])
            + (", ..." if len(every) > 8 else ""),
        )


def _plain_victim(ctx: EvalContext, images: torch.Tensor, label: str) -> str:
    """The label of an undefended victim on ``images`` (trained now if the job has none)."""
    for victim in ctx.victims.values():
        if victim.images is images and victim.recipe_key is None:
            return victim.label
    ctx.train_victim(label, images)
    return label


def _conditions(ctx: EvalContext) -> tuple[str, dict[str, list[str]]]:
    """The clean baseline's label, and each distinct victim's label -> its other labels (the
    same artifact under another name, e.g. the defenses' undefended ``none-clean``)."""
    baseline = _plain_victim(ctx, ctx.data.train_images, BASELINE)
    _plain_victim(ctx, ctx.protection.images, "protected")
    by_key: dict[str, list[str]] = {}
    for label, victim in ctx.victims.items():
        if not victim.dp_safe:  # see dp_victims
            by_key.setdefault(victim.key.digest, []).append(label)
    conditions = {labels[0]: labels[1:] for labels in by_key.values()}
    base = next(first for first, other in conditions.items() if baseline in (first, *other))
    return base, conditions


def dp_victims(ctx: EvalContext) -> list[str]:
    """The DP-SGD victims of the job, which learnability skips: their training keeps no weights
    per epoch, and their GroupNorm architecture and own recipe would not be measured against the
    clean (BatchNorm) victim's threshold beta on equal terms."""
    return [label for label, victim in ctx.victims.items() if victim.dp_safe]


def _training_images(ctx: EvalContext, victim: TrainedVictim, rows: torch.Tensor) -> torch.Tensor:
    """The subset ``rows`` of what the victim trained on, as model inputs on the device."""
    images = victim.images
    if victim.recipe is not None:  # prepared as its training did: the whole set, then the rows
        images = victim.recipe.prepare(images, ctx.data.train_labels)
    return images[rows.to(images.device)].to(ctx.rt.device).float().div_(255)


def _table(
    ctx: EvalContext,
    lc: LearnabilityConfig,
    label: str,
    victim: TrainedVictim,
    epochs: tuple[int, ...],
    layers: list[str],
    rows: torch.Tensor,
) -> dict[str, Any]:
    """The victim's SAL table, from the store when the same snapshots were searched alike."""
    if not set(epochs) <= set(victim.snapshots):
        raise RuntimeError(
            f"victim {label} has weights of epochs {sorted(victim.snapshots)}, not {epochs}"
        )
    settings = SearchSettings(
        eps=lc.eps,
        lr=lc.lr,
        steps=lc.steps,
        batch_size=lc.batch_size or ctx.cfg.victim.batch_size,
        projection=lc.projection,
    )
    key = StageKey(
        "learnability",
        {
            "snapshots": snapshots_key(victim.key, epochs).digest,
            "layers": layers,
            "subset": {"seed": ctx.cfg.seed, "size": len(rows)},
            "search": asdict(settings)
            | {"l0": lc.l0, "precision": ctx.cfg.trainer.precision}
            # plain: no entry, so tables searched before the option existed stay valid
            | ({"data": lc.search_data} if lc.search_data != "plain" else {}),
        },
    )
    history = victim.result["history"]

    def compute() -> dict[str, Any]:
        return sal_table(
            ctx.rt,
            ctx.new_victim_model(),
            {e: victim.snapshots[e] for e in epochs},
            _training_images(ctx, victim, rows),
            ctx.data.train_labels[rows.to(ctx.data.train_labels.device)].to(ctx.rt.device),
            layers,
            settings,
            SalRun(
                ctx.cfg.seed,
                running_l0={e: history[e]["train_loss"] for e in epochs}
                if lc.l0 == "running"
                else None,
                progress=ctx.progress,
                name=f"learnability ({label})",
                augment=ctx.cfg.dataset.augment if lc.search_data == "augmented" else None,
            ),
        )

    return ctx.stages.run(f"learnability-{label}", key, compute)


def _accuracy(victim: TrainedVictim) -> float:
    return float(victim.result["mean_last"]["accuracy"])


def run(ctx: EvalContext, lc: LearnabilityConfig) -> dict[str, Any]:
    started = time.perf_counter()
    if skipped := dp_victims(ctx):
        ctx.progress.info(
            "learnability: skipping the DP-SGD victims %s: their training keeps no per-epoch "
            "weights, and SAL of a GroupNorm DP victim is not comparable with the clean "
            "victim's threshold",
            ", ".join(skipped),
        )
    baseline, conditions = _conditions(ctx)
    epochs = snapshot_epochs(ctx.cfg, lc)
    layers = layer_names(ctx.new_victim_model(), lc.layers)
    rows = subset(len(ctx.data.train_images), lc.data_fraction, ctx.cfg.seed)
    ctx.progress.info(
        "learnability: %d victims x %d layers x %d epochs, %d training images each",
        len(conditions),
        len(layers),
        len(epochs),
        len(rows),
    )
    tables = {c: _table(ctx, lc, c, ctx.victims[c], epochs, layers, rows) for c in conditions}
    beta, lp, ud = metrics.unlearnable_distances({c: t["sal"] for c, t in tables.items()}, baseline)
    accuracy = {c: _accuracy(ctx.victims[c]) for c in conditions}
    vmax = max(v for t in tables.values() for sal in t["sal"].values() for v in sal)
    out: dict[str, Any] = {}
    for c, t in tables.items():
        out[c] = {
            "aliases": conditions[c],
            "accuracy": accuracy[c],
            "snapshots": ctx.victims[c].snapshot_source,
            "sal": t["sal"],
            "lp_per_epoch": metrics.learnable_per_epoch(t["sal"], beta),
            "lp": lp[c],
            "ud": ud[c],
            "diagnostics": {k: v for k, v in t.items() if k not in ("sal", "epochs")},
            "figure": f"learnability-{c}.png",
        }
        if ctx.rt.is_main:
            _picture(ctx, c, out[c], layers, epochs, beta, vmax)
    known = {c: u for c, u in ud.items() if u is not None}
    return {
        "baseline": baseline,
        "beta": beta,
        "beta_per_epoch": metrics.thresholds(tables[baseline]["sal"]),
        "epochs": list(epochs),
        "layers": layers,
        "subset_size": len(rows),
        "settings": asdict(lc),
        "ud": ud,
        "lp": lp,
        "accuracy": accuracy,
        # Kendall's tau between UD and accuracy over the conditions: 1 when UD orders them as
        # accuracy does
        "rank_agreement": metrics.rank_agreement(known, accuracy),
        "conditions": out,
        # DP-SGD victims of the job that were not measured (see dp_victims)
        "skipped": skipped,
        "seconds": time.perf_counter() - started,
    }


def _picture(
    ctx: EvalContext,
    condition: str,
    entry: Mapping[str, Any],
    layers: list[str],
    epochs: Sequence[int],
    beta: float,
    vmax: float,
) -> None:
    ud = "–" if entry["ud"] is None else f"{entry['ud']:.2f}"
    title = f"{condition}: accuracy {100 * entry['accuracy']:.1f}%, #LP {entry['lp']:.2f}, UD {ud}"
    image = heatmap.render([entry["sal"][x] for x in layers], layers, epochs, beta, vmax, title)
    save_png(ctx.job_dir / entry["figure"], image)
    ctx.progress.run_logger.log_images(
        {f"learnability/{condition}": image},
        captions={f"learnability/{condition}": f"SAL per layer and epoch ({condition})"},
    )
