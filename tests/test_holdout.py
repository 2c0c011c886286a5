"""The membership hold-out: stratified, seeded, disjoint from the training images it leaves."""

from __future__ import annotations

import torch

from ue_sweep.data.holdout import holdout_indices, reserve_holdout
from ue_sweep.data.splits import ImageSplits


def _splits(counts: list[int]) -> ImageSplits:
    labels = torch.cat([torch.full((n,), c) for c, n in enumerate(counts)])
    labels = labels[torch.randperm(len(labels), generator=torch.Generator().manual_seed(0))]
    # Each image's pixels hold its training index, so moved images can be traced.
    images = torch.arange(len(labels), dtype=torch.uint8).view(-1, 1, 1, 1).expand(-1, 1, 2, 2)
    images = images.contiguous()
    return ImageSplits("toy", images, labels, images[:3], labels[:3], ("a", "b", "c"), "t")


def test_each_class_gives_its_rounded_share_and_keeps_at_least_one_image():
    data = _splits([40, 21, 2])
    held = holdout_indices(data.train_labels, 0.25, seed=0)
    counts = torch.bincount(data.train_labels[held], minlength=3).tolist()
    assert counts == [10, 5, 0]  # round(0.25 * 21) = 5; round(0.5) = 0 for the class of 2
    assert holdout_indices(data.train_labels, 0.99, seed=0).numel() == 39 + 20 + 1


def test_the_holdout_is_seeded_and_disjoint_from_the_training_images_it_leaves():
    data = _splits([40, 21, 9])
    split = reserve_holdout(data, 0.3, seed=7)
    again = reserve_holdout(data, 0.3, seed=7)
    assert torch.equal(split.holdout_images, again.holdout_images)
    assert not torch.equal(reserve_holdout(data, 0.3, seed=8).holdout_images, split.holdout_images)
    kept = split.train_images[:, 0, 0, 0].long()
    held = split.holdout_images[:, 0, 0, 0].long()
    assert set(kept.tolist()).isdisjoint(held.tolist())
    assert sorted(kept.tolist() + held.tolist()) == list(range(70))
    assert torch.equal(kept, kept.sort().values)  # the training images keep their order
    assert torch.equal(split.holdout_labels, data.train_labels[held])
    assert torch.equal(split.train_labels, data.train_labels[kept])
    assert split.holdout_size == len(held) and split.test_images is data.test_images


def test_no_fraction_no_holdout():
    data = _splits([4, 4, 4])
    assert reserve_holdout(data, 0.0, seed=0) is data and data.holdout_size == 0


def test_rgb_conversion_keeps_the_holdout_in_step():
    split = reserve_holdout(_splits([6, 6, 6]), 0.5, seed=0).with_channels("rgb")
    assert split.holdout_images.shape[1] == 3 and split.train_images.shape[1] == 3
