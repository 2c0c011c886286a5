"""Oxford 102 Flowers read by ``torchvision.datasets.Flowers102`` (MD5-checked ``.mat`` files).

Files: ``<root>/flowers-102/jpg/image_00001.jpg`` .. ``image_08189.jpg``, ``imagelabels.mat``
(``labels``: class 1..102 per image) and ``setid.mat`` (``trnid``, ``valid``, ``tstid``: 1-based
image ids). Official split: train 1,020, val 1,020, test 6,149; the victims train on train and
are tested on test (or val with ``dataset.eval_split=val``).
"""

from __future__ import annotations

from pathlib import Path

from ue_sweep.config import DatasetConfig, PathsConfig
from ue_sweep.data.cache import cache_path, cached_split
from ue_sweep.data.imaging import decode_listed, square_transform
from ue_sweep.data.sources import DatasetFiles, fingerprint
from ue_sweep.data.splits import ImageSplits, Split

BASE = "flowers-102"
# Keys of the files the reader MD5-checks in its (private, stable since 0.12) `_file_dict`.
MAT_FILES = ("label", "setid")
TEST_SPLIT = {
    "test": "official test split (setid.mat tstid; the val split is unused)",
    "val": "official val split (setid.mat valid; the test split is unused)",
}


def _files(cfg: DatasetConfig, paths: PathsConfig) -> DatasetFiles:
    return DatasetFiles(cfg, paths, "Flowers102")


def _mat_files(base: Path) -> list[tuple[Path, str]]:
    from torchvision.datasets import Flowers102

    table = Flowers102._file_dict
    return [(base / table[key][0], table[key][1]) for key in MAT_FILES]


def _present(files: DatasetFiles) -> list[Path]:
    base = files.root / BASE
    mats = [files.require(path, "file") for path, _ in _mat_files(base)]
    return [*mats, files.require(base / "jpg", "image folder")]


def check(cfg: DatasetConfig, paths: PathsConfig) -> None:
    _present(_files(cfg, paths))


def fetch(cfg: DatasetConfig, paths: PathsConfig) -> None:
    from torchvision.datasets import Flowers102

    Flowers102(str(_files(cfg, paths).root), split="train", download=True)


def _read_split(files: DatasetFiles, split: str, image_size: int, workers: int) -> Split:
    from torchvision.datasets import Flowers102
    from torchvision.datasets.utils import check_integrity

    base = files.root / BASE
    try:
        reader = Flowers102(str(files.root), split=split, transform=square_transform(image_size))
    except RuntimeError as err:  # the reader's MD5 check of the .mat files failed: name the file
        failing = (p for p, md5 in _mat_files(base) if not check_integrity(p, md5))
        path = next(failing, base)
        raise files.unreadable(path, "file", "fails its MD5 check", path) from err
    setid = base / "setid.mat"
    if len(reader) == 0:
        raise files.unreadable(setid, "file", f"lists no {split} images", setid)
    images, labels = decode_listed(reader, files, workers, delete=base / "jpg")
    classes = tuple(reader.classes)
    labels_file = base / "imagelabels.mat"
    files.check_labels(labels, len(classes), labels_file, "file", labels_file)
    return Split(images, labels, classes)


def load(cfg: DatasetConfig, paths: PathsConfig) -> ImageSplits:
    files = _files(cfg, paths)
    sources = fingerprint(_present(files))

    def split(name: str) -> Split:
        key = f"flowers102-{name}-{cfg.image_size}px"
        return cached_split(
            cache_path(files.root, key),
            sources,
            lambda: _read_split(files, name, cfg.image_size, cfg.workers),
        )

    test = split(cfg.eval_split)
    return ImageSplits.of("flowers102", split("train"), test, TEST_SPLIT[cfg.eval_split])
