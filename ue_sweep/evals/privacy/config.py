"""``evals.privacy``: the DP-SGD victims' privacy budgets, accountant and recipe."""

from __future__ import annotations

import math
from dataclasses import dataclass

from ue_sweep.config import CONTROLS, RootConfig, setting
from ue_sweep.errors import ConfigError

ACCOUNTANTS = ("prv", "rdp")
#: where a DP victim's weights start (``public_init.py``)
INITS = ("scratch", "surrogate")
#: surrogate weights that never saw the private training set
PUBLIC_WEIGHTS = ("pretrained", "path")


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
    # The noise multiplier sigma set directly instead of found for each finite target epsilon
    # (the seeds give sigma = 1.0 and 0.4-0.7): the finite `epsilons` are replaced by this one
    # setting (`sigma<s>` in the outcome), whose epsilon is what the accountant says was spent;
    # `.inf` in `epsilons` still trains the noiseless baseline. null: the target epsilons.
    noise_multiplier: float | None = setting(None, gt=0.0)
    # Public pretraining: `surrogate` starts every DP victim from the surrogate's public weights
    # (surrogate.weights=pretrained or path, the victim's architecture; a fitted surrogate saw
    # the private set and is refused), `scratch` from a random initialisation.
    init: str = setting("scratch", one_of=INITS)
    # With init=surrogate: the first N Conv2d/Linear layers (and their norms) stay fixed.
    freeze: int = setting(0, ge=0)


def check_public_init(key: str, init: str, freeze: int, cfg: RootConfig) -> None:
    """Before any compute: a public surrogate of the victim's architecture, freeze only on it."""
    s = cfg.surrogate
    if init == "scratch":
        if freeze:
            raise ConfigError(f"{key}.freeze", freeze, "0 with init=scratch (nothing to keep)")
        return
    if s.weights not in PUBLIC_WEIGHTS:
        raise ConfigError(
            f"{key}.init",
            init,
            "scratch, or surrogate with public surrogate weights (surrogate.weights=pretrained "
            f"or path; '{s.weights}' "
            + (
                "trained on the private set: starting from it voids DP)"
                if s.weights == "fit"
                else "is a random initialisation)"
            ),
        )
    if (s.arch, s.width if s.arch == "small_cnn" else 0) != (
        cfg.victim.arch,
        cfg.victim.width if cfg.victim.arch == "small_cnn" else 0,
    ):
        raise ConfigError(
            f"{key}.init",
            init,
            f"scratch, or a surrogate of the victim's architecture (surrogate {s.arch}, victim "
            f"{cfg.victim.arch}; small_cnn widths must agree)",
        )


def check(key: str, cfg: PrivacyConfig, job: RootConfig) -> None:
    check_public_init(key, cfg.init, cfg.freeze, job)
