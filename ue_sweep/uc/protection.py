"""The protection a job evaluates: UC's noise, or one read from ``uc.source``."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import torch


@dataclass(frozen=True)
class Protection:
    """The UC protection under evaluation: one noise pattern per cluster and the protected set."""

    noise: torch.Tensor  # float [k, C, H, W] in [-eps, eps]
    cluster_ids: torch.Tensor  # int64 [N], on the training device
    eps: float
    images: torch.Tensor  # uint8 [N, C, H, W], the protected training set as published
    #: the generator bank's output before training (the `untrained` control)
    untrained: Callable[[], torch.Tensor]
    #: where the noise came from: "computed" or the `uc.source` it was read from
    source: str
    #: more tensors that go into noise.pt (cluster centres and targets)
    extra: dict[str, torch.Tensor] = field(default_factory=dict)
    #: the cluster of each of some new uint8 images (nearest centre of their surrogate
    #: features, as k-means assigned the training images): how a data owner would protect
    #: images the protection never saw; collective over ranks. None when the surrogate is
    #: not at hand (``uc.source``)
    assign: Callable[[torch.Tensor], torch.Tensor] | None = None
