"""scikit-learn's bundled handwritten digits: the embedded default dataset, no download needed.

1,797 real 8x8 grayscale scans (UCI ML hand-written digits), upsampled to the configured size,
with a stratified, seeded hold-out test split since the set has no official one.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split

from ue_sweep.config import DatasetConfig, PathsConfig
from ue_sweep.data.splits import ImageSplits


def to_uint8(images: torch.Tensor) -> torch.Tensor:
    """Float images in [0, 1] to uint8 with rounding."""
    return images.clamp(0, 1).mul(255).round().to(torch.uint8)


def check(cfg: DatasetConfig, paths: PathsConfig) -> None:
    """Nothing to check: the images ship inside scikit-learn."""


def fetch(cfg: DatasetConfig, paths: PathsConfig) -> None:
    """Nothing to fetch: the images ship inside scikit-learn."""


def load(cfg: DatasetConfig, paths: PathsConfig) -> ImageSplits:
    del paths  # shipped inside scikit-learn
    bunch = load_digits()
    labels = np.asarray(bunch.target, dtype=np.int64)
    # Pixel values are counts 0..16 of set bits in 4x4 blocks of the original 32x32 bitmaps.
    images = torch.from_numpy(bunch.images.astype(np.float32) / 16.0).unsqueeze(1)
    images = F.interpolate(images, size=cfg.image_size, mode="bilinear", align_corners=False)
    images = to_uint8(images)
    train_idx, test_idx = train_test_split(
        np.arange(len(labels)),
        test_size=cfg.test_fraction,
        stratify=labels,
        random_state=cfg.split_seed,
    )
    targets = torch.from_numpy(labels)
    return ImageSplits(
        name="digits",
        train_images=images[train_idx],
        train_labels=targets[train_idx],
        test_images=images[test_idx],
        test_labels=targets[test_idx],
        classes=tuple(str(d) for d in range(10)),
        test_split=f"stratified {cfg.test_fraction:g} hold-out (split_seed={cfg.split_seed})",
    )
