"""Rank bodies for the sharded k-means and shard-writing tests: importable, so spawned ranks can
unpickle them."""

from __future__ import annotations

from pathlib import Path

import torch

from ue_sweep.config import ClustersConfig, TrainerConfig
from ue_sweep.runtime.distributed import runtime
from ue_sweep.runtime.env import DistEnv
from ue_sweep.train.evaluate import shard_bounds
from ue_sweep.uc.clustering import cluster_features
from ue_sweep.uc.shards import write_shards

CPU = TrainerConfig(accelerator="cpu", timeout_s=60, threads=1)


def digits_features() -> torch.Tensor:
    """scikit-learn's 8x8 digits as 64-dim float32 features (1,797 rows)."""
    from sklearn.datasets import load_digits

    return torch.from_numpy(load_digits().data).float()


def seeded_images(n: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(3)
    images = torch.randint(0, 256, (n, 3, 5, 4), generator=g, dtype=torch.uint8)
    return images, torch.randint(0, 7, (n,), generator=g)


def sharded_kmeans(env: DistEnv, out: str, n_init: int) -> None:
    """Each rank clusters only its rows of the digits features (k=10)."""
    with runtime(env, CPU) as rt:
        features = digits_features()
        local = features[slice(*shard_bounds(len(features), rt.rank, rt.world_size))]
        cfg = ClustersConfig(k=10, n_init=n_init, backend="sharded")
        clusters = cluster_features(local, cfg, 0, rt, local=True)
        if rt.is_main:
            torch.save(
                {"ids": clusters.ids, "centers": clusters.centers, "inertia": clusters.inertia},
                out,
            )


def write_protected(env: DistEnv, out: str, n: int) -> None:
    with runtime(env, CPU) as rt:
        images, labels = seeded_images(n)
        write_shards(Path(out), images, labels, [str(c) for c in range(7)], rt)
