"""Fused training of all k cluster generators: one pass over the data per epoch.

For every batch the bank produces all k perturbations at once. With scope ``all`` (the reference
code) every generator perturbs every image of the batch; with scope ``cluster`` each image gets
its own cluster's generator. The surrogate's features of the clamped protected images are pulled
toward the softmax of the target cluster's center with a KL loss. Each generator's loss is the
mean KL over the images it perturbed in the *global* batch (so 1 rank with batch 2B and 2 ranks
with batch B take the same step), and the generators' losses are summed, so each receives exactly
its own gradient. The logged loss is the same quantity for both scopes: the mean over generators
of each generator's mean KL over the epoch.

The surrogate runs in chunks of at most ``generator.chunk_size`` images against a detached copy
of the perturbations; their gradient is then pushed through the bank in a single backward, so
DistributedDataParallel sees exactly one forward and one backward per step however large k x B is.

With ``noise_order: before_augment`` the noise is added to the un-augmented images and the sum is
augmented (crop and flip move the noise with the image), as a victim sees the published set.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
import torch.nn.functional as F

from ue_sweep.config import AugmentConfig, BatchSizeConfig, GeneratorConfig
from ue_sweep.data.batches import Augmenter, Batch, TensorStream, batch_source
from ue_sweep.models.classifiers import FeatureClassifier
from ue_sweep.models.direct import DirectNoise
from ue_sweep.models.generators import GeneratorBank
from ue_sweep.runtime.distributed import Runtime
from ue_sweep.store.checkpoint import LoopPosition, Resumable
from ue_sweep.train.loop import EpochClose, EpochLoop
from ue_sweep.train.run import TrainingRun
from ue_sweep.uc.clustering import Clusters
from ue_sweep.uc.diagnostics import GradientCoverage
from ue_sweep.uc.monitor import NoiseMonitor


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
    # Per epoch: loss and the noise diagnostics of uc/monitor.py; `initial`: the untrained bank.
    history: list[dict[str, Any]] = field(default_factory=list)
    initial: dict[str, float] = field(default_factory=dict)
    # Share of noise pixels that ever received a gradient: `overall` and `per_cluster`.
    gradient: dict[str, Any] = field(default_factory=dict)

    def as_dict(self) -> dict[str, object]:
        return asdict(self)


@dataclass(frozen=True)
class UCObjective:
    """What a batch's UC loss pulls the features toward, and how it is computed."""

    #: the softmax of each generator's target centre over ``temperature`` ``[k, D]``
    target_probs: torch.Tensor
    #: ``all``: every generator perturbs every image; ``cluster``: each image its own cluster's
    scope: str
    #: most images one surrogate forward takes
    chunk_size: int
    temperature: float = 1.0

    @classmethod
    def of(cls, clusters: Clusters, cfg: GeneratorConfig) -> UCObjective:
        target_probs = (clusters.centers[clusters.targets] / cfg.temperature).softmax(-1)
        return cls(target_probs, cfg.scope, cfg.chunk_size, cfg.temperature)


@dataclass(frozen=True)
class ClusteredImages:
    """What the generators train on: the images, their class labels (the monitor's
    surrogate-accuracy diagnostic only) and their clusters (the stream's labels)."""

    images: torch.Tensor
    labels: torch.Tensor
    clusters: Clusters


