"""The digits demo's nets and data, sized for the benchmarks.

Timing does not depend on what the surrogate learned or how k-means split the data, so the
surrogate is the demo's small CNN at its initial weights and the clusters are a seeded random
assignment of roughly equal sizes: no fitting before a measurement.
"""

from __future__ import annotations

from dataclasses import replace

import torch

from ue_sweep.config import AugmentConfig, DatasetConfig, GeneratorConfig, ModelSpec, PathsConfig
from ue_sweep.data import digits
from ue_sweep.models.classifiers import FeatureClassifier, build_classifier
from ue_sweep.models.generators import GeneratorBank
from ue_sweep.uc.clustering import Clusters

IMAGE_SIZE = 16
BATCH = 64
# The demo's augmentation (conf/dataset/digits.yaml) and generator (conf/generator/small.yaml),
# with the reference UC code's noise order and no per-epoch monitor passes.
AUGMENT = AugmentConfig(crop_padding=2, hflip=False)
GENERATOR = GeneratorConfig(
    eps=20 / 255,
    scope="all",
    noise_order="after_augment",
    epochs=1,
    lr=0.002,
    ngf=8,
    n_blocks=2,
    monitor_images=0,
)


def digits_images(count: int | None = None) -> torch.Tensor:
    """The demo's uint8 training images ``[N, 1, 16, 16]`` (1,347), or the first ``count``."""
    cfg = DatasetConfig(name="digits", image_size=IMAGE_SIZE, test_fraction=0.25, split_seed=0)
    images = digits.load(cfg, PathsConfig()).train_images
    return images if count is None else images[:count]


def surrogate() -> FeatureClassifier:
    """The demo's frozen small CNN (width 16)."""
    torch.manual_seed(0)
    model = build_classifier(ModelSpec(width=16), in_channels=1, num_classes=10, image_size=16)
    return model.eval().requires_grad_(False)


def clusters(n: int, k: int, feature_dim: int, seed: int = 0) -> Clusters:
    """A seeded, balanced assignment of ``n`` images to ``k`` clusters, cyclic targets."""
    g = torch.Generator().manual_seed(seed)
    ids = torch.randperm(n, generator=g) % k
    centers = torch.randn(k, feature_dim, generator=g)
    return Clusters(ids=ids, centers=centers, targets=torch.roll(torch.arange(k), -1), inertia=0.0)


def generator_config(scope: str, epochs: int = 1) -> GeneratorConfig:
    return replace(GENERATOR, scope=scope, epochs=epochs)


def bank(k: int, cfg: GeneratorConfig = GENERATOR, seed: int = 0) -> GeneratorBank:
    """The demo's generator bank for ``k`` clusters, the same weights on every call."""
    torch.manual_seed(seed)
    return GeneratorBank(
        k,
        1,
        IMAGE_SIZE,
        cfg.eps,
        ngf=cfg.ngf,
        n_blocks=cfg.n_blocks,
        n_downsampling=cfg.n_downsampling,
        output=cfg.output,
        seed=seed,
    )
