"""Sharded k-means (uc/kmeans.py) against scikit-learn, and across world sizes."""

from __future__ import annotations

import pytest
import torch

from tests import scale_workers
from tests.test_distributed import _run
from ue_sweep.config import ClustersConfig
from ue_sweep.uc.clustering import cluster_features, use_sharded


def test_the_sharded_backend_is_the_default_above_the_stated_size():
    auto = ClustersConfig(sharded_above=100)
    assert not use_sharded(auto, 100)
    assert use_sharded(auto, 101)
    assert use_sharded(ClustersConfig(backend="sharded"), 10)
    assert not use_sharded(ClustersConfig(backend="sklearn", sharded_above=0), 10**7)


def test_sharded_inertia_is_within_one_percent_of_scikit_learn_on_digits(rt):
    features = scale_workers.digits_features()
    ours = cluster_features(features, ClustersConfig(k=10, backend="sharded"), 0, rt)
    ref = cluster_features(features, ClustersConfig(k=10, backend="sklearn"), 0, rt)
    assert ours.inertia == pytest.approx(ref.inertia, rel=0.01)
    # The reported inertia is the one of the returned labels and centres.
    recomputed = (features.double() - ours.centers.double()[ours.ids]).pow(2).sum()
    assert float(recomputed) == pytest.approx(ours.inertia, rel=1e-6)
    assert sorted(ours.sizes) != [0] * 10 and min(ours.sizes) > 0


def test_two_ranks_find_the_clusters_of_one_rank(tmp_path):
    from sklearn.metrics import adjusted_rand_score

    one = _run(scale_workers.sharded_kmeans, 1, str(tmp_path / "one.pt"), 2)
    two = _run(scale_workers.sharded_kmeans, 2, str(tmp_path / "two.pt"), 2)
    # Same sample, same k-means++ starts; only the order of the all-reduced sums differs.
    assert two["inertia"] == pytest.approx(one["inertia"], rel=1e-5)
    assert adjusted_rand_score(one["ids"], two["ids"]) > 0.99
    torch.testing.assert_close(two["centers"], one["centers"], rtol=1e-3, atol=1e-3)
