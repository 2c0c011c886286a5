"""Small datasets written in each real on-disk format, for loading through the real readers.

The real files cannot be downloaded here (no internet in tests), so each writer produces a few
images laid out exactly as the official release: same folders, file names, keys, columns and
encodings. Images carry a class-dependent colour so that the classes are learnable.
"""

from __future__ import annotations

import hashlib
import pickle
from pathlib import Path

import numpy as np
import scipy.io
from PIL import Image

CIFAR_CLASSES = (
    "airplane",
    "automobile",
    "bird",
    "cat",
    "deer",
    "dog",
    "frog",
    "horse",
    "ship",
    "truck",
)
# (image-id stem, species 1=cat 2=dog): cats are capitalised in the release, dogs are not.
PET_BREEDS = (("Abyssinian", 1), ("american_bulldog", 2), ("Bengal", 1), ("beagle", 2))


def md5(path: Path) -> str:
    return hashlib.md5(path.read_bytes()).hexdigest()


def _pixels(rng: np.random.Generator, label: int, shape: tuple[int, ...]) -> np.ndarray:
    """uint8 noise around a class-dependent level."""
    level = 40 + 25 * (label % 8)
    return np.clip(rng.normal(level, 20, shape), 0, 255).astype(np.uint8)


def _labels(n: int, num_classes: int) -> np.ndarray:
    return np.arange(n) % num_classes


def write_medmnist(
    root: Path,
    flag: str,
    size: int = 28,
    gray: bool = False,
    num_classes: int = 9,
    n: tuple[int, int, int] = (40, 12, 16),
    seed: int = 0,
) -> Path:
    """``<root>/<flag>[_<size>].npz`` with MedMNIST's keys: uint8 images, labels ``[N, 1]``."""
    rng = np.random.default_rng(seed)
    arrays = {}
    for split, count in zip(("train", "val", "test"), n, strict=True):
        labels = _labels(count, num_classes)
        shape = (size, size) if gray else (size, size, 3)
        arrays[f"{split}_images"] = np.stack([_pixels(rng, int(y), shape) for y in labels])
        arrays[f"{split}_labels"] = labels.astype(np.uint8)[:, None]
    root.mkdir(parents=True, exist_ok=True)
    path = root / (f"{flag}.npz" if size == 28 else f"{flag}_{size}.npz")
    np.savez_compressed(path, **arrays)
    return path


def write_cifar10(root: Path, per_batch: int = 8, seed: int = 0) -> dict[str, str]:
    """``<root>/cifar-10-batches-py/`` pickles as released; returns each file's MD5."""
    rng = np.random.default_rng(seed)
    base = root / "cifar-10-batches-py"
    base.mkdir(parents=True, exist_ok=True)
    names = [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]
    for i, name in enumerate(names):
        labels = [int(y) for y in (np.arange(per_batch) + i) % 10]
        # rows of 3072 bytes: the red plane, then green, then blue, each row-major 32x32
        data = np.stack([_pixels(rng, y, (3, 32, 32)).reshape(-1) for y in labels])
        entry = {
            "batch_label": f"batch {i + 1} of 6",
            "labels": labels,
            "data": data,
            "filenames": [f"img_{i}_{j}.png" for j in range(per_batch)],
        }
        (base / name).write_bytes(pickle.dumps(entry, protocol=2))
    meta = {"label_names": list(CIFAR_CLASSES), "num_cases_per_batch": per_batch, "num_vis": 3072}
    (base / "batches.meta").write_bytes(pickle.dumps(meta, protocol=2))
    return {path.name: md5(path) for path in base.iterdir()}


def _jpeg(path: Path, rng: np.random.Generator, label: int, width: int, height: int) -> None:
    Image.fromarray(_pixels(rng, label, (height, width, 3))).save(path, quality=90)


def write_pets(root: Path, per_breed: tuple[int, int] = (5, 3), seed: int = 0) -> Path:
    """``<root>/oxford-iiit-pet/{images,annotations}`` with trainval.txt and test.txt."""
    rng = np.random.default_rng(seed)
    base = root / "oxford-iiit-pet"
    (base / "images").mkdir(parents=True, exist_ok=True)
    (base / "annotations").mkdir(parents=True, exist_ok=True)
    counter = 1
    for split, count in zip(("trainval", "test"), per_breed, strict=True):
        lines = []
        for class_id, (breed, species) in enumerate(PET_BREEDS, start=1):
            for _ in range(count):
                image_id = f"{breed}_{counter}"
                counter += 1
                # landscape and portrait photos, like the release
                w, h = (int(rng.integers(40, 60)), int(rng.integers(24, 40)))
                if counter % 2:
                    w, h = h, w
                _jpeg(base / "images" / f"{image_id}.jpg", rng, class_id - 1, w, h)
                lines.append(f"{image_id} {class_id} {species} {1 + counter % 12}")
        (base / "annotations" / f"{split}.txt").write_text("\n".join(lines) + "\n")
    return base


def write_flowers102(
    root: Path, counts: tuple[int, int, int] = (8, 4, 8), classes: int = 4, seed: int = 0
) -> dict[str, str]:
    """``<root>/flowers-102/`` with jpg/, imagelabels.mat and setid.mat; returns the MD5s."""
    rng = np.random.default_rng(seed)
    base = root / "flowers-102"
    (base / "jpg").mkdir(parents=True, exist_ok=True)
    total = sum(counts)
    labels = 1 + _labels(total, classes)  # 1-based, like the release
    for image_id, label in enumerate(labels, start=1):
        w, h = int(rng.integers(36, 64)), int(rng.integers(36, 64))
        _jpeg(base / "jpg" / f"image_{image_id:05d}.jpg", rng, int(label) - 1, w, h)
    scipy.io.savemat(base / "imagelabels.mat", {"labels": labels[None, :].astype(np.uint8)})
    ids = rng.permutation(np.arange(1, total + 1))
    train, val = counts[0], counts[0] + counts[1]
    setid = {
        "trnid": ids[:train][None, :].astype(np.uint16),
        "valid": ids[train:val][None, :].astype(np.uint16),
        "tstid": ids[val:][None, :].astype(np.uint16),
    }
    scipy.io.savemat(base / "setid.mat", setid)
    return {name: md5(base / name) for name in ("imagelabels.mat", "setid.mat")}


def write_flowers(root: Path, per_class: int = 4, classes: int = 10, seed: int = 0) -> Path:
    """``<root>/flower_images/flower_images/NNNN.png`` and flower_labels.csv (file,label)."""
    rng = np.random.default_rng(seed)
    folder = root / "flower_images" / "flower_images"
    folder.mkdir(parents=True, exist_ok=True)
    rows = ["file,label"]
    for i, label in enumerate(_labels(per_class * classes, classes), start=1):
        name = f"{i:04d}.png"
        Image.fromarray(_pixels(rng, int(label), (32, 32, 3))).save(folder / name)
        rows.append(f"{name},{label}")
    (folder / "flower_labels.csv").write_text("\n".join(rows) + "\n")
    return folder
