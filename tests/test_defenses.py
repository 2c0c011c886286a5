"""Defense recipes: EPIC's selection, Image Shortcut Squeezing, PGD, UEraser, and the recipe hooks
of train_classifier (unchanged without a defense, checkpointed with one)."""

from __future__ import annotations

import itertools
import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from tests import dist_workers
from tests.test_distributed import _run
from ue_sweep.config import AugmentConfig, ModelSpec, TrainerConfig, TrainingConfig
from ue_sweep.data.batches import Batch
from ue_sweep.evals.defenses.adversarial import AdversarialConfig, pgd
from ue_sweep.evals.defenses.coreset import (
    assign,
    class_budgets,
    greedy_facility_location,
    similarity,
)
from ue_sweep.evals.defenses.epic import Epic, EpicConfig
from ue_sweep.evals.defenses.iss import grayscale, jpeg, posterize
from ue_sweep.evals.defenses.registry import DEFENSES, build_defense
from ue_sweep.evals.defenses.ueraser import UEraser, UEraserConfig
from ue_sweep.models.classifiers import build_classifier
from ue_sweep.runtime import preemption
from ue_sweep.runtime.distributed import runtime
from ue_sweep.runtime.env import DistEnv
from ue_sweep.runtime.preemption import Preempted
from ue_sweep.runtime.progress import Progress
from ue_sweep.store.checkpoint import NO_CHECKPOINT, StageCheckpoint
from ue_sweep.train.classifier import train_classifier
from ue_sweep.train.recipes import VictimRecipe
from ue_sweep.train.run import LabelledData, TrainingRun


@pytest.fixture
def rt():
    """A single-process gloo group on one CPU thread: these tensors are tiny, and more threads
    only wait for each other on a shared machine."""
    with runtime(DistEnv(), TrainerConfig(accelerator="cpu", threads=1)) as started:
        yield started


# ---- EPIC: greedy facility location, budgets, drops ------------------------------------------


def _objective(sim: torch.Tensor, subset: tuple[int, ...]) -> float:
    return float(sim[:, list(subset)].amax(1).sum())


def _assert_greedy(sim: torch.Tensor, order: list[int]) -> None:
    """Each pick has the largest marginal gain given the picks before it, up to float64 rounding.

    Gains that tie up to rounding may be broken either way (a vectorised sum and a loop round
    differently on AVX2 and AVX-512), so the test checks the greedy property, not one tie-break.
    """
    assert len(set(order)) == len(order)
    for step, j in enumerate(order):
        prefix = tuple(order[:step])
        base = _objective(sim, prefix) if prefix else 0.0
        gains = [_objective(sim, (*prefix, c)) - base for c in range(len(sim)) if c not in prefix]
        assert _objective(sim, (*prefix, j)) - base >= max(gains) - 1e-12


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_greedy_facility_location_against_brute_force(seed):
    g = torch.Generator().manual_seed(seed)
    points = torch.randn(8, 3, generator=g, dtype=torch.float64)
    sim = similarity(points)
    assert torch.allclose(sim.diagonal(), torch.ones(8, dtype=torch.float64))
    for budget in range(1, 5):
        greedy = greedy_facility_location(sim, budget).tolist()
        _assert_greedy(sim, greedy)
        best = max(_objective(sim, s) for s in itertools.combinations(range(8), budget))
        assert _objective(sim, tuple(greedy)) >= (1 - 1 / math.e) * best
        if budget == 1:  # one medoid: greedy is the exact optimum
            assert _objective(sim, tuple(greedy)) == pytest.approx(best, rel=1e-15)


def test_greedy_facility_location_order_without_ties():
    """Gains far apart (exact in binary): the order is unique, and so is the product's."""
    sim = torch.tensor(
        [
            [1.0, 0.5, 0.0, 0.0],
            [0.5, 1.0, 0.0, 0.25],
            [0.0, 0.0, 1.0, 0.0],
            [0.0, 0.25, 0.0, 1.0],
        ],
        dtype=torch.float64,
    )
    # gains: 1.5, 1.75, 1.0, 1.25 -> pick 1; then 0.5, -, 1.0, 0.75 -> 2; then 0.5, 0.75 -> 3
    assert greedy_facility_location(sim, 4).tolist() == [1, 2, 3, 0]


