"""EPIC (Yang, Liu, Mirzasoleiman, ICML 2022, "Not All Poisons are Created Equal").

Every ``interval`` epochs from ``start_epoch``: the last-layer gradient proxy
``softmax(logits) - onehot(y)`` of every training image (eval mode, no augmentation); per class,
greedy facility-location medoids (:mod:`ue_sweep.evals.defenses.coreset`) with budgets proportional
to the class sizes; every point joins its most similar medoid; points in clusters of at most
``cluster_threshold`` points (isolated in gradient space, where effective poisons sit) are
dropped for good.

Where this follows the public code (github.com/YuYang0901/EPIC) and where not:

- the similarity ``exp(-||g_i - g_j|| / C)`` (submodlib's Euclidean kernel), the greedy that
  continues through zero gains, dropping clusters of ``size <= 1`` and training on every point
  never dropped (``train_on: kept``) follow it; ``train_on: medoids`` trains on the medoids
  alone, each weighted by its cluster's size (CRAIG-style coreset training).
- cluster ids are global medoid indices; the public code offsets class ``c``'s ids by
  ``c * budget_c``, which collides when class budgets differ.
- budgets: largest remainders summing exactly to ``round(fraction * N)``, at least 1 per
  non-empty class, instead of rounding up and removing random seats.
- the selection runs over the points never dropped (budget a fraction of them), so a dropped
  point takes no medoid seat; the public code reselects over all points and then keeps only the
  never-dropped ones.
- dropped points stay in the sampler with weight 0 (see :class:`VictimRecipe`), so epochs keep
  their steps and the cosine schedule its length; the public code rebuilds its loader on the kept
  points, with fewer steps per epoch. The trainer's ``train_loss`` is then the weighted loss, and
  its ``train_accuracy`` counts every sample drawn, dropped ones included.

Distributed: the proxies are computed in fixed global chunks (chunk ``j`` on rank ``j % W``) and
summed over ranks, and class ``c``'s greedy runs on rank ``c % W`` in float64, so the selection is
bit-identical for any world size (on one device type).
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn

from ue_sweep.evals.defenses.config import EpicConfig
from ue_sweep.evals.defenses.coreset import (
    assign,
    class_budgets,
    greedy_facility_location,
    similarity,
)
from ue_sweep.runtime.distributed import Runtime
from ue_sweep.train.recipes import VictimRecipe

PROXY_BATCH = 512


@torch.no_grad()
def gradient_proxies(
    model: nn.Module,
    images: torch.Tensor,
    labels: torch.Tensor,
    rt: Runtime,
    batch_size: int = PROXY_BATCH,
) -> torch.Tensor:
    """float64 ``[N, C]`` rows ``softmax(logits) - onehot(y)`` in eval mode, identical on every
    rank: each image goes through the same fixed chunk whatever the world size."""
    was_training = model.training
    model.eval()
    n = len(images)
    num_classes = model(images[:1].to(rt.device).float().div_(255))[0].shape[1]
    out = torch.zeros(n, num_classes, dtype=torch.float64, device=rt.device)
    for chunk, start in enumerate(range(0, n, batch_size)):
        if chunk % rt.world_size != rt.rank:
            continue
        stop = min(start + batch_size, n)
        x = images[start:stop].to(rt.device).float().div_(255)
        y = labels[start:stop].to(rt.device)
        with rt.autocast():
            logits, _ = model(x)
        g = logits.double().softmax(1)
        g[torch.arange(len(y), device=rt.device), y] -= 1.0
        out[start:stop] = g
    model.train(was_training)
    return rt.all_reduce_sum(out)


def medoid_assignment(
    gradients: torch.Tensor,
    labels: torch.Tensor,
    active: torch.Tensor,
    fraction: float,
    rt: Runtime,
) -> tuple[torch.Tensor, list[int]]:
    """Global index of each active point's medoid (-1 for inactive points), and the class
    budgets. Class ``c``'s greedy runs on rank ``c % W``; the results are summed over ranks."""
    labels = labels.to(gradients.device)
    points = active.nonzero().squeeze(1)
    num_classes = gradients.shape[1]
    counts = torch.bincount(labels[points], minlength=num_classes).tolist()
    budgets = class_budgets(counts, math.floor(fraction * len(points) + 0.5))
    medoid_of = torch.zeros(len(labels), dtype=torch.long, device=gradients.device)
    for c in range(num_classes):
        if counts[c] == 0 or c % rt.world_size != rt.rank:
            continue
        members = points[labels[points] == c]
        sim = similarity(gradients[members])
        medoids = greedy_facility_location(sim, budgets[c])
        medoid_of[members] = members[medoids[assign(sim, medoids)]] + 1
    return rt.all_reduce_sum(medoid_of) - 1, budgets


