"""k-means on surrogate features, and the cluster -> target-cluster assignment."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from ue_sweep.config import ClustersConfig
from ue_sweep.runtime.distributed import Runtime
from ue_sweep.runtime.seeding import derive_seed, generator
from ue_sweep.train.evaluate import shard_bounds
from ue_sweep.uc.kmeans import fit_sharded


@dataclass(frozen=True)
class Clusters:
    ids: torch.Tensor  # int64 [N]: cluster of each training image
    centers: torch.Tensor  # float32 [k, D]
    targets: torch.Tensor  # int64 [k]: generator i pushes its images toward centers[targets[i]]
    inertia: float

    @property
    def k(self) -> int:
        return int(self.centers.shape[0])

    @property
    def sizes(self) -> list[int]:
        return torch.bincount(self.ids.cpu(), minlength=self.k).tolist()

    def label_agreement(self, labels: torch.Tensor) -> float:
        """Normalised mutual information of clusters and classes: 1 when clusters are classes.

        UC needs no labels; this says how close its cluster-wise noise comes to class-wise noise.
        """
        from sklearn.metrics import normalized_mutual_info_score

        return float(normalized_mutual_info_score(labels.cpu().numpy(), self.ids.cpu().numpy()))

    def summary(self, labels: torch.Tensor) -> dict[str, object]:
        return {
            "k": self.k,
            "sizes": self.sizes,
            "targets": self.targets.tolist(),
            "inertia": self.inertia,
            "label_nmi": self.label_agreement(labels),
        }


def assign_targets(k: int, cfg: ClustersConfig, seed: int) -> torch.Tensor:
    """A permutation without fixed points: a cyclic shift or a seeded random derangement."""
    if cfg.target == "cyclic":
        return (torch.arange(k) + cfg.offset) % k
    g = generator(seed, "derangement")
    while True:  # rejection sampling: about e tries on average
        perm = torch.randperm(k, generator=g)
        if not bool((perm == torch.arange(k)).any()):
            return perm


def nearest_centers(features: torch.Tensor, centers: torch.Tensor) -> torch.Tensor:
    """The index of the nearest centre (Euclidean, as k-means assigns) of each feature row: the
    cluster, and so the noise, of an image that was not clustered (a hold-out image)."""
    return torch.cdist(features.float(), centers.to(features.device).float()).argmin(1)


def use_sharded(cfg: ClustersConfig, n: int) -> bool:
    """Whether ``n`` training images are clustered over the ranks (``uc/kmeans.py``)."""
    return cfg.backend == "sharded" or (cfg.backend == "auto" and n > cfg.sharded_above)


def cluster_features(
    features: torch.Tensor, cfg: ClustersConfig, seed: int, rt: Runtime, *, local: bool = False
) -> Clusters:
    """k-means of the training features; every rank gets the same clusters.

    ``features`` are all rows, or with ``local`` this rank's rows (``shard_bounds``, rank order).
    """
    n = int(rt.all_reduce_sum(torch.tensor([len(features)])).item()) if local else len(features)
    if use_sharded(cfg, n):
        if not local:
            features = features[slice(*shard_bounds(n, rt.rank, rt.world_size))]
        fit = fit_sharded(features, cfg.k, cfg.n_init, cfg.max_iter, seed, rt)
        return Clusters(
            ids=rt.all_gather_rows(fit.ids),
            centers=fit.centers,
            targets=assign_targets(cfg.k, cfg, seed).to(rt.device),
            inertia=fit.inertia,
        )
    if local:
        features = rt.all_gather_rows(features)
    return _sklearn_on_rank0(features, cfg, seed, rt)


def _sklearn_on_rank0(
    features: torch.Tensor, cfg: ClustersConfig, seed: int, rt: Runtime
) -> Clusters:
    """Fit k-means on rank 0 and broadcast the result, so every rank holds the same clusters."""
    n, dim = features.shape
    ids = torch.zeros(n, dtype=torch.long)
    centers = torch.zeros(cfg.k, dim, dtype=torch.float32)
    inertia = torch.zeros(1, dtype=torch.float64)
    if rt.is_main:
        # Imported on use: only rank 0 fits k-means, and scikit-learn is slow to import.
        from sklearn.cluster import KMeans

        km = KMeans(
            n_clusters=cfg.k,
            n_init=cfg.n_init,
            max_iter=cfg.max_iter,
            random_state=derive_seed(seed, "kmeans") % 2**32,
        )
        labels = km.fit_predict(features.cpu().numpy().astype(np.float32))
        ids = torch.from_numpy(labels.astype(np.int64))
        centers = torch.from_numpy(km.cluster_centers_.astype(np.float32))
        inertia = torch.tensor([km.inertia_], dtype=torch.float64)
    ids, centers, inertia = (rt.broadcast(t) for t in (ids, centers, inertia))
    return Clusters(
        ids=ids,
        centers=centers,
        targets=assign_targets(cfg.k, cfg, seed).to(rt.device),
        inertia=float(inertia.item()),
    )