def test_similarity_is_the_euclidean_kernel_over_the_dimension():
    g = torch.tensor([[0.0, 0.0, 0.0], [3.0, 4.0, 0.0]], dtype=torch.float64)
    assert similarity(g)[0, 1].item() == pytest.approx(math.exp(-5 / 3), rel=1e-15)


@pytest.mark.parametrize(
    ("counts", "total"),
    [([50, 7, 1, 0, 142], 40), ([1, 1, 1, 97], 4), ([3, 3, 3], 5), ([13, 0, 29, 2, 5], 10)],
)
def test_class_budgets_sum_to_the_subset_size_on_imbalanced_classes(counts, total):
    budgets = class_budgets(counts, total)
    assert sum(budgets) == total
    n = sum(counts)
    for count, budget in zip(counts, budgets, strict=True):
        assert (budget >= 1) if count else (budget == 0)
        assert budget <= count
        assert budget <= max(1, math.ceil(total * count / n)), "never above the rounded-up quota"
    assert class_budgets([3, 3, 3], 5) == [2, 2, 1], "ties go to the lower class index"
    assert class_budgets([1, 1, 1, 97], 4) == [1, 1, 1, 1], "the minimum of 1 per class wins"


def test_a_budget_below_the_class_count_gives_each_class_one_medoid():
    assert class_budgets([5, 5, 5], 2) == [1, 1, 1]


def test_points_join_their_most_similar_medoid_and_medoids_their_own():
    points = torch.tensor([[0.0], [0.1], [5.0], [5.2], [0.0]], dtype=torch.float64)
    sim = similarity(points)
    medoids = torch.tensor([4, 2])  # 4 duplicates 0: medoid 4 must still be its own
    assert assign(sim, medoids).tolist() == [0, 0, 1, 1, 0]


class TableModel(nn.Module):
    """Logits looked up by the index each 1x1 image encodes: gradient proxies set by hand."""

    def __init__(self, logits: torch.Tensor) -> None:
        super().__init__()
        self.logits = logits

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, None]:
        return self.logits[x.flatten(1)[:, 0].mul(255).round().long()], None


def _indexed_images(n: int) -> torch.Tensor:
    return torch.arange(n, dtype=torch.uint8).view(n, 1, 1, 1)


def _clusters(labels: torch.Tensor, isolated: list[int]) -> torch.Tensor:
    """Every point at its class's corner of logit space, the ``isolated`` ones far off in
    another class's direction."""
    logits = 6.0 * F.one_hot(labels, 3).double()
    for i in isolated:
        logits[i] = 6.0 * F.one_hot((labels[i] + 1) % 3, 3).double()
    return logits


def test_a_planted_isolated_point_per_class_is_dropped_and_never_returns(rt):
    labels = torch.arange(30) % 3  # 10 per class: budget round(0.2 * 30) = 6, 2 per class
    images = _indexed_images(30)
    epic = Epic(EpicConfig(subset_fraction=0.2, start_epoch=0, interval=1))
    model = TableModel(_clusters(labels, isolated=[0, 1, 2]))
    epic.begin_epoch(0, model, images, labels, rt, select=True)
    assert epic.weights.nonzero().squeeze(1).tolist() == list(range(3, 30))
    # Next selection: the dropped points look ordinary now, points 3, 4 and 5 are isolated;
    # 27 points left: budgets [2, 2, 1], so class 2's single medoid takes its point 5 along.
    model.logits = _clusters(labels, isolated=[3, 4, 5])
    epic.begin_epoch(1, model, images, labels, rt, select=True)
    assert (epic.weights == 0).nonzero().squeeze(1).tolist() == [0, 1, 2, 3, 4]
    first, second = epic.summary()["selections"]
    assert (first["points"], first["medoids"], first["dropped"]) == (30, 6, 3)
    assert (second["points"], second["medoids"], second["dropped"]) == (27, 5, 2)
    assert second["dropped_total"] == epic.summary()["dropped"] == 5
    assert second["dropped_per_class"] == [2, 2, 1]
    assert epic.weights.sum().item() == 25 == second["training"]


