"""DP-SGD training of a DP-safe FeatureClassifier with Opacus, the same on 1 or N ranks.

The recipe is DP-SGD (Abadi et al. 2016) as Opacus implements it: Poisson-sampled logical
batches, per-sample gradients clipped to ``max_grad_norm`` (flat), Gaussian noise of standard
deviation ``noise_multiplier * max_grad_norm`` added once per step (by rank 0; Opacus'
``DistributedDPOptimizer`` then sums over ranks), divided by the expected batch size; then the
victim's SGD with momentum, weight decay and per-step cosine schedule. ``epsilon = inf`` is the
same recipe with no noise and no clipping: the non-private baseline with the same model,
optimizer and sampling.

Sampling and accounting. A logical batch of step s in epoch e draws one Bernoulli(q) mask over
the whole training set from ``(seed, e, s)``, identical on every rank, and rank r trains on the
selected images whose index is r modulo the world size: Poisson sampling of the whole set with
the global rate q, whatever the world size, so the accounting (q, steps, noise multiplier, hence
epsilon) and even the batches are those of one rank. q = 1 / steps_per_epoch with
steps_per_epoch = ceil(N / batch_size), Opacus' own convention (``PrivacyEngine.make_private``
takes q = 1 / len(data_loader)). Opacus' ``DistributedUniformWithReplacementSampler`` draws a
mask per rank instead and skips a rank's step when its local batch is empty, which leaves the
ranks out of step with each other; and the seeded masks let a preempted run resume mid-epoch.
Logical batches are split into physical ones by Opacus' ``BatchSplittingSampler`` (what
``BatchMemoryManager`` wraps), so memory is bounded by ``physical_batch`` whatever q N is.
"""

from __future__ import annotations

import math
import sys
import warnings
from collections.abc import Iterable, Iterator
from dataclasses import asdict, dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, TensorDataset

from ue_sweep.config import AugmentConfig, TrainingConfig
from ue_sweep.data.batches import Augmenter
from ue_sweep.models.classifiers import FeatureClassifier
from ue_sweep.runtime.distributed import Runtime
from ue_sweep.runtime.seeding import generator
from ue_sweep.store.checkpoint import Resumable
from ue_sweep.train.classifier import EpochRecord, EpochTester, TrainResult, step_sums
from ue_sweep.train.evaluate import input_dtype
from ue_sweep.train.loop import EpochClose, EpochLoop
from ue_sweep.train.recipes import upcast
from ue_sweep.train.run import LabelledData, TrainingRun

#: the clipping bound of ``epsilon = inf``: every per-sample factor min(1, C / norm) is exactly 1
NO_CLIPPING = sys.float_info.max
#: Opacus' per-sample gradients fire full backward hooks on modules whose inputs need no grad
_HOOK_WARNING = "Full backward hook is firing when gradients are computed"


@dataclass(frozen=True)
class PrivacySpec:
    """How private a DP victim is: a target ``epsilon`` (the noise multiplier found for it), or
    a given ``noise_multiplier`` (epsilon then what the accountant says was spent);
    ``epsilon = math.inf`` without a noise multiplier: no noise, no clipping."""

    epsilon: float
    delta: float
    max_grad_norm: float
    accountant: str = "prv"
    #: largest batch one forward-backward pass takes (memory only, not the maths)
    physical_batch: int = 256
    #: sigma set directly (the seeds' 1.0, 0.4-0.7) instead of found for a target epsilon
    noise_multiplier: float | None = None

    @property
    def private(self) -> bool:
        return self.noise_multiplier is not None or math.isfinite(self.epsilon)


class PoissonBatches:
    """This rank's part of each Poisson-sampled logical batch (see the module docstring)."""

    def __init__(
        self, n: int, sample_rate: float, steps: int, rank: int, world_size: int, seed: int
    ) -> None:
        self.n, self.sample_rate, self.steps = n, sample_rate, steps
        self.rank, self.world_size, self.seed = rank, world_size, seed

    def __len__(self) -> int:
        return self.steps

    def global_batch(self, epoch: int, step: int) -> torch.Tensor:
        """Indices of the whole logical batch (every rank's), ascending."""
        g = generator(self.seed, "poisson", epoch, step)
        return torch.nonzero(torch.rand(self.n, generator=g) < self.sample_rate).flatten()

    def epoch(self, epoch: int, start_step: int = 0) -> Iterator[torch.Tensor]:
        for step in range(start_step, self.steps):
            selected = self.global_batch(epoch, step)
            yield selected[selected % self.world_size == self.rank]


class _GeneratorState:
    """A torch.Generator as a checkpointable object (the noise stream resumes where it was)."""

    def __init__(self, g: torch.Generator) -> None:
        self.g = g

    def state_dict(self) -> dict[str, torch.Tensor]:
        return {"state": self.g.get_state()}

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        self.g.set_state(state["state"])


