"""Learnability as the authors compute it (Ye et al., ICLR 2025, and their code): L0 is the
epoch's running training loss, the searches run on draws of the training augmentation over the
whole training set. The product's table is checked against a plain re-implementation on a small
real network, in float64; and a job with DP-SGD victims says it skips them, then measures the rest.
"""

from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F

from tests import dist_workers
from tests.conftest import SMOKE, run_cli
from ue_sweep.config import AugmentConfig, ModelSpec, TrainingConfig
from ue_sweep.data.batches import Augmenter
from ue_sweep.evals.learnability.search import SearchSettings
from ue_sweep.evals.learnability.table import SalRun, sal_table
from ue_sweep.models.classifiers import build_classifier
from ue_sweep.runtime.progress import Progress
from ue_sweep.runtime.seeding import derive_seed, generator
from ue_sweep.train.classifier import train_classifier
from ue_sweep.train.run import LabelledData, TrainingRun

AUGMENT = AugmentConfig(crop_padding=1)
SETTINGS = SearchSettings(eps=0.05, lr=0.1, steps=2, batch_size=7)
LAYERS = ["body.0", "head"]
SEED = 3


def _victim(rt):
    """A tiny victim trained 2 epochs with crop augmentation, weights kept per epoch; returned
    in float64 (its snapshots load into it cast), so the searches compare exactly."""
    images, labels = dist_workers.separable_images(24, 3), torch.arange(24) % 3
    torch.manual_seed(0)
    model = build_classifier(ModelSpec(width=4), in_channels=1, num_classes=3, image_size=8)
    result = train_classifier(
        model,
        LabelledData(images, labels, images, labels, 3),
        TrainingConfig(epochs=2, batch_size=6),
        AUGMENT,
        TrainingRun(rt, seed=1, progress=Progress("none"), name="victim"),
        snapshot_epochs=(0, 1),
    )
    return model.double(), result, images.double() / 255, labels


def _reference(model, state, layer, epoch, x, y, l0):
    """The authors' SAL of one layer, written out plainly: projected SGD descent and ascent,
    each pass and each loss evaluation on a fresh draw of the training augmentation."""
    model.load_state_dict(state)
    model.eval()
    param = model.get_parameter(f"{layer}.weight")
    theta = param.detach().clone()
    radius = SETTINGS.eps * float(theta.norm())
    order = generator(SEED, "sal", layer, epoch)
    augment = Augmenter(AUGMENT, len(x), derive_seed(SEED, "sal-augment", layer, epoch))

    def loss_of(w, rows, draw, grad=False):
        augment.set_epoch(draw)
        with torch.no_grad():
            param.copy_(w)
        param.requires_grad_(grad)
        logits, _ = model(augment(x[rows], rows))
        return F.cross_entropy(logits, y[rows])

    def sgd_pass(w, sign, draw):
        perm = torch.randperm(len(x), generator=order)
        for rows in torch.tensor_split(perm, -(-len(x) // SETTINGS.batch_size)):
            loss = loss_of(w, rows, draw, grad=True)
            (g,) = torch.autograd.grad(loss, param)
            w = (w + sign * SETTINGS.lr * g).detach()
        v = w - theta
        return w if float(v.norm()) <= radius else theta + v * (radius / float(v.norm()))

    low, high = theta.clone(), theta.clone()
    lowest = highest = l0
    everything = torch.arange(len(x))
    for step in range(SETTINGS.steps):
        draw = 1 + 4 * step
        low, high = sgd_pass(low, -1.0, draw), sgd_pass(high, 1.0, draw + 1)
        with torch.no_grad():
            lowest = min(lowest, float(loss_of(low, everything, draw + 2)))
            highest = max(highest, float(loss_of(high, everything, draw + 3)))
    with torch.no_grad():
        param.copy_(theta)
    return highest - l0, l0 - lowest


def test_running_l0_and_augmented_search_match_a_direct_recomputation(rt):
    model, result, x, y = _victim(rt)
    running = {e: result.history[e].train_loss for e in (0, 1)}
    table = sal_table(
        rt,
        model,
        result.snapshots,
        x,
        y,
        LAYERS,
        SETTINGS,
        SalRun(SEED, running_l0=running, augment=AUGMENT),
    )
    assert table["l0"] == [running[0], running[1]], "L0 is the epoch's running training loss"
    model.eval()
    with torch.no_grad():
        eval_loss = float(F.cross_entropy(model(x)[0], y))
    assert abs(eval_loss - running[1]) > 1e-3, "running and eval L0 differ here: a real check"
    for e in (0, 1):
        for layer in LAYERS:
            s_max, s_min = _reference(model, result.snapshots[e], layer, e, x, y, running[e])
            assert table["s_max"][layer][e] == pytest.approx(s_max, rel=1e-9, abs=1e-12)
            assert table["s_min"][layer][e] == pytest.approx(s_min, rel=1e-9, abs=1e-12)
    plain = sal_table(rt, model, result.snapshots, x, y, LAYERS, SETTINGS, SalRun(SEED, running))
    assert plain["s_max"] != table["s_max"], "augmented draws change the search"


def test_the_defaults_are_the_authors_settings():
    from ue_sweep.evals.learnability.config import LearnabilityConfig

    lc = LearnabilityConfig()
    assert (lc.l0, lc.search_data, lc.data_fraction, lc.epoch_stride) == (
        "running",
        "augmented",
        1.0,
        1,
    )
    assert (lc.eps, lc.lr, lc.steps, lc.projection) == (0.05, 0.1, 10, "pass")


@pytest.mark.slow
def test_learnability_after_privacy_skips_the_dp_victims_and_says_so(tmp_path):
    args = [
        *SMOKE,
        "hydra.run.dir=job",
        "trainer.threads=1",
        "evals=[victims,privacy,learnability]",
        "evals.victims.controls=[uniform]",
        "evals.privacy.controls=[uniform]",
        "evals.privacy.epsilons=[8]",
        "evals.learnability.steps=1",
        "evals.learnability.data_fraction=0.05",
    ]
    proc = run_cli(args, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    record = json.loads((tmp_path / "job" / "result.json").read_text())
    learn = record["evals"]["learnability"]
    dp = ["dp-clean-eps8", "dp-protected-eps8", "dp-uniform-eps8"]
    assert learn["skipped"] == dp
    assert list(learn["conditions"]) == ["clean", "protected", "uniform"]
    assert learn["ud"]["clean"] == 1.0
    log = proc.stdout + proc.stderr
    assert "learnability: skipping the DP-SGD victims dp-clean-eps8" in log
    assert log.index("skipping the DP-SGD victims") < log.index("learnability (clean)")
