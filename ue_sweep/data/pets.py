"""Oxford-IIIT Pet (37 breeds) read by ``torchvision.datasets.OxfordIIITPet``.

Files: ``<root>/oxford-iiit-pet/images/<image id>.jpg`` and ``annotations/trainval.txt`` and
``annotations/test.txt`` (lines ``<image id> <class 1..37> <species 1..2> <breed id>``). Official
trainval (3,680 images) / test (3,669) split. JPEGs are decoded once, by ``dataset.workers``
processes, into the cache at ``dataset.image_size``.
"""

from __future__ import annotations

from pathlib import Path

from ue_sweep.config import DatasetConfig, PathsConfig
from ue_sweep.data.cache import cache_path, cached_split
from ue_sweep.data.imaging import decode_listed, square_transform
from ue_sweep.data.sources import DatasetFiles, fingerprint
from ue_sweep.data.splits import ImageSplits, Split

BASE = "oxford-iiit-pet"
TEST_SPLIT = "official test split (annotations/test.txt)"


def _files(cfg: DatasetConfig, paths: PathsConfig) -> DatasetFiles:
    return DatasetFiles(cfg, paths, "Oxford-IIIT Pet")


def _present(files: DatasetFiles) -> list[Path]:
    """The sources a cache entry depends on: both split lists and the image folder."""
    base = files.root / BASE
    # The reader downloads only when a folder is missing, so a lost list needs its folder gone.
    lists = [
        files.require(
            base / "annotations" / f"{split}.txt", "split list", delete=base / "annotations"
        )
        for split in ("trainval", "test")
    ]
    return [*lists, files.require(base / "images", "image folder")]


def check(cfg: DatasetConfig, paths: PathsConfig) -> None:
    _present(_files(cfg, paths))


def fetch(cfg: DatasetConfig, paths: PathsConfig) -> None:
    from torchvision.datasets import OxfordIIITPet

    OxfordIIITPet(str(_files(cfg, paths).root), split="trainval", download=True)


def _read_split(files: DatasetFiles, split: str, image_size: int, workers: int) -> Split:
    from torchvision.datasets import OxfordIIITPet

    annotations = files.root / BASE / "annotations"
    listing = annotations / f"{split}.txt"
    try:
        reader = OxfordIIITPet(str(files.root), split=split, transform=square_transform(image_size))
    except ValueError as err:  # a line without the four fields
        raise files.unreadable(listing, "split list", f"is malformed ({err})", annotations) from err
    if len(reader) == 0:
        raise files.unreadable(listing, "split list", "lists no images", annotations)
    images, labels = decode_listed(reader, files, workers, delete=files.root / BASE / "images")
    classes = tuple(reader.classes)
    files.check_labels(labels, len(classes), listing, "split list", annotations)
    return Split(images, labels, classes)


def load(cfg: DatasetConfig, paths: PathsConfig) -> ImageSplits:
    files = _files(cfg, paths)
    sources = fingerprint(_present(files))

    def split(name: str) -> Split:
        key = f"pets-{name}-{cfg.image_size}px"
        return cached_split(
            cache_path(files.root, key),
            sources,
            lambda: _read_split(files, name, cfg.image_size, cfg.workers),
        )

    return ImageSplits.of("pets", split("trainval"), split("test"), TEST_SPLIT)