def test_medoid_training_weights_each_medoid_by_its_cluster(rt):
    labels = torch.arange(30) % 3
    epic = Epic(EpicConfig(subset_fraction=0.2, start_epoch=0, interval=1, train_on="medoids"))
    model = TableModel(_clusters(labels, isolated=[0, 1, 2]))
    epic.begin_epoch(0, model, _indexed_images(30), labels, rt, select=True)
    medoids = epic.weights.nonzero().squeeze(1).tolist()
    assert medoids == [3, 4, 5], "the first point of each class's cluster; isolated ones dropped"
    assert epic.weights[medoids].tolist() == [9.0, 9.0, 9.0]


def test_epic_selects_only_on_its_epochs(rt):
    labels = torch.arange(30) % 3
    epic = Epic(EpicConfig(start_epoch=2, interval=3))
    model = TableModel(_clusters(labels, isolated=[0]))
    due = [
        e for e in range(9) if epic.select(e, model, _indexed_images(30), labels, rt) is not None
    ]
    assert due == [2, 5, 8]


def test_epic_selection_is_the_same_on_one_and_two_ranks(tmp_path):
    one = _run(dist_workers.epic_selection, 1, str(tmp_path / "one.pt"))
    two = _run(dist_workers.epic_selection, 2, str(tmp_path / "two.pt"))
    for a, b in zip(one["weights"], two["weights"], strict=True):
        assert torch.equal(a, b)
    assert one["summary"] == two["summary"]
    first = one["summary"]["selections"][0]
    assert first["medoids"] == 21  # round(0.3 * 70)
    assert first["training"] == int(one["weights"][0].count_nonzero()) > 10
    assert one["weights"][0].sum() == 70 - first["dropped"], "weights are cluster sizes"


# ---- weighted loss -----------------------------------------------------------------------------


def test_weighted_loss_of_two_half_batches_averages_to_the_whole_batch():
    recipe = VictimRecipe()
    recipe._set_weights(torch.tensor([0.0, 1.0, 3.0, 0.0, 2.0, 1.0, 0.0, 5.0]), 8)
    losses = torch.tensor([0.3, 1.2, 0.7, 9.0, 0.1, 2.5, 4.0, 0.9], dtype=torch.float64)

    def batch(idx: list[int]) -> Batch:
        return Batch(images=torch.empty(0), labels=torch.empty(0), indices=torch.tensor(idx))

    whole = recipe.reduce(losses[[0, 1, 2, 3, 4, 5, 6, 7]], batch(list(range(8))))
    halves = [recipe.reduce(losses[i], batch(i)) for i in ([0, 1, 2, 3], [4, 5, 6, 7])]
    assert float(sum(halves) / 2) == pytest.approx(float(whole), rel=1e-15)
    expected = (1.2 + 3 * 0.7 + 2 * 0.1 + 2.5 + 5 * 0.9) / (8 * 12 / 8)
    assert float(whole) == pytest.approx(expected, rel=1e-15)


def test_weights_of_the_wrong_shape_or_sign_are_refused():
    recipe = VictimRecipe()
    for bad in (torch.ones(3), torch.tensor([1.0, -1.0, 1.0, 1.0]), torch.zeros(4)):
        with pytest.raises(ValueError):
            recipe._set_weights(bad, 4)


# ---- Image Shortcut Squeezing -----------------------------------------------------------------


def test_grayscale_is_itu_601_luma_replicated_to_every_channel():
    pixels = torch.tensor([[255, 0, 0], [0, 255, 0], [0, 0, 255], [10, 20, 30], [255, 255, 255]])
    images = pixels.to(torch.uint8).view(5, 3, 1, 1)
    out = grayscale(images)
    assert out.shape == images.shape and out.dtype == torch.uint8
    assert out[:, 0].flatten().tolist() == [76, 150, 29, 18, 255]
    assert torch.equal(out[:, 0], out[:, 1]) and torch.equal(out[:, 0], out[:, 2])
    gray = torch.randint(0, 256, (2, 1, 4, 4), dtype=torch.uint8)
    assert torch.equal(grayscale(gray), gray)


