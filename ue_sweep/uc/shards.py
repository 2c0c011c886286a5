"""The protected training set in shards: one per rank, plain ``.npy`` files and a JSON manifest.

At ImageNet scale one ``protected_train.pt`` is 193 GB written by one rank and read whole by
each victim. Here every rank writes the rows it owns (``shard_bounds``) as uint8 images with
their indices and labels, each file atomically (temporary file, then rename); rank 0 writes
``manifest.json`` last, so a directory with a manifest is complete. Readers map the files
(``np.load(mmap_mode="r")``): pages are read when touched. numpy alone loads the format
(docs/SHARDS.md); this package is not needed.
"""

from __future__ import annotations

import json
import os
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ue_sweep.runtime.distributed import Runtime
from ue_sweep.train.evaluate import shard_bounds

MANIFEST = "manifest.json"
FORMAT = "ue-sweep/protected-shards"
VERSION = 1
ARRAYS = ("images", "indices", "labels")


def shard_name(rank: int, world_size: int, array: str) -> str:
    return f"shard-{rank:05d}-of-{world_size:05d}.{array}.npy"


def _atomic_write(path: Path, write: Any) -> None:
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    with open(tmp, "wb") as f:
        write(f)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def write_shards(
    directory: Path, images: torch.Tensor, labels: torch.Tensor, classes: list[str], rt: Runtime
) -> None:
    """Every rank writes its shard of ``images`` (uint8 ``[N, C, H, W]``, the same on every
    rank) and ``labels``; collective. Shards and a manifest of an earlier run are replaced."""
    n = len(images)
    if rt.is_main:
        directory.mkdir(parents=True, exist_ok=True)
        (directory / MANIFEST).unlink(missing_ok=True)  # incomplete until the new one is written
    rt.barrier()
    lo, hi = shard_bounds(n, rt.rank, rt.world_size)
    arrays = {
        "images": images[lo:hi].cpu().numpy().astype(np.uint8, copy=False),
        "indices": np.arange(lo, hi, dtype=np.int64),
        "labels": labels[lo:hi].cpu().numpy().astype(np.int64, copy=False),
    }
    for name, array in arrays.items():
        _atomic_write(
            directory / shard_name(rt.rank, rt.world_size, name),
            lambda f, a=array: np.save(f, a, allow_pickle=False),
        )
    rt.barrier()
    if rt.is_main:
        shards = []
        for rank in range(rt.world_size):
            first, stop = shard_bounds(n, rank, rt.world_size)
            files = {a: shard_name(rank, rt.world_size, a) for a in ARRAYS}
            shards.append({"first": first, "count": stop - first, **files})
        manifest = {
            "format": FORMAT,
            "version": VERSION,
            "count": n,
            "shape": list(images.shape[1:]),
            "dtype": "uint8",
            "classes": list(classes),
            "shards": shards,
        }
        text = json.dumps(manifest, indent=2).encode()
        _atomic_write(directory / MANIFEST, lambda f: f.write(text))
        keep = {MANIFEST} | {s[a] for s in shards for a in ARRAYS}
        for stale in directory.glob("shard-*.npy"):  # an earlier run on another world size
            if stale.name not in keep:
                stale.unlink()
    rt.barrier()


class ShardFormatError(ValueError):
    """A shard directory that is incomplete or inconsistent with its manifest."""


@dataclass(frozen=True)
class ProtectedShards:
    """A shard directory, its arrays memory-mapped (read-only)."""

    manifest: dict[str, Any]
    images: list[np.ndarray]  # uint8 [n_i, C, H, W] per shard, memory-mapped
    indices: list[np.ndarray]
    labels: list[np.ndarray]

    @property
    def count(self) -> int:
        return int(self.manifest["count"])

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(self.manifest["shape"])

    def all_labels(self) -> torch.Tensor:
        return torch.from_numpy(np.concatenate(self.labels))

    def all_images(self) -> torch.Tensor:
        """uint8 ``[N, C, H, W]``: the mapped file itself for one shard, else one copy."""
        if len(self.images) == 1:
            with warnings.catch_warnings():  # read-only map: the victims never write to it
                warnings.filterwarnings("ignore", "The given NumPy array is not writable")
                return torch.from_numpy(self.images[0])
        return torch.from_numpy(np.concatenate(self.images))


def read_shards(path: Path) -> ProtectedShards:
    """The shards of ``path`` (a shard directory or its manifest), checked against the manifest:
    shapes, dtypes, and indices that cover 0..N-1 in order."""
    directory = path.parent if path.name == MANIFEST else path
    try:
        manifest = json.loads((directory / MANIFEST).read_text())
    except (OSError, ValueError) as err:
        raise ShardFormatError(f"no readable {MANIFEST} in {directory}: {err}") from None
    if manifest.get("format") != FORMAT or manifest.get("version") != VERSION:
        raise ShardFormatError(f"{directory / MANIFEST} is not a {FORMAT} v{VERSION} manifest")
    arrays: dict[str, list[np.ndarray]] = {a: [] for a in ARRAYS}
    expected_first = 0
    for shard in manifest["shards"]:
        for a in ARRAYS:
            try:
                arrays[a].append(np.load(directory / shard[a], mmap_mode="r", allow_pickle=False))
            except (OSError, ValueError) as err:
                raise ShardFormatError(f"shard file {shard[a]}: {err}") from None
        images, indices, labels = (arrays[a][-1] for a in ARRAYS)
        count = shard["count"]
        want = np.arange(expected_first, expected_first + count)
        if (
            images.dtype != np.uint8
            or images.shape != (count, *manifest["shape"])
            or labels.shape != (count,)
            or not np.array_equal(indices, want)
        ):
            raise ShardFormatError(f"shard {shard['images']} does not match {MANIFEST}")
        expected_first += count
    if expected_first != manifest["count"]:
        raise ShardFormatError(f"shards hold {expected_first} of {manifest['count']} images")
    return ProtectedShards(manifest, arrays["images"], arrays["indices"], arrays["labels"])
