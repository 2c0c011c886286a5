"""Fused training of all k cluster generators: one pass over the data per epoch.

For every batch the bank produces all k perturbations at once. With scope ``all`` (the reference
code) every generator perturbs every image of the batch; with scope ``cluster`` each image gets
its own cluster's generator. The surrogate's features of the clamped protected images are pulled
toward the softmax of the target cluster's center with a KL loss (batch mean per generator; the
generators' losses are summed, so each receives exactly its own gradient).

The surrogate runs in chunks of at most ``generator.chunk_size`` images against a detached copy
of the perturbations; their gradient is then pushed through the bank in a single backward, so
DistributedDataParallel sees exactly one forward and one backward per step however large k x B is.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

import torch
import torch.nn.functional as F

from ue_sweep.checkpoint import NO_CHECKPOINT, Resumable, StageCheckpoint
from ue_sweep.config import AugmentConfig, BatchSizeConfig, GeneratorConfig
from ue_sweep.data.batches import batch_source
from ue_sweep.data.placement import ON_DEVICE, Placement
from ue_sweep.distributed import Runtime
from ue_sweep.models.classifiers import FeatureClassifier
from ue_sweep.models.generators import GeneratorBank
from ue_sweep.preemption import preemptible
from ue_sweep.progress import Progress
from ue_sweep.uc.clustering import Clusters


@dataclass
class GeneratorStats:
    per_device_batch: int
    global_batch: int
    lr: float
    lr_factor: float
    steps_per_epoch: int
    epochs: int
    seconds: float
    samples_per_s: float
    # Protected images pushed through the surrogate per second (k per sample with scope `all`).
    images_per_s: float
    loss_history: list[float] = field(default_factory=list)

    def as_dict(self) -> dict[str, object]:
        return asdict(self)


def uc_loss_grad(
    surrogate: FeatureClassifier,
    images: torch.Tensor,
    cluster_ids: torch.Tensor,
    noise: torch.Tensor,
    target_probs: torch.Tensor,
    scope: str,
    chunk_size: int,
    rt: Runtime,
) -> tuple[torch.Tensor, torch.Tensor]:
    """UC loss of one batch and its gradient with respect to the ``[k, C, H, W]`` noise."""
    noise = noise.detach().requires_grad_(True)
    b, k = images.shape[0], noise.shape[0]
    if scope == "all":  # every generator perturbs every image
        gen_of_item = torch.arange(k, device=rt.device).repeat_interleave(b)
        img_of_item = torch.arange(b, device=rt.device).repeat(k)
    else:  # each image gets its own cluster's generator
        gen_of_item = cluster_ids
        img_of_item = torch.arange(b, device=rt.device)
    total = torch.zeros((), device=rt.device)
    for start in range(0, len(gen_of_item), chunk_size):
        gens = gen_of_item[start : start + chunk_size]
        protected = (images[img_of_item[start : start + chunk_size]] + noise[gens]).clamp(0, 1)
        with rt.autocast():
            _, features = surrogate(protected)
        log_q = features.float().log_softmax(-1)
        kl = F.kl_div(log_q, target_probs[gens], reduction="none").sum(-1)
        loss = kl.sum() / b
        loss.backward()
        total += loss.detach()
    assert noise.grad is not None
    return total, noise.grad


def train_generators(
    bank: GeneratorBank,
    surrogate: FeatureClassifier,
    train_images: torch.Tensor,
    clusters: Clusters,
    cfg: GeneratorConfig,
    batch: BatchSizeConfig,
    augment: AugmentConfig,
    rt: Runtime,
    seed: int,
    progress: Progress,
    checkpoint: StageCheckpoint = NO_CHECKPOINT,
    placement: Placement = ON_DEVICE,
) -> GeneratorStats:
    """Train ``bank`` in place (wrapped in DDP) against the frozen ``surrogate``.

    Resumes from ``checkpoint`` when it holds a state, saves one after every epoch, and stops at a
    checkpoint when preemption is requested.
    """
    # The stream's "labels" are the cluster ids: the generators never see class labels.
    stream = batch_source(
        train_images, clusters.ids, batch.per_device, rt, seed, augment=augment, placement=placement
    )
    global_batch = batch.per_device * rt.world_size
    lr_factor = batch.lr_factor(global_batch)
    ddp = rt.wrap(bank)
    optimizer = torch.optim.Adam(
        ddp.parameters(), lr=cfg.lr * lr_factor, weight_decay=cfg.weight_decay
    )
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(
        optimizer, T_max=cfg.epochs * len(stream), eta_min=cfg.min_lr
    )
    target_probs = clusters.centers[clusters.targets].softmax(-1)
    resumable = Resumable(checkpoint, bank=bank, optimizer=optimizer, schedule=schedule)
    # running sums: [sum of per-step losses, steps] of the epoch on this rank
    loop = resumable.start(num_sums=2, device=rt.device)
    start_epoch, start_step, sums = loop.epoch, loop.step, loop.sums
    history: list[float] = loop.history

    def save(epoch: int, step: int) -> None:
        resumable.save_at(loop, epoch, step, history)

    with progress.stage("generators", cfg.epochs * len(stream), cfg.epochs) as bar:
        bar.advance(start_epoch * len(stream) + start_step)
        for epoch in range(start_epoch, cfg.epochs):
            first_step = start_step if epoch == start_epoch else 0
            batches = stream.epoch(epoch, first_step)
            for step in preemptible(batches, first_step, rt, lambda s, e=epoch: save(e, s)):
                noise = ddp()
                loss, grad = uc_loss_grad(
                    surrogate,
                    step.images,
                    step.labels,
                    noise,
                    target_probs,
                    cfg.scope,
                    cfg.chunk_size,
                    rt,
                )
                optimizer.zero_grad(set_to_none=True)
                noise.backward(grad)
                optimizer.step()
                schedule.step()
                sums += torch.stack([loss.double(), torch.ones((), device=rt.device).double()])
                bar.advance()
            loss_sum, steps = rt.all_reduce_sum(sums).tolist()
            sums.zero_()
            history.append(loss_sum / steps)
            save(epoch + 1, 0)
            bar.epoch_done(epoch, kl=history[-1])
    seconds = loop.seconds
    samples = stream.samples_per_epoch * rt.world_size * cfg.epochs
    per_sample = clusters.k if cfg.scope == "all" else 1
    return GeneratorStats(
        per_device_batch=batch.per_device,
        global_batch=global_batch,
        lr=cfg.lr * lr_factor,
        lr_factor=lr_factor,
        steps_per_epoch=len(stream),
        epochs=cfg.epochs,
        seconds=seconds,
        samples_per_s=samples / seconds,
        images_per_s=samples * per_sample / seconds,
        loss_history=history,
    )