def test_posterize_keeps_the_top_bits():
    values = torch.tensor([0, 63, 64, 127, 128, 183, 255], dtype=torch.uint8).view(1, 1, 1, 7)
    assert posterize(values, 2).flatten().tolist() == [0, 0, 64, 64, 128, 128, 192]
    assert posterize(values, 8).flatten().tolist() == values.flatten().tolist()


def test_jpeg_keeps_flat_images_and_squeezes_fine_patterns():
    flat = torch.full((2, 3, 16, 16), 128, dtype=torch.uint8)
    assert torch.equal(jpeg(flat, 10), flat)
    checker = (torch.arange(16)[:, None] + torch.arange(16)[None, :]) % 2
    fine = (128 + 16 * (2 * checker - 1)).to(torch.uint8).expand(1, 1, 16, 16).contiguous()
    amplitude = (jpeg(fine, 10).float() - 128).abs().mean()
    assert amplitude < 4, "quality 10 removes most of a +-16 checkerboard"
    assert (jpeg(fine, 100).int() - fine.int()).abs().max() <= 2, "quality 100 keeps it"


@pytest.mark.parametrize("name", ["jpeg", "grayscale", "posterize"])
def test_squeezing_applies_to_the_training_images_and_records_the_change(name):
    g = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (5, 3, 8, 8), generator=g, dtype=torch.uint8)
    recipe = build_defense(name, seed=0)
    out = recipe.prepare(images, torch.zeros(5, dtype=torch.long))
    assert out.shape == images.shape and out.dtype == torch.uint8
    assert 0 < recipe.summary()["rms_change"] < 1
    assert 0 < recipe.summary()["changed_values"] <= 1


# ---- PGD -----------------------------------------------------------------------------------------


def _small_model(dtype: torch.dtype = torch.float64) -> nn.Module:
    torch.manual_seed(0)
    model = build_classifier(ModelSpec(width=4), in_channels=1, num_classes=3, image_size=8)
    return model.to(dtype)


class LinearModel(nn.Module):
    """A linear classifier with large weights: PGD raises its loss a lot."""

    def __init__(self) -> None:
        super().__init__()
        self.head = nn.Linear(64, 3).double()
        with torch.no_grad():
            self.head.weight.mul_(40)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.head(x.flatten(1)), x


def test_pgd_stays_in_the_eps_ball_and_in_range_and_raises_the_loss(rt):
    torch.manual_seed(0)
    model = LinearModel()
    g = torch.Generator().manual_seed(3)
    images = torch.rand(12, 1, 8, 8, generator=g, dtype=torch.float64)
    images[:4] = images[:4].round()  # pixels at 0 and 1, where the ball leaves [0, 1]
    labels = torch.arange(12) % 3
    cfg = AdversarialConfig()
    start = (2 * torch.rand(images.shape, generator=g, dtype=torch.float64) - 1) * cfg.eps
    model.train()
    adversary = pgd(model, images, labels, cfg, start, rt)
    assert model.training, "the attack restores the mode"
    assert (adversary - images).abs().max() <= cfg.eps + 1e-12
    assert adversary.min() >= 0 and adversary.max() <= 1
    model.eval()
    with torch.no_grad():
        clean = F.cross_entropy(model(images)[0], labels)
        attacked = F.cross_entropy(model(adversary)[0], labels)
    assert attacked > clean + 1.0


def test_adversarial_recipe_attacks_outside_ddp_and_trains_on_the_adversary(rt):
    model = _small_model(torch.float32)
    ddp = rt.wrap(model)
    recipe = build_defense("adversarial", {"steps": 3}, seed=0)
    g = torch.Generator().manual_seed(1)
    batch = Batch(
        images=torch.rand(6, 1, 8, 8, generator=g),
        labels=torch.arange(6) % 3,
        indices=torch.arange(6),
    )
    recipe.begin_epoch(0, model, torch.empty(6, 1, 8, 8), batch.labels, rt, select=True)
    model.train()
    loss, logits = recipe.loss(ddp, batch, rt)
    assert all(p.grad is None for p in model.parameters()), "the attack leaves no gradients"
    loss.backward()
    assert all(p.grad is not None for p in model.parameters())
    assert logits.shape == (6, 3)
    recipe.end_epoch(0, rt)
    (record,) = recipe.summary()["epochs"]
    assert record["adversarial_loss"] == pytest.approx(loss.item(), rel=1e-6)
    assert 0 < record["linf"] <= 8 / 255 + 1e-6


