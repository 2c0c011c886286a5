"""SAL of every (layer, epoch) of one victim, the pairs spread over the ranks.

Pairs are dealt round-robin (epoch-major, so each rank gets every layer depth and the work
evens out); each pair's search is seeded by its (layer, epoch) alone, so its numbers do not
depend on which rank runs it, and the rows are all-gathered and put back in order: 1 rank and N
ranks give the same table. The seed does not name the victim: every victim's search of a layer
and epoch takes the same minibatch orders (common random numbers, so conditions differ by their
weights and images only).
"""

from __future__ import annotations

import fnmatch
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ue_sweep.config import AugmentConfig
from ue_sweep.data.batches import Augmenter
from ue_sweep.evals.learnability.search import (
    BatchLoss,
    SearchSettings,
    Sharpness,
    Views,
    mean_loss,
    search,
)
from ue_sweep.runtime.distributed import Runtime
from ue_sweep.runtime.progress import Progress
from ue_sweep.runtime.seeding import derive_seed, generator
from ue_sweep.train.recipes import upcast

#: what one searched pair records, after its index (``Sharpness.row``)
COLUMNS = ("sal", "s_max", "s_min", "l0", "min_loss", "max_loss", "ratio_min", "ratio_max")


def layer_names(model: nn.Module, pattern: str = "all") -> list[str]:
    """Modules whose weight SAL perturbs: every Conv2d and Linear (biases and norm layers are
    not), in model order, or those whose name matches the glob ``pattern``."""
    return [
        name
        for name, module in model.named_modules()
        if isinstance(module, nn.Conv2d | nn.Linear)
        and (pattern == "all" or fnmatch.fnmatchcase(name, pattern))
    ]


def subset(n: int, fraction: float, seed: int) -> torch.Tensor:
    """A fixed, seeded, sorted choice of ``round(n * fraction)`` (at least 1) of ``n`` indices."""
    size = max(1, min(n, round(n * fraction)))
    return torch.randperm(n, generator=generator(seed, "learnability-subset"))[:size].sort().values


def classifier_loss(model: nn.Module, layer: str, rt: Runtime) -> BatchLoss:
    """Mean cross-entropy of ``model`` (eval mode, a FeatureClassifier) with ``weight`` as the
    weight of module ``layer``; every other tensor is the model's own."""
    name = f"{layer}.weight"

    def loss(weight: torch.Tensor, images: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        with rt.autocast():
            logits, _ = torch.func.functional_call(model, {name: weight}, (images,))
        return F.cross_entropy(upcast(logits), labels)

    return loss


def augmented_views(augment: AugmentConfig, n: int, seed: int) -> Views:
    """Draws of the victim's training augmentation (crop, flip) of a set of ``n`` images, each
    draw seeded by (``seed``, draw) as a training epoch is."""
    augmenter = Augmenter(augment, n, seed)
    current = [-1]

    def views(images: torch.Tensor, rows: torch.Tensor, draw: int) -> torch.Tensor:
        if draw != current[0]:
            augmenter.set_epoch(draw)
            current[0] = draw
        return augmenter(images, rows)

    return views


@dataclass(frozen=True)
class SalRun:
    """How one victim's table is searched, besides its model, images and settings."""

    #: seeds each pair's minibatch orders and augmentation draws (with its layer and epoch)
    seed: int
    #: L0 per epoch instead of the loss of the snapshot on the images
    running_l0: Mapping[int, float] | None = None
    progress: Progress | None = None
    name: str = "learnability"
    #: search on draws of this training augmentation, else on the images as they are
    augment: AugmentConfig | None = None


@dataclass
class _PairSearch:
    """The search of one (layer, epoch) pair after another, on one rank."""

    rt: Runtime
    model: nn.Module
    snapshots: Mapping[int, Mapping[str, torch.Tensor]]
    images: torch.Tensor
    labels: torch.Tensor
    settings: SearchSettings
    run: SalRun
    loaded: int | None = None
    #: the loss of each snapshot on the images, computed once per epoch
    eval_l0: dict[int, float] = field(default_factory=dict)

    def row(self, layer: str, epoch: int) -> list[float]:
        """The pair's :meth:`Sharpness.row`."""
        run, images, labels, settings = self.run, self.images, self.labels, self.settings
        if self.loaded != epoch:
            self.model.load_state_dict(self.snapshots[epoch])
            self.loaded = epoch
        loss = classifier_loss(self.model, layer, self.rt)
        theta = self.model.get_parameter(f"{layer}.weight").detach().clone()
        views = None
        if run.augment is not None:
            views = augmented_views(
                run.augment, len(images), derive_seed(run.seed, "sal-augment", layer, epoch)
            )
        l0: float | None
        if run.running_l0 is not None:
            l0 = run.running_l0[epoch]
        elif views is not None:
            l0 = None  # the loss of this pair's first draw (search computes it)
        else:
            if epoch not in self.eval_l0:
                self.eval_l0[epoch] = mean_loss(loss, theta, images, labels, settings.eval_batch)
            l0 = self.eval_l0[epoch]
        order = generator(run.seed, "sal", layer, epoch)
        found: Sharpness = (
            search(loss, theta, images, labels, settings, order, l0)
            if views is None
            else search(loss, theta, images, labels, settings, order, l0, views)
        )
        return found.row()


def sal_table(
    rt: Runtime,
    model: nn.Module,
    snapshots: Mapping[int, Mapping[str, torch.Tensor]],
    images: torch.Tensor,
    labels: torch.Tensor,
    layers: Sequence[str],
    settings: SearchSettings,
    run: SalRun,
) -> dict[str, Any]:
    """Search every layer of ``layers`` after every epoch of ``snapshots`` (``model``'s state
    dicts); ``images`` are the model's inputs, on its device and dtype.

    Returns ``{"epochs": [...], column: {layer: [value per epoch]} for column in COLUMNS}``
    (``l0``: one value per epoch), identical on every rank. Collective.
    """
    epochs = sorted(snapshots)
    pairs = [(layer, epoch) for epoch in epochs for layer in layers]
    mine = range(rt.rank, len(pairs), rt.world_size)
    model.eval().requires_grad_(False)
    pair_search = _PairSearch(rt, model, snapshots, images, labels, settings, run)
    rows = []
    progress = run.progress or Progress("none")
    with progress.stage(run.name, total_steps=len(mine)) as bar:
        for index in mine:
            rows.append([float(index), *pair_search.row(*pairs[index])])
            bar.advance()
    local = torch.tensor(rows, dtype=torch.float64).reshape(len(rows), 1 + len(COLUMNS))
    gathered = rt.all_gather_rows(local).cpu()
    gathered = gathered[gathered[:, 0].argsort()]
    if gathered[:, 0].tolist() != list(map(float, range(len(pairs)))):
        raise RuntimeError(f"{run.name}: the ranks returned {len(gathered)} of {len(pairs)} pairs")
    values = gathered[:, 1:].reshape(len(epochs), len(layers), len(COLUMNS))
    out: dict[str, Any] = {"epochs": epochs}
    for c, column in enumerate(COLUMNS):
        out[column] = {layer: values[:, i, c].tolist() for i, layer in enumerate(layers)}
    out["l0"] = values[:, 0, COLUMNS.index("l0")].tolist()
    return out
