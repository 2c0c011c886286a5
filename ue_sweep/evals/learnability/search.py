"""The SAL search of one weight tensor: how far the loss moves inside a small relative ball.

SAL(l, t) is the larger-magnitude of ``s_max = max_v L(theta + v) - L0`` and
``s_min = L0 - min_v L(theta + v)`` over ``||v||_F <= eps * ||theta||_F``, every other parameter
frozen. Both extremes are approximated by projected SGD on two copies of the weight (descent and
ascent), ``steps`` repeats of one pass over the data each followed by a loss evaluation, keeping
the best point seen. The unperturbed point (v = 0) is in the ball, so both extremes start at
L0 and both sides are >= 0. L0 is the loss of theta on the same data (``l0: eval``) or the
epoch's running training loss (``l0: running``, as the authors' code): then a side can be the
gap between that running mean and the eval-mode loss rather than a move inside the ball.

``views`` (``search_data: augmented``, the authors' code, which searches on the augmented
training loader): every SGD pass and every loss evaluation sees a fresh draw of the victim's
training augmentation (draw k of a pass or evaluation is ``views(images, rows, k)``), so the
extremes are those of the loss the victim trained on, not of the fixed un-augmented images.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch

#: ``loss(weight, images, labels)``: the batch's mean loss with ``weight`` in place of the layer's
BatchLoss = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]
#: ``views(images, rows, draw)``: draw ``draw`` of the augmentation of ``images`` (the rows
#: ``rows`` of the searched set)
Views = Callable[[torch.Tensor, torch.Tensor, int], torch.Tensor]


def _plain(images: torch.Tensor, rows: torch.Tensor, draw: int) -> torch.Tensor:
    return images


@dataclass(frozen=True)
class SearchSettings:
    eps: float
    lr: float
    steps: int
    #: the SGD passes' minibatch (the maths depend on it)
    batch_size: int
    #: project onto the ball after every SGD ``step`` or after each ``pass`` (the authors')
    projection: str = "pass"
    #: rows per forward pass of the loss evaluations (memory only)
    eval_batch: int = 512


@dataclass(frozen=True)
class Sharpness:
    """One layer's search: SAL and what it came from."""

    sal: float
    s_max: float
    s_min: float
    l0: float
    min_loss: float
    max_loss: float
    #: ||v||_F / ||theta||_F of the points that gave ``min_loss`` and ``max_loss`` (0: theta)
    ratio_min: float
    ratio_max: float

    def row(self) -> list[float]:
        return [
            self.sal,
            self.s_max,
            self.s_min,
            self.l0,
            self.min_loss,
            self.max_loss,
            self.ratio_min,
            self.ratio_max,
        ]


def signed_sharpness(s_max: float, s_min: float) -> float:
    """The side that moved the loss more, with its sign; a tie goes to ``s_min`` (as the
    authors' code)."""
    return s_max if abs(s_max) > abs(s_min) else s_min


def project(weight: torch.Tensor, theta: torch.Tensor, eps: float) -> torch.Tensor:
    """``weight`` moved back into ``||weight - theta||_F <= eps * ||theta||_F`` (radially)."""
    v = weight - theta
    norm, radius = float(torch.linalg.vector_norm(v)), eps * float(torch.linalg.vector_norm(theta))
    if norm <= radius:
        return weight
    # The factor rounds down so that the rounded result stays inside the ball.
    return theta + v * (radius / norm * (1 - 4 * torch.finfo(v.dtype).eps))


def ratio(weight: torch.Tensor, theta: torch.Tensor) -> float:
    norm = float(torch.linalg.vector_norm(theta))
    return float(torch.linalg.vector_norm(weight - theta)) / norm if norm > 0 else 0.0


def mean_loss(
    loss: BatchLoss,
    weight: torch.Tensor,
    images: torch.Tensor,
    labels: torch.Tensor,
    batch: int,
    views: Views = _plain,
    draw: int = 0,
) -> float:
    """The mean loss over all ``images`` (batches weighted by size, summed in float64), seen
    through draw ``draw`` of ``views``."""
    total = 0.0
    with torch.no_grad():
        for start in range(0, len(images), batch):
            rows = torch.arange(start, min(start + batch, len(images)))
            x = views(images[start : start + batch], rows, draw)
            total += float(loss(weight, x, labels[start : start + batch]).double()) * len(x)
    return total / len(images)


@dataclass(frozen=True)
class _Samples:
    """What a search pass sees: the images, their labels and the views that augment them."""

    images: torch.Tensor
    labels: torch.Tensor
    views: Views = _plain


def _sgd_pass(
    loss: BatchLoss,
    weight: torch.Tensor,
    theta: torch.Tensor,
    samples: _Samples,
    settings: SearchSettings,
    direction: float,
    generator: torch.Generator,
    draw: int = 0,
) -> torch.Tensor:
    """One shuffled pass of plain SGD on ``direction * loss`` (-1 descends, +1 ascends), in
    batches of nearly equal size (no sample dropped, no tiny last batch)."""
    images, labels = samples.images, samples.labels
    n = len(images)
    order = torch.randperm(n, generator=generator).to(images.device)
    for rows in torch.tensor_split(order, max(1, math.ceil(n / settings.batch_size))):
        w = weight.detach().requires_grad_(True)
        x = samples.views(images[rows], rows.cpu(), draw)
        (grad,) = torch.autograd.grad(loss(w, x, labels[rows]), w)
        weight = (w + direction * settings.lr * grad).detach()
        if settings.projection == "step":
            weight = project(weight, theta, settings.eps)
    return project(weight, theta, settings.eps)


def search(
    loss: BatchLoss,
    theta: torch.Tensor,
    images: torch.Tensor,
    labels: torch.Tensor,
    settings: SearchSettings,
    generator: torch.Generator,
    l0: float | None = None,
    views: Views = _plain,
) -> Sharpness:
    """SAL of the weight ``theta`` under ``loss`` on ``images``; ``l0`` defaults to the loss of
    ``theta`` on them. ``generator`` orders the SGD passes (descent, then ascent, per step);
    ``views`` augments every pass and evaluation (draw 0: L0, then 1, 2, ... in order)."""
    theta = theta.detach()
    if l0 is None:
        l0 = mean_loss(loss, theta, images, labels, settings.eval_batch, views, 0)
    low, high = theta.clone(), theta.clone()
    min_loss = max_loss = l0
    ratio_min = ratio_max = 0.0
    batch = settings.eval_batch
    samples = _Samples(images, labels, views)
    for step in range(settings.steps):
        draw = 1 + 4 * step  # descent pass, ascent pass, their two evaluations
        low = _sgd_pass(loss, low, theta, samples, settings, -1.0, generator, draw)
        high = _sgd_pass(loss, high, theta, samples, settings, 1.0, generator, draw + 1)
        if (value := mean_loss(loss, low, images, labels, batch, views, draw + 2)) < min_loss:
            min_loss, ratio_min = value, ratio(low, theta)
        if (value := mean_loss(loss, high, images, labels, batch, views, draw + 3)) > max_loss:
            max_loss, ratio_max = value, ratio(high, theta)
    s_max, s_min = max_loss - l0, l0 - min_loss
    return Sharpness(
        signed_sharpness(s_max, s_min),
        s_max,
        s_min,
        l0,
        min_loss,
        max_loss,
        ratio_min,
        ratio_max,
    )
