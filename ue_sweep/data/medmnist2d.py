"""MedMNIST 2D (PathMNIST, BloodMNIST, OrganAMNIST, ...) read by the medmnist package's classes.

Files, as released on Zenodo: ``<root>/<flag>.npz`` (28 px) or ``<root>/<flag>_<size>.npz``
(64, 128, 224 px), each holding the official splits under ``train_images``, ``train_labels``,
``val_*`` and ``test_*``; images uint8 ``[N, H, W]`` (gray) or ``[N, H, W, 3]``, labels ``[N, 1]``.
The official test split is the test set unless ``dataset.eval_split=val`` (what the public HPC
code used).
"""

from __future__ import annotations

import zipfile
import zlib
from functools import cache
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ue_sweep.config import DatasetConfig, PathsConfig
from ue_sweep.data.cache import cache_path, cached_split
from ue_sweep.data.imaging import resize_square
from ue_sweep.data.sources import DatasetFiles, fingerprint
from ue_sweep.data.splits import ImageSplits, Split

# One class index per image; multi-label ChestMNIST is no cross-entropy classification target.
SINGLE_LABEL_TASKS = ("multi-class", "binary-class", "ordinal-regression")
# What a damaged npz raises from np.load or when a member is read.
NPZ_ERRORS = (OSError, ValueError, EOFError, KeyError, zipfile.BadZipFile, zlib.error)
TEST_SPLIT = {
    "test": "official test split (the public HPC code used the val split as its test set)",
    "val": "official val split, as the public HPC code (the official test split is unused)",
}


def _medmnist() -> Any:
    # Imported on use: medmnist imports torch, PIL, pandas and scikit-image at start-up.
    import medmnist

    return medmnist


def flag_channels(flag: str) -> int:
    return int(_medmnist().INFO[flag]["n_channels"])


@cache
def flags() -> tuple[str, ...]:
    """The 2D flags with a single-label task, from the installed medmnist's ``INFO``."""
    medmnist = _medmnist()
    from medmnist.dataset import MedMNIST2D

    return tuple(
        sorted(
            flag
            for flag, info in medmnist.INFO.items()
            if info["task"] in SINGLE_LABEL_TASKS
            and issubclass(getattr(medmnist, info["python_class"]), MedMNIST2D)
        )
    )


def sizes() -> tuple[int, ...]:
    _medmnist()
    from medmnist.dataset import MedMNIST2D

    return tuple(MedMNIST2D.available_sizes)


def _reader(flag: str) -> Any:
    medmnist = _medmnist()
    return getattr(medmnist, medmnist.INFO[flag]["python_class"])


def _files(cfg: DatasetConfig, paths: PathsConfig) -> DatasetFiles:
    return DatasetFiles(cfg, paths, f"MedMNIST {cfg.flag} ({cfg.size} px)")


def npz_file(cfg: DatasetConfig, root: Path) -> Path:
    """MedMNIST's own file name: no suffix at 28 px, ``_<size>`` otherwise."""
    suffix = "" if cfg.size == 28 else f"_{cfg.size}"
    return root / f"{cfg.flag}{suffix}.npz"


def check(cfg: DatasetConfig, paths: PathsConfig) -> None:
    files = _files(cfg, paths)
    files.require(npz_file(cfg, files.root), "file")


def fetch(cfg: DatasetConfig, paths: PathsConfig) -> None:
    root = _files(cfg, paths).root
    root.mkdir(parents=True, exist_ok=True)
    # Downloads the npz (all splits) unless a copy with the right MD5 is there.
    _reader(str(cfg.flag))(split="train", root=str(root), size=cfg.size, download=True)


def _read_split(cfg: DatasetConfig, files: DatasetFiles, path: Path, split: str) -> Split:
    info = _medmnist().INFO[cfg.flag]
    try:
        reader = _reader(str(cfg.flag))(split=split, root=str(files.root), size=cfg.size)
        images, labels = np.asarray(reader.imgs), np.asarray(reader.labels)
    except NPZ_ERRORS as err:
        problem = f"is damaged ({type(err).__name__}: {err})"
        raise files.unreadable(path, "file", problem, path) from err
    gray = info["n_channels"] == 1
    expected = (cfg.size, cfg.size) if gray else (cfg.size, cfg.size, 3)
    if images.dtype != np.uint8 or images.shape[1:] != expected:
        want = ", ".join(str(d) for d in ("N", *expected))
        problem = f"holds {split}_images {images.dtype} {list(images.shape)}, not uint8 [{want}]"
        raise files.unreadable(path, "file", problem, path)
    if labels.shape != (len(images), 1):
        problem = f"holds {split}_labels {list(labels.shape)}, not [{len(images)}, 1]"
        raise files.unreadable(path, "file", problem, path)
    classes = tuple(info["label"][str(i)] for i in range(len(info["label"])))
    targets = torch.from_numpy(labels[:, 0].astype(np.int64))
    files.check_labels(targets, len(classes), path, "file", path)
    tensor = torch.from_numpy(np.ascontiguousarray(images))
    tensor = tensor.unsqueeze(1) if gray else tensor.permute(0, 3, 1, 2).contiguous()
    return Split(resize_square(tensor, cfg.image_size), targets, classes)


def load(cfg: DatasetConfig, paths: PathsConfig) -> ImageSplits:
    files = _files(cfg, paths)
    path = files.require(npz_file(cfg, files.root), "file")
    sources = fingerprint([path])

    def split(name: str) -> Split:
        key = f"{path.stem}-{name}-{cfg.image_size}px"
        return cached_split(
            cache_path(files.root, key), sources, lambda: _read_split(cfg, files, path, name)
        )

    return ImageSplits.of(
        str(cfg.flag), split("train"), split(cfg.eval_split), TEST_SPLIT[cfg.eval_split]
    )
