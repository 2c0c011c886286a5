"""Supervised training of a FeatureClassifier with DDP: SGD, momentum, per-step cosine."""

from __future__ import annotations

import statistics
import time
from collections.abc import Collection, Iterable
from dataclasses import asdict, dataclass, field
from typing import Any

import torch

from ue_sweep.config import AugmentConfig, TrainingConfig
from ue_sweep.data.batches import Batch, TensorStream, batch_source
from ue_sweep.models.classifiers import FeatureClassifier
from ue_sweep.runtime.distributed import Runtime
from ue_sweep.store.checkpoint import Resumable, StageCheckpoint
from ue_sweep.train.evaluate import EvalResult, class_counts, evaluate
from ue_sweep.train.loop import EpochClose, EpochLoop
from ue_sweep.train.recipes import VictimRecipe
from ue_sweep.train.run import LabelledData, TrainingRun, sgd_cosine

EVAL_BATCH = 512
# Per-device batches below this get batch norm over all ranks by default (`sync_batchnorm: null`).
SYNC_BN_BELOW = 32


@dataclass
class EpochRecord:
    epoch: int
    train_loss: float
    train_accuracy: float
    test_accuracy: float | None
    test_balanced_accuracy: float | None
    lr: float
    seconds: float
    test_worst_class_accuracy: float | None = None

    @classmethod
    def close(
        cls,
        epoch: int,
        totals: list[float],
        test: EvalResult | None,
        lr: float,
        started: float,
    ) -> EpochRecord:
        """Epoch ``epoch``'s record from its all-reduced ``[loss sum, correct, samples]`` and its
        test result (None when the epoch was not evaluated)."""
        loss_sum, correct, seen = totals
        return cls(
            epoch=epoch,
            train_loss=loss_sum / max(seen, 1),
            train_accuracy=correct / max(seen, 1),
            test_accuracy=None if test is None else test.accuracy,
            test_balanced_accuracy=None if test is None else test.balanced_accuracy,
            lr=lr,
            seconds=time.perf_counter() - started,
            test_worst_class_accuracy=None if test is None else test.worst_class_accuracy,
        )

    def shown(self) -> dict[str, Any]:
        """The epoch's values on the progress line."""
        return {
            "loss": self.train_loss,
            "train_acc": self.train_accuracy,
            "test_acc": "-" if self.test_accuracy is None else self.test_accuracy,
        }


def step_sums(
    loss: torch.Tensor, logits: torch.Tensor, labels: torch.Tensor, device: torch.device
) -> torch.Tensor:
    """A step's ``[loss sum, correct, samples]`` in float64 (``loss``: the batch mean)."""
    n = labels.numel()
    return torch.stack(
        [
            loss.detach().double() * n,
            (logits.argmax(1) == labels).sum().double(),
            torch.tensor(float(n), device=device, dtype=torch.float64),
        ]
    ).to(device)


def evaluation_due(cfg: TrainingConfig, epoch: int) -> bool:
    """Whether ``epoch`` is tested: every ``eval_every`` epochs and each of the last
    ``average_last`` (whose mean is the victim's accuracy)."""
    return epoch >= cfg.epochs - cfg.average_last or (epoch + 1) % cfg.eval_every == 0


@dataclass
class TrainResult:
    test: EvalResult
    per_device_batch: int
    global_batch: int
    steps_per_epoch: int
    seconds: float
    sync_batchnorm: bool
    average_last: int
    history: list[EpochRecord] = field(default_factory=list)
    #: the recipe's diagnostics (:meth:`VictimRecipe.summary`) when one was given
    defense: dict[str, Any] | None = None
    #: CPU copies of the model's ``state_dict`` after each epoch asked for (``snapshot_epochs``),
    #: by epoch; not part of :meth:`as_dict`
    snapshots: dict[int, dict[str, torch.Tensor]] = field(default_factory=dict)

    def mean_last(self) -> dict[str, object]:
        """Test accuracy averaged over the last ``average_last`` epochs (all evaluated)."""
        last = [r for r in self.history if r.test_accuracy is not None][-self.average_last :]
        worst = [r.test_worst_class_accuracy for r in last]
        return {
            "epochs": len(last),
            "accuracy": statistics.fmean(r.test_accuracy for r in last),
            "balanced_accuracy": statistics.fmean(r.test_balanced_accuracy for r in last),
            # None where a resumed run's earlier epochs predate the record
            "worst_class_accuracy": None if None in worst else statistics.fmean(worst),
        }

    def as_dict(self) -> dict[str, object]:
        return {
            **self.test.as_dict(),
            "mean_last": self.mean_last(),
            "per_device_batch": self.per_device_batch,
            "global_batch": self.global_batch,
            "steps_per_epoch": self.steps_per_epoch,
            "sync_batchnorm": self.sync_batchnorm,
            "seconds": self.seconds,
            "history": [asdict(r) for r in self.history],
        } | ({} if self.defense is None else {"defense": self.defense})