def test_pgd_random_starts_are_seeded_per_sample_and_fill_the_ball():
    recipe = build_defense("adversarial", seed=3)
    images = torch.zeros(5, 1, 8, 8)
    start = recipe.random_start(Batch(images, torch.zeros(5), torch.arange(5)))
    alone = recipe.random_start(Batch(images[:1], torch.zeros(1), torch.tensor([3])))
    assert torch.equal(alone[0], start[3]), "a sample's start ignores its batch"
    assert start.abs().max() <= 8 / 255 and start.abs().max() > 7 / 255
    recipe.epoch = 1
    assert not torch.equal(
        recipe.random_start(Batch(images, torch.zeros(5), torch.arange(5))), start
    )


# ---- UEraser ---------------------------------------------------------------------------------


class FixedViews(UEraser):
    """UEraser whose views are fixed random images."""

    def views(self, batch: Batch, draws: int) -> torch.Tensor:
        g = torch.Generator().manual_seed(11)
        return torch.rand(draws, *batch.images.shape, generator=g, dtype=batch.images.dtype)


def test_ueraser_trains_on_each_samples_max_loss_view(rt):
    model = _small_model(torch.float64).eval()
    recipe = FixedViews(UEraserConfig(draws=4), seed=0)
    g = torch.Generator().manual_seed(2)
    batch = Batch(
        images=torch.rand(10, 1, 8, 8, generator=g, dtype=torch.float64),
        labels=torch.arange(10) % 3,
        indices=torch.arange(10),
    )
    loss, logits = recipe.loss(model, batch, rt)
    with torch.no_grad():
        per_view = torch.stack(
            [
                F.cross_entropy(model(v)[0], batch.labels, reduction="none")
                for v in recipe.views(batch, 4)
            ]
        )
    worst = per_view.argmax(0)
    assert len(set(worst.tolist())) > 1, "different samples have different worst views"
    assert loss.item() == pytest.approx(per_view.amax(0).mean().item(), rel=1e-12)
    expected = torch.stack(
        [model(recipe.views(batch, 4)[d, i : i + 1])[0][0] for i, d in enumerate(worst.tolist())]
    )
    torch.testing.assert_close(logits, expected, rtol=1e-12, atol=1e-12)


def test_ueraser_views_are_per_sample_seeded_in_range_and_leave_the_global_rng_alone(rt):
    recipe = UEraser(UEraserConfig(draws=3), seed=5)
    recipe.begin_epoch(1, nn.Identity(), torch.empty(0), torch.empty(0), rt, select=False)
    g = torch.Generator().manual_seed(0)
    images = torch.rand(4, 3, 16, 16, generator=g)
    batch = Batch(images=images, labels=torch.zeros(4, dtype=torch.long), indices=torch.arange(4))
    state = torch.get_rng_state()
    views = recipe.views(batch, 3)
    assert torch.equal(torch.get_rng_state(), state)
    assert views.shape == (3, 4, 3, 16, 16) and views.min() >= 0 and views.max() <= 1
    assert not torch.equal(views[0], views[1]), "draws differ"
    alone = Batch(images=images[2:3], labels=batch.labels[:1], indices=torch.tensor([2]))
    torch.testing.assert_close(recipe.views(alone, 3)[:, 0], views[:, 2], rtol=0, atol=1e-6)


def test_ueraser_uses_one_view_after_its_adversarial_epochs():
    recipe = UEraser(UEraserConfig(draws=5, adversarial_epochs=2), seed=0)
    assert [recipe.draws(e) for e in range(4)] == [5, 5, 1, 1]


# ---- the registry --------------------------------------------------------------------------


