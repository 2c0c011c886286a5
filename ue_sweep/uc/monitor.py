"""What shows that the generator stage really optimised: measured on the noise as published.

After every epoch (and once before the first) the current noise is applied to a fixed, seeded
subset of the training images exactly as the protected set will be (quantised to uint8, no
augmentation), and the frozen surrogate looks at the result:

- ``target_hit_rate``: share of protected images whose features lie nearest (Euclidean, as
  k-means assigns) to their cluster's *target* centre: the goal of UC's loss;
- ``own_center_rate``: share still nearest to their own cluster's centre;
- ``surrogate_accuracy``: share the surrogate still classifies correctly (labels are read for
  this diagnostic only; the generators never see them);
- ``saturated_fraction``: share of noise pixels with ``|delta| >= 0.99 eps``. Under the
  reference clamp such pixels pass no gradient, so a fraction near 1 means training stalled.
"""

from __future__ import annotations

import torch

from ue_sweep.models.classifiers import FeatureClassifier
from ue_sweep.runtime.distributed import Runtime
from ue_sweep.runtime.seeding import generator
from ue_sweep.train.evaluate import shard_bounds
from ue_sweep.uc.clustering import Clusters
from ue_sweep.uc.noise import apply_cluster_noise

SATURATION = 0.99
_BATCH = 512


def saturated_fraction(noise: torch.Tensor, eps: float) -> float:
    return float((noise.abs() >= SATURATION * eps).float().mean())


class NoiseMonitor:
    """Diagnostics of a noise tensor on ``count`` training images, sharded over ranks."""

    def __init__(
        self,
        surrogate: FeatureClassifier,
        train_images: torch.Tensor,
        train_labels: torch.Tensor,
        clusters: Clusters,
        eps: float,
        count: int,
        seed: int,
        rt: Runtime,
    ) -> None:
        n = len(train_images)
        subset = torch.randperm(n, generator=generator(seed, "noise-monitor"))[: min(count, n)]
        subset = subset.sort().values
        lo, hi = shard_bounds(len(subset), rt.rank, rt.world_size)
        mine = subset[lo:hi]
        self.surrogate, self.clusters, self.eps, self.rt = surrogate, clusters, eps, rt
        self.images = train_images[mine.to(train_images.device)]
        self.labels = train_labels[mine.to(train_labels.device)].to(rt.device)
        self.ids = clusters.ids[mine.to(clusters.ids.device)].to(rt.device)
        self.count = len(subset)

    @torch.no_grad()
    def measure(self, noise: torch.Tensor) -> dict[str, float]:
        out = {"saturated_fraction": saturated_fraction(noise, self.eps)}
        if self.count == 0:
            return out
        centers = self.clusters.centers.to(self.rt.device)
        targets = self.clusters.targets.to(self.rt.device)[self.ids]
        protected = apply_cluster_noise(self.images, self.ids.to(self.images.device), noise)
        hits = torch.zeros(3, dtype=torch.float64, device=self.rt.device)
        for start in range(0, len(protected), _BATCH):
            sl = slice(start, start + _BATCH)
            x = protected[sl].to(self.rt.device).float().div_(255)
            with self.rt.autocast():
                logits, features = self.surrogate(x)
            nearest = torch.cdist(features.float(), centers).argmin(1)
            hits += torch.stack(
                [
                    (nearest == targets[sl]).sum(),
                    (nearest == self.ids[sl]).sum(),
                    (logits.argmax(1) == self.labels[sl]).sum(),
                ]
            ).double()
        target, own, correct = (self.rt.all_reduce_sum(hits) / self.count).tolist()
        return out | {
            "target_hit_rate": target,
            "own_center_rate": own,
            "surrogate_accuracy": correct,
        }

    @torch.no_grad()
    def hit_rates(self, noise: torch.Tensor) -> dict[str, object]:
        """Target hit rate overall and per cluster (None for a cluster without monitored
        images): for the job's final diagnostics, not every epoch."""
        k = self.clusters.k
        if self.count == 0:
            return {"overall": None, "per_cluster": None}
        centers = self.clusters.centers.to(self.rt.device)
        targets = self.clusters.targets.to(self.rt.device)[self.ids]
        protected = apply_cluster_noise(self.images, self.ids.to(self.images.device), noise)
        sums = torch.zeros(2, k, dtype=torch.float64, device=self.rt.device)
        for start in range(0, len(protected), _BATCH):
            sl = slice(start, start + _BATCH)
            x = protected[sl].to(self.rt.device).float().div_(255)
            with self.rt.autocast():
                _, features = self.surrogate(x)
            hit = (torch.cdist(features.float(), centers).argmin(1) == targets[sl]).double()
            sums[0].index_add_(0, self.ids[sl], hit)
            sums[1].index_add_(0, self.ids[sl], torch.ones_like(hit))
        hits, counts = self.rt.all_reduce_sum(sums)
        per = [float(h / c) if c > 0 else None for h, c in zip(hits, counts, strict=True)]
        return {"overall": float(hits.sum() / counts.sum()), "per_cluster": per}
