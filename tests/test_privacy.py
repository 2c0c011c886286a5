"""DP-SGD victims (Opacus), long-tailed training subsets and the per-class metrics of every victim.

Accounting is checked against an independent Opacus accountant; 1 vs 2 gloo ranks and the
epsilon = inf baseline against plain training are exact checks in float64 with few steps.
"""

from __future__ import annotations

import json
import math

import pytest
import torch
import torch.nn.functional as F

from tests import dist_workers
from tests.conftest import SMOKE, run_cli
from tests.dist_workers import separable_images
from ue_sweep.config import AugmentConfig, ImbalanceConfig, ModelSpec, TrainingConfig
from ue_sweep.data.batches import Augmenter
from ue_sweep.data.imbalance import apply_imbalance, imbalanced_counts
from ue_sweep.data.splits import ImageSplits
from ue_sweep.errors import ConfigError
from ue_sweep.evals.privacy.training import (
    PoissonBatches,
    PrivacySpec,
    sampling,
    train_private_classifier,
)
from ue_sweep.models.classifiers import build_classifier
from ue_sweep.runtime.distributed import spawn
from ue_sweep.runtime.env import DistEnv
from ue_sweep.runtime.progress import Progress
from ue_sweep.train.evaluate import EvalResult
from ue_sweep.train.run import LabelledData, TrainingRun

# ------------------------------------------------------------------------------------------
# Imbalance
# ------------------------------------------------------------------------------------------


def test_exponential_and_step_counts_follow_the_ldam_profile_exactly():
    # A balanced set: n_max is the class size, as in LDAM-DRW's imbalance_cifar.py.
    assert imbalanced_counts([500] * 10, "exponential", 10.0) == [
        int(500 * 0.1 ** (c / 9)) for c in range(10)
    ]
    assert imbalanced_counts([500] * 10, "exponential", 100.0)[-1] == 5
    assert imbalanced_counts([500] * 10, "step", 10.0) == [500] * 5 + [50] * 5
    # odd class count: the extra class joins the tail (LDAM's code would drop it)
    assert imbalanced_counts([40] * 5, "step", 4.0) == [40, 40, 10, 10, 10]
    assert imbalanced_counts([7, 9, 3], "none", 10.0) == [7, 9, 3]


def test_an_unbalanced_set_gets_the_largest_n_max_every_class_can_supply():
    available = [100, 30, 200, 5]
    counts = imbalanced_counts(available, "exponential", 8.0)
    factors = [(1 / 8) ** (c / 3) for c in range(4)]
    # exactly the profile for some n_max, within what each class has...
    n_max = counts[0]
    assert counts == [int(n_max * f) for f in factors]
    assert all(k <= a for k, a in zip(counts, available, strict=True))
    # ...and the largest n_max with n_max * factor <= available for every class (before
    # rounding down, so the largest / smallest ratio stays rho): one more exceeds a class
    assert all(n_max * f <= a for f, a in zip(factors, available, strict=True))
    assert any((n_max + 1) * f > a for f, a in zip(factors, available, strict=True))
    assert counts == [40, 20, 10, 5]


def _index_of(images: torch.Tensor) -> torch.Tensor:
    """The training index a toy image encodes (see :func:`_splits`)."""
    return images[:, 0, 0, 0].long() * 256 + images[:, 0, 0, 1].long()


def _splits(n_per_class: int, classes: int) -> ImageSplits:
    """Shuffled labels; image i holds i in its first two pixels, so a subset shows its rows."""
    g = torch.Generator().manual_seed(0)
    n = classes * n_per_class
    labels = torch.arange(classes).repeat_interleave(n_per_class)[torch.randperm(n, generator=g)]
    index = torch.arange(n)
    images = torch.zeros(n, 1, 2, 2, dtype=torch.uint8)
    images[:, 0, 0, 0], images[:, 0, 0, 1] = index // 256, index % 256
    return ImageSplits(
        "toy",
        images,
        labels,
        images[:7],
        labels[:7],
        tuple(map(str, range(classes))),
        "toy",
    )


