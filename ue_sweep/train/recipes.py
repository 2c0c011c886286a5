"""How a victim trains: the hooks a defense changes, around plain ERM (mean cross-entropy).

:func:`~ue_sweep.train.classifier.train_classifier` calls :meth:`VictimRecipe.prepare` once on
the training images, then every epoch :meth:`~VictimRecipe.begin_epoch` (which runs
:meth:`~VictimRecipe.select`), :meth:`~VictimRecipe.loss` on every batch and
:meth:`~VictimRecipe.end_epoch`, and records :meth:`~VictimRecipe.summary` in its result. The
base class computes exactly what the trainer computed before recipes existed, so a victim without
a defense is unchanged. A recipe's ``state_dict`` travels in the stage checkpoint.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from ue_sweep.data.batches import Batch
from ue_sweep.runtime.distributed import Runtime


def upcast(logits: torch.Tensor) -> torch.Tensor:
    """Logits at float32 at least (bf16 under autocast), for the loss."""
    return logits if logits.dtype == torch.float64 else logits.float()


def unwrap(model: nn.Module) -> nn.Module:
    """The module inside DDP: forward passes through it never sync gradients across ranks."""
    return model.module if isinstance(model, DistributedDataParallel) else model


class VictimRecipe:
    """Plain empirical risk minimisation; subclasses override the hooks their defense changes.

    Per-sample weights (set from :meth:`select`) turn the batch loss into
    ``sum(w_i * l_i) / (n * mean(w))``, ``mean(w)`` over the whole training set: an unbiased
    estimate of the weighted mean loss ``sum(w l) / sum(w)`` of the training set, with a
    normaliser that is a dataset constant, so DDP's average over ranks of equal-sized batches
    gives the same gradient as one rank with their union. A sample of weight 0 contributes
    nothing.
    """

    name = "erm"

    def __init__(self) -> None:
        self.epoch = 0
        self.weights: torch.Tensor | None = None
        self._weight_mean = 1.0

    def prepare(self, images: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """The uint8 training images the victim trains on (applied once, before batching)."""
        return images

    def select(
        self,
        epoch: int,
        model: nn.Module,
        images: torch.Tensor,
        labels: torch.Tensor,
        rt: Runtime,
    ) -> torch.Tensor | None:
        """Per-sample weights ``[N]`` from this epoch on, or None to keep the current ones.

        Runs on every rank before the epoch's first step (collectives allowed); ``model`` is the
        bare module, in train mode, and must be left in it.
        """
        return None

    def loss(
        self, model: nn.Module, batch: Batch, rt: Runtime
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """The batch's training loss (backpropagated through DDP) and the logits it scored.

        ``model`` is the DDP-wrapped victim; extra forward passes that must not sync gradients
        go through :func:`unwrap`.
        """
        with rt.autocast():
            logits, _ = model(batch.images)
        return self.criterion(logits, batch), logits

    def end_epoch(self, epoch: int, rt: Runtime) -> None:
        """Called on every rank after the epoch's last step: reduce per-epoch diagnostics."""

    def summary(self) -> dict[str, Any]:
        """The defense's diagnostics, recorded in the victim's result."""
        return {}

    def criterion(self, logits: torch.Tensor, batch: Batch) -> torch.Tensor:
        """Mean cross-entropy, weighted once :meth:`select` has set weights."""
        if self.weights is None:
            return F.cross_entropy(upcast(logits), batch.labels)
        losses = F.cross_entropy(upcast(logits), batch.labels, reduction="none")
        return self.reduce(losses, batch)

    def reduce(self, losses: torch.Tensor, batch: Batch) -> torch.Tensor:
        """The batch loss from per-sample ``losses``: their mean, or the weighted form above."""
        if self.weights is None:
            return losses.mean()
        w = self.weights[batch.indices].to(losses.dtype)
        return (w * losses).sum() / (losses.numel() * self._weight_mean)

    def begin_epoch(
        self,
        epoch: int,
        model: nn.Module,
        images: torch.Tensor,
        labels: torch.Tensor,
        rt: Runtime,
        *,
        select: bool,
    ) -> None:
        """Start ``epoch``; ``select=False`` when resuming inside it (its selection was saved)."""
        self.epoch = epoch
        if select and (weights := self.select(epoch, model, images, labels, rt)) is not None:
            self._set_weights(weights, len(images))
        if self.weights is not None:
            self.weights = self.weights.to(rt.device)

    def _set_weights(self, weights: torch.Tensor, n: int) -> None:
        weights = weights.detach().to(torch.float64)
        if weights.shape != (n,) or not bool(torch.isfinite(weights).all()):
            raise ValueError(f"{self.name}: weights must be finite, of shape ({n},)")
        if bool((weights < 0).any()) or not float(weights.sum()) > 0:
            raise ValueError(f"{self.name}: weights must be >= 0 with a positive sum")
        self.weights, self._weight_mean = weights, float(weights.mean())

    def state_dict(self) -> dict[str, Any]:
        return {"weights": None if self.weights is None else self.weights.cpu()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        weights = state["weights"]
        self.weights = weights
        self._weight_mean = 1.0 if weights is None else float(weights.mean())


class EpochStats:
    """Per-epoch means of per-sample diagnostics: summed on each rank, all-reduced at epoch end.

    After a mid-epoch resume on several ranks every rank restarts from rank 0's saved sums, so
    that epoch's mean counts rank 0's earlier samples once per rank (as the trainer's own
    ``train_loss`` does); it stays a mean over the samples it counts.
    """

    def __init__(self, *names: str) -> None:
        self.names = names
        self.sums = torch.zeros(len(names) + 1, dtype=torch.float64)
        self.records: list[dict[str, float]] = []

    def add(self, **values: torch.Tensor) -> None:
        """Add one batch: a per-sample tensor for each name."""
        first = values[self.names[0]]
        self.sums = self.sums.to(first.device)
        self.sums += torch.stack(
            [values[k].detach().double().sum() for k in self.names]
            + [torch.tensor(float(first.numel()), dtype=torch.float64, device=first.device)]
        )

    def close(self, epoch: int, rt: Runtime, **extra: float) -> None:
        """Record ``epoch``'s means over all ranks and start the next epoch's sums."""
        *totals, count = rt.all_reduce_sum(self.sums).tolist()
        means = {k: v / max(count, 1.0) for k, v in zip(self.names, totals, strict=True)}
        self.records.append({"epoch": epoch, **means, **extra})
        self.sums = torch.zeros_like(self.sums)

    def state_dict(self) -> dict[str, Any]:
        return {"sums": self.sums.cpu(), "records": list(self.records)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.sums, self.records = state["sums"], list(state["records"])


class RecordingRecipe(VictimRecipe):
    """A recipe whose diagnostics are per-epoch means of per-sample values (:class:`EpochStats`):
    its summary is their records, and they travel in the stage checkpoint."""

    def __init__(self, *names: str) -> None:
        super().__init__()
        self.stats = EpochStats(*names)

    def summary(self) -> dict[str, Any]:
        return {"epochs": list(self.stats.records)}

    def state_dict(self) -> dict[str, Any]:
        return super().state_dict() | {"stats": self.stats.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        super().load_state_dict(state)
        self.stats.load_state_dict(state["stats"])