def uc_loss_grad(
    surrogate: FeatureClassifier,
    images: torch.Tensor,
    cluster_ids: torch.Tensor,
    noise: torch.Tensor,
    objective: UCObjective,
    rt: Runtime,
    *,
    indices: torch.Tensor | None = None,
    augment: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """One batch's UC loss and its gradient with respect to the ``[k, C, H, W]`` noise.

    Returns the per-generator sums of KL over this rank's items ``[k]``, the items per generator
    ``[k]`` and the gradient of the objective ``world_size * sum_g KL_g / global_count_g`` (DDP
    averages over ranks, which makes it each generator's mean KL over the global batch).
    ``augment(images, indices)`` is applied to the protected images when given; the features
    are divided by ``objective.temperature`` before the softmax.
    """
    noise = noise.detach().requires_grad_(True)
    b, k = images.shape[0], noise.shape[0]
    if objective.scope == "all":  # every generator perturbs every image
        gen_of_item = torch.arange(k, device=rt.device).repeat_interleave(b)
        img_of_item = torch.arange(b, device=rt.device).repeat(k)
        counts = torch.full((k,), b, dtype=torch.float64, device=rt.device)
        # Every rank's batch has b images (DistributedSampler pads to equal shares).
        global_counts = counts * rt.world_size
    else:  # each image gets its own cluster's generator
        gen_of_item = cluster_ids
        img_of_item = torch.arange(b, device=rt.device)
        counts = torch.bincount(gen_of_item, minlength=k).double()
        global_counts = rt.all_reduce_sum(counts) if rt.world_size > 1 else counts
    weight = rt.world_size / global_counts.clamp(min=1)
    kl_sums = torch.zeros(k, dtype=torch.float64, device=rt.device)
    for start in range(0, len(gen_of_item), objective.chunk_size):
        gens = gen_of_item[start : start + objective.chunk_size]
        imgs = img_of_item[start : start + objective.chunk_size]
        protected = (images[imgs] + noise[gens]).clamp(0, 1)
        if augment is not None:
            assert indices is not None
            protected = augment(protected, indices[imgs])
        with rt.autocast():
            _, features = surrogate(protected)
        log_q = (features.float() / objective.temperature).log_softmax(-1)
        kl = F.kl_div(log_q, objective.target_probs[gens], reduction="none").sum(-1)
        (kl * weight[gens].to(kl.dtype)).sum().backward()
        kl_sums.index_add_(0, gens, kl.detach().double())
    assert noise.grad is not None
    return kl_sums, counts, noise.grad


@dataclass
class _GeneratorEpochs:
    """The batches, step and close of :func:`train_generators`' epoch loop, and its stats."""

    bank: GeneratorBank | DirectNoise
    ddp: torch.nn.Module
    #: the network the loss is computed with
    loss_model: FeatureClassifier
    stream: TensorStream
    #: the per-sample augmentation applied after the noise (``noise_order: before_augment``)
    augmenter: Augmenter | None
    optimizer: torch.optim.Optimizer
    schedule: torch.optim.lr_scheduler.LRScheduler
    objective: UCObjective
    coverage: GradientCoverage
    monitor: NoiseMonitor
    cfg: GeneratorConfig
    rt: Runtime

    def measure(self) -> dict[str, float]:
        started = time.perf_counter()
        with torch.no_grad():
            record = self.monitor.measure(self.bank().float())
        return record | {"monitor_s": time.perf_counter() - started}

    def batches(self, epoch: int, first_step: int) -> Iterable[Batch]:
        epoch_batches = self.stream.epoch(epoch, first_step)
        if self.augmenter is not None:
            self.augmenter.set_epoch(epoch)
        return epoch_batches

    def step(self, batch: Batch, sums: torch.Tensor) -> None:
        noise = self.ddp()
        kl_sums, counts, grad = uc_loss_grad(
            self.loss_model,
            batch.images,
            batch.labels,
            noise,
            self.objective,
            self.rt,
            indices=batch.indices,
            augment=self.augmenter,
        )
        clamped = self.bank.output == "reference"  # the only bound that blocks gradients
        self.coverage.update(noise, grad, self.cfg.eps, clamped)
        self.optimizer.zero_grad(set_to_none=True)
        noise.backward(grad)
        self.optimizer.step()
        self.schedule.step()
        sums += torch.cat([kl_sums, counts])

    def close(self, epoch: int, totals: torch.Tensor, started: float) -> EpochClose:
        kl_total, count_total = totals.view(2, -1)
        present = count_total > 0
        loss = float((kl_total[present] / count_total[present]).mean())
        self.coverage.merge(self.rt)  # the union over ranks of the pixels that got a gradient
        share = self.coverage.shares()[0]
        record = {"epoch": epoch, "loss": loss, **self.measure(), "gradient_share": share}
        return EpochClose(record, _shown(record))

    def stats(self, loop: LoopPosition, batch: BatchSizeConfig, lr_factor: float) -> GeneratorStats:
        """The run's record; throughput counts training only, not the monitor's passes."""
        cfg, history = self.cfg, loop.history
        seconds = loop.seconds - sum(h["monitor_s"] for h in history)
        samples = self.stream.samples_per_epoch * self.rt.world_size * cfg.epochs
        per_sample = self.objective.target_probs.shape[0] if cfg.scope == "all" else 1
        return GeneratorStats(
            per_device_batch=batch.per_device,
            global_batch=batch.per_device * self.rt.world_size,
            lr=cfg.lr * lr_factor,
            lr_factor=lr_factor,
            steps_per_epoch=len(self.stream),
            epochs=cfg.epochs,
            seconds=seconds,
            samples_per_s=samples / seconds,
            images_per_s=samples * per_sample / seconds,
            loss_history=[h["loss"] for h in history[1:]],
            history=history[1:],
            initial=history[0],
            gradient=dict(zip(("overall", "per_cluster"), self.coverage.shares(), strict=True)),
        )


def _generator_stream(
    data: ClusteredImages,
    batch: BatchSizeConfig,
    augment: AugmentConfig,
    cfg: GeneratorConfig,
    run: TrainingRun,
) -> tuple[TensorStream, Augmenter | None]:
    """The generators' batches, and the augmentation applied after the noise when
    ``noise_order: before_augment`` (None: the stream augments the clean images)."""
    # The stream's "labels" are the cluster ids: the generators never see class labels.
    noise_first = cfg.noise_order == "before_augment"
    stream = batch_source(
        data.images,
        data.clusters.ids,
        batch.per_device,
        run.rt,
        run.seed,
        augment=None if noise_first else augment,
        placement=run.placement,
    )
    # The same per-sample tables the stream would draw (same seed), applied after the noise.
    augmenter = Augmenter(augment, len(data.images), run.seed) if noise_first else None
    return stream, augmenter


def _adam_cosine(
    params: Iterable[torch.nn.Parameter], cfg: GeneratorConfig, lr_factor: float, total_steps: int
) -> tuple[torch.optim.Adam, torch.optim.lr_scheduler.CosineAnnealingLR]:
    """Adam at ``cfg.lr`` scaled for the global batch, with a per-step cosine to ``min_lr``."""
    optimizer = torch.optim.Adam(params, lr=cfg.lr * lr_factor, weight_decay=cfg.weight_decay)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(
        optimizer, T_max=total_steps, eta_min=cfg.min_lr
    )
    return optimizer, schedule


def train_generators(
    bank: GeneratorBank | DirectNoise,
    surrogate: FeatureClassifier,
    data: ClusteredImages,
    cfg: GeneratorConfig,
    batch: BatchSizeConfig,
    augment: AugmentConfig,
    run: TrainingRun,
    loss_model: FeatureClassifier | None = None,
) -> GeneratorStats:
    """Train ``bank`` in place (wrapped in DDP) against the frozen ``surrogate``.

    ``loss_model``: the network the loss is computed with, when not ``surrogate`` (the HPC
    code's random network, ``generator.against``); the monitor always uses ``surrogate``, whose
    feature space the centres live in.

    Resumes from ``run.checkpoint`` when it holds a state, saves one after every epoch, and
    stops at a checkpoint when preemption is requested.
    """
    rt, seed, clusters = run.rt, run.seed, data.clusters
    stream, augmenter = _generator_stream(data, batch, augment, cfg, run)
    lr_factor = batch.lr_factor(batch.per_device * rt.world_size)
    # One rank has nothing to synchronise: DDP would only copy every gradient through gloo.
    ddp = rt.wrap(bank) if rt.world_size > 1 else bank
    optimizer, schedule = _adam_cosine(ddp.parameters(), cfg, lr_factor, cfg.epochs * len(stream))
    objective = UCObjective.of(clusters, cfg)
    with torch.no_grad():
        coverage = GradientCoverage(tuple(bank().shape), rt.device)
    resumable = Resumable(
        run.checkpoint, bank=bank, optimizer=optimizer, schedule=schedule, coverage=coverage
    )
    # running sums of the epoch on this rank: KL per generator [k], items per generator [k]
    k = clusters.k
    epochs = EpochLoop(resumable, rt, run.progress, run.name, cfg.epochs, len(stream), 2 * k)
    loop = epochs.start()
    monitor = NoiseMonitor(
        surrogate, data.images, data.labels, clusters, cfg.eps, cfg.monitor_images, seed, rt
    )
    steps = _GeneratorEpochs(
        bank,
        ddp,
        surrogate if loss_model is None else loss_model,
        stream,
        augmenter,
        optimizer,
        schedule,
        objective,
        coverage,
        monitor,
        cfg,
        rt,
    )
    if not loop.history:  # the untrained bank, once per job
        loop.history.append({"epoch": -1, "loss": None, **steps.measure()})
        run.progress.info("generators before training: %s", _describe(loop.history[0]))
    epochs.run(loop, steps.batches, steps.step, steps.close)
    return steps.stats(loop, batch, lr_factor)


# Names of the epoch metrics in progress lines and W&B (`generators/kl`, `generators/hit`, ...).
_SHORT = {
    "loss": "kl",
    "saturated_fraction": "saturated",
    "target_hit_rate": "hit",
    "own_center_rate": "own",
    "surrogate_accuracy": "surrogate_acc",
}


def _shown(record: dict[str, Any]) -> dict[str, float]:
    return {
        _SHORT.get(key, key): value
        for key, value in record.items()
        if key not in ("epoch", "monitor_s") and value is not None
    }


def _describe(record: dict[str, Any]) -> str:
    return " ".join(f"{key} {value:.3g}" for key, value in _shown(record).items())
