"""The images an attack queries: members and non-members, clean or as the victim saw them.

A victim trained on perturbed images (UC-protected, a control) saw its members perturbed, while
the hold-out images are clean: comparing the two would measure the perturbation (a distribution
shift), not membership. So each query set treats both sides alike:

- ``clean``: the members' clean originals and the clean hold-out images (the data owner's
  question: does the model give away that *my* images were used?);
- ``published``: the members as the victim saw them and the non-members perturbed the same way,
  each hold-out image with the noise of its nearest cluster (``Protection.assign``), as a data
  owner would protect a new image.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ue_sweep.data.splits import ImageSplits
from ue_sweep.evals.membership.pairs import MembershipSplit
from ue_sweep.uc.noise import apply_cluster_noise

CLEAN = "clean"


@dataclass(frozen=True)
class QuerySet:
    """Members then non-members of a :class:`MembershipSplit`, as one condition shows them."""

    #: ``clean``, or the noise condition (``protected``, a control) both sides carry
    name: str
    images: torch.Tensor  # uint8 [2m, C, H, W]
    labels: torch.Tensor  # int64 [2m]


def clean_queries(data: ImageSplits, split: MembershipSplit) -> QuerySet:
    assert data.holdout_images is not None and data.holdout_labels is not None
    return QuerySet(
        CLEAN,
        torch.cat(
            [
                data.train_images[split.members.to(data.train_images.device)],
                data.holdout_images[split.nonmembers.to(data.holdout_images.device)].to(
                    data.train_images.device
                ),
            ]
        ),
        _labels(data, split),
    )


def published_queries(
    name: str,
    published: torch.Tensor,
    noise: torch.Tensor,
    holdout_clusters: torch.Tensor,
    data: ImageSplits,
    split: MembershipSplit,
) -> QuerySet:
    """Members from ``published`` (the training split with condition ``name``'s noise, as the
    victim trained on it), non-members with the same per-cluster ``noise`` of their cluster
    ``holdout_clusters`` (one per non-member of ``split``)."""
    assert data.holdout_images is not None
    held = data.holdout_images[split.nonmembers.to(data.holdout_images.device)]
    perturbed = apply_cluster_noise(held, holdout_clusters, noise)
    members = published[split.members.to(published.device)]
    return QuerySet(name, torch.cat([members, perturbed.to(members.device)]), _labels(data, split))


def _labels(data: ImageSplits, split: MembershipSplit) -> torch.Tensor:
    assert data.holdout_labels is not None
    return torch.cat(
        [
            data.train_labels[split.members.to(data.train_labels.device)],
            data.holdout_labels[split.nonmembers.to(data.holdout_labels.device)],
        ]
    ).cpu()