def test_the_long_tailed_subset_is_seeded_exact_and_leaves_the_test_set():
    data = _splits(60, 6)
    cfg = ImbalanceConfig(profile="exponential", ratio=10.0)
    subset = apply_imbalance(data, cfg, seed=0)
    counts = torch.bincount(subset.train_labels, minlength=6).tolist()
    assert counts == imbalanced_counts([60] * 6, "exponential", 10.0)
    assert counts[0] == 60 and counts[-1] == 6
    assert torch.equal(subset.test_images, data.test_images)
    assert torch.equal(subset.test_labels, data.test_labels)
    # Every kept image is a training image with its own label, in dataset order.
    kept = _index_of(subset.train_images)
    assert bool((kept[1:] > kept[:-1]).all())
    assert torch.equal(subset.train_labels, data.train_labels[kept])
    again = apply_imbalance(data, cfg, seed=0)
    assert torch.equal(again.train_images, subset.train_images)
    other = apply_imbalance(data, cfg, seed=1)
    assert not torch.equal(other.train_images, subset.train_images)
    assert torch.bincount(other.train_labels, minlength=6).tolist() == counts
    assert apply_imbalance(data, ImbalanceConfig(), seed=0) is data


def test_a_ratio_that_empties_a_class_is_refused_naming_the_key():
    data = _splits(5, 3)
    with pytest.raises(ConfigError, match=r"dataset\.imbalance\.ratio"):
        apply_imbalance(data, ImbalanceConfig(profile="step", ratio=10.0), seed=0)


# ------------------------------------------------------------------------------------------
# Metrics of every victim
# ------------------------------------------------------------------------------------------


def test_metrics_of_a_hand_made_confusion_matrix():
    confusion = (
        (8, 2, 0, 0),  # class 0: 10 test images, 8 right
        (1, 3, 1, 0),  # class 1: 5, 3 right
        (0, 1, 4, 0),  # class 2: 5, 4 right
        (0, 0, 0, 0),  # class 3: none in the test set
    )
    result = EvalResult(confusion, train_counts=(5, 50, 20, 1))
    assert result.accuracy == pytest.approx(15 / 20)
    assert result.per_class_accuracy == pytest.approx([0.8, 0.6, 0.8, None])
    assert result.balanced_accuracy == pytest.approx((0.8 + 0.6 + 0.8) / 3)
    # F1 = 2 TP / (2 TP + FP + FN) per class present in the test set
    assert result.macro_f1 == pytest.approx((16 / 19 + 6 / 11 + 8 / 10) / 3)
    assert result.worst_class_accuracy == pytest.approx(0.6)
    # classes by training frequency 1 (50), 2 (20), 0 (5), 3 (1): thirds [1, 2], [0], [3]
    assert result.frequency_groups == {"head": [1, 2], "medium": [0], "tail": [3]}
    assert result.group_accuracy == pytest.approx({"head": 0.7, "medium": 0.8, "tail": None})
    record = result.as_dict()
    assert (record["correct"], record["total"]) == (15, 20)
    assert record["per_class_accuracy"] == result.per_class_accuracy
    assert result.per_class_correct == (8, 3, 4, 0) and result.per_class_total == (10, 5, 5, 0)


# ------------------------------------------------------------------------------------------
# DP-safe victims
# ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("arch", ["small_cnn", "resnet18"])
def test_dp_safe_victims_pass_the_validator_and_take_a_dp_step(arch):
    from opacus import GradSampleModule
    from opacus.optimizers import DPOptimizer
    from opacus.validators import ModuleValidator

    torch.manual_seed(0)
    spec = ModelSpec(arch=arch, width=4)
    model = build_classifier(spec, in_channels=1, num_classes=3, image_size=8, dp_safe=True)
    assert ModuleValidator.validate(model, strict=False) == []
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in model.modules())
    before = [p.detach().clone() for p in model.parameters()]
    module = GradSampleModule(model)
    optimizer = DPOptimizer(
        torch.optim.SGD(model.parameters(), lr=0.1),
        noise_multiplier=1.0,
        max_grad_norm=1.0,
        expected_batch_size=4,
    )
    logits, features = module(torch.rand(4, 1, 8, 8))
    assert logits.shape == (4, 3) and features.shape == (4, model.feature_dim)
    F.cross_entropy(logits, torch.tensor([0, 1, 2, 0])).backward()
    optimizer.step()
    after = list(model.parameters())
    assert all(torch.isfinite(p).all() for p in after)
    assert all(not torch.equal(a, b) for a, b in zip(after, before, strict=True))


def test_the_stock_resnet_fails_under_opacus_hooks_as_in_opacus_issue_828():
    from opacus import GradSampleModule
    from opacus.validators import ModuleValidator

    stock = build_classifier(ModelSpec(arch="resnet18"), in_channels=1, num_classes=3, image_size=8)
    module = GradSampleModule(ModuleValidator.fix(stock))
    with pytest.raises(RuntimeError, match="modified inplace"):
        module(torch.rand(2, 1, 8, 8))


