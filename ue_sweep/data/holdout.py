"""A seeded, class-stratified hold-out taken out of the training split before any stage runs.

Membership inference needs non-members: images from the training distribution that no victim
of the job saw. Reserving them from the loaded training split, before the surrogate, clusters,
generators or any victim run, makes them the same for every victim of a job, and the stage keys
(which hash the remaining training images) tell a job with a hold-out from one without.
"""

from __future__ import annotations

from dataclasses import replace

import torch

from ue_sweep.data.splits import ImageSplits
from ue_sweep.runtime.seeding import generator


def holdout_indices(labels: torch.Tensor, fraction: float, seed: int) -> torch.Tensor:
    """Sorted training indices of the hold-out: ``round(fraction * n_c)`` seeded picks of each
    class ``c``, leaving at least one image of every class in the training split."""
    labels = labels.cpu()
    picked = []
    for c in torch.unique(labels).tolist():
        members = torch.nonzero(labels == c).flatten()
        take = min(round(fraction * len(members)), len(members) - 1)
        order = torch.randperm(len(members), generator=generator(seed, "holdout", c))
        picked.append(members[order[:take]])
    return torch.cat(picked).sort().values


def reserve_holdout(data: ImageSplits, fraction: float, seed: int) -> ImageSplits:
    """``data`` with a hold-out of about ``fraction`` of each class moved out of the training
    split (the remaining images keep their order); ``fraction=0`` returns ``data``."""
    if fraction <= 0:
        return data
    held = holdout_indices(data.train_labels, fraction, seed).to(data.train_labels.device)
    keep = torch.ones(len(data.train_labels), dtype=torch.bool, device=held.device)
    keep[held] = False
    on_images = data.train_images.device
    return replace(
        data,
        train_images=data.train_images[keep.to(on_images)],
        train_labels=data.train_labels[keep],
        holdout_images=data.train_images[held.to(on_images)],
        holdout_labels=data.train_labels[held],
    )
