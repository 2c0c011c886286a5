"""The digits dataset and batching: sharding, epochs, augmentation, device or host placement."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from ue_sweep.config import AugmentConfig, DatasetConfig, PathsConfig
from ue_sweep.data.batches import Augmenter, HostStream, TensorStream, batch_source
from ue_sweep.data.placement import Placement, footprint, resolve_placement
from ue_sweep.data.registry import load_dataset
from ue_sweep.runtime.env import DistEnv


def test_digits_are_real_uint8_images_with_a_stratified_split():
    data = load_dataset(DatasetConfig(image_size=16, test_fraction=0.25), PathsConfig())
    assert data.train_images.shape == (1347, 1, 16, 16)
    assert data.test_images.shape == (450, 1, 16, 16)
    assert data.train_images.dtype == torch.uint8
    assert data.num_classes == 10
    # stratified: every class keeps its share of the 1,797 images in both splits
    train_share = torch.bincount(data.train_labels, minlength=10) / 1347
    test_share = torch.bincount(data.test_labels, minlength=10) / 450
    assert torch.allclose(train_share, test_share, atol=0.01)
    assert data.train_images.float().std() > 50  # real strokes, not a blank canvas
    again = load_dataset(DatasetConfig(image_size=16, test_fraction=0.25), PathsConfig())
    assert torch.equal(data.train_images, again.train_images)
    assert "split_seed=0" in data.test_split


def _batches(n: int, batch: int, world: int, rank: int, epoch: int) -> list[torch.Tensor]:
    images = torch.zeros(n, 1, 4, 4, dtype=torch.uint8)
    stream = TensorStream(
        images, torch.arange(n), batch, DistEnv(rank=rank, world_size=world), seed=7
    )
    return [b.indices for b in stream.epoch(epoch)]


def test_two_ranks_with_batch_b_visit_the_batches_of_one_rank_with_2b():
    n, b = 96, 8
    single = _batches(n, 2 * b, 1, 0, epoch=3)
    rank0, rank1 = _batches(n, b, 2, 0, epoch=3), _batches(n, b, 2, 1, epoch=3)
    assert len(single) == len(rank0) == len(rank1) == n // (2 * b)
    for whole, r0, r1 in zip(single, rank0, rank1, strict=True):
        assert sorted(whole.tolist()) == sorted(r0.tolist() + r1.tolist())
    assert sorted(torch.cat(single).tolist()) == list(range(n))


def test_every_epoch_is_a_new_permutation():
    first, second = _batches(64, 64, 1, 0, epoch=0), _batches(64, 64, 1, 0, epoch=1)
    assert not torch.equal(first[0], second[0])
    assert sorted(first[0].tolist()) == sorted(second[0].tolist())


def test_incomplete_last_batch_is_dropped_only_when_a_full_one_exists():
    images = torch.zeros(10, 1, 4, 4, dtype=torch.uint8)
    dropping = TensorStream(images, torch.arange(10), 4, DistEnv(), 0, drop_last=True)
    assert [len(b.indices) for b in dropping.epoch(0)] == [4, 4]
    tiny = TensorStream(images, torch.arange(10), 32, DistEnv(), 0, drop_last=True)
    assert [len(b.indices) for b in tiny.epoch(0)] == [10]


def test_random_crop_and_flip_match_a_per_sample_reference():
    cfg = AugmentConfig(crop_padding=2, hflip=True)
    images = torch.rand(6, 3, 8, 8)
    aug = Augmenter(cfg, num_samples=20, seed=1)
    aug.set_epoch(4)
    indices = torch.tensor([3, 17, 0, 9, 12, 5])
    out = aug(images, indices)
    for row, idx in enumerate(indices.tolist()):
        dy, dx = aug._offsets[idx].tolist()
        expected = F.pad(images[row], (2, 2, 2, 2))[:, dy : dy + 8, dx : dx + 8]
        if aug._flips[idx]:
            expected = expected.flip(-1)
        assert torch.equal(out[row], expected)


def test_augmentation_depends_on_sample_and_epoch_not_on_batch_or_rank():
    cfg = AugmentConfig(crop_padding=4, hflip=True)
    image = torch.rand(1, 3, 8, 8)
    a, b = Augmenter(cfg, 50, seed=3), Augmenter(cfg, 50, seed=3)
    a.set_epoch(2)
    b.set_epoch(2)
    alone = a(image, torch.tensor([11]))
    in_batch = b(torch.cat([torch.rand(2, 3, 8, 8), image]), torch.tensor([1, 2, 11]))[2:]
    assert torch.equal(alone, in_batch)
    b.set_epoch(3)
    flips_differ = not torch.equal(a._flips, b._flips)
    offsets_differ = not torch.equal(a._offsets, b._offsets)
    assert flips_differ or offsets_differ


def test_flip_is_off_when_disabled():
    aug = Augmenter(AugmentConfig(crop_padding=0, hflip=False), 10, seed=0)
    aug.set_epoch(0)
    images = torch.rand(10, 1, 5, 5)
    assert not aug.active
    assert torch.equal(aug(images, torch.arange(10)), images)


# ----------------------------------------------------------------------------------------------
# Host-placed data: streamed by DataLoader workers, batch for batch like the device stream
# ----------------------------------------------------------------------------------------------


def _images(n: int = 37) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (n, 3, 8, 8), dtype=torch.uint8, generator=g)
    return images, torch.arange(n) % 5


@pytest.mark.parametrize(("world", "workers"), [(1, 0), (1, 2), (2, 1)])
def test_host_stream_yields_the_device_stream_batches(world, workers):
    images, labels = _images()
    augment = AugmentConfig(crop_padding=2, hflip=True)
    for rank in range(world):
        env = DistEnv(rank=rank, world_size=world)
        device = TensorStream(images, labels, 8, env, seed=3, augment=augment, drop_last=True)
        host = HostStream(
            images, labels, 8, env, 3, torch.device("cpu"), workers, augment, drop_last=True
        )
        assert len(host) == len(device) and host.samples_per_epoch == device.samples_per_epoch
        # (epoch, first step): whole epochs, and a job resuming in the middle of one
        for epoch, start in ((0, 0), (1, 0), (1, 2), (0, 1)):
            pairs = list(zip(device.epoch(epoch, start), host.epoch(epoch, start), strict=True))
            assert len(pairs) == len(device) - start
            for a, b in pairs:
                assert torch.equal(a.images, b.images)
                assert torch.equal(a.labels, b.labels)
                assert torch.equal(a.indices, b.indices)


def test_batch_source_follows_the_placement(rt):
    images, labels = _images()
    on_device = batch_source(images, labels, 4, rt, 0, augment=None, placement=Placement())
    streamed = batch_source(
        images, labels, 4, rt, 0, augment=None, placement=Placement("host", workers=0)
    )
    assert type(on_device) is TensorStream and isinstance(streamed, HostStream)


def test_auto_placement_keeps_data_on_the_device_while_it_fits():
    data = load_dataset(DatasetConfig(image_size=16), PathsConfig())
    need = footprint(data)  # three training-set copies and the test set
    assert need == 3 * 1347 * 256 + 450 * 256
    cfg = DatasetConfig(placement="auto", device_fraction=0.25, workers=3)
    gpu = torch.device("cuda", 0)
    assert resolve_placement(cfg, data, gpu, device_memory=4 * need) == Placement("device", 3)
    assert resolve_placement(cfg, data, gpu, device_memory=4 * need - 1).where == "host"
    assert resolve_placement(cfg, data, torch.device("cpu")).where == "device"
    forced = DatasetConfig(placement="host")
    assert resolve_placement(forced, data, torch.device("cpu")).where == "host"
