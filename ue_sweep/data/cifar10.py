"""CIFAR-10 read by ``torchvision.datasets.CIFAR10`` (the python pickles, MD5-checked).

Files: ``<root>/cifar-10-batches-py/`` with ``data_batch_1`` .. ``data_batch_5``, ``test_batch``
and ``batches.meta``. Official 50,000 / 10,000 split; images are 32 px and resized only when
``dataset.image_size`` differs.
"""

from __future__ import annotations

import pickle
from pathlib import Path

import torch

from ue_sweep.config import DatasetConfig, PathsConfig
from ue_sweep.data.cache import cache_path, cached_split
from ue_sweep.data.imaging import resize_square
from ue_sweep.data.sources import DatasetFiles, fingerprint
from ue_sweep.data.splits import ImageSplits, Split

TEST_SPLIT = "official test split (test_batch)"


def _files(cfg: DatasetConfig, paths: PathsConfig) -> DatasetFiles:
    return DatasetFiles(cfg, paths, "CIFAR-10")


def _checked_files() -> list[tuple[str, str]]:
    """(file name, MD5) of every file the reader verifies."""
    from torchvision.datasets import CIFAR10

    meta = (CIFAR10.meta["filename"], CIFAR10.meta["md5"])
    return [(name, md5) for name, md5 in (*CIFAR10.train_list, *CIFAR10.test_list, meta)]


def _base(root: Path) -> Path:
    from torchvision.datasets import CIFAR10

    return root / CIFAR10.base_folder


def _present(files: DatasetFiles) -> list[Path]:
    return [files.require(_base(files.root) / name, "file") for name, _ in _checked_files()]


def check(cfg: DatasetConfig, paths: PathsConfig) -> None:
    _present(_files(cfg, paths))


def fetch(cfg: DatasetConfig, paths: PathsConfig) -> None:
    from torchvision.datasets import CIFAR10

    CIFAR10(str(_files(cfg, paths).root), train=True, download=True)


def _read_split(files: DatasetFiles, train: bool, image_size: int) -> Split:
    from torchvision.datasets import CIFAR10
    from torchvision.datasets.utils import check_integrity

    base = _base(files.root)
    try:
        reader = CIFAR10(str(files.root), train=train)
    except RuntimeError as err:  # the reader's MD5 check failed: name the file
        failing = (base / n for n, md5 in _checked_files() if not check_integrity(base / n, md5))
        path = next(failing, base)
        raise files.unreadable(path, "file", "fails its MD5 check", path) from err
    except (pickle.UnpicklingError, EOFError, ValueError, KeyError) as err:
        problem = f"holds unreadable batches ({type(err).__name__}: {err})"
        raise files.unreadable(base, "folder", problem, base) from err
    labels = torch.tensor(reader.targets, dtype=torch.long)
    classes = tuple(reader.classes)
    files.check_labels(labels, len(classes), base, "folder", base)
    images = torch.from_numpy(reader.data).permute(0, 3, 1, 2).contiguous()
    return Split(resize_square(images, image_size), labels, classes)


def load(cfg: DatasetConfig, paths: PathsConfig) -> ImageSplits:
    files = _files(cfg, paths)
    sources = fingerprint(_present(files))

    def split(name: str, train: bool) -> Split:
        key = f"cifar10-{name}-{cfg.image_size}px"
        return cached_split(
            cache_path(files.root, key), sources, lambda: _read_split(files, train, cfg.image_size)
        )

    return ImageSplits.of("cifar10", split("train", True), split("test", False), TEST_SPLIT)