class Snapshots:
    """Per-epoch weights kept for later evaluations (learnability), resumable with the stage.

    Copies are taken after the epoch, with the floating-point buffers (BN statistics) averaged
    over ranks as the evaluation sees them; the model itself is never touched, so training is
    the same with and without snapshots.
    """

    def __init__(self, epochs: Collection[int]) -> None:
        self.epochs = frozenset(epochs)
        self.states: dict[int, dict[str, torch.Tensor]] = {}

    def take(self, epoch: int, model: torch.nn.Module, rt: Runtime, averaged: bool) -> None:
        """Copy ``model`` after ``epoch`` if asked for; ``averaged``: its buffers already are.
        Collective on several ranks (every rank takes the same epochs)."""
        if epoch not in self.epochs:
            return
        state = {k: v.detach().to("cpu", copy=True) for k, v in model.state_dict().items()}
        if not averaged and rt.world_size > 1:
            for name, buffer in model.named_buffers():
                if buffer.is_floating_point():
                    state[name] = (rt.all_reduce_sum(buffer.detach()) / rt.world_size).cpu()
        self.states[epoch] = state

    def state_dict(self) -> dict[str, Any]:
        return {"states": self.states}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.states = {int(e): s for e, s in state["states"].items()}


def uses_sync_batchnorm(cfg: TrainingConfig, per_device: int, rt: Runtime) -> bool:
    """``cfg.sync_batchnorm``, or (null) on for per-device batches below 32 on several GPUs."""
    if cfg.sync_batchnorm is not None:
        return cfg.sync_batchnorm
    return rt.device.type == "cuda" and rt.world_size > 1 and per_device < SYNC_BN_BELOW


@dataclass
class EpochTester:
    """Tests a classifier after the epochs :func:`evaluation_due` names; keeps the last result
    (the victim's, the surrogate's and the DP victim's test side, one code path)."""

    model: FeatureClassifier
    data: LabelledData
    cfg: TrainingConfig
    rt: Runtime
    test: EvalResult | None = None

    def __post_init__(self) -> None:
        self.train_counts = class_counts(self.data.train_labels, self.data.num_classes)

    def evaluate(self) -> EvalResult:
        data = self.data
        return evaluate(
            self.model,
            data.test_images,
            data.test_labels,
            data.num_classes,
            EVAL_BATCH,
            self.rt,
            self.train_counts,
        )

    def close(
        self, epoch: int, totals: torch.Tensor, started: float, lr: float, average: bool
    ) -> EpochRecord:
        """Epoch ``epoch``'s record, tested when due; ``average``: the BN buffers are averaged
        over ranks first (DDP broadcast rank 0's before the last step, which then moved each
        rank's own)."""
        evaluated = evaluation_due(self.cfg, epoch)
        if evaluated:
            if average:
                self.rt.average_buffers(self.model)
            self.test = self.evaluate()
        return EpochRecord.close(
            epoch, totals.tolist(), self.test if evaluated else None, lr, started
        )

    def final(self) -> EvalResult:
        """The last epoch's test, or a fresh one when resumed after the last epoch had finished."""
        return self.evaluate() if self.test is None else self.test


