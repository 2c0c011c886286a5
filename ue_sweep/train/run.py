"""What every resumable training stage is given besides its model and its config.

The victim, the surrogate, the DP victim and the UC generators all train under the same
runtime, seed, progress stage, checkpoint and data placement; grouping them keeps the training
functions' signatures short and the call sites readable.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import torch

from ue_sweep.config import TrainingConfig
from ue_sweep.data.placement import ON_DEVICE, Placement
from ue_sweep.runtime.distributed import Runtime
from ue_sweep.runtime.progress import Progress
from ue_sweep.store.checkpoint import NO_CHECKPOINT, StageCheckpoint


@dataclass(frozen=True)
class TrainingRun:
    """Where and how a training stage runs: not what it learns."""

    rt: Runtime
    #: seeds the stage's data order (and augmentation, DP noise): never the model's init
    seed: int
    progress: Progress
    #: the progress stage's name (``victim (clean)``, ``generators``, ...)
    name: str
    checkpoint: StageCheckpoint = NO_CHECKPOINT
    placement: Placement = ON_DEVICE


@dataclass(frozen=True)
class LabelledData:
    """A classifier's training and test sets (images as the stage's batches gather them)."""

    train_images: torch.Tensor
    train_labels: torch.Tensor
    test_images: torch.Tensor
    test_labels: torch.Tensor
    num_classes: int


def sgd_cosine(
    params: Iterable[torch.nn.Parameter], cfg: TrainingConfig, total_steps: int
) -> tuple[torch.optim.SGD, torch.optim.lr_scheduler.CosineAnnealingLR]:
    """SGD with momentum and a per-step cosine from ``cfg.lr`` to ``cfg.min_lr``: the optimizer
    of the victims, the surrogate and the DP victim (built in this order: no RNG is drawn)."""
    optimizer = torch.optim.SGD(
        params, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay
    )
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(
        optimizer, T_max=total_steps, eta_min=cfg.min_lr
    )
    return optimizer, schedule