class Epic(VictimRecipe):
    """Trains on the points EPIC keeps; its state (dropped mask, weights) is checkpointed."""

    name = "epic"

    def __init__(self, cfg: EpicConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.dropped: torch.Tensor | None = None
        self.records: list[dict[str, Any]] = []
        self.proxy_batch = PROXY_BATCH

    def due(self, epoch: int) -> bool:
        start, interval = self.cfg.start_epoch, self.cfg.interval
        return epoch >= start and (epoch - start) % interval == 0

    def select(
        self,
        epoch: int,
        model: nn.Module,
        images: torch.Tensor,
        labels: torch.Tensor,
        rt: Runtime,
    ) -> torch.Tensor | None:
        if not self.due(epoch):
            return None
        # DDP moved each rank's BN statistics in the last step: select with their average.
        rt.average_buffers(model)
        gradients = gradient_proxies(model, images, labels, rt, self.proxy_batch)
        dropped = self.dropped
        if dropped is None:
            dropped = torch.zeros(len(images), dtype=torch.bool)
        dropped = dropped.to(rt.device)
        weights, self.dropped = self.reweight(gradients, labels, ~dropped, rt, epoch)
        return weights

    def reweight(
        self,
        gradients: torch.Tensor,
        labels: torch.Tensor,
        active: torch.Tensor,
        rt: Runtime,
        epoch: int,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Weights and the new dropped mask from one selection over the ``active`` points."""
        medoid_of, budgets = medoid_assignment(
            gradients, labels, active, self.cfg.subset_fraction, rt
        )
        n = len(active)
        sizes = torch.bincount(medoid_of[active], minlength=n)
        small = active & (sizes[medoid_of.clamp(min=0)] <= self.cfg.cluster_threshold)
        dropped = ~active | small
        if self.cfg.train_on == "kept":
            weights = (~dropped).double()
        else:
            is_medoid = active & (medoid_of == torch.arange(n, device=active.device)) & ~dropped
            weights = torch.where(is_medoid, sizes, 0).double()
        labels = labels.to(dropped.device)
        self.records.append(
            {
                "epoch": epoch,
                "points": int(active.sum()),
                "medoids": sum(budgets),
                "dropped": int(small.sum()),
                "dropped_total": int(dropped.sum()),
                "training": int((weights > 0).sum()),
                "dropped_per_class": torch.bincount(
                    labels[dropped], minlength=len(budgets)
                ).tolist(),
            }
        )
        return weights, dropped

    def summary(self) -> dict[str, Any]:
        return {
            "selections": list(self.records),
            "dropped": self.records[-1]["dropped_total"] if self.records else 0,
        }

    def state_dict(self) -> dict[str, Any]:
        dropped = None if self.dropped is None else self.dropped.cpu()
        return super().state_dict() | {"dropped": dropped, "records": list(self.records)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        super().load_state_dict(state)
        self.dropped, self.records = state["dropped"], list(state["records"])


def build_epic(cfg: EpicConfig, seed: int) -> VictimRecipe:
    return Epic(cfg)
