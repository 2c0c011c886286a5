"""PGD adversarial training (Madry et al., ICLR 2018), L-inf, for victims in [0, 1] pixel space.

Each batch is replaced by its PGD adversary: a uniform random start in the eps-ball, ``steps``
signed-gradient ascent steps of ``step_size`` on the cross-entropy, each projected back onto the
eps-ball around the (augmented) batch and onto [0, 1]; the victim then trains on the adversary.
As in the unlearnable-examples literature's ``MadrysLoss`` (Huang et al. 2021, also used by the
ISS code), the attack runs in eval mode (BN running statistics, no updates) and the training step
in train mode. The attack's forward and backward passes go through the module inside DDP, so only
the training step's backward syncs gradients. The random start is drawn per sample from the run's
seed, so it depends neither on the rank nor on where a resumed run restarts.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ue_sweep.data.batches import Batch
from ue_sweep.evals.defenses.config import AdversarialConfig
from ue_sweep.runtime.distributed import Runtime
from ue_sweep.runtime.seeding import per_sample
from ue_sweep.train.recipes import RecordingRecipe, VictimRecipe, unwrap, upcast


def pgd(
    model: nn.Module,
    images: torch.Tensor,
    labels: torch.Tensor,
    cfg: AdversarialConfig,
    start: torch.Tensor,
    rt: Runtime,
) -> torch.Tensor:
    """The L-inf PGD adversary of ``images`` from ``images + start`` (``model`` in eval mode for
    the attack, its mode restored after); only the input gets gradients."""
    was_training = model.training
    model.eval()
    lo, hi = (images - cfg.eps).clamp(min=0), (images + cfg.eps).clamp(max=1)
    x = (images + start).clamp(0, 1).detach()
    for _ in range(cfg.steps):
        x.requires_grad_(True)
        with rt.autocast():
            logits, _ = model(x)
        (grad,) = torch.autograd.grad(F.cross_entropy(upcast(logits), labels), x)
        x = torch.minimum(torch.maximum(x.detach() + cfg.step_size * grad.sign(), lo), hi)
    model.train(was_training)
    return x.detach()


class AdversarialTraining(RecordingRecipe):
    """Trains on PGD adversaries; records the adversarial loss, robust accuracy and the mean L-inf
    size of the perturbation per epoch."""

    name = "adversarial"

    def __init__(self, cfg: AdversarialConfig, seed: int) -> None:
        super().__init__("adversarial_loss", "robust_accuracy", "linf")
        self.cfg, self.seed = cfg, seed

    def random_start(self, batch: Batch) -> torch.Tensor:
        images = batch.images
        if not self.cfg.random_start:
            return torch.zeros_like(images)
        shape = images.shape[1:]
        draws = [
            torch.rand(shape, generator=g, dtype=torch.float64)
            for g in per_sample(self.seed, "pgd-start", self.epoch, batch.indices)
        ]
        unit = torch.stack(draws).to(images.device, images.dtype)
        return (2 * unit - 1) * self.cfg.eps

    def loss(
        self, model: nn.Module, batch: Batch, rt: Runtime
    ) -> tuple[torch.Tensor, torch.Tensor]:
        adversary = pgd(
            unwrap(model), batch.images, batch.labels, self.cfg, self.random_start(batch), rt
        )
        with rt.autocast():
            logits, _ = model(adversary)
        losses = F.cross_entropy(upcast(logits), batch.labels, reduction="none")
        self.stats.add(
            adversarial_loss=losses,
            robust_accuracy=(logits.argmax(1) == batch.labels).double(),
            linf=(adversary - batch.images).flatten(1).abs().amax(1),
        )
        return self.reduce(losses, batch), logits

    def end_epoch(self, epoch: int, rt: Runtime) -> None:
        self.stats.close(epoch, rt)


def build_adversarial(cfg: AdversarialConfig, seed: int) -> VictimRecipe:
    return AdversarialTraining(cfg, seed)
