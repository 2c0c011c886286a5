"""Item 2: device-resident uint8 batches against a torchvision ImageFolder of PNGs.

Both serve the demo's digits (scaled up, so decoding has pixels to decode) in shuffled batches
with the same augmentation: random crop with zero padding 2, no flip, float images in [0, 1].
The PIL path decodes every PNG in Python per sample, as a stock ImageFolder pipeline does.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import torch
from PIL import Image
from torch.utils.data import DataLoader
from torchvision import datasets, transforms

from benchmarks import workload
from benchmarks.rows import Row
from benchmarks.timing import Timing, best, interleaved
from ue_sweep.data.batches import TensorStream
from ue_sweep.runtime.env import DistEnv


def _write_folder(root: Path, images: torch.Tensor, labels: torch.Tensor) -> None:
    for i, (image, label) in enumerate(zip(images, labels, strict=True)):
        folder = root / str(int(label))
        folder.mkdir(exist_ok=True)
        Image.fromarray(image[0].numpy(), mode="L").save(folder / f"{i:05d}.png")


def _gray(path: str) -> Image.Image:
    with Image.open(path) as image:
        return image.convert("L")


def _epochs(batches, epochs: int) -> None:
    for epoch in range(epochs):
        for images in batches(epoch):
            images.sum()  # touch the batch, as a training step would


def run(size: int, epochs: int, reps: int) -> tuple[list[Row], dict]:
    images = (
        torch.nn.functional.interpolate(
            workload.digits_images().float(), size=size, mode="bilinear"
        )
        .round()
        .to(torch.uint8)
    )
    labels = torch.arange(len(images)) % 10
    stream = TensorStream(images, labels, workload.BATCH, DistEnv(), 0, workload.AUGMENT)
    pad = workload.AUGMENT.crop_padding
    transform = transforms.Compose(
        [transforms.RandomCrop(size, padding=pad), transforms.ToTensor()]
    )
    with tempfile.TemporaryDirectory() as tmp:
        _write_folder(Path(tmp), images, labels)
        folder = datasets.ImageFolder(tmp, transform=transform, loader=_gray)
        loaders = {
            workers: DataLoader(
                folder,
                batch_size=workload.BATCH,
                shuffle=True,
                num_workers=workers,
                persistent_workers=workers > 0,
            )
            for workers in (0, 2)
        }
        variants = {
            "tensor stream": lambda: _epochs(lambda e: (b.images for b in stream.epoch(e)), epochs)
        }
        for workers, loader in loaders.items():
            variants[f"ImageFolder, {workers} workers"] = lambda loader=loader: _epochs(
                lambda e: (x for x, _ in loader), epochs
            )
        for loader in loaders.values():  # start the workers before timing
            next(iter(loader))
        runs = interleaved(variants, reps)
    fig = {name: best(ts) for name, ts in runs.items()}
    ours = fig["tensor stream"]
    case = f"{len(images)} images {size}px, batch {workload.BATCH}, {epochs} epochs"
    rows = []
    for workers in loaders:
        theirs = fig[f"ImageFolder, {workers} workers"]
        if workers:  # the workers' CPU time is not this process's
            theirs = Timing(theirs.wall, 0.0)
        rows.append(
            Row(
                "2 input",
                f"{case}",
                f"ImageFolder+PIL {workers}w",
                "uint8 tensors",
                theirs,
                ours,
                ">= 10x",
            )
        )
    raw = {name: [t.as_dict() for t in ts] for name, ts in runs.items()}
    raw["images_per_s"] = {name: len(images) * epochs / t.wall for name, t in fig.items()}
    return rows, raw