# ------------------------------------------------------------------------------------------
# DP-SGD: sampling, accounting, world size, the epsilon = inf baseline
# ------------------------------------------------------------------------------------------


def test_poisson_batches_are_the_same_whole_batches_for_any_world_size():
    one = PoissonBatches(50, 0.2, 4, rank=0, world_size=1, seed=7)
    shards = [PoissonBatches(50, 0.2, 4, rank=r, world_size=3, seed=7) for r in range(3)]
    for epoch in range(2):
        whole = list(one.epoch(epoch))
        parts = list(zip(*(s.epoch(epoch) for s in shards), strict=True))
        assert len(whole) == len(parts) == 4
        for batch, pieces in zip(whole, parts, strict=True):
            assert torch.equal(torch.cat(pieces).sort().values, batch)
        # resuming at step 2 draws the same batches
        assert all(torch.equal(a, b) for a, b in zip(whole[2:], one.epoch(epoch, 2), strict=True))
    assert not torch.equal(one.global_batch(0, 0), one.global_batch(1, 0))


def _train(epsilon: float, accountant: str = "prv", physical_batch: int = 256, dtype=torch.float32):
    """A tiny DP victim on one rank: (model, TrainResult, privacy record)."""
    from ue_sweep.config import TrainerConfig
    from ue_sweep.runtime.distributed import runtime

    images, labels = separable_images(36, 3), torch.arange(36) % 3
    with runtime(DistEnv(), TrainerConfig(accelerator="cpu", threads=1)) as rt:
        torch.manual_seed(0)
        spec = ModelSpec(width=4)
        model = build_classifier(spec, in_channels=1, num_classes=3, image_size=8, dp_safe=True)
        model = model.to(dtype)
        result, privacy = train_private_classifier(
            model,
            LabelledData(images, labels, images, labels, 3),
            TrainingConfig(epochs=2, batch_size=8, lr=0.1, average_last=1),
            PrivacySpec(epsilon, 1e-3, 1.0, accountant, physical_batch),
            AugmentConfig(crop_padding=1, hflip=False),
            TrainingRun(rt, seed=5, progress=Progress("none"), name="dp"),
        )
    return model, result, privacy


@pytest.mark.parametrize("accountant", ["prv", "rdp"])
def test_epsilon_spent_is_within_the_target_and_what_an_independent_accountant_says(accountant):
    from opacus.accountants import create_accountant

    _, result, privacy = _train(2.0, accountant)
    _, q, steps = sampling(36, 8, 2)
    assert (privacy["sample_rate"], privacy["steps"]) == (q, steps) == (1 / 5, 10)
    assert privacy["accounted_steps"] == steps, "the accountant saw every step"
    assert privacy["noise_multiplier"] > 0 and privacy["max_grad_norm"] == 1.0
    assert privacy["epsilon"] <= 2.0
    independent = create_accountant(mechanism=accountant)
    independent.history = [(privacy["noise_multiplier"], privacy["sample_rate"], privacy["steps"])]
    assert privacy["epsilon"] == pytest.approx(independent.get_epsilon(delta=1e-3), rel=1e-9)
    # within Opacus' search tolerance of the target: the noise is not needlessly large
    assert privacy["epsilon"] > 2.0 - 0.02
    assert len(result.history) == 2 and result.test.total == 36


@pytest.mark.slow
def test_one_and_two_gloo_ranks_give_the_same_accounting_and_model(tmp_path):
    one, two = tmp_path / "one.pt", tmp_path / "two.pt"
    dist_workers.train_private(DistEnv(), str(one), 4.0)
    spawn(dist_workers.train_private, 2, (str(two), 4.0))
    a, b = torch.load(one, weights_only=False), torch.load(two, weights_only=False)
    for key in ("epsilon", "noise_multiplier", "sample_rate", "steps", "accounted_steps"):
        assert a["privacy"][key] == b["privacy"][key], key
    assert a["privacy"]["epsilon"] <= 4.0
    # the same Poisson batches and rank 0's noise: the same model, to float64 rounding
    for name, tensor in a["state"].items():
        assert torch.allclose(tensor, b["state"][name], rtol=0, atol=1e-10), name
    assert a["result"]["history"][-1]["train_loss"] == pytest.approx(
        b["result"]["history"][-1]["train_loss"], rel=1e-9
    )


