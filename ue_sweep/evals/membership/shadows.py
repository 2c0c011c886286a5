"""LiRA's shadow models: trained through the job's victim path, their scores kept as artifacts.

Shadow ``i`` is a victim (same model and recipe as the attacked ones, ``ctx.train_victim``) on the
clean images of the pool ``train ++ holdout`` where ``keep[:, i]``; every pool image is IN for
exactly half of the shadows (:func:`~ue_sweep.evals.membership.lira.shadow_membership`). It has its
own initial weights and data order (``variant``), as the paper's shadows do: the attacker does not
know the victim's initialisation. Its logit-scaled confidences on each query set are an artifact
keyed by the shadow's key, the query images and the views, so a job of role ``shadow`` (one per
shadow, spread over a sweep) leaves what the attack job collects, and the attack job trains (or,
``in_process=false``, refuses to train) only the shadows that are missing.

LiRA's Gaussians assume shadows trained like the target. A :class:`ShadowSet` is the pool under
one target's data condition (its images: clean, UC-protected, a control; the hold-out part with
the noise of each image's nearest cluster, as the published queries perturb non-members) and
its recipe (a defense's ``prepare`` and loss); the clean, plain set is the original one (its
artifact names unchanged). A target whose training cannot be repeated on a shadow's subset (a
DP-SGD victim, a victim on images of no known condition) gets the nearest set and is marked a
lower bound (:attr:`ShadowSet.matched`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch

from ue_sweep.data.splits import ImageSplits
from ue_sweep.evals.membership.lira import shadow_membership
from ue_sweep.evals.membership.queries import QuerySet
from ue_sweep.evals.membership.scores import View, logit_confidence, view_logits
from ue_sweep.models.classifiers import FeatureClassifier
from ue_sweep.store.artifacts import StageKey
from ue_sweep.store.keys import content_digest

if TYPE_CHECKING:
    from ue_sweep.evals.context import EvalContext
    from ue_sweep.train.recipes import VictimRecipe

PREFIX = "membership-shadow"


@dataclass(frozen=True)
class ShadowSet:
    """Shadows trained like one kind of target: on the pool under its data condition, with its
    recipe. ``tag`` names them (empty: the clean, plain set)."""

    tag: str
    #: uint8 [P, C, H, W]: the pool (training split, then hold-out) under the target's condition
    pool_images: torch.Tensor
    recipe: VictimRecipe | None = None
    recipe_key: dict[str, Any] | None = None
    #: False: the target's training could not be repeated (its LiRA numbers are a lower bound)
    matched: bool = True
    #: why not matched
    reason: str | None = None

    def record(self, count: int) -> dict[str, Any]:
        out: dict[str, Any] = {
            "set": self.tag or "clean",
            "models": [name(i, self.tag) for i in range(count)],
            "recipe": self.recipe_key,
            "matched": self.matched,
        }
        if not self.matched:
            out |= {"bound": "lower bound", "reason": self.reason}
        return out


@dataclass(frozen=True)
class ShadowPlan:
    """Which pool images each shadow trains on."""

    pool_images: torch.Tensor  # uint8 [P, C, H, W]: the training split, then the hold-out
    pool_labels: torch.Tensor  # int64 [P]
    keep: torch.Tensor  # bool [P, S]

    @property
    def count(self) -> int:
        return int(self.keep.shape[1])

    def clean_set(self) -> ShadowSet:
        return ShadowSet("", self.pool_images)

    def training_set(
        self, i: int, shadow_set: ShadowSet | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        pool = self.pool_images if shadow_set is None else shadow_set.pool_images
        rows = torch.nonzero(self.keep[:, i]).flatten()
        return pool[rows.to(pool.device)], self.pool_labels[rows.to(self.pool_labels.device)]


def shadow_plan(data: ImageSplits, shadows: int, seed: int) -> ShadowPlan:
    assert data.holdout_images is not None and data.holdout_labels is not None
    device = data.train_images.device
    images = torch.cat([data.train_images, data.holdout_images.to(device)])
    labels = torch.cat([data.train_labels, data.holdout_labels])
    return ShadowPlan(images, labels, shadow_membership(len(labels), shadows, seed))


def name(i: int, tag: str = "") -> str:
    return f"{PREFIX}-{tag}-{i}" if tag else f"{PREFIX}-{i}"


def missing(ctx: EvalContext, plan: ShadowPlan, shadow_set: ShadowSet | None = None) -> list[int]:
    """The shadows (of ``shadow_set``, default the clean one) whose trained model is not in the
    artifact store (rank 0 decides)."""
    store = ctx.stages.store
    shadow_set = shadow_set or plan.clean_set()
    flags = torch.zeros(plan.count, dtype=torch.long)
    if ctx.rt.is_main:
        for i in range(plan.count):
            images, labels = plan.training_set(i, shadow_set)
            key = ctx.victim_key(images, shadow_set.recipe_key, labels, variant=name(i))
            flags[i] = int(store is None or not store.complete(key))
    flags = ctx.rt.broadcast(flags).cpu()
    return [i for i in range(plan.count) if flags[i]]


def shadow_scores(
    ctx: EvalContext,
    plan: ShadowPlan,
    i: int,
    queries: Sequence[QuerySet],
    views: Sequence[View],
    shadow_set: ShadowSet | None = None,
) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Shadow ``i`` (of ``shadow_set``, default the clean one)'s float64 ``[2m, V]``
    logit-scaled confidences on each query set (by name), from the store where they are, else
    from the shadow model (trained or reused on first need), and what the shadow is
    (training-set size, clean-test accuracy). Shadow ``i`` of every set has the same initial
    weights, data order and pool rows: the sets differ by condition and recipe only."""
    shadow_set = shadow_set or plan.clean_set()
    label = name(i, shadow_set.tag)
    images, labels = plan.training_set(i, shadow_set)
    key = ctx.victim_key(images, shadow_set.recipe_key, labels, variant=name(i))
    model: FeatureClassifier | None = None
    info: dict[str, Any] = {}

    def shadow_model() -> FeatureClassifier:
        nonlocal model
        if model is None:
            ctx.train_victim(
                label,
                images,
                recipe=shadow_set.recipe,
                recipe_key=shadow_set.recipe_key,
                labels=labels,
                variant=name(i),
            )
            model = ctx.victim_model(label)
            victim = ctx.victims.pop(label)  # a shadow is no victim of the job's
            info.update(
                train_size=len(labels),
                accuracy=float(victim.result["mean_last"]["accuracy"]),
            )
        return model

    out, recorded = {}, {}
    for query in queries:
        score_key = StageKey(
            "membership-scores",
            {
                "model": key.digest,
                "queries": content_digest(ctx.rt, query.images, query.labels),
                "views": [v.name for v in views],
            },
        )

        def compute(query: QuerySet = query) -> dict[str, Any]:
            logits = view_logits(shadow_model(), query.images, views, ctx.rt)
            return {"scores": logit_confidence(logits, query.labels).cpu(), "shadow": dict(info)}

        found = ctx.stages.run(f"{label}-scores-{query.name}", score_key, compute)
        out[query.name] = found["scores"]
        recorded = dict(found["shadow"])
    return out, recorded
