"""Item 8's projection arithmetic (benchmarks/projection.py), on made-up timings: no timing here."""

from __future__ import annotations

import pytest

from benchmarks import projection


def _raw(seconds_per_image: float) -> dict:
    stages = ("kmeans sklearn", "kmeans sharded", "noise", "write .pt", "write shards")
    sizes = (1000, 4000)
    raw = {
        s: {
            str(n): {"wall_s": seconds_per_image * n, "cpu_s": seconds_per_image * n} for n in sizes
        }
        for s in stages
    }
    for s in ("kmeans sklearn", "kmeans sharded"):
        for n in sizes:
            raw[s][str(n)]["lloyd_steps"] = 10
    return raw


def test_flops_are_the_published_resnet_counts():
    flops = projection._flops()
    # ResNet-50 at 224 px: 4.09 GMACs forward (He et al. 2016); FlopCounterMode counts 2 per MAC.
    assert flops["resnet50_forward"] == pytest.approx(2 * 4.09e9, rel=0.02)
    assert flops["resnet18_train"] < flops["resnet50_train"]
    # A frozen surrogate's backward to the input skips the weight gradients.
    assert flops["resnet50_forward"] < flops["uc_surrogate_per_image"] < flops["resnet50_train"]


def test_cpu_stages_grow_linearly_from_the_largest_size_and_shard_over_the_ranks():
    p = projection.project(_raw(1e-3), (1000, 4000))
    stages = p["stages"]
    per_step = 1e-3 * 4000 / 10 * projection.N / 4000
    assert stages["kmeans sklearn (rank 0, 1 CPU core)"]["seconds"] == pytest.approx(
        per_step * projection.KMEANS_STEPS
    )
    assert stages["kmeans sharded (48 ranks, 1 CPU core each)"]["seconds"] == pytest.approx(
        per_step * projection.KMEANS_STEPS / projection.GPUS
    )
    single = stages["write .pt (rank 0)"]["seconds"]
    assert stages["write shards (48 ranks)"]["seconds"] == pytest.approx(single / projection.GPUS)
    assert p["bottleneck"] in stages