def sampling(n: int, batch_size: int, epochs: int) -> tuple[int, float, int]:
    """(steps per epoch, sample rate q, total steps) of a set of ``n`` with expected batch
    ``batch_size``: q = 1 / ceil(n / batch_size), as Opacus derives q from a data loader."""
    steps_per_epoch = max(1, math.ceil(n / batch_size))
    return steps_per_epoch, 1.0 / steps_per_epoch, epochs * steps_per_epoch


def noise_multiplier(spec: PrivacySpec, sample_rate: float, steps: int) -> float:
    """The given noise multiplier, or Opacus' for (epsilon, delta) after ``steps`` steps at
    rate q."""
    if not spec.private:
        return 0.0
    if spec.noise_multiplier is not None:
        return spec.noise_multiplier
    from opacus.accountants.utils import get_noise_multiplier

    return float(
        get_noise_multiplier(
            target_epsilon=spec.epsilon,
            target_delta=spec.delta,
            sample_rate=sample_rate,
            steps=steps,
            accountant=spec.accountant,
        )
    )


@dataclass(frozen=True)
class DPPlan:
    """The sampling and noise of a DP run, fixed before its first step."""

    n: int
    steps_per_epoch: int
    sample_rate: float
    total_steps: int
    noise_multiplier: float

    @classmethod
    def of(cls, n: int, cfg: TrainingConfig, spec: PrivacySpec) -> DPPlan:
        steps_per_epoch, q, total_steps = sampling(n, cfg.batch_size, cfg.epochs)
        return cls(n, steps_per_epoch, q, total_steps, noise_multiplier(spec, q, total_steps))


@dataclass
class _PrivateOptimizer:
    """Opacus' engine, its GradSampleModule and DP optimizer around the victim's SGD."""

    engine: Any
    module: torch.nn.Module
    optimizer: torch.optim.SGD
    dp_optimizer: Any
    schedule: torch.optim.lr_scheduler.CosineAnnealingLR


def _make_private(
    model: FeatureClassifier,
    cfg: TrainingConfig,
    spec: PrivacySpec,
    plan: DPPlan,
    noise: torch.Generator,
) -> _PrivateOptimizer:
    """Opacus' distributed path over the job's process group (world size 1 included, one path):
    DPDDP broadcasts rank 0's weights; make_private then builds the DistributedDPOptimizer."""
    from opacus import PrivacyEngine
    from opacus.distributed import DifferentiallyPrivateDistributedDataParallel as DPDDP

    optimizer = torch.optim.SGD(
        model.parameters(), lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay
    )
    with warnings.catch_warnings():  # secure_mode=False is recorded in the privacy record
        warnings.filterwarnings("ignore", message="Secure RNG turned off")
        engine = PrivacyEngine(accountant=spec.accountant)
    # The loader only tells make_private q = 1 / len(loader); batches come from PoissonBatches.
    index_loader = DataLoader(TensorDataset(torch.arange(plan.n)), batch_size=cfg.batch_size)
    module, dp_optimizer, _ = engine.make_private(
        module=DPDDP(model),
        optimizer=optimizer,
        data_loader=index_loader,
        noise_multiplier=plan.noise_multiplier,
        max_grad_norm=spec.max_grad_norm if spec.private else NO_CLIPPING,
        noise_generator=noise,
        poisson_sampling=True,
    )
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(
        optimizer, T_max=plan.total_steps, eta_min=cfg.min_lr
    )
    return _PrivateOptimizer(engine, module, optimizer, dp_optimizer, schedule)


@dataclass
class _PrivateEpochs:
    """The batches, step and close of :func:`train_private_classifier`'s epoch loop."""

    dp: _PrivateOptimizer
    logical_batches: PoissonBatches
    augmenter: Augmenter
    tester: EpochTester
    physical_batch: int

    def __post_init__(self) -> None:
        self.lr: float = self.dp.optimizer.param_groups[0]["lr"]

    def batches(self, epoch: int, first_step: int) -> Iterable[torch.Tensor]:
        self.tester.model.train()
        self.augmenter.set_epoch(epoch)
        self.lr = self.dp.optimizer.param_groups[0]["lr"]
        return self.logical_batches.epoch(epoch, first_step)

    def step(self, local: torch.Tensor, sums: torch.Tensor) -> None:
        from opacus.utils.batch_memory_manager import BatchSplittingSampler

        dp, data = self.dp, self.tester.data
        chunks = BatchSplittingSampler(
            sampler=[local.tolist()], max_batch_size=self.physical_batch, optimizer=dp.dp_optimizer
        )
        for chunk in chunks:
            sums += _physical_step(
                dp.module,
                dp.dp_optimizer,
                chunk,
                data.train_images,
                data.train_labels,
                self.augmenter,
                self.tester.rt,
            )
        dp.schedule.step()

    def close(self, epoch: int, totals: torch.Tensor, started: float) -> EpochClose:
        record = self.tester.close(epoch, totals, started, self.lr, average=False)
        return EpochClose(asdict(record), record.shown())


