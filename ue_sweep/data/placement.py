"""Where a job keeps its images while training: on the training device, or in host memory.

Decided once per job from the dataset's size and recorded in the result. On the device, batches
are gathered there (:class:`~ue_sweep.data.batches.TensorStream`); in host memory, DataLoader
workers gather them and each batch is copied over (:class:`~ue_sweep.data.batches.HostStream`).
Both give identical batches, so the choice changes speed and memory, not results.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ue_sweep.config import DatasetConfig
from ue_sweep.data.splits import ImageSplits

# The job holds the clean training set plus two perturbed copies (protected, random control).
TRAIN_COPIES = 3


@dataclass(frozen=True)
class Placement:
    where: str = "device"  # "device" or "host"
    # DataLoader workers per rank when streaming from the host.
    workers: int = 0


# The default of the training loops: images already on the training device.
ON_DEVICE = Placement()


def footprint(data: ImageSplits) -> int:
    """Bytes of images the job keeps: every training-set copy and the test set."""
    return TRAIN_COPIES * data.train_images.nbytes + data.test_images.nbytes


def resolve_placement(
    cfg: DatasetConfig,
    data: ImageSplits,
    device: torch.device,
    device_memory: int | None = None,
) -> Placement:
    """``dataset.placement``, with ``auto`` resolved.

    ``auto`` keeps the images on a GPU when their footprint is at most ``dataset.device_fraction``
    of its memory (``device_memory`` bytes, read from the GPU when not given); on the CPU the
    device is the host, so there is nothing to stream.
    """
    where = cfg.placement
    if where == "auto":
        if device.type == "cpu":
            where = "device"
        else:
            if device_memory is None:
                device_memory = torch.cuda.get_device_properties(device).total_memory
            fits = footprint(data) <= cfg.device_fraction * device_memory
            where = "device" if fits else "host"
    return Placement(where=where, workers=cfg.workers)
