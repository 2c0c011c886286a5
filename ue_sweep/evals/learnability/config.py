"""``evals.learnability``: the SAL search's settings, and the epochs it needs from every victim."""

from __future__ import annotations

from dataclasses import dataclass

from ue_sweep.config import RootConfig, setting


@dataclass
class LearnabilityConfig:
    # Radius of the weight perturbation, relative: ||v||_F <= eps * ||theta||_F (paper: 0.05).
    eps: float = setting(0.05, gt=0.0)
    # Plain SGD learning rate of the descent and ascent searches (paper: 0.1).
    lr: float = setting(0.1, gt=0.0)
    # Repeats of (one SGD pass over the subset, then a loss evaluation) per side (paper: 10).
    steps: int = setting(10, ge=1)
    # Share of each victim's training set the search runs on: a fixed subset seeded by `seed`,
    # the same images' indices for every victim (1: the whole set, as the authors; less is a
    # faster, noisier choice).
    data_fraction: float = setting(1.0, gt=0.0, le=1.0)
    # SAL after every n-th epoch, counted back from the last one (always measured); 1: every
    # epoch, as the authors.
    epoch_stride: int = setting(1, ge=1)
    # `all` Conv2d and Linear weights, or a glob over their module names (`body.*`, `head`).
    layers: str = "all"
    # L0: the epoch's running training loss (`running`, the authors' code; for a defense, the
    # defense's loss), or the snapshot's loss on the search data in eval mode (`eval`).
    l0: str = setting("running", one_of=("eval", "running"))
    # What the searches see: fresh draws of the victim's training augmentation for every SGD
    # pass and loss evaluation (`augmented`, the authors' augmented training loader), or the
    # images as they are (`plain`, less noisy).
    search_data: str = setting("augmented", one_of=("augmented", "plain"))
    # Project onto the ball after each SGD `pass` (the authors' code) or after every `step`.
    projection: str = setting("pass", one_of=("pass", "step"))
    # Minibatch of the SGD passes; null: the victim's training batch (victim.batch_size).
    batch_size: int | None = setting(None, ge=1)


def snapshot_epochs(cfg: RootConfig, lc: LearnabilityConfig) -> tuple[int, ...]:
    """The epochs measured (0-based): every ``epoch_stride``-th, counted back from the last."""
    return tuple(reversed(range(cfg.victim.epochs - 1, -1, -lc.epoch_stride)))
