"""Long-tailed training subsets (``dataset.imbalance``): the LDAM-DRW profiles on any dataset.

Cao et al. (NeurIPS 2019, kaidic/LDAM-DRW ``imbalance_cifar.py``) keep, of a balanced set with
n_max images per class, int(n_max * (1/rho)^(c/(C-1))) images of class c (``exponential``), or
n_max for the first C//2 classes and int(n_max / rho) for the rest (``step``; LDAM's code drops
the last class of an odd C, here it joins the tail). Class 0 is the head, as there.

Datasets that are not balanced (MedMNIST, a random hold-out split) get the same profile exactly:
n_max is the largest integer with n_max * factor_c <= available_c for every class c (before
rounding down, so largest / smallest stays rho), which on a balanced set is its class size,
LDAM's n_max. Which images a class keeps is a seeded
draw without replacement (``dataset.split_seed``); the kept images stay in dataset order. The
test set is left as released.
"""

from __future__ import annotations

import math
from dataclasses import replace

import torch

from ue_sweep.config import ImbalanceConfig
from ue_sweep.data.splits import ImageSplits
from ue_sweep.errors import ConfigError
from ue_sweep.runtime.seeding import generator


def profile_factors(profile: str, ratio: float, num_classes: int) -> list[float]:
    """Each class's share of n_max under ``profile`` (1.0 for the head classes)."""
    if profile == "none" or num_classes == 1:
        return [1.0] * num_classes
    if profile == "exponential":
        return [(1.0 / ratio) ** (c / (num_classes - 1.0)) for c in range(num_classes)]
    if profile == "step":
        head = num_classes // 2
        return [1.0] * head + [1.0 / ratio] * (num_classes - head)
    raise ValueError(f"unknown imbalance profile {profile!r}")


def imbalanced_counts(available: list[int], profile: str, ratio: float) -> list[int]:
    """Images kept per class: int(n_max * factor_c), n_max the largest integer with
    n_max * factor_c <= available_c for every class."""
    factors = profile_factors(profile, ratio, len(available))
    if profile == "none":
        return list(available)
    n_max = min(math.floor(a / f) for a, f in zip(available, factors, strict=True))
    # floor(a / f) may round up past what int(n_max * f) <= a allows: step down until it fits.
    while n_max > 0 and any(int(n_max * f) > a for a, f in zip(available, factors, strict=True)):
        n_max -= 1
    return [int(n_max * f) for f in factors]


def apply_imbalance(data: ImageSplits, cfg: ImbalanceConfig, seed: int) -> ImageSplits:
    """``data`` with its training split reduced to the profile's counts (the test set unchanged)."""
    if cfg.profile == "none":
        return data
    labels = data.train_labels.cpu()
    available = torch.bincount(labels, minlength=data.num_classes).tolist()
    counts = imbalanced_counts(available, cfg.profile, cfg.ratio)
    if min(counts) < 1:
        raise ConfigError(
            "dataset.imbalance.ratio",
            cfg.ratio,
            f"a ratio that leaves every class of {data.name} an image (class sizes "
            f"{available} would keep {counts})",
        )
    g = generator(seed, "imbalance", cfg.profile, cfg.ratio)
    kept = []
    for c, n in enumerate(counts):
        members = torch.nonzero(labels == c).flatten()
        kept.append(members[torch.randperm(len(members), generator=g)[:n]])
    index = torch.cat(kept).sort().values
    return replace(
        data,
        train_images=data.train_images[index.to(data.train_images.device)],
        train_labels=data.train_labels[index.to(data.train_labels.device)],
    )