def train_private_classifier(
    model: FeatureClassifier,
    data: LabelledData,
    cfg: TrainingConfig,
    spec: PrivacySpec,
    augment: AugmentConfig,
    run: TrainingRun,
) -> tuple[TrainResult, dict[str, Any]]:
    """Train the DP-safe ``model`` in place with DP-SGD; returns the result and the privacy
    record (epsilon spent from the accountant, noise multiplier, sample rate, steps, ...).

    Resumes from ``run.checkpoint`` (the accountant and the noise stream included), saves one
    after every epoch, and stops at a checkpoint when preemption is requested (``run.placement``
    is not used: batches are gathered from where the images are).
    """
    rt, seed = run.rt, run.seed
    n = len(data.train_images)
    plan = DPPlan.of(n, cfg, spec)
    logical_batches = PoissonBatches(
        n, plan.sample_rate, plan.steps_per_epoch, rt.rank, rt.world_size, seed
    )
    augmenter = Augmenter(augment, n, seed)
    noise = generator(seed, "dp-noise")
    dp = _make_private(model, cfg, spec, plan, noise)
    resumable = Resumable(
        run.checkpoint,
        model=model,
        optimizer=dp.optimizer,
        schedule=dp.schedule,
        accountant=dp.engine.accountant,
        noise=_GeneratorState(noise),
    )
    # running sums: [sum of per-sample losses, correct, samples] of the epoch on this rank
    epochs = EpochLoop(
        resumable, rt, run.progress, run.name, cfg.epochs, plan.steps_per_epoch, num_sums=3
    )
    loop = epochs.start()
    tester = EpochTester(model, data, cfg, rt)
    steps = _PrivateEpochs(dp, logical_batches, augmenter, tester, spec.physical_batch)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=_HOOK_WARNING)
        epochs.run(loop, steps.batches, steps.step, steps.close)
    q = plan.sample_rate
    result = TrainResult(
        test=tester.final(),
        per_device_batch=max(1, round(q * n / rt.world_size)),
        global_batch=max(1, round(q * n)),
        steps_per_epoch=plan.steps_per_epoch,
        seconds=loop.seconds,
        sync_batchnorm=False,
        average_last=cfg.average_last,
        history=[EpochRecord(**r) for r in loop.history],
    )
    return result, _privacy_record(spec, plan, dp.engine.accountant, cfg.epochs)


def _privacy_record(
    spec: PrivacySpec, plan: DPPlan, accountant: Any, epochs: int
) -> dict[str, Any]:
    """What the run guarantees, as the result records it."""
    return {
        # None: the noise multiplier was given, epsilon is only what was spent
        "target_epsilon": None
        if spec.noise_multiplier is not None
        else (spec.epsilon if spec.private else "inf"),
        # what the accountant says was spent over every step taken (None: no guarantee)
        "epsilon": float(accountant.get_epsilon(spec.delta)) if spec.private else None,
        "delta": spec.delta,
        "noise_multiplier": plan.noise_multiplier,
        "max_grad_norm": spec.max_grad_norm if spec.private else None,
        "sample_rate": plan.sample_rate,
        "steps": plan.total_steps,
        # steps the accountant saw (its history compresses equal steps into one entry)
        "accounted_steps": sum(int(s) for _, _, s in accountant.history),
        "steps_per_epoch": plan.steps_per_epoch,
        "expected_batch": plan.sample_rate * plan.n,
        "accountant": spec.accountant,
        "clipping": "flat" if spec.private else "none",
        "sampling": "poisson",
        "secure_mode": False,
        "epochs": epochs,
    }


def _physical_step(
    module: torch.nn.Module,
    optimizer: Any,
    chunk: list[int],
    images: torch.Tensor,
    labels: torch.Tensor,
    augmenter: Augmenter,
    rt: Runtime,
) -> torch.Tensor:
    """One physical batch through the GradSampleModule and the DP optimizer (which steps only
    after a logical batch's last chunk); returns its [loss sum, correct, samples]."""
    idx = torch.as_tensor(chunk, dtype=torch.long)
    x = images[idx.to(images.device)].to(rt.device, input_dtype(module)).div_(255)
    x = augmenter(x, idx)
    y = labels[idx.to(labels.device)].to(rt.device)
    with rt.autocast():
        logits, _ = module(x)
    # An empty local batch still runs forward and backward: the ranks step together.
    loss = F.cross_entropy(upcast(logits), y) if len(idx) else logits.sum() * 0.0
    loss.backward()
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return step_sums(loss, logits, y, rt.device)
