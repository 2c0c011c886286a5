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
from collections import defaultdict
from collections.abc import Mapping
from dataclasses import replace
from typing import Any

import torch

from ue_sweep.evals.context import EvalContext, TrainedVictim
from ue_sweep.evals.privacy.config import PrivacyConfig
from ue_sweep.evals.privacy.public_init import copy_public_weights, freeze_first, public_state
from ue_sweep.evals.privacy.training import PrivacySpec, train_private_classifier
from ue_sweep.runtime.seeding import derive_seed
from ue_sweep.train.run import LabelledData, TrainingRun
from ue_sweep.uc.controls import control_noises
from ue_sweep.uc.noise import apply_cluster_noise


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
            LabelledData(
                images, data.train_labels, data.test_images, data.test_labels, data.num_classes
            ),
            recipe,
            spec,
            cfg.dataset.augment,
            TrainingRun(
                rt,
                seed=derive_seed(cfg.seed, "victim-data"),
                progress=ctx.progress,
                name=f"DP victim ({label})",
                checkpoint=ctx.checkpoints.stage(stage),
            ),
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