def test_every_defense_builds_from_defaults_and_from_a_mapping():
    for name, defense in DEFENSES.items():
        assert isinstance(build_defense(name, seed=0), VictimRecipe)
        assert isinstance(build_defense(name, defense.config(), seed=0), VictimRecipe)
    assert build_defense("jpeg", {"quality": 30}, seed=0).summary() == {}
    with pytest.raises(KeyError, match="unknown defense 'sisa'"):
        build_defense("sisa", seed=0)
    with pytest.raises(TypeError):
        build_defense("epic", AdversarialConfig(), seed=0)


# ---- the recipe hooks in train_classifier ----------------------------------------------------


def _digits(n: int = 96) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    return (torch.rand(n, 1, 8, 8, generator=g) * 255).to(torch.uint8), torch.arange(n) % 3


def _train(rt, recipe, checkpoint=NO_CHECKPOINT, epochs=3):
    images, labels = _digits()
    model = _small_model(torch.float32)
    result = train_classifier(
        model,
        LabelledData(images, labels, images[:20], labels[:20], 3),
        TrainingConfig(epochs=epochs, batch_size=16),
        AugmentConfig(1, True),
        TrainingRun(rt, seed=1, progress=Progress("none"), name="victim", checkpoint=checkpoint),
        recipe=recipe,
    )
    return model, result


def test_the_default_recipe_trains_bit_identically_to_no_recipe(rt):
    plain, without = _train(rt, None)
    explicit, with_default = _train(rt, VictimRecipe())
    for a, b in zip(plain.state_dict().values(), explicit.state_dict().values(), strict=True):
        assert torch.equal(a, b)
    untimed = [
        [(h.train_loss, h.train_accuracy, h.test_accuracy) for h in r.history]
        for r in (without, with_default)
    ]
    assert untimed[0] == untimed[1]
    assert "defense" not in without.as_dict()
    assert with_default.as_dict()["defense"] == {}


class _StopAt:
    def __init__(self, step: int) -> None:
        self.step, self.calls = step, 0

    def __call__(self, rt) -> bool:
        self.calls += 1
        return self.calls == self.step


@pytest.mark.parametrize(
    ("name", "cfg", "epochs"),
    [
        ("epic", {"subset_fraction": 0.3, "start_epoch": 1, "interval": 1}, 3),
        ("adversarial", {"steps": 1}, 2),
    ],
)
def test_a_recipes_state_survives_a_checkpoint_resume(rt, tmp_path, monkeypatch, name, cfg, epochs):
    reference, expected = _train(rt, build_defense(name, cfg, seed=7), epochs=epochs)
    checkpoint = StageCheckpoint(tmp_path / "victim.pt", "fp", writer=True)
    # epoch 1, step 2 of 6: after EPIC's selection at the start of epoch 1
    monkeypatch.setattr(preemption, "requested", _StopAt(step=8))
    with pytest.raises(Preempted):
        _train(rt, build_defense(name, cfg, seed=7), checkpoint, epochs)
    assert checkpoint.load()["recipe"] is not None
    monkeypatch.setattr(preemption, "requested", lambda rt: False)
    resumed, outcome = _train(rt, build_defense(name, cfg, seed=7), checkpoint, epochs)
    for (key, a), b in zip(
        reference.state_dict().items(), resumed.state_dict().values(), strict=True
    ):
        torch.testing.assert_close(a, b, rtol=0, atol=0, msg=key)
    assert outcome.defense == expected.defense
    records = expected.defense["selections" if name == "epic" else "epochs"]
    assert [r["epoch"] for r in records] == ([1, 2] if name == "epic" else [0, 1])


@pytest.mark.parametrize("name", sorted(DEFENSES))
def test_every_defense_trains_a_victim_and_records_its_diagnostics(rt, name):
    cfg = {"start_epoch": 0, "interval": 1} if name == "epic" else None
    model, result = _train(rt, build_defense(name, cfg, seed=0), epochs=2)
    assert all(torch.isfinite(p).all() for p in model.parameters())
    assert len(result.history) == 2 and result.as_dict()["defense"] == result.defense
    assert result.defense, f"{name} records diagnostics"
    if name in ("adversarial", "ueraser"):
        assert [r["epoch"] for r in result.defense["epochs"]] == [0, 1]
