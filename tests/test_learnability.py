"""Learnability (SAL, #LP, UD): the search's maths, the thresholds, ranks, snapshots, the CLI."""

from __future__ import annotations

import json
import math

import pytest
import torch

from tests import dist_workers
from tests.conftest import SMOKE, run_cli
from tests.test_distributed import _run
from tests.test_resume import _StopAt
from ue_sweep.cli.validation import to_root_config
from ue_sweep.config import AugmentConfig, ModelSpec, TrainingConfig
from ue_sweep.errors import ConfigError
from ue_sweep.evals.learnability import metrics
from ue_sweep.evals.learnability.search import (
    SearchSettings,
    project,
    ratio,
    search,
    signed_sharpness,
)
from ue_sweep.models.classifiers import build_classifier
from ue_sweep.runtime import preemption
from ue_sweep.runtime.preemption import Preempted
from ue_sweep.runtime.progress import Progress
from ue_sweep.store.checkpoint import NO_CHECKPOINT, StageCheckpoint
from ue_sweep.train.classifier import train_classifier
from ue_sweep.train.run import LabelledData, TrainingRun


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_projection_keeps_the_perturbation_inside_the_relative_ball(dtype):
    g = torch.Generator().manual_seed(0)
    for scale in (1e-3, 1.0, 1e3):
        theta = scale * torch.randn(16, 8, 3, 3, generator=g, dtype=dtype)
        for size in (0.01, 0.2, 5.0):
            far = theta + size * scale * torch.randn(theta.shape, generator=g, dtype=dtype)
            kept = project(far, theta, 0.05)
            assert ratio(kept, theta) <= 0.05
            if ratio(far, theta) <= 0.05:
                assert torch.equal(kept, far), "a point inside the ball stays where it is"
            else:
                assert ratio(kept, theta) == pytest.approx(0.05, rel=1e-5)
                direction = torch.nn.functional.cosine_similarity(
                    (kept - theta).flatten(), (far - theta).flatten(), dim=0
                )
                assert float(direction) == pytest.approx(1.0, abs=1e-5), "moved radially"


def test_sign_rule_keeps_the_side_that_moved_the_loss_more():
    assert signed_sharpness(0.3, 0.1) == 0.3
    assert signed_sharpness(0.1, 0.3) == 0.3
    assert signed_sharpness(-0.5, 0.2) == -0.5
    assert signed_sharpness(0.1, -0.4) == -0.4
    assert signed_sharpness(0.2, 0.2) == 0.2  # a tie goes to the descent side


def _quadratic(center: torch.Tensor):
    """0.5 ||w - x_i||^2 averaged over the rows x_i: 0.5 ||w - mean(x)||^2 + constant."""

    def loss(w: torch.Tensor, x: torch.Tensor, _: torch.Tensor) -> torch.Tensor:
        return 0.5 * (w - x).pow(2).sum(dim=1).mean()

    return loss


@pytest.mark.parametrize("projection", ["pass", "step"])
def test_sal_of_a_quadratic_matches_its_closed_form(projection):
    """L(w) = 0.5 ||w - c||^2 + k around theta at distance d from c, ball radius r = eps
    ||theta||: the highest loss is at theta + r (theta - c) / d, the lowest at theta - r (theta -
    c) / d, so s_max = d r + r^2 / 2 > s_min = d r - r^2 / 2. Full-batch SGD reaches both ends
    within the steps (d r > lr d), so the search must find them."""
    theta = torch.tensor([3.0, 4.0], dtype=torch.float64)  # ||theta|| = 5: r = 0.25
    c = torch.tensor([3.5, 4.6], dtype=torch.float64)
    spread = torch.tensor([[1.0, -2.0], [-1.0, 2.0], [0.5, 0.5], [-0.5, -0.5]], dtype=c.dtype)
    points = c + spread  # mean c, so the loss is the quadratic above plus a constant
    labels = torch.zeros(len(points))
    settings = SearchSettings(eps=0.05, lr=0.1, steps=10, batch_size=4, projection=projection)
    found = search(_quadratic(c), theta, points, labels, settings, torch.Generator().manual_seed(0))
    d, r = float(torch.linalg.vector_norm(theta - c)), 0.25
    constant = 0.5 * float(spread.pow(2).sum(dim=1).mean())
    assert found.l0 == pytest.approx(0.5 * d**2 + constant, rel=1e-12)
    assert found.s_max == pytest.approx(d * r + r**2 / 2, rel=1e-9)
    assert found.s_min == pytest.approx(d * r - r**2 / 2, rel=1e-9)
    assert found.sal == found.s_max
    assert found.ratio_max == pytest.approx(0.05, rel=1e-9)
    assert found.ratio_min == pytest.approx(0.05, rel=1e-9)