def test_epsilon_inf_is_plain_sgd_on_the_same_poisson_batches():
    """No noise, no clipping: the DP path (per-sample gradients, physical chunks of 3 summed
    into one step) equals a plain SGD loop on the mean loss over the expected batch size."""
    model, _, privacy = _train(math.inf, physical_batch=3, dtype=torch.float64)
    assert privacy["epsilon"] is None and privacy["noise_multiplier"] == 0.0
    assert privacy["clipping"] == "none"

    images, labels = separable_images(36, 3), torch.arange(36) % 3
    torch.manual_seed(0)
    spec = ModelSpec(width=4)
    plain = build_classifier(spec, in_channels=1, num_classes=3, image_size=8, dp_safe=True)
    plain = plain.double()
    cfg = TrainingConfig(epochs=2, batch_size=8, lr=0.1, average_last=1)
    steps_per_epoch, q, steps = sampling(36, cfg.batch_size, cfg.epochs)
    optimizer = torch.optim.SGD(
        plain.parameters(), lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay
    )
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, steps, cfg.min_lr)
    batches = PoissonBatches(36, q, steps_per_epoch, 0, 1, seed=5)
    augment = Augmenter(AugmentConfig(crop_padding=1, hflip=False), 36, seed=5)
    expected = int(36 * q)  # Opacus' expected batch size
    for epoch in range(cfg.epochs):
        augment.set_epoch(epoch)
        for idx in batches.epoch(epoch):
            x = augment(images[idx].double() / 255, idx)
            logits, _ = plain(x)
            loss = F.cross_entropy(logits, labels[idx], reduction="sum") / expected
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            schedule.step()
    for (name, a), b in zip(model.state_dict().items(), plain.state_dict().values(), strict=True):
        assert torch.allclose(a, b, rtol=0, atol=1e-10), name
    first = next(
        iter(build_classifier(spec, in_channels=1, num_classes=3, image_size=8).parameters())
    )
    assert not torch.allclose(first.double(), next(iter(plain.parameters()))), "it trained"


# ------------------------------------------------------------------------------------------
# End to end
# ------------------------------------------------------------------------------------------


@pytest.mark.slow
def test_a_digits_run_with_two_epsilons_records_privacy_and_per_class_metrics(tmp_path):
    args = [
        *SMOKE,
        "hydra.run.dir=sweep/job",
        "trainer.threads=1",
        "evals=[victims,privacy]",
        "evals.victims.controls=[uniform,sign]",
        "evals.privacy.epsilons=[2,8]",
        "evals.privacy.controls=[uniform,sign]",
        "dataset.imbalance.profile=exponential",
        "dataset.imbalance.ratio=10",
    ]
    proc = run_cli(args, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    record = json.loads((tmp_path / "sweep" / "job" / "result.json").read_text())
    counts = record["dataset"]["train_class_counts"]
    assert counts == [int(counts[0] * 0.1 ** (c / 9)) for c in range(10)]
    assert record["dataset"]["test_size"] == 450, "the test set as released"
    victims = record["metrics"]
    strongest = min(["uniform", "sign"], key=victims["accuracy"].__getitem__)
    outcome = record["evals"]["privacy"]
    assert outcome["control"] == strongest
    assert outcome["control_source"] == "victims trained earlier in this job"
    assert outcome["delta"] == pytest.approx(1 / (10 * sum(counts)))
    for condition in ("clean", "protected", "control"):
        for eps in ("2", "8"):
            victim = outcome["victims"][condition][eps]
            privacy = victim["privacy"]
            assert privacy["epsilon"] <= float(eps) and privacy["accountant"] == "prv"
            assert privacy["steps"] == privacy["accounted_steps"] > 0
            assert len(victim["per_class_accuracy"]) == 10
            assert victim["train_class_counts"] == counts
            assert set(victim["group_accuracy"]) == {"head", "medium", "tail"}
            assert victim["worst_class_accuracy"] <= victim["accuracy"]
            name = strongest if condition == "control" else condition
            assert record["stages"][f"victim-dp-{name}-eps{eps}"]["status"] == "computed"
    assert "privacy (DP-SGD victims" in proc.stdout
    assert "victim-untrained" not in record["stages"], "the control came from the victims run"

    report = run_cli(["report", "sweep", "--no-wandb"], cwd=tmp_path)
    assert report.returncode == 0, report.stderr[-3000:]
    out = tmp_path / "sweep" / "report"
    assert "## Privacy (DP-SGD victims)" in (out / "report.md").read_text()
    rows = (out / "privacy.csv").read_text().splitlines()
    assert len(rows) == 1 + 2 and rows[1].startswith("digits,2,")
    for png in ("privacy_vs_epsilon.png", "privacy_recall.png"):
        assert (out / png).stat().st_size > 10_000
