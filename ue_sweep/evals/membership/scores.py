"""Per-example membership scores of a trained classifier, exact over the full set on every rank.

Each rank computes the logits of a contiguous slice of the examples (``shard_bounds``: no padding,
no duplicates) under every query view, the slices are gathered in order, and the scores are
computed in float64 from the gathered logits, so every rank holds the same scores whatever the
world size. Higher is "more likely a member" for every score:

- ``loss``: minus the cross-entropy of the true label (Yeom et al. 2018's loss threshold);
- ``true_class_posterior``: the softmax probability of the true label (a monotone function of
  the loss: the same ROC);
- ``max_posterior``: the largest softmax probability, whatever the label (ML-Leaks' threshold
  attack, Salem et al. 2019, adversary 3: needs no label, and differs from the loss on the
  examples the model gets wrong);
- ``logit_confidence``: LiRA's logit-scaled confidence ``log p_y - log(1 - p_y)`` (Carlini et al.
  2022), computed as ``z_y - logsumexp_{j != y} z_j`` so it stays finite when ``p_y`` rounds to 1.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from ue_sweep.models.classifiers import FeatureClassifier
from ue_sweep.runtime.distributed import Runtime
from ue_sweep.train.evaluate import shard_bounds

QUERY_BATCH = 512


@dataclass(frozen=True)
class View:
    """A deterministic query view: an optional horizontal flip, then a shift by (dy, dx) pixels
    with zero fill (the training augmentation's crop of a zero-padded image, at a fixed offset)."""

    flip: bool = False
    dy: int = 0
    dx: int = 0

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        if self.flip:
            x = x.flip(-1)
        if self.dy == 0 and self.dx == 0:
            return x
        h, w = x.shape[-2:]
        p = max(abs(self.dy), abs(self.dx))
        padded = F.pad(x, (p, p, p, p))
        top, left = p - self.dy, p - self.dx
        return padded[..., top : top + h, left : left + w]

    @property
    def name(self) -> str:
        return ("flip" if self.flip else "id") + (
            f"{self.dy:+d}{self.dx:+d}" if self.dy or self.dx else ""
        )


def query_views(count: int, shift: int, hflip: bool) -> list[View]:
    """The first ``count`` views of a fixed order: identity, its mirror (when the training
    augmentation flips), then shifts by ``shift`` pixels (the augmentation's crop padding) along
    each axis and diagonal, each with its mirror. Fewer exist when ``shift`` is 0 or there is no
    flip: the list stops there."""
    flips = (False, True) if hflip else (False,)
    offsets = [(0, 0)]
    if shift > 0:
        s = shift
        offsets += [(s, 0), (-s, 0), (0, s), (0, -s), (s, s), (-s, -s), (s, -s), (-s, s)]
    views = [View(f, dy, dx) for dy, dx in offsets for f in flips]
    return views[:count]


@torch.no_grad()
def view_logits(
    model: FeatureClassifier,
    images: torch.Tensor,
    views: Sequence[View],
    rt: Runtime,
    batch_size: int = QUERY_BATCH,
) -> torch.Tensor:
    """``[N, V, classes]`` logits of uint8 ``images`` under each view, in order, on every rank,
    in the model's parameter dtype (float32 for a victim); ``model`` is queried in eval mode,
    each rank its slice, then all slices are gathered."""
    was_training = model.training
    model.eval()
    dtype = next(model.parameters()).dtype
    lo, hi = shard_bounds(len(images), rt.rank, rt.world_size)
    # an empty slice (fewer images than ranks) still has the row shape the gather needs
    parts = [torch.empty(0, len(views), model.head.out_features, dtype=dtype, device=rt.device)]
    for start in range(lo, hi, batch_size):
        x = images[start : min(start + batch_size, hi)].to(rt.device).to(dtype).div_(255)
        per_view = []
        for view in views:
            with rt.autocast():
                logits, _ = model(view(x))
            per_view.append(logits.to(dtype))
        parts.append(torch.stack(per_view, 1))
    model.train(was_training)
    return rt.all_gather_rows(torch.cat(parts))


def _true_logit(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    index = labels.view(-1, *[1] * (logits.dim() - 1)).expand(*logits.shape[:-1], 1)
    return logits.gather(-1, index.to(logits.device)).squeeze(-1)


def loss_score(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Minus the cross-entropy of the true label, float64, one per example and view
    (``logits`` ``[N, ..., classes]``)."""
    z = logits.double()
    return _true_logit(z, labels) - torch.logsumexp(z, -1)


def true_class_posterior(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """The softmax probability of the true label, float64."""
    return loss_score(logits, labels).exp()


def max_posterior(logits: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
    """The largest softmax probability, float64 (``labels`` unused: the attack needs none)."""
    z = logits.double()
    return (z.max(-1).values - torch.logsumexp(z, -1)).exp()


def logit_confidence(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """``log p_y - log(1 - p_y)`` of the true label, float64, stable for ``p_y`` near 0 or 1."""
    z = logits.double()
    true = _true_logit(z, labels)
    others = z.scatter(
        -1,
        labels.view(-1, *[1] * (z.dim() - 1)).expand(*z.shape[:-1], 1).to(z.device),
        float("-inf"),
    )
    return true - torch.logsumexp(others, -1)


SCORES = {
    "loss": loss_score,
    "true_class_posterior": true_class_posterior,
    "max_posterior": max_posterior,
    "logit_confidence": logit_confidence,
}