@dataclass
class _VictimEpochs:
    """The batches, step and close of :func:`train_classifier`'s epoch loop."""

    ddp: torch.nn.Module
    recipe: VictimRecipe
    stream: TensorStream
    optimizer: torch.optim.Optimizer
    schedule: torch.optim.lr_scheduler.LRScheduler
    tester: EpochTester
    snapshots: Snapshots
    #: the training images as the recipe prepared them
    train_images: torch.Tensor

    def __post_init__(self) -> None:
        self.lr: float = self.optimizer.param_groups[0]["lr"]

    def batches(self, epoch: int, first_step: int) -> Iterable[Batch]:
        model, rt = self.tester.model, self.tester.rt
        model.train()
        labels = self.tester.data.train_labels
        self.recipe.begin_epoch(epoch, model, self.train_images, labels, rt, select=first_step == 0)
        self.lr = self.optimizer.param_groups[0]["lr"]
        return self.stream.epoch(epoch, first_step)

    def step(self, batch: Batch, sums: torch.Tensor) -> None:
        rt = self.tester.rt
        loss, logits = self.recipe.loss(self.ddp, batch, rt)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()
        self.schedule.step()
        sums += step_sums(loss, logits, batch.labels, rt.device)

    def close(self, epoch: int, totals: torch.Tensor, started: float) -> EpochClose:
        self.recipe.end_epoch(epoch, self.tester.rt)
        record = self.tester.close(epoch, totals, started, self.lr, average=True)
        evaluated = evaluation_due(self.tester.cfg, epoch)
        self.snapshots.take(epoch, self.tester.model, self.tester.rt, averaged=evaluated)
        return EpochClose(asdict(record), record.shown())


def _victim_resumable(
    checkpoint: StageCheckpoint,
    model: FeatureClassifier,
    optimizer: torch.optim.Optimizer,
    schedule: torch.optim.lr_scheduler.LRScheduler,
    recipe: VictimRecipe,
    snapshots: Snapshots,
) -> Resumable:
    """What a victim's checkpoint holds; the snapshots only when asked for, so checkpoints of
    plain victims keep their layout."""
    return Resumable(
        checkpoint,
        model=model,
        optimizer=optimizer,
        schedule=schedule,
        recipe=recipe,
        **({"snapshots": snapshots} if snapshots.epochs else {}),
    )


def train_classifier(
    model: FeatureClassifier,
    data: LabelledData,
    cfg: TrainingConfig,
    augment: AugmentConfig,
    run: TrainingRun,
    recipe: VictimRecipe | None = None,
    snapshot_epochs: Collection[int] = (),
) -> TrainResult:
    """Train ``model`` in place on uint8 images kept per ``run.placement``; evaluate on the test
    set.

    ``recipe`` is how the victim trains (a defense); None is plain ERM. Resumes from
    ``run.checkpoint`` when it holds a state (the recipe's included), saves one after every
    epoch, and stops at a checkpoint when preemption is requested. The weights after each epoch
    of ``snapshot_epochs`` (0-based) come back in :attr:`TrainResult.snapshots`.
    """
    rt = run.rt
    defended = recipe is not None
    recipe = recipe if defended else VictimRecipe()
    train_images = recipe.prepare(data.train_images, data.train_labels)
    per_device = max(1, cfg.batch_size // rt.world_size)
    stream = batch_source(
        train_images,
        data.train_labels,
        per_device,
        rt,
        run.seed,
        augment=augment,
        placement=run.placement,
        drop_last=True,
    )
    sync_bn = uses_sync_batchnorm(cfg, per_device, rt)
    if sync_bn:  # replaces the BatchNorm children in place: the caller's model is converted
        torch.nn.SyncBatchNorm.convert_sync_batchnorm(model)
    ddp = rt.wrap(model)
    optimizer, schedule = sgd_cosine(ddp.parameters(), cfg, cfg.epochs * len(stream))
    snapshots = Snapshots(snapshot_epochs)
    resumable = _victim_resumable(run.checkpoint, model, optimizer, schedule, recipe, snapshots)
    # running sums: [sum of per-sample losses, correct, samples] of the epoch on this rank
    epochs = EpochLoop(resumable, rt, run.progress, run.name, cfg.epochs, len(stream), num_sums=3)
    loop = epochs.start()
    tester = EpochTester(model, data, cfg, rt)
    steps = _VictimEpochs(ddp, recipe, stream, optimizer, schedule, tester, snapshots, train_images)
    epochs.run(loop, steps.batches, steps.step, steps.close)
    return TrainResult(
        test=tester.final(),
        per_device_batch=per_device,
        global_batch=per_device * rt.world_size,
        steps_per_epoch=len(stream),
        seconds=loop.seconds,
        sync_batchnorm=sync_bn,
        average_last=cfg.average_last,
        history=[EpochRecord(**r) for r in loop.history],
        defense=recipe.summary() if defended else None,
        snapshots=snapshots.states,
    )
