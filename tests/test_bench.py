"""The benchmark's hand-written loops compute what the product computes (no timing here).

In float64 on a tiny case: the reference UC loop (k separate generators, one after another)
and the stripped fused loop end with the noise of ``train_generators`` from the same weights,
batches and augmentation, so the benchmark's ratios compare equal work.
"""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch

from benchmarks import workload
from benchmarks.reference import split_bank, train_fused, train_sequential
from ue_sweep.config import AugmentConfig, BatchSizeConfig
from ue_sweep.runtime.progress import Progress
from ue_sweep.train.run import TrainingRun
from ue_sweep.uc.train_generators import ClusteredImages, train_generators

AUGMENT = AugmentConfig(crop_padding=1, hflip=True)


def _case(scope: str):
    g = torch.Generator().manual_seed(0)
    images = (torch.rand(20, 1, 16, 16, generator=g) * 255).to(torch.uint8)
    surrogate = workload.surrogate().double()
    clusters = workload.clusters(len(images), 3, surrogate.feature_dim)
    clusters = replace(clusters, centers=clusters.centers.double())
    cfg = replace(workload.generator_config(scope, epochs=2), lr=0.01, ngf=2, n_blocks=1)
    bank = workload.bank(3, cfg).double()
    return images, surrogate, clusters, cfg, bank


def _product(rt, images, surrogate, clusters, cfg, bank):
    train_generators(
        bank,
        surrogate,
        ClusteredImages(images, torch.zeros(len(images), dtype=torch.long), clusters),
        cfg,
        BatchSizeConfig(per_device=8),
        AUGMENT,
        TrainingRun(rt, seed=1, progress=Progress("none"), name="generators"),
    )
    return bank().detach()


def test_split_bank_makes_the_same_noise():
    bank = workload.bank(4)
    with torch.no_grad():
        noise = torch.cat([g() for g in split_bank(bank, workload.GENERATOR)])
        torch.testing.assert_close(noise, bank())


def test_reference_loop_trains_the_generators_of_the_fused_bank(rt):
    images, surrogate, clusters, cfg, bank = _case("all")
    singles = split_bank(bank, cfg)
    initial = bank().detach()
    expected = _product(rt, images, surrogate, clusters, cfg, bank)
    train_sequential(singles, surrogate, images, clusters, cfg, 8, AUGMENT, seed=1)
    with torch.no_grad():
        noise = torch.cat([g() for g in singles])
    assert (expected - initial).abs().max() > 1e-4
    torch.testing.assert_close(noise, expected, rtol=0, atol=1e-9)


@pytest.mark.parametrize("scope", ["all", "cluster"])
def test_plain_fused_loop_trains_what_the_product_trains(rt, scope):
    images, surrogate, clusters, cfg, bank = _case(scope)
    plain = workload.bank(3, cfg).double()
    initial = bank().detach()
    expected = _product(rt, images, surrogate, clusters, cfg, bank)
    train_fused(plain, surrogate, images, clusters, cfg, 8, AUGMENT, seed=1)
    with torch.no_grad():
        noise = plain()
    assert (expected - initial).abs().max() > 1e-4
    torch.testing.assert_close(noise, expected, rtol=0, atol=1e-9)