def test_beta_of_a_bimodal_set_is_the_midpoint_of_its_modes():
    low, high = [0.09, 0.1, 0.11, 0.1], [0.98, 1.02, 1.0]
    assert metrics.two_means_threshold(low + high) == pytest.approx((0.1 + 1.0) / 2)
    assert metrics.two_means_threshold([0.4, 0.4, 0.4]) == 0.4
    # per epoch the midpoint of that epoch's modes; beta their mean
    clean = {
        "a": [0.1, 2.0],
        "b": [0.3, 2.2],
        "c": [1.0, 6.0],
        "d": [1.2, 6.2],
    }
    assert metrics.thresholds(clean) == pytest.approx([(0.2 + 1.1) / 2, (2.1 + 6.1) / 2])
    assert metrics.beta(clean) == pytest.approx(((0.2 + 1.1) / 2 + (2.1 + 6.1) / 2) / 2)
    assert metrics.learnable_per_epoch(clean, metrics.beta(clean)) == [0, 2]


def test_ud_of_the_clean_victim_is_exactly_one_and_lower_with_fewer_learnable_layers():
    g = torch.Generator().manual_seed(3)
    clean = {f"layer{i}": torch.rand(4, generator=g).mul(3).tolist() for i in range(7)}
    flat = {name: [v / 10 for v in sal] for name, sal in clean.items()}
    beta, lp, ud = metrics.unlearnable_distances({"clean": clean, "flat": flat}, "clean")
    assert beta == metrics.beta(clean) and lp["clean"] > 0
    assert ud["clean"] == 1.0  # exactly
    assert ud["flat"] == lp["flat"] / lp["clean"] < 1
    nothing = {name: [0.0] * 4 for name in clean}
    _, lp, ud = metrics.unlearnable_distances({"clean": nothing, "flat": flat}, "clean")
    assert lp["clean"] == 0 and ud == {"clean": None, "flat": None}


def test_rank_agreement_is_kendalls_tau():
    acc = {"a": 0.9, "b": 0.5, "c": 0.1}
    assert metrics.rank_agreement({"a": 1.0, "b": 0.6, "c": 0.2}, acc) == 1.0
    assert metrics.rank_agreement({"a": 0.2, "b": 0.6, "c": 1.0}, acc) == -1.0
    assert metrics.rank_agreement({"a": 1.0, "b": 0.2, "c": 0.6}, acc) == pytest.approx(1 / 3)
    assert metrics.rank_agreement({"a": 1.0}, acc) is None


def test_one_and_two_ranks_give_identical_tables(tmp_path):
    one = _run(dist_workers.sal_tables, 1, str(tmp_path / "one.pt"))
    two = _run(dist_workers.sal_tables, 2, str(tmp_path / "two.pt"))
    assert one["epochs"] == [0, 3]
    assert len(one["sal"]) == 6, "five convolutions and the head"
    assert all(v > 0 for sal in one["sal"].values() for v in sal), "every search moved the loss"
    assert two == one  # float64, one thread each: the same numbers, not just close ones


def _train(rt, epochs, checkpoint=NO_CHECKPOINT):
    """A tiny victim over 3 epochs (6 steps each), keeping the weights after ``epochs``."""
    images = dist_workers.separable_images(32, 4)
    labels = torch.arange(32) % 4
    torch.manual_seed(0)
    model = build_classifier(ModelSpec(width=4), in_channels=1, num_classes=4, image_size=8)
    result = train_classifier(
        model,
        LabelledData(images, labels, images, labels, 4),
        TrainingConfig(epochs=3, batch_size=5),
        AugmentConfig(crop_padding=1),
        TrainingRun(rt, seed=1, progress=Progress("none"), name="victim", checkpoint=checkpoint),
        snapshot_epochs=epochs,
    )
    return model.state_dict(), result


def test_training_is_the_same_with_and_without_snapshots(rt):
    plain, plain_result = _train(rt, ())
    kept, result = _train(rt, (0, 2))
    assert plain_result.snapshots == {} and set(result.snapshots) == {0, 2}
    assert [r.train_loss for r in result.history] == [r.train_loss for r in plain_result.history]
    for name, tensor in plain.items():
        assert torch.equal(kept[name], tensor), name
        assert torch.equal(result.snapshots[2][name], tensor), "the last epoch is the final state"
        assert result.snapshots[2][name].device.type == "cpu"
    moved = [n for n, t in result.snapshots[0].items() if not torch.equal(t, plain[n])]
    assert "head.weight" in moved, "epoch 0's weights are their own copy"


