"""Batches of uint8 images for the training stages, from the device or streamed from the host.

:class:`TensorStream` serves datasets that fit in device memory: images stay on the training
device as uint8; a step gathers its indices, converts to float and augments there, with no
per-sample Python. :class:`HostStream` serves larger ones with the same batches: DataLoader
workers gather each batch from host memory (a memory-mapped cache file), and it is copied to the
device and augmented there. Indices come from torch's ``DistributedSampler``, so world size W with
per-rank batch B visits exactly the samples of world size 1 with batch W*B, and augmentation
parameters are drawn per sample and epoch (not per rank), so every sample is augmented the same
way whichever rank sees it.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch.utils.data import BatchSampler, DataLoader, Dataset, DistributedSampler

from ue_sweep.config import AugmentConfig
from ue_sweep.data.placement import Placement
from ue_sweep.runtime.distributed import Runtime
from ue_sweep.runtime.env import DistEnv
from ue_sweep.runtime.seeding import generator


@dataclass(frozen=True)
class Batch:
    images: torch.Tensor  # float [B, C, H, W] in [0, 1]
    labels: torch.Tensor  # int64 [B]
    indices: torch.Tensor  # int64 [B], positions in the training set


class Augmenter:
    """Random crop with zero padding and optional horizontal flip, as one batched gather."""

    def __init__(self, cfg: AugmentConfig, num_samples: int, seed: int) -> None:
        self.cfg, self.num_samples, self.seed = cfg, num_samples, seed
        self._offsets = torch.zeros(num_samples, 2, dtype=torch.long)
        self._flips = torch.zeros(num_samples, dtype=torch.bool)

    @property
    def active(self) -> bool:
        return self.cfg.crop_padding > 0 or self.cfg.hflip

    def set_epoch(self, epoch: int) -> None:
        g = generator(self.seed, "augment", epoch)
        span = 2 * self.cfg.crop_padding + 1
        self._offsets = torch.randint(0, span, (self.num_samples, 2), generator=g)
        flips = torch.rand(self.num_samples, generator=g) < 0.5
        self._flips = flips & self.cfg.hflip

    def __call__(self, images: torch.Tensor, indices: torch.Tensor) -> torch.Tensor:
        if not self.active:
            return images
        b, c, h, w = images.shape
        device = images.device
        pad = self.cfg.crop_padding
        idx = indices.cpu()
        offsets, flips = self._offsets[idx].to(device), self._flips[idx].to(device)
        padded = F.pad(images, (pad, pad, pad, pad)) if pad else images
        rows = offsets[:, :1] + torch.arange(h, device=device)
        cols = torch.arange(w, device=device).expand(b, w)
        cols = torch.where(flips[:, None], (w - 1) - cols, cols) + offsets[:, 1:]
        return padded[
            torch.arange(b, device=device)[:, None, None, None],
            torch.arange(c, device=device)[None, :, None, None],
            rows[:, None, :, None],
            cols[:, None, None, :],
        ]


class TensorStream:
    """Per-rank batches of an in-memory dataset for one epoch at a time."""

    def __init__(
        self,
        images: torch.Tensor,
        labels: torch.Tensor,
        batch_size: int,
        env: DistEnv,
        seed: int,
        augment: AugmentConfig | None = None,
        drop_last: bool = False,
    ) -> None:
        if images.dtype != torch.uint8:
            raise TypeError("TensorStream expects uint8 images")
        self.images, self.labels = images, labels
        self.sampler = DistributedSampler(
            range(len(images)), num_replicas=env.world_size, rank=env.rank, shuffle=True, seed=seed
        )
        # Drop an incomplete last batch only when a full one exists, so tiny sets still train.
        drop_last = drop_last and len(self.sampler) >= batch_size
        self.batches = BatchSampler(self.sampler, batch_size, drop_last=drop_last)
        self.augment = Augmenter(augment, len(images), seed) if augment else None

    def __len__(self) -> int:
        return len(self.batches)

    @property
    def samples_per_epoch(self) -> int:
        """Samples visited per epoch on this rank."""
        full, last = divmod(len(self.sampler), self.batches.batch_size)
        return full * self.batches.batch_size + (0 if self.batches.drop_last else last)

    def epoch(self, epoch: int, start_step: int = 0) -> Iterator[Batch]:
        """Batches of ``epoch`` from step ``start_step`` on (a job resuming mid-epoch)."""
        self.sampler.set_epoch(epoch)
        if self.augment is not None:
            self.augment.set_epoch(epoch)
        device = self.images.device
        for indices in itertools.islice(self.batches, start_step, None):
            idx = torch.as_tensor(indices, dtype=torch.long)
            dev_idx = idx.to(device, non_blocking=True)
            images = self.images[dev_idx].float().div_(255)
            if self.augment is not None:
                images = self.augment(images, idx)
            yield Batch(images=images, labels=self.labels[dev_idx], indices=dev_idx)


class _Rows(Dataset):
    """A whole batch of rows per fetch: one gather instead of one Python call per sample."""

    def __init__(self, images: torch.Tensor) -> None:
        self.images = images

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, indices: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
        idx = torch.as_tensor(indices, dtype=torch.long)
        return self.images[idx], idx


class _BatchesFrom:
    """The batch sampler's batches from step ``start`` on: lets a loader resume mid-epoch
    without gathering the batches it skips."""

    def __init__(self, batches: BatchSampler) -> None:
        self.batches, self.start = batches, 0

    def __iter__(self) -> Iterator[list[int]]:
        return itertools.islice(self.batches, self.start, None)

    def __len__(self) -> int:
        return max(0, len(self.batches) - self.start)


class HostStream(TensorStream):
    """TensorStream's batches for images kept in host memory, gathered by DataLoader workers.

    Same sampler, batches and per-sample augmentation as :class:`TensorStream` (so both yield
    identical batches); each batch is gathered in a worker, pinned when the device is a GPU,
    copied to ``device`` and augmented there.
    """

    def __init__(
        self,
        images: torch.Tensor,
        labels: torch.Tensor,
        batch_size: int,
        env: DistEnv,
        seed: int,
        device: torch.device,
        workers: int,
        augment: AugmentConfig | None = None,
        drop_last: bool = False,
    ) -> None:
        super().__init__(images, labels, batch_size, env, seed, augment, drop_last)
        self.device = device
        self.resumable_batches = _BatchesFrom(self.batches)
        # batch_size=None: the batch sampler's index lists go to _Rows whole (torch's documented
        # way to load batches without automatic batching).
        self.loader = DataLoader(
            _Rows(images),
            batch_size=None,
            sampler=self.resumable_batches,
            num_workers=workers,
            pin_memory=device.type == "cuda",
            persistent_workers=workers > 0,
        )

    def epoch(self, epoch: int, start_step: int = 0) -> Iterator[Batch]:
        # Both before iter(): the loader draws its indices when it starts.
        self.sampler.set_epoch(epoch)
        self.resumable_batches.start = start_step
        if self.augment is not None:
            self.augment.set_epoch(epoch)
        for rows, idx in self.loader:
            images = rows.to(self.device, non_blocking=True).float().div_(255)
            if self.augment is not None:
                images = self.augment(images, idx)
            labels = self.labels[idx.to(self.labels.device)].to(self.device)
            yield Batch(images=images, labels=labels, indices=idx.to(self.device))


def batch_source(
    images: torch.Tensor,
    labels: torch.Tensor,
    batch_size: int,
    rt: Runtime,
    seed: int,
    *,
    augment: AugmentConfig | None,
    placement: Placement,
    drop_last: bool = False,
) -> TensorStream:
    """The stream for where the job keeps its images (see :mod:`ue_sweep.data.placement`)."""
    if placement.where == "host":
        return HostStream(
            images,
            labels,
            batch_size,
            rt.env,
            seed,
            rt.device,
            placement.workers,
            augment,
            drop_last,
        )
    return TensorStream(images, labels, batch_size, rt.env, seed, augment, drop_last)
