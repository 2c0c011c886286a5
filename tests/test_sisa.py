"""SISA: shards and slices, epochs per slice, aggregation, and what a request retrains."""

from __future__ import annotations

import pytest
import torch

from tests import sisa_workers as toy
from ue_sweep.evals.unlearning.aggregate import majority_vote, mean_posterior, votes
from ue_sweep.evals.unlearning.partition import (
    full_retrain_steps,
    partition,
    read_request_file,
    single_request_ratio,
    slice_epochs,
    steps_per_epoch,
)
from ue_sweep.runtime.distributed import spawn
from ue_sweep.runtime.env import DistEnv


def test_shards_are_disjoint_and_cover_the_pool_and_slices_cut_each_shard_in_order():
    part = partition(103, 4, 3, seed=0)
    shards = [part.shard(k) for k in range(4)]
    everything = torch.cat(shards)
    assert sorted(everything.tolist()) == list(range(103))  # covering, and no index twice
    assert sorted(len(s) for s in shards) == [25, 26, 26, 26]
    for k in range(4):
        assert [len(p) for p in part.slices[k]] in ([8, 8, 9], [8, 9, 9])
        assert torch.equal(part.seen(k, 2), shards[k].sort().values)
        assert set(part.seen(k, 0).tolist()) < set(part.seen(k, 1).tolist())
    assert torch.equal(partition(103, 4, 3, seed=0).shard(2), shards[2])
    assert not torch.equal(partition(103, 4, 3, seed=1).shard(2), shards[2])


def test_epochs_per_slice_visit_as_many_samples_as_the_budget_on_the_whole_shard():
    # e' = 2e/(R+1) per slice, floored cumulatively (Bourtoule et al.; the reference sisa.py).
    assert slice_epochs(8, 3) == [4, 4, 4]
    assert slice_epochs(5, 3) == [2, 3, 2]  # e' = 2.5: floor(2.5), floor(5) - 2, floor(7.5) - 5
    assert slice_epochs(10, 1) == [10]
    for e, r in ((8, 3), (12, 5), (20, 4)):
        per_slice = slice_epochs(e, r)
        assert sum(x * (s + 1) / r for s, x in enumerate(per_slice)) == pytest.approx(e, rel=0.1)


def test_step_counts_follow_the_trainers_batch_rule_and_the_slice_sizes():
    assert [steps_per_epoch(n, 8) for n in (0, 1, 7, 8, 15, 16, 17)] == [0, 1, 1, 1, 1, 2, 2]
    part = partition(96, 4, 2, seed=0)  # shards of 24, slices of 12
    assert full_retrain_steps(part, [2, 3], batch=5) == [2 * 2 + 3 * 4] * 4
    # One request, batch 1 (a step per sample), one slice: a shard of 24 - 1 retrains.
    assert single_request_ratio(partition(96, 4, 1, seed=0), [1], 1) == 23 / (3 * 24 + 23)
    # One shard, two slices of 48: a point of slice 0 retrains all (ratio 1), one of slice 1
    # only the second slice: 95 of 47 + 95 steps; half the points each.
    ratio = single_request_ratio(partition(96, 1, 2, seed=0), [1, 1], 1)
    assert ratio == pytest.approx((1 + 95 / 142) / 2, rel=1e-15)


def test_the_aggregates_equal_a_hand_computation():
    # Dyadic posteriors: every sum is exact, so the tie below is a tie in any rounding order.
    p = torch.tensor(
        [
            [[0.5, 0.25, 0.25], [0.25, 0.5, 0.25]],
            [[0.125, 0.75, 0.125], [0.25, 0.25, 0.5]],
            [[0.625, 0.25, 0.125], [0.125, 0.125, 0.75]],
        ],
        dtype=torch.float64,
    )
    mean = mean_posterior(p)
    hand = torch.tensor([[1.25, 1.25, 0.5], [0.625, 0.875, 1.5]], dtype=torch.float64) / 3
    assert torch.allclose(mean, hand, rtol=1e-15, atol=0)
    assert mean.argmax(1).tolist() == [0, 2]  # the tie 1.25/3 = 1.25/3 goes to the lower class
    # votes: image 0 gets classes 0, 1, 0; image 1 gets 1, 2, 2
    assert votes(p).tolist() == [[2 / 3, 1 / 3, 0.0], [0.0, 1 / 3, 2 / 3]]
    assert majority_vote(p).tolist() == [0, 2]
    tie = torch.tensor([[[0.0, 1.0]], [[1.0, 0.0]]])
    assert majority_vote(tie).tolist() == [0]


