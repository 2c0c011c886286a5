"""Two hand-written UC generator loops to measure the product's fused bank against.

:func:`train_sequential` is the reference UC code's loop: the k generators trained one after
another, each a separate network with its own Adam and cosine schedule, each over the whole
training set (k passes per epoch), the noise clamped onto every augmented image and the KL of
the surrogate's features to its target's softmax averaged over the batch. :func:`train_fused`
is the fused bank of ``ue_sweep.uc.train_generators`` stripped to its maths: one pass per epoch,
one forward and backward through bank and surrogate, no DDP, collectives, checkpoints or
progress. With ``scope: all`` both compute what the product computes (tests/test_bench.py).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ue_sweep.config import AugmentConfig, GeneratorConfig
from ue_sweep.data.batches import TensorStream
from ue_sweep.models.classifiers import FeatureClassifier
from ue_sweep.models.generators import GeneratorBank
from ue_sweep.runtime.env import DistEnv
from ue_sweep.uc.clustering import Clusters


def split_bank(bank: GeneratorBank, cfg: GeneratorConfig) -> list[GeneratorBank]:
    """The k generators of a grouped bank built from ``cfg`` as k one-generator networks.

    Every parameter and buffer of the bank is its generators' tensors stacked along one
    dimension (output channels, the input channels of a transposed conv, the channels of z).
    """
    state = bank.state_dict()
    singles = []
    for g in range(bank.k):
        single = GeneratorBank(
            1,
            bank.channels,
            bank.image_size,
            bank.eps,
            ngf=cfg.ngf,
            n_blocks=cfg.n_blocks,
            n_downsampling=cfg.n_downsampling,
            output=bank.output,
        ).to(dtype=bank.z.dtype, device=bank.z.device)
        own = {}
        for name, tensor in single.state_dict().items():
            grouped = state[name]
            dim = next(
                d
                for d, (a, b) in enumerate(zip(tensor.shape, grouped.shape, strict=True))
                if a != b
            )
            own[name] = grouped.chunk(bank.k, dim)[g]
        single.load_state_dict(own)
        singles.append(single)
    return singles


def _kl(
    surrogate: FeatureClassifier, protected: torch.Tensor, target: torch.Tensor
) -> torch.Tensor:
    """Per-image KL(target || softmax(features)), in float32 from the features on, as the
    product computes it (whatever the models' dtype)."""
    _, features = surrogate(protected)
    return F.kl_div(features.float().log_softmax(-1), target, reduction="none").sum(-1)


def _optimizer(
    params, cfg: GeneratorConfig, steps: int
) -> tuple[torch.optim.Adam, torch.optim.lr_scheduler.CosineAnnealingLR]:
    optimizer = torch.optim.Adam(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(
        optimizer, T_max=cfg.epochs * steps, eta_min=cfg.min_lr
    )
    return optimizer, schedule


def train_sequential(
    generators: list[GeneratorBank],
    surrogate: FeatureClassifier,
    images: torch.Tensor,
    clusters: Clusters,
    cfg: GeneratorConfig,
    batch_size: int,
    augment: AugmentConfig,
    seed: int,
) -> list[float]:
    """The reference loop (noise after augmentation); returns each generator's last-epoch loss."""
    target_probs = clusters.centers[clusters.targets].softmax(-1)
    stream = TensorStream(images, clusters.ids, batch_size, DistEnv(), seed, augment)
    losses = []
    for g, generator in enumerate(generators):
        optimizer, schedule = _optimizer(generator.parameters(), cfg, len(stream))
        for epoch in range(cfg.epochs):
            total, count = 0.0, 0
            for batch in stream.epoch(epoch):
                noise = generator()
                protected = (batch.images + noise).clamp(0, 1)
                kl = _kl(surrogate, protected, target_probs[g].expand(len(protected), -1))
                optimizer.zero_grad(set_to_none=True)
                kl.mean().backward()
                optimizer.step()
                schedule.step()
                total, count = total + float(kl.detach().sum()), count + len(kl)
        losses.append(total / count)
    return losses


def train_fused(
    bank: GeneratorBank,
    surrogate: FeatureClassifier,
    images: torch.Tensor,
    clusters: Clusters,
    cfg: GeneratorConfig,
    batch_size: int,
    augment: AugmentConfig,
    seed: int,
) -> None:
    """The product's fused step (noise after augmentation) without anything around it."""
    target_probs = clusters.centers[clusters.targets].softmax(-1)
    stream = TensorStream(images, clusters.ids, batch_size, DistEnv(), seed, augment)
    optimizer, schedule = _optimizer(bank.parameters(), cfg, len(stream))
    k = bank.k
    for epoch in range(cfg.epochs):
        for batch in stream.epoch(epoch):
            b = len(batch.images)
            if cfg.scope == "all":
                gens = torch.arange(k).repeat_interleave(b)
                imgs = torch.arange(b).repeat(k)
                weight = torch.full((k,), 1.0 / b, dtype=torch.float64)
            else:
                gens, imgs = batch.labels, torch.arange(b)
                weight = 1.0 / torch.bincount(gens, minlength=k).clamp(min=1).double()
            noise = bank()
            kl = _kl(surrogate, (batch.images[imgs] + noise[gens]).clamp(0, 1), target_probs[gens])
            optimizer.zero_grad(set_to_none=True)
            (kl * weight[gens].to(kl.dtype)).sum().backward()
            optimizer.step()
            schedule.step()
