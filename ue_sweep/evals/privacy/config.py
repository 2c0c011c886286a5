"""``evals.privacy``: the DP-SGD victims' privacy budgets, accountant and recipe."""

from __future__ import annotations

import math
from dataclasses import dataclass

from ue_sweep.config import CONTROLS, setting

ACCOUNTANTS = ("prv", "rdp")


@dataclass
class PrivacyConfig:
    # Target epsilons of the DP victims; inf: the same recipe without noise or clipping.
    epsilons: list[float] = setting([1.0, 3.0, 8.0, math.inf], gt=0.0)  # noqa: RUF009
    # null: 1 / (10 N), N the training set size.
    delta: float | None = setting(None, gt=0.0, lt=1.0)
    # Per-sample gradient clipping bound (L2, flat over all parameters).
    max_grad_norm: float = setting(1.0, gt=0.0)
    accountant: str = setting("prv", one_of=ACCOUNTANTS)
    # Largest batch one forward-backward pass takes (memory only; Opacus' BatchSplittingSampler).
    physical_batch: int = setting(256, ge=1)
    # The control to train DP victims on; null: the strongest of `controls` (lowest non-private
    # victim accuracy; the victims evaluation's when it ran before).
    control: str | None = setting(None, one_of=CONTROLS)
    controls: list[str] = setting(list(CONTROLS), one_of=CONTROLS)  # noqa: RUF009
    # DP-SGD recipe overrides of the victim's (null: `victim.<key>`); DP-SGD often wants larger
    # batches, more epochs and a larger learning rate than plain SGD.
    epochs: int | None = setting(None, ge=1)
    batch_size: int | None = setting(None, ge=1)
    lr: float | None = setting(None, gt=0.0)
