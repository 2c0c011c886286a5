"""LiRA's shadow models: trained through the job's victim path, their scores kept as artifacts.

Shadow ``i`` is a victim (same model and recipe as the attacked ones, ``ctx.train_victim``) on the
clean images of the pool ``train ++ holdout`` where ``keep[:, i]``; every pool image is IN for
exactly half of the shadows (:func:`~ue_sweep.evals.membership.lira.shadow_membership`). It has its
own initial weights and data order (``variant``), as the paper's shadows do: the attacker does not
know the victim's initialisation. Its logit-scaled confidences on each query set are an artifact
keyed by the shadow's key, the query images and the views, so a job of role ``shadow`` (one per
shadow, spread over a sweep) leaves what the attack job collects, and the attack job trains (or,
``in_process=false``, refuses to train) only the shadows that are missing.
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

PREFIX = "membership-shadow"


@dataclass(frozen=True)
class ShadowPlan:
    """Which pool images each shadow trains on."""

    pool_images: torch.Tensor  # uint8 [P, C, H, W]: the training split, then the hold-out
    pool_labels: torch.Tensor  # int64 [P]
    keep: torch.Tensor  # bool [P, S]

    @property
    def count(self) -> int:
        return int(self.keep.shape[1])

    def training_set(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        rows = torch.nonzero(self.keep[:, i]).flatten()
        return (
            self.pool_images[rows.to(self.pool_images.device)],
            self.pool_labels[rows.to(self.pool_labels.device)],
        )


def shadow_plan(data: ImageSplits, shadows: int, seed: int) -> ShadowPlan:
    assert data.holdout_images is not None and data.holdout_labels is not None
    device = data.train_images.device
    images = torch.cat([data.train_images, data.holdout_images.to(device)])
    labels = torch.cat([data.train_labels, data.holdout_labels])
    return ShadowPlan(images, labels, shadow_membership(len(labels), shadows, seed))


def name(i: int) -> str:
    return f"{PREFIX}-{i}"


def missing(ctx: EvalContext, plan: ShadowPlan) -> list[int]:
    """The shadows whose trained model is not in the artifact store (rank 0 decides)."""
    store = ctx.stages.store
    flags = torch.zeros(plan.count, dtype=torch.long)
    if ctx.rt.is_main:
        for i in range(plan.count):
            images, labels = plan.training_set(i)
            key = ctx.victim_key(images, labels=labels, variant=name(i))
            flags[i] = int(store is None or not store.complete(key))
    flags = ctx.rt.broadcast(flags).cpu()
    return [i for i in range(plan.count) if flags[i]]


def shadow_scores(
    ctx: EvalContext, plan: ShadowPlan, i: int, queries: Sequence[QuerySet], views: Sequence[View]
) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Shadow ``i``'s float64 ``[2m, V]`` logit-scaled confidences on each query set (by name),
    from the store where they are, else from the shadow model (trained or reused on first
    need), and what the shadow is (training-set size, clean-test accuracy)."""
    images, labels = plan.training_set(i)
    key = ctx.victim_key(images, labels=labels, variant=name(i))
    model: FeatureClassifier | None = None
    info: dict[str, Any] = {}

    def shadow_model() -> FeatureClassifier:
        nonlocal model
        if model is None:
            ctx.train_victim(name(i), images, labels=labels, variant=name(i))
            model = ctx.victim_model(name(i))
            victim = ctx.victims.pop(name(i))  # a shadow is no victim of the job's
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

        found = ctx.stages.run(f"{name(i)}-scores-{query.name}", score_key, compute)
        out[query.name] = found["scores"]
        recorded = dict(found["shadow"])
    return out, recorded