def test_snapshots_survive_a_resume_from_the_stage_checkpoint(rt, tmp_path, monkeypatch):
    _, expected = _train(rt, (0, 2))
    checkpoint = StageCheckpoint(tmp_path / "victim.pt", "fp", writer=True)
    monkeypatch.setattr(preemption, "requested", _StopAt(step=8))  # epoch 1, step 2 of 6
    with pytest.raises(Preempted):
        _train(rt, (0, 2), checkpoint)
    monkeypatch.setattr(preemption, "requested", lambda rt: False)
    _, resumed = _train(rt, (0, 2), checkpoint)
    assert set(resumed.snapshots) == {0, 2}
    for epoch, state in expected.snapshots.items():
        for name, tensor in state.items():
            assert torch.equal(resumed.snapshots[epoch][name], tensor), (epoch, name)


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("evals.learnability.layers=conv*", "evals.learnability.layers='conv*' is not accepted"),
        ("evals.learnability.data_fraction=0", "a number > 0 and <= 1"),
        ("evals.learnability.l0=train", "one of: eval, running"),
        ("evals.learnability.epoch_stride=0", "an integer >= 1"),
    ],
)
def test_bad_learnability_settings_are_refused_before_any_compute(compose_cfg, override, message):
    cfg = compose_cfg("evals=[victims,learnability]", override)
    with pytest.raises(ConfigError, match=message.replace("*", r"\*")):
        to_root_config(cfg, on_this_host=False)


def test_a_layer_glob_picks_layers(compose_cfg):
    cfg = to_root_config(
        compose_cfg("evals=[learnability]", "evals.learnability.layers=body.1*"), False
    )
    assert cfg.evals["learnability"].layers == "body.1*"


TINY = ["evals.learnability.steps=1", "evals.learnability.data_fraction=0.05"]


@pytest.mark.slow
def test_learnability_reports_ud_for_protected_and_controls_and_reuses_victims(tmp_path):
    """A victims job, then victims + learnability in the same store: the victims are reused,
    retrained once for their per-epoch weights (said in the result), and a third job reuses
    everything; the report has a UD column per condition."""

    def job(name: str, *evals: str) -> dict:
        overrides = [f"hydra.run.dir={name}", "evals.victims.controls=[uniform,sign]", *evals]
        proc = run_cli([*SMOKE, *overrides], cwd=tmp_path)
        assert proc.returncode == 0, proc.stderr[-3000:]
        return json.loads((tmp_path / name / "result.json").read_text()) | {"out": proc.stdout}

    plain = job("plain", "evals=[victims]")
    first = job("first", "evals=[victims,learnability]", *TINY)
    again = job("again", "evals=[victims,learnability]", *TINY)
    assert "victim-clean-snapshots" not in plain["stages"]
    assert first["stages"]["victim-clean"]["status"] == "reused"
    assert first["stages"]["victim-clean-snapshots"]["status"] == "computed"
    learn = first["evals"]["learnability"]
    conditions = ["clean", "protected", "uniform", "sign"]
    assert list(learn["conditions"]) == conditions
    assert learn["ud"]["clean"] == 1.0
    assert all(isinstance(learn["ud"][c], float) for c in conditions)
    for c in conditions:
        entry = learn["conditions"][c]
        assert entry["snapshots"] in ("retrained", "retrained-differs")
        assert len(entry["sal"]) == 6 and all(len(v) == 1 for v in entry["sal"].values())
        ratios = [
            r
            for side in ("ratio_min", "ratio_max")
            for layer in entry["diagnostics"][side].values()
            for r in layer
        ]
        assert max(ratios) <= 0.05
        assert (tmp_path / "first" / entry["figure"]).stat().st_size > 1000
    assert "learnability (SAL: eps 0.05, 1 steps" in first["out"]
    assert all(
        again["stages"][s]["status"] == "reused"
        for s in ("victim-clean", "victim-clean-snapshots", "learnability-protected")
    )
    assert again["evals"]["learnability"]["ud"] == learn["ud"]
    assert again["evals"]["learnability"]["conditions"]["clean"]["snapshots"] == "training"
    proc = run_cli(["report", str(tmp_path), "--no-wandb"], cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-2000:]
    text = (tmp_path / "report" / "report.md").read_text()
    assert "## Learnability (Unlearnable Distance)" in text
    assert "| dataset | global batch | clean | protected | uniform | sign |" in text
    assert (tmp_path / "report" / "learnability.png").exists()
    assert math.isfinite(learn["beta"])


def test_heat_map_is_an_rgb_picture():
    from ue_sweep.evals.learnability.heatmap import render

    picture = render([[0.1, 2.0], [0.5, 0.0]], ["body.0", "head"], [1, 3], 0.4, 3.0, "t")
    assert picture.dtype.name == "uint8" and picture.ndim == 3 and picture.shape[2] == 3
    assert len({tuple(p) for p in picture.reshape(-1, 3)[::97].tolist()}) > 10


def test_learnability_epochs_count_back_from_the_last(compose_cfg):
    from ue_sweep.evals.learnability.evaluation import snapshot_epochs

    cfg = to_root_config(compose_cfg("evals=[learnability]", "victim.epochs=8"), False)
    lc = cfg.evals["learnability"]
    assert snapshot_epochs(cfg, lc) == tuple(range(8)), "every epoch by default (the authors')"
    lc.epoch_stride = 2
    assert snapshot_epochs(cfg, lc) == (1, 3, 5, 7)
    lc.epoch_stride = 3
    assert snapshot_epochs(cfg, lc) == (1, 4, 7)
    lc.epoch_stride = 20
    assert snapshot_epochs(cfg, lc) == (7,)
