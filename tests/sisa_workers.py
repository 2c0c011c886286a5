"""SISA ensembles on a toy pool, for tests/test_sisa.py: importable, so spawned ranks (the 1 vs 2
rank test, as ``tests/dist_workers.py`` does for the other stages) can unpickle the rank body."""

from __future__ import annotations

from pathlib import Path

import torch

from ue_sweep.config import AugmentConfig, DatasetConfig, RootConfig, TrainerConfig, VictimConfig
from ue_sweep.evals.unlearning.ensemble import SisaTrainer
from ue_sweep.evals.unlearning.partition import partition, slice_epochs
from ue_sweep.models.classifiers import build_classifier
from ue_sweep.runtime.distributed import Runtime, runtime
from ue_sweep.runtime.env import DistEnv
from ue_sweep.runtime.progress import Progress
from ue_sweep.store.artifacts import ArtifactStore

CPU = TrainerConfig(accelerator="cpu", timeout_s=60, threads=1)
N, CLASSES, SHARDS, SLICES, BATCH = 60, 3, 3, 3, 8


def toy_pool(n: int = N) -> tuple[torch.Tensor, torch.Tensor]:
    """8x8 uint8 images of 3 classes around 3 prototypes: learnable in a few steps."""
    g = torch.Generator().manual_seed(0)
    labels = torch.arange(n) % CLASSES
    prototypes = torch.rand(CLASSES, 1, 8, 8, generator=g)
    images = prototypes[labels] + 0.2 * torch.randn(n, 1, 8, 8, generator=g)
    return images.clamp(0, 1).mul(255).round().to(torch.uint8), labels


def toy_cfg(epochs: int = 2) -> RootConfig:
    return RootConfig(
        seed=3,
        dataset=DatasetConfig(augment=AugmentConfig(crop_padding=1, hflip=False)),
        victim=VictimConfig(width=4, epochs=epochs, batch_size=BATCH, lr=0.05),
    )


def trainer(rt: Runtime, store: Path | None = None, epochs: int = 2) -> SisaTrainer:
    cfg = toy_cfg(epochs)
    images, labels = toy_pool()

    def new_model():
        return build_classifier(cfg.victim, in_channels=1, num_classes=CLASSES, image_size=8)

    return SisaTrainer(
        cfg=cfg,
        rt=rt,
        images=images,
        labels=labels,
        images_digest="toy-pool",
        data_identity={"dataset": "toy"},
        test_images=images[:12],
        test_labels=labels[:12],
        num_classes=CLASSES,
        new_model=new_model,
        epochs=slice_epochs(epochs, SLICES),
        progress=Progress("none"),
        store=None if store is None else ArtifactStore(store),
    )


def fit_before_and_after(env: DistEnv, out: str, removed: list[int]) -> None:
    """Fit, serve ``removed``, fit again; save both fits' posteriors and records (rank 0)."""
    with runtime(env, CPU) as rt:
        sisa = trainer(rt)
        part = partition(N, SHARDS, SLICES, sisa.cfg.seed)
        gone = torch.tensor(removed)
        queries = toy_pool()[0]
        before = sisa.fit(part, queries, gone)
        after = sisa.fit(part.without(gone), queries, gone)
        if rt.is_main:
            torch.save(
                {
                    "before": before.posteriors,
                    "after": after.posteriors,
                    "records": [before.shards, after.shards],
                },
                out,
            )