def test_a_request_retrains_only_its_shards_and_only_from_its_slice(rt, tmp_path):
    sisa = toy.trainer(rt, tmp_path / "store")
    part = partition(toy.N, toy.SHARDS, toy.SLICES, sisa.cfg.seed)
    queries = toy.toy_pool()[0]
    # One point from the last slice of shard 0, one from the middle slice of shard 1.
    removed = torch.tensor(sorted([int(part.slices[0][2][0]), int(part.slices[1][1][3])]))
    before = sisa.fit(part, queries, removed)
    epochs = list(sisa.epochs)
    full = [
        sum(e * steps_per_epoch(len(part.seen(k, s)), toy.BATCH) for s, e in enumerate(epochs))
        for k in range(toy.SHARDS)
    ]
    assert [r["steps"] for r in before.shards] == full
    assert [r["start"] for r in before.shards] == [0, 0, 0]
    assert [r["removed_seen"] for r in before.shards] == [1, 1, 0]
    assert before.posteriors.shape == (toy.SHARDS, toy.N, toy.CLASSES)

    after_part = part.without(removed)
    assert part.first_changed(removed) == [2, 1, None]
    after = sisa.fit(after_part, queries, removed)
    assert [r["start"] for r in after.shards] == [2, 1, 3]
    expected = [
        sum(
            epochs[s] * steps_per_epoch(len(after_part.seen(k, s)), toy.BATCH)
            for s in range(first, toy.SLICES)
        )
        for k, first in enumerate([2, 1, 3])
    ]
    assert [r["steps"] for r in after.shards] == expected
    assert expected[0] > 0 and expected[1] > expected[0] and expected[2] == 0
    # The retraining cost read from the slices' records is the same count.
    assert after.steps_from([2, 1, None])[0] == sum(expected)
    # No constituent's training indices hold a removed point, from the checkpoints themselves.
    assert [r["removed_seen"] for r in after.shards] == [0, 0, 0]
    for k, outcome in after.local.items():
        assert not torch.isin(outcome["seen"], removed).any()
        assert torch.equal(outcome["seen"], after_part.seen(k, toy.SLICES - 1))
    # The untouched shard is the same model; the retrained ones changed.
    assert torch.equal(after.posteriors[2], before.posteriors[2])
    assert not torch.equal(after.posteriors[0], before.posteriors[0])

    # A later job with the same requests reuses every slice from the store, bit-identically.
    again = toy.trainer(rt, tmp_path / "store")
    reused = again.fit(after_part, queries, removed)
    assert [r["start"] for r in reused.shards] == [toy.SLICES] * toy.SHARDS
    assert reused.total("steps") == 0
    assert reused.steps_from([2, 1, None]) == after.steps_from([2, 1, None])
    assert torch.equal(reused.posteriors, after.posteriors)


@pytest.mark.slow
def test_one_and_two_ranks_give_the_same_ensemble(tmp_path):
    removed = [5, 17, 40]
    one, two = tmp_path / "one.pt", tmp_path / "two.pt"
    toy.fit_before_and_after(DistEnv(), str(one), removed)
    spawn(toy.fit_before_and_after, 2, (str(two), removed))
    a, b = torch.load(one), torch.load(two)
    # Same process-local arithmetic on every rank (one thread each): the same numbers.
    assert torch.equal(a["before"], b["before"]) and torch.equal(a["after"], b["after"])
    assert _untimed(a["records"]) == _untimed(b["records"])


def _untimed(fits: list[list[dict]]) -> list[list[dict]]:
    return [[{k: v for k, v in r.items() if "seconds" not in k} for r in f] for f in fits]


def test_request_files_are_read_and_bad_ones_refused_naming_the_key(tmp_path):
    good = tmp_path / "ok.txt"
    good.write_text("# forget these\n3, 1\n7\n")
    assert read_request_file("k", str(good)).tolist() == [1, 3, 7]
    for text, says in (
        ("1 2 2", "distinct indices"),
        ("1 -2", "non-negative integer"),
        ("a", "non-negative integer"),
        ("# none\n", "at least one"),
    ):
        bad = tmp_path / "bad.txt"
        bad.write_text(text)
        with pytest.raises(Exception, match=f"k=.*{says}"):
            read_request_file("k", str(bad))
    with pytest.raises(Exception, match="readable file"):
        read_request_file("k", str(tmp_path / "missing.txt"))
