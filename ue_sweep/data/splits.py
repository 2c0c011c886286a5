"""The in-memory form every dataset loader produces."""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch


@dataclass(frozen=True)
class Split:
    """One split of a dataset, as a loader builds it and the cache stores it."""

    images: torch.Tensor  # uint8 [N, C, H, W]
    labels: torch.Tensor  # int64 [N]
    classes: tuple[str, ...]


@dataclass(frozen=True)
class ImageSplits:
    """Train and test images as uint8 ``[N, C, H, W]`` tensors with int64 labels.

    uint8 is what a protected dataset is published as, and four times smaller than float on the
    training device; stages convert batches to float in [0, 1] when they gather them.
    """

    name: str
    train_images: torch.Tensor
    train_labels: torch.Tensor
    test_images: torch.Tensor
    test_labels: torch.Tensor
    classes: tuple[str, ...]
    # What served as the test set, recorded in every result (e.g. "official test split").
    test_split: str
    # Training images no stage trains on (`data/holdout.py`): the non-members of membership
    # inference, taken out of the training split before any stage runs when an evaluation asks.
    holdout_images: torch.Tensor | None = None
    holdout_labels: torch.Tensor | None = None

    def __post_init__(self) -> None:
        import torch  # loaded already wherever images exist; not needed to name the type

        if (self.holdout_images is None) != (self.holdout_labels is None):
            raise ValueError(f"{self.name}: a hold-out split needs both images and labels")
        for split in ("train", "test", "holdout"):
            images, labels = getattr(self, f"{split}_images"), getattr(self, f"{split}_labels")
            if images is None:
                continue
            if images.dtype != torch.uint8 or images.dim() != 4:
                raise ValueError(f"{self.name} {split} images must be uint8 [N, C, H, W]")
            if labels.shape != (images.shape[0],):
                raise ValueError(
                    f"{self.name} {split}: {labels.shape[0]} labels for {images.shape[0]} images"
                )

    @classmethod
    def of(cls, name: str, train: Split, test: Split, test_split: str) -> ImageSplits:
        return cls(
            name=name,
            train_images=train.images,
            train_labels=train.labels,
            test_images=test.images,
            test_labels=test.labels,
            classes=train.classes,
            test_split=test_split,
        )

    def with_channels(self, mode: str) -> ImageSplits:
        """``rgb`` repeats a single gray channel three times; ``native`` keeps the images."""
        if mode == "native" or self.channels == 3:
            return self
        return replace(
            self,
            train_images=self.train_images.expand(-1, 3, -1, -1).contiguous(),
            test_images=self.test_images.expand(-1, 3, -1, -1).contiguous(),
            holdout_images=None
            if self.holdout_images is None
            else self.holdout_images.expand(-1, 3, -1, -1).contiguous(),
        )

    @property
    def holdout_size(self) -> int:
        return 0 if self.holdout_images is None else len(self.holdout_images)

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    @property
    def channels(self) -> int:
        return int(self.train_images.shape[1])

    @property
    def image_size(self) -> int:
        return int(self.train_images.shape[-1])
