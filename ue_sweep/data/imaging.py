"""Preprocessing to the training resolution: image files decoded by workers, arrays resized.

Both produce uint8 ``[N, C, S, S]``. Files of any shape are resized so that the shorter side is S
(antialiased) and centre-cropped to S x S, torchvision's usual evaluation transform; released
square arrays (MedMNIST, CIFAR-10) are only resized when S differs from their size.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch.utils.data import BatchSampler, DataLoader, Dataset

from ue_sweep.data.sources import DatasetFiles
from ue_sweep.errors import UserError

# Samples per worker task while decoding; large enough to amortise the inter-process hop.
DECODE_BATCH = 32
# Images per chunk when resizing arrays, to bound the float copy.
RESIZE_CHUNK = 1024


def square_transform(size: int) -> Callable[[Any], torch.Tensor]:
    """PIL image -> uint8 ``[C, size, size]``: shorter side to ``size``, then a centre crop."""
    from torchvision.transforms import v2

    return v2.Compose([v2.Resize(size, antialias=True), v2.CenterCrop(size), v2.PILToTensor()])


def resize_square(images: torch.Tensor, size: int) -> torch.Tensor:
    """Square uint8 ``[N, C, H, H]`` to ``[N, C, size, size]`` (bilinear, antialiased)."""
    if images.shape[-2:] == (size, size):
        return images
    out = torch.empty(*images.shape[:2], size, size, dtype=torch.uint8)
    for start in range(0, len(images), RESIZE_CHUNK):
        chunk = images[start : start + RESIZE_CHUNK].float()
        resized = F.interpolate(chunk, size=(size, size), mode="bilinear", antialias=True)
        out[start : start + RESIZE_CHUNK] = resized.round_().clamp_(0, 255).to(torch.uint8)
    return out


class _DecodeTask(Dataset):
    """A batch of a torchvision-style reader's samples, decoded in a DataLoader worker.

    A damaged file is returned as ``(index, reason)`` rather than raised, so the main process can
    name it (a worker's exception loses its type and the file's path).
    """

    def __init__(self, reader: Dataset) -> None:
        self.reader = reader

    def __len__(self) -> int:
        return len(self.reader)  # type: ignore[arg-type]

    def __getitem__(self, indices: list[int]) -> tuple[Any, ...]:
        images, labels = [], []
        for i in indices:
            try:
                image, label = self.reader[i]
            except (OSError, ValueError, SyntaxError) as err:  # what PIL raises for bad files
                return None, None, (i, f"{type(err).__name__}: {err}")
            images.append(image)
            labels.append(int(label))
        return torch.stack(images), torch.tensor(labels, dtype=torch.long), None


def _as_is(item: Any) -> Any:
    return item


def decode_all(
    reader: Dataset,
    workers: int,
    unreadable: Callable[[int, str], UserError],
) -> tuple[torch.Tensor, torch.Tensor]:
    """Decode every sample of a non-empty ``reader`` (transform: uint8 ``[C, S, S]``) in order.

    ``unreadable(index, reason)`` builds the error for a file that cannot be decoded.
    """
    n = len(reader)  # type: ignore[arg-type]
    loader = DataLoader(
        _DecodeTask(reader),
        batch_size=None,
        sampler=BatchSampler(range(n), DECODE_BATCH, drop_last=False),
        num_workers=workers,
        collate_fn=_as_is,
    )
    images: torch.Tensor | None = None
    labels = torch.empty(n, dtype=torch.long)
    start = 0
    for batch, batch_labels, failure in loader:
        if failure is not None:
            raise unreadable(*failure)
        if images is None:
            images = torch.empty(n, *batch.shape[1:], dtype=torch.uint8)
        images[start : start + len(batch)] = batch
        labels[start : start + len(batch)] = batch_labels
        start += len(batch)
    assert images is not None, "callers reject empty splits"
    return images, labels


def image_files(reader: Any) -> list[Path]:
    """The image paths of a torchvision OxfordIIITPet / Flowers102 (or our FlowerColorImages).

    torchvision keeps them private (``_images`` / ``_image_files``, stable since 0.12); we need them
    to name a missing or damaged file.
    """
    files = getattr(reader, "_images", None) or reader._image_files
    return [Path(f) for f in files]


def decode_listed(
    reader: Dataset, files: DatasetFiles, workers: int, delete: Path
) -> tuple[torch.Tensor, torch.Tensor]:
    """Decode a non-empty reader of image files, naming a listed file that is missing or damaged.

    ``delete`` is what to delete so that a fetch replaces the images.
    """
    paths = image_files(reader)
    for path in paths:
        files.require(path, "image", delete=delete)

    def unreadable(index: int, reason: str) -> UserError:
        return files.unreadable(paths[index], "image", f"cannot be decoded ({reason})", delete)

    return decode_all(reader, workers, unreadable)
