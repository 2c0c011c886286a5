"""What each stage depends on: the :class:`StageKey` of every stage of a job.

A key holds exactly the config slice its stage reads, the keys of the stages it builds on, and
the world size where it changes the maths (training stages: per-rank batch norm statistics and
data order). Training sets are named by their content (SHA-256 of the uint8 images), so a victim
on the same images is one artifact however the images were made (this job's noise, another
job's via ``uc.source``, or a defense's transform).
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch

from ue_sweep.config import RootConfig
from ue_sweep.runtime.distributed import Runtime
from ue_sweep.store.artifacts import StageKey

# Dataset fields that change which images a job sees (not where they are or how they load).
_DATA_FIELDS = (
    "name",
    "flag",
    "size",
    "image_size",
    "channels",
    "eval_split",
    "test_fraction",
    "split_seed",
)
# Generator fields added after stores were filled: in a key only when not at their default.
_GENERATOR_DEFAULTS = {"kind": "bank", "temperature": 1.0, "against": "surrogate"}
_DIGEST_BYTES = 32
_HASH_ROWS = 4096


def content_digest(rt: Runtime, *tensors: torch.Tensor) -> str:
    """SHA-256 of the tensors' bytes, computed on rank 0 and broadcast to every rank."""
    out = torch.zeros(_DIGEST_BYTES, dtype=torch.uint8)
    if rt.is_main:
        digest = hashlib.sha256()
        for tensor in tensors:
            digest.update(str((tuple(tensor.shape), tensor.dtype)).encode())
            for start in range(0, max(len(tensor), 1), _HASH_ROWS):
                rows = tensor[start : start + _HASH_ROWS].detach().contiguous().cpu()
                digest.update(rows.numpy().tobytes())
        out = torch.frombuffer(bytearray(digest.digest()), dtype=torch.uint8)
    return bytes(rt.broadcast(out).cpu().tolist()).hex()


def data_identity(cfg: RootConfig, content: str) -> dict[str, Any]:
    dataset = asdict(cfg.dataset)
    return {"dataset": {k: dataset[k] for k in _DATA_FIELDS}, "sha256": content}


def _training(cfg: RootConfig, world_size: int) -> dict[str, Any]:
    """What every training stage shares: seed, augmentation, precision, world size."""
    return {
        "seed": cfg.seed,
        "augment": asdict(cfg.dataset.augment),
        "precision": cfg.trainer.precision,
        "world_size": world_size,
    }


def _file_identity(path: Path) -> dict[str, Any]:
    stat = path.stat()
    return {"path": str(path), "bytes": stat.st_size, "mtime_ns": stat.st_mtime_ns}


def surrogate_key(cfg: RootConfig, data: dict[str, Any], world_size: int) -> StageKey:
    s = asdict(cfg.surrogate)
    fit = s.pop("fit")
    if cfg.surrogate.weights != "fit" or s["fit_on"] == "labels":
        s.pop("fit_on")  # the default: keys of surrogates fitted on labels stay as they were
    inputs: dict[str, Any] = {"data": data, "surrogate": s}
    if cfg.surrogate.weights == "fit":
        inputs |= {"fit": fit, **_training(cfg, world_size)}
    elif cfg.surrogate.weights == "none":
        inputs["seed"] = cfg.seed
    elif cfg.surrogate.weights == "path":
        inputs["checkpoint"] = _file_identity(Path(str(cfg.surrogate.checkpoint)).expanduser())
    return StageKey("surrogate", inputs)


def clusters_key(cfg: RootConfig, surrogate: StageKey) -> StageKey:
    return StageKey(
        "clusters",
        {"surrogate": surrogate.digest, "clusters": asdict(cfg.clusters), "seed": cfg.seed},
    )


def generators_key(cfg: RootConfig, clusters: StageKey, world_size: int) -> StageKey:
    generator = asdict(cfg.generator)
    generator.pop("chunk_size")  # bounds memory only: the same batches, the same maths
    for name, default in _GENERATOR_DEFAULTS.items():  # added later: old keys stay valid
        if generator[name] == default:
            generator.pop(name)
    return StageKey(
        "generators",
        {
            "clusters": clusters.digest,
            "generator": generator,
            "batch_size": asdict(cfg.batch_size),
            **_training(cfg, world_size),
        },
    )


def victim_key(
    cfg: RootConfig,
    data: dict[str, Any],
    train_images: str,
    world_size: int,
    recipe: dict[str, Any] | None = None,
    train_labels: str | None = None,
    variant: str | None = None,
) -> StageKey:
    """A victim trained from scratch on the images with digest ``train_images`` (the labels and
    test set are the dataset's), with ``cfg.victim``'s model and recipe, or a defense's.

    ``train_labels``: the digest of the images' labels when they are not the training split's
    (a subset: shadow models); ``variant``: the name of its own initial weights and data order.
    Either is part of the key only when given, so every other victim keeps its key.
    """
    victim = asdict(cfg.victim)
    extra = {"train_labels": train_labels} if train_labels is not None else {}
    extra |= {"variant": variant} if variant is not None else {}
    return StageKey(
        "victim",
        {
            "data": data,
            "train_images": train_images,
            "victim": victim,
            "defense": recipe,
            **extra,
            **_training(cfg, world_size),
        },
    )


def snapshots_key(victim: StageKey, epochs: Sequence[int]) -> StageKey:
    """The per-epoch weights of victim ``victim`` after ``epochs`` (0-based): a stage of its
    own, so a victim stored without them is reused as it is and only retrained for them."""
    return StageKey("victim-snapshots", {"victim": victim.digest, "epochs": sorted(epochs)})


def sisa_slice_key(
    cfg: RootConfig,
    data: dict[str, Any],
    train_images: str,
    shard: int,
    slice_index: int,
    epochs: int,
    seen: str,
    previous: StageKey | None,
) -> StageKey:
    """SISA constituent ``shard`` after training ``epochs`` epochs on slice ``slice_index``: named
    by the exact sorted training indices it has seen (digest ``seen``) of the images with digest
    ``train_images``, and by the slice before it (its starting state), so a request invalidates
    the slices from the first one that held a removed point, and only those. Always trained on
    one rank (``sisa/ensemble.py``): world size 1 whatever the job's."""
    victim = asdict(cfg.victim)
    victim.pop("epochs")  # the slice's own epochs replace it
    return StageKey(
        "sisa-slice",
        {
            "data": data,
            "train_images": train_images,
            "victim": victim,
            "shard": shard,
            "slice": slice_index,
            "epochs": epochs,
            "seen": seen,
            "previous": None if previous is None else previous.digest,
            **_training(cfg, 1),
        },
    )
