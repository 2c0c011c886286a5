"""The UC method: targets, the fused loss against the reference's per-generator loss, the
generator's output bounds, the controls and the diagnostics."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from ue_sweep.config import (
    AugmentConfig,
    BatchSizeConfig,
    ClustersConfig,
    GeneratorConfig,
    ModelSpec,
)
from ue_sweep.data.batches import Augmenter
from ue_sweep.models.classifiers import build_classifier
from ue_sweep.models.generators import GeneratorBank
from ue_sweep.runtime.progress import Progress
from ue_sweep.train.run import TrainingRun
from ue_sweep.uc.clustering import Clusters, assign_targets, cluster_features
from ue_sweep.uc.controls import control_noises, energy_matched, rms, uniform_noise
from ue_sweep.uc.monitor import NoiseMonitor
from ue_sweep.uc.noise import apply_cluster_noise
from ue_sweep.uc.train_generators import (
    ClusteredImages,
    UCObjective,
    train_generators,
    uc_loss_grad,
)


def test_cyclic_targets_shift_by_the_offset():
    assert assign_targets(5, ClustersConfig(k=5, offset=1), 0).tolist() == [1, 2, 3, 4, 0]
    assert assign_targets(5, ClustersConfig(k=5, offset=2), 0).tolist() == [2, 3, 4, 0, 1]


@pytest.mark.parametrize("seed", range(20))
def test_derangement_is_a_seeded_permutation_without_fixed_points(seed):
    cfg = ClustersConfig(k=6, target="derangement")
    perm = assign_targets(6, cfg, seed)
    assert sorted(perm.tolist()) == list(range(6))
    assert all(perm[i] != i for i in range(6))
    assert torch.equal(perm, assign_targets(6, cfg, seed))


@pytest.fixture
def surrogate():
    torch.manual_seed(0)
    model = build_classifier(ModelSpec(width=4), in_channels=1, num_classes=3, image_size=8)
    return model.eval().requires_grad_(False)


def _reference_loss(surrogate, images, noise, target_probs, pairs, augment=None):
    """KL(target || softmax(features(x + noise))) per (generator, image) pair, as the reference
    computes it for one generator at a time."""
    losses = []
    for gen, img in pairs:
        x = (images[img : img + 1] + noise[gen : gen + 1]).clamp(0, 1)
        if augment is not None:
            x = augment(x, torch.tensor([img]))
        _, feats = surrogate(x)
        losses.append(
            F.kl_div(feats.log_softmax(-1), target_probs[gen : gen + 1], reduction="batchmean")
        )
    return torch.stack(losses)


@pytest.mark.parametrize("chunk", [1, 5, 1000])
def test_scope_all_sums_every_generators_batch_mean_kl(surrogate, rt, chunk):
    torch.manual_seed(1)
    b, k = 6, 3
    images = torch.rand(b, 1, 8, 8)
    noise = (torch.rand(k, 1, 8, 8) - 0.5) * 0.2
    target_probs = torch.randn(k, surrogate.feature_dim).softmax(-1)
    kl, counts, grad = uc_loss_grad(
        surrogate,
        images,
        torch.zeros(b, dtype=torch.long),
        noise,
        UCObjective(target_probs, "all", chunk),
        rt,
    )
    leaf = noise.clone().requires_grad_(True)
    pairs = [(g, i) for g in range(k) for i in range(b)]
    expected = _reference_loss(surrogate, images, leaf, target_probs, pairs).view(k, b)
    expected.mean(1).sum().backward()
    assert counts.tolist() == [b] * k
    torch.testing.assert_close(kl.float(), expected.sum(1).detach())
    torch.testing.assert_close(grad, leaf.grad)


@pytest.mark.parametrize("chunk", [1, 4, 1000])
def test_scope_cluster_uses_each_images_own_generator(surrogate, rt, chunk):
    torch.manual_seed(2)
    b, k = 7, 3
    images = torch.rand(b, 1, 8, 8)
    ids = torch.tensor([0, 2, 2, 1, 0, 2, 1])
    noise = (torch.rand(k, 1, 8, 8) - 0.5) * 0.2
    target_probs = torch.randn(k, surrogate.feature_dim).softmax(-1)
    kl, counts, grad = uc_loss_grad(
        surrogate, images, ids, noise, UCObjective(target_probs, "cluster", chunk), rt
    )
    leaf = noise.clone().requires_grad_(True)
    per_item = _reference_loss(
        surrogate, images, leaf, target_probs, [(int(ids[i]), i) for i in range(b)]
    )
    # Each generator's loss is the mean over its own images (2, 2 and 3 here), then summed.
    per_generator = torch.stack([per_item[ids == g].mean() for g in range(k)])
    per_generator.sum().backward()
    assert counts.tolist() == [2, 2, 3]
    torch.testing.assert_close(kl.float() / counts.float(), per_generator.detach())
    torch.testing.assert_close(grad, leaf.grad)


@pytest.mark.parametrize("scope", ["all", "cluster"])
def test_noise_before_augmentation_moves_with_the_image(surrogate, rt, scope):
    torch.manual_seed(6)
    b, k = 5, 2
    images = torch.rand(b, 1, 8, 8)
    ids = torch.tensor([0, 1, 1, 0, 1])
    noise = (torch.rand(k, 1, 8, 8) - 0.5) * 0.2
    target_probs = torch.randn(k, surrogate.feature_dim).softmax(-1)
    augment = Augmenter(AugmentConfig(crop_padding=2, hflip=True), b, seed=1)
    augment.set_epoch(0)
    indices = torch.arange(b)
    *_, grad = uc_loss_grad(
        surrogate,
        images,
        ids,
        noise,
        UCObjective(target_probs, scope, 3),
        rt,
        indices=indices,
        augment=augment,
    )
    leaf = noise.clone().requires_grad_(True)
    pairs = (
        [(g, i) for g in range(k) for i in range(b)]
        if scope == "all"
        else [(int(ids[i]), i) for i in range(b)]
    )
    per_item = _reference_loss(surrogate, images, leaf, target_probs, pairs, augment)
    gens = torch.tensor([g for g, _ in pairs])
    torch.stack([per_item[gens == g].mean() for g in range(k)]).sum().backward()
    torch.testing.assert_close(grad, leaf.grad)
    assert grad.abs().sum() > 0


def _bank(output: str, eps: float = 0.05) -> GeneratorBank:
    torch.manual_seed(7)
    return GeneratorBank(2, 1, 8, eps=eps, ngf=4, n_blocks=1, n_downsampling=1, output=output)


def test_generator_outputs_stay_within_eps_and_only_the_reference_clamp_blocks_gradients():
    outputs = {name: _bank(name)() for name in ("reference", "tanh", "ste")}
    for noise in outputs.values():
        assert noise.abs().max() <= 0.05 + 1e-7
    # Same weights: reference and ste give the same values, tanh is eps * tanh of the same raw.
    torch.testing.assert_close(outputs["ste"], outputs["reference"])
    torch.testing.assert_close(outputs["reference"], (outputs["tanh"] / 0.05).clamp(-0.05, 0.05))
    raw = torch.tensor([-3.0, -0.01, 0.0, 0.02, 2.0], requires_grad=True)
    grads = {}
    for name in outputs:
        (grad,) = torch.autograd.grad(_bank(name).bound(raw).sum(), raw)
        grads[name] = grad
    clamped = torch.tensor([True, False, False, False, True])
    assert (grads["reference"][clamped] == 0).all() and (grads["reference"][~clamped] > 0).all()
    assert (grads["tanh"] > 0).all()
    torch.testing.assert_close(grads["ste"], 1 - raw.detach().tanh() ** 2)


def test_one_fused_step_per_batch_trains_every_generator(surrogate, rt):
    torch.manual_seed(3)
    n, k = 24, 3
    images = (torch.rand(n, 1, 8, 8) * 255).to(torch.uint8)
    clusters = Clusters(
        ids=torch.arange(n) % k,
        centers=torch.randn(k, surrogate.feature_dim),
        targets=torch.tensor([1, 2, 0]),
        inertia=0.0,
    )
    bank = GeneratorBank(k, 1, 8, eps=0.5, ngf=4, n_blocks=1, n_downsampling=1)
    before = [p.detach().clone() for p in bank.parameters()]
    cfg = GeneratorConfig(epochs=3, lr=5e-2, eps=0.5)
    stats = train_generators(
        bank,
        surrogate,
        ClusteredImages(images, torch.zeros(n, dtype=torch.long), clusters),
        cfg,
        BatchSizeConfig(per_device=8),
        AugmentConfig(0, False),
        TrainingRun(rt, seed=0, progress=Progress("none"), name="generators"),
    )
    assert stats.steps_per_epoch == 3
    assert stats.global_batch == 8
    assert stats.images_per_s == pytest.approx(stats.samples_per_s * k)
    first_conv = next(bank.parameters())
    moved = (first_conv.detach() - before[0]).abs().flatten(1).sum(1).view(k, -1).sum(1)
    assert (moved > 0).all(), "every generator's weights moved"
    assert stats.loss_history[-1] < stats.loss_history[0]
    assert [h["epoch"] for h in stats.history] == [0, 1, 2]
    assert stats.initial["epoch"] == -1
    for record in (stats.initial, *stats.history):
        assert 0 <= record["saturated_fraction"] <= 1
        assert 0 <= record["target_hit_rate"] <= 1


def test_cluster_features_are_deterministic_and_cover_every_image(rt):
    torch.manual_seed(4)
    features = torch.cat([torch.randn(30, 5) + 6 * i for i in range(4)])
    cfg = ClustersConfig(k=4, n_init=3)
    a, b = cluster_features(features, cfg, 0, rt), cluster_features(features, cfg, 0, rt)
    assert torch.equal(a.ids, b.ids)
    assert sorted(a.sizes) == [30, 30, 30, 30]
    assert a.targets.tolist() == [1, 2, 3, 0]
    assert a.label_agreement(torch.arange(120) // 30) == pytest.approx(1.0)


def test_protected_images_stay_within_eps_after_quantisation():
    torch.manual_seed(5)
    images = (torch.rand(50, 3, 6, 6) * 255).to(torch.uint8)
    ids = torch.randint(0, 4, (50,))
    eps = 8 / 255
    noise = (torch.rand(4, 3, 6, 6) * 2 - 1) * eps
    protected = apply_cluster_noise(images, ids, noise, chunk=7)
    assert protected.dtype == torch.uint8
    diff = protected.float() - images.float()
    assert diff.abs().max() <= 8 + 0.5
    expected = (images.float() / 255 + noise[ids]).clamp(0, 1).mul(255).round()
    assert torch.equal(protected.float(), expected)


def test_uniform_control_noise_is_uniform_within_eps_and_seeded():
    like = torch.zeros(10, 3, 8, 8)
    noise = uniform_noise(like, 0.1, seed=3)
    assert noise.abs().max() <= 0.1
    assert noise.abs().mean() > 0.04  # uniform on [-eps, eps] has mean |x| = eps / 2
    assert torch.equal(noise, uniform_noise(like, 0.1, seed=3))
    assert not torch.equal(noise, uniform_noise(like, 0.1, seed=4))


def test_energy_matching_reaches_each_clusters_rms_inside_the_eps_ball():
    g = torch.Generator().manual_seed(8)
    pattern = torch.randn(4, 3, 6, 6, generator=g, dtype=torch.float64)
    target = torch.tensor([0.01, 0.03, 0.05, 0.2], dtype=torch.float64)
    matched = energy_matched(pattern, target, eps=0.06)
    assert matched.abs().max() <= 0.06
    # Reachable targets exactly (bisection to 2^-60 of the bracket); 0.2 > eps: the whole ball.
    torch.testing.assert_close(rms(matched)[:3], target[:3], rtol=1e-9, atol=0)
    torch.testing.assert_close(matched[3], (pattern[3] * 1e9).clamp(-0.06, 0.06))
    assert torch.equal(
        energy_matched(torch.zeros(1, 1, 2, 2), torch.ones(1), 0.1), torch.zeros(1, 1, 2, 2)
    )


def test_controls_carry_ucs_energy_and_the_untrained_bank_is_only_called_when_asked():
    g = torch.Generator().manual_seed(9)
    uc = (torch.rand(3, 1, 8, 8, generator=g) * 2 - 1) * 0.05
    untrained = torch.rand(3, 1, 8, 8, generator=g) - 0.5
    calls = []

    def bank():
        calls.append(1)
        return untrained

    controls = control_noises(["sign", "untrained"], uc, 0.05, seed=0, untrained=bank)
    assert calls == [1]
    for noise in controls.values():
        assert noise.abs().max() <= 0.05 + 1e-7
        torch.testing.assert_close(rms(noise), rms(uc), rtol=1e-5, atol=0)
    # Sign noise: every pixel at +-a, with a the cluster's UC RMS.
    torch.testing.assert_close(
        controls["sign"].abs().flatten(1).amax(1).double(),
        rms(uc).float().double(),
        rtol=1e-5,
        atol=0,
    )
    # The untrained control keeps the untrained bank's pattern (a positive rescaling of it).
    assert torch.equal(controls["untrained"].sign(), untrained.sign())
    assert control_noises(["uniform"], uc, 0.05, 0, untrained=bank).keys() == {"uniform"}
    assert calls == [1]


def test_monitor_counts_images_pushed_to_their_target_centre(surrogate, rt):
    torch.manual_seed(10)
    images = (torch.rand(12, 1, 8, 8) * 255).to(torch.uint8)
    ids = torch.arange(12) % 2
    _, feats = surrogate(images.float() / 255)
    # Centre 1 sits on the features of the images; centre 0 far away. Targets swap the two.
    centers = torch.stack([feats.mean(0) + 100, feats.mean(0)])
    clusters = Clusters(ids=ids, centers=centers, targets=torch.tensor([1, 0]), inertia=0.0)
    monitor = NoiseMonitor(surrogate, images, ids, clusters, 0.1, count=100, seed=0, rt=rt)
    out = monitor.measure(torch.zeros(2, 1, 8, 8))
    # Every image is nearest centre 1: cluster 0's images hit their target, cluster 1's do not.
    assert out["target_hit_rate"] == 0.5 and out["own_center_rate"] == 0.5
    assert out["saturated_fraction"] == 0.0
    assert monitor.measure(torch.full((2, 1, 8, 8), 0.1))["saturated_fraction"] == 1.0
    assert NoiseMonitor(surrogate, images, ids, clusters, 0.1, 5, 0, rt).count == 5
