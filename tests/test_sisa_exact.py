"""SISA's exactness (Bourtoule et al. 2021): after unlearning, each retrained constituent is the
model trained from scratch on its reduced shard, not only one whose recorded indices lack the
removed points. Checked bit for bit on the CPU (the same machine, thread count and seeds, so the
same arithmetic): a fresh trainer with an empty store fits the reduced partition from slice 0."""

from __future__ import annotations

import torch

from tests import sisa_workers as toy
from ue_sweep.evals.unlearning.partition import partition


def test_every_constituent_after_unlearning_equals_one_trained_from_scratch(rt, tmp_path):
    sisa = toy.trainer(rt, tmp_path / "store")
    part = partition(toy.N, toy.SHARDS, toy.SLICES, sisa.cfg.seed)
    queries = toy.toy_pool()[0]
    # one point from the last slice of shard 0, one from the first slice of shard 1
    removed = torch.tensor(sorted([int(part.slices[0][2][0]), int(part.slices[1][0][1])]))
    sisa.fit(part, queries, removed)
    reduced = part.without(removed)
    unlearned = sisa.fit(reduced, queries, removed)
    assert [r["start"] for r in unlearned.shards] == [2, 0, toy.SLICES], "a real retraining"

    scratch = toy.trainer(rt, tmp_path / "empty").fit(reduced, queries, removed)
    assert [r["start"] for r in scratch.shards] == [0] * toy.SHARDS, "all trained from slice 0"
    assert torch.equal(unlearned.posteriors, scratch.posteriors)
    for k in range(toy.SHARDS):
        mine, fresh = unlearned.local[k], scratch.local[k]
        assert torch.equal(mine["seen"], fresh["seen"])
        for name, tensor in fresh["state"].items():
            assert torch.equal(mine["state"][name], tensor), (k, name)
