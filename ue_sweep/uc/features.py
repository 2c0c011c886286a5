"""Surrogate features of every training image, computed in shards and gathered on every rank."""

from __future__ import annotations

import torch

from ue_sweep.models.classifiers import FeatureClassifier
from ue_sweep.runtime.distributed import Runtime
from ue_sweep.train.evaluate import shard_bounds


@torch.no_grad()
def extract_features(
    surrogate: FeatureClassifier,
    images: torch.Tensor,
    batch_size: int,
    rt: Runtime,
    *,
    gather: bool = True,
) -> torch.Tensor:
    """float32 ``[N, D]`` features in dataset order, identical on every rank; without
    ``gather`` only this rank's rows (``shard_bounds``), for k-means sharded over the ranks."""
    lo, hi = shard_bounds(len(images), rt.rank, rt.world_size)
    parts = [torch.empty(0, surrogate.feature_dim, device=rt.device)]
    for start in range(lo, hi, batch_size):
        x = images[start : min(start + batch_size, hi)].to(rt.device).float().div_(255)
        with rt.autocast():
            _, features = surrogate(x)
        parts.append(features.float())
    local = torch.cat(parts)
    return rt.all_gather_rows(local) if gather else local
