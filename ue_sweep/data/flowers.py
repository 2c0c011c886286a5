"""Kaggle "Flower Color Images" (olgabelitskaya/flower-color-images): 210 PNGs of 10 species.

No ecosystem reader exists, so :class:`FlowerColorImages` reads the published layout in
torchvision's dataset style: ``<root>/flower_images/flower_images/0001.png`` .. ``0210.png``
(128 x 128) and ``flower_labels.csv`` with the columns ``file`` and ``label`` (0..9). The set has
no official split: a stratified, seeded hold-out (``dataset.test_fraction``, ``split_seed``) is
the test set.
"""

from __future__ import annotations

import csv
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from sklearn.model_selection import train_test_split
from torchvision.datasets import VisionDataset
from torchvision.datasets.folder import default_loader

from ue_sweep.config import DatasetConfig, PathsConfig
from ue_sweep.data.cache import cache_path, cached_split
from ue_sweep.data.imaging import decode_listed, square_transform
from ue_sweep.data.sources import DatasetFiles, fingerprint
from ue_sweep.data.splits import ImageSplits, Split
from ue_sweep.errors import UserError

FOLDER = Path("flower_images", "flower_images")
LABELS_FILE = "flower_labels.csv"
COLUMNS = ("file", "label")


class FlowerColorImages(VisionDataset):
    """The Kaggle set as a map-style dataset of ``(image, label)``; PIL images, like torchvision.

    Args:
        root: directory that holds ``flower_images/`` (where the Kaggle archive was unzipped).
        transform, target_transform: as in torchvision.
        download: fetch the archive with the Kaggle API (needs ``pip install kaggle`` and an API
            token in ``~/.kaggle/kaggle.json``) unless the files are there.
    """

    slug = "olgabelitskaya/flower-color-images"
    classes = (
        "phlox",
        "rose",
        "calendula",
        "iris",
        "leucanthemum maximum",
        "bellflower",
        "viola",
        "rudbeckia laciniata (Goldquelle)",
        "peony",
        "aquilegia",
    )

    def __init__(
        self,
        root: str | Path,
        transform: Callable[[Any], Any] | None = None,
        target_transform: Callable[[Any], Any] | None = None,
        download: bool = False,
    ) -> None:
        super().__init__(root, transform=transform, target_transform=target_transform)
        self.folder = Path(self.root) / FOLDER
        if download:
            self.download()
        if not self._check_exists():
            raise RuntimeError("Dataset not found. You can use download=True to download it")
        with open(self.folder / LABELS_FILE, newline="") as handle:
            rows = csv.DictReader(handle)
            if tuple(rows.fieldnames or ()) != COLUMNS:
                raise ValueError(f"columns {rows.fieldnames}, not {list(COLUMNS)}")
            entries = [(row["file"], int(row["label"])) for row in rows]
        self._image_files = [self.folder / name for name, _ in entries]
        self._labels = [label for _, label in entries]

    def __len__(self) -> int:
        return len(self._image_files)

    def __getitem__(self, idx: int) -> tuple[Any, Any]:
        image, label = default_loader(self._image_files[idx]), self._labels[idx]
        if self.transform is not None:
            image = self.transform(image)
        if self.target_transform is not None:
            label = self.target_transform(label)
        return image, label

    def _check_exists(self) -> bool:
        return (self.folder / LABELS_FILE).is_file()

    def download(self) -> None:
        if self._check_exists():
            return
        try:
            from kaggle.api.kaggle_api_extended import KaggleApi
        except ImportError as err:
            raise UserError(
                "fetching flowers needs the Kaggle API: pip install kaggle, and put an API token "
                "in ~/.kaggle/kaggle.json (kaggle.com > Settings > API)"
            ) from err
        Path(self.root).mkdir(parents=True, exist_ok=True)
        api = KaggleApi()
        api.authenticate()
        api.dataset_download_files(self.slug, path=str(self.root), unzip=True, quiet=False)


def _files(cfg: DatasetConfig, paths: PathsConfig) -> DatasetFiles:
    return DatasetFiles(cfg, paths, "Flower Color Images")


def _present(files: DatasetFiles) -> list[Path]:
    folder = files.root / FOLDER
    return [files.require(folder / LABELS_FILE, "labels file", delete=folder.parent), folder]


def check(cfg: DatasetConfig, paths: PathsConfig) -> None:
    _present(_files(cfg, paths))


def fetch(cfg: DatasetConfig, paths: PathsConfig) -> None:
    FlowerColorImages(_files(cfg, paths).root, download=True)


def _read_all(files: DatasetFiles, image_size: int, workers: int) -> Split:
    labels_file = files.root / FOLDER / LABELS_FILE
    delete = labels_file.parent.parent
    try:
        reader = FlowerColorImages(files.root, transform=square_transform(image_size))
    except (ValueError, KeyError) as err:
        raise files.unreadable(labels_file, "labels file", f"is malformed ({err})", delete) from err
    if len(reader) == 0:
        raise files.unreadable(labels_file, "labels file", "lists no images", delete)
    images, labels = decode_listed(reader, files, workers, delete=delete)
    classes = FlowerColorImages.classes
    files.check_labels(labels, len(classes), labels_file, "labels file", delete)
    return Split(images, labels, classes)


def load(cfg: DatasetConfig, paths: PathsConfig) -> ImageSplits:
    files = _files(cfg, paths)
    key = f"flowers-all-{cfg.image_size}px"
    everything = cached_split(
        cache_path(files.root, key),
        fingerprint(_present(files)),
        lambda: _read_all(files, cfg.image_size, cfg.workers),
    )
    train_idx, test_idx = train_test_split(
        np.arange(len(everything.labels)),
        test_size=cfg.test_fraction,
        stratify=everything.labels.numpy(),
        random_state=cfg.split_seed,
    )

    def take(idx: np.ndarray) -> Split:
        rows = torch.from_numpy(idx)
        return Split(everything.images[rows], everything.labels[rows], everything.classes)

    return ImageSplits.of(
        "flowers",
        take(train_idx),
        take(test_idx),
        f"stratified {cfg.test_fraction:g} hold-out (split_seed={cfg.split_seed}); "
        "the set has no official split",
    )
