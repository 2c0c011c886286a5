"""The UC method: targets, the fused loss against the reference's per-generator loss, noise."""

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
from ue_sweep.models.classifiers import build_classifier
from ue_sweep.models.generators import GeneratorBank
from ue_sweep.progress import Progress
from ue_sweep.uc.clustering import Clusters, assign_targets, cluster_features
from ue_sweep.uc.noise import apply_cluster_noise, random_cluster_noise
from ue_sweep.uc.train_generators import train_generators, uc_loss_grad


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


def _reference_loss(surrogate, images, noise, target_probs, pairs):
    """KL(target || softmax(features(x + noise))) per (generator, image) pair, as the reference
    computes it for one generator at a time."""
    losses = []
    for gen, img in pairs:
        _, feats = surrogate((images[img : img + 1] + noise[gen : gen + 1]).clamp(0, 1))
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
    loss, grad = uc_loss_grad(
        surrogate, images, torch.zeros(b, dtype=torch.long), noise, target_probs, "all", chunk, rt
    )
    leaf = noise.clone().requires_grad_(True)
    pairs = [(g, i) for g in range(k) for i in range(b)]
    expected = _reference_loss(surrogate, images, leaf, target_probs, pairs).view(k, b)
    expected = expected.mean(1).sum()
    expected.backward()
    torch.testing.assert_close(loss, expected.detach())
    torch.testing.assert_close(grad, leaf.grad)


@pytest.mark.parametrize("chunk", [1, 4, 1000])
def test_scope_cluster_uses_each_images_own_generator(surrogate, rt, chunk):
    torch.manual_seed(2)
    b, k = 7, 3
    images = torch.rand(b, 1, 8, 8)
    ids = torch.tensor([0, 2, 2, 1, 0, 2, 1])
    noise = (torch.rand(k, 1, 8, 8) - 0.5) * 0.2
    target_probs = torch.randn(k, surrogate.feature_dim).softmax(-1)
    loss, grad = uc_loss_grad(surrogate, images, ids, noise, target_probs, "cluster", chunk, rt)
    leaf = noise.clone().requires_grad_(True)
    expected = _reference_loss(
        surrogate, images, leaf, target_probs, [(int(ids[i]), i) for i in range(b)]
    ).mean()
    expected.backward()
    torch.testing.assert_close(loss, expected.detach())
    torch.testing.assert_close(grad, leaf.grad)


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
        images,
        clusters,
        cfg,
        BatchSizeConfig(per_device=8),
        AugmentConfig(0, False),
        rt,
        seed=0,
        progress=Progress("none"),
    )
    assert stats.steps_per_epoch == 3
    assert stats.global_batch == 8
    assert stats.images_per_s == pytest.approx(stats.samples_per_s * k)
    first_conv = next(bank.parameters())
    moved = (first_conv.detach() - before[0]).abs().flatten(1).sum(1).view(k, -1).sum(1)
    assert (moved > 0).all(), "every generator's weights moved"
    assert stats.loss_history[-1] < stats.loss_history[0]


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


def test_random_control_noise_is_uniform_within_eps_and_seeded():
    like = torch.zeros(10, 3, 8, 8)
    noise = random_cluster_noise(like, 0.1, seed=3)
    assert noise.abs().max() <= 0.1
    assert noise.abs().mean() > 0.04  # uniform on [-eps, eps] has mean |x| = eps / 2
    assert torch.equal(noise, random_cluster_noise(like, 0.1, seed=3))
    assert not torch.equal(noise, random_cluster_noise(like, 0.1, seed=4))
