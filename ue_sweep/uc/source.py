"""``uc.source``: evaluate the protection of an existing job, or any protected training set.

``uc.source`` names a job directory (its ``noise.pt``), a ``noise.pt`` file, a
``protected_train.pt`` file (uint8 images and labels, as a data owner publishes them, made by
ue-sweep or any other method), or a shard directory (``protected_train/`` with its
``manifest.json``, ``uc/shards.py``; read memory-mapped). A noise file gives UC's per-cluster
patterns and cluster ids; a bare protected set gives each image's own perturbation (published -
clean), so the controls are matched image by image, the strictest equal-strength comparison for
sample-wise noise.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from ue_sweep.config import RootConfig
from ue_sweep.data.splits import ImageSplits
from ue_sweep.errors import ConfigError, MissingFileError
from ue_sweep.runtime.distributed import Runtime
from ue_sweep.uc.noise import apply_cluster_noise
from ue_sweep.uc.protection import Protection
from ue_sweep.uc.shards import MANIFEST, ShardFormatError, read_shards

NOISE_FILE = "noise.pt"


def source_file(source: str) -> Path:
    path = Path(source).expanduser()
    if path.is_dir():
        return path / MANIFEST if (path / MANIFEST).is_file() else path / NOISE_FILE
    return path


def check_source(source: str) -> None:
    """Before any compute: the file exists and is readable (its contents are checked on load)."""
    path = source_file(source)
    if not path.is_file():
        raise MissingFileError(
            "uc.source",
            path,
            "point uc.source at a job directory with noise.pt, a noise.pt, a protected_train.pt "
            "or a protected_train/ shard directory",
        )


def _read(path: Path) -> dict[str, Any]:
    if path.name == MANIFEST:
        try:
            shards = read_shards(path)
        except ShardFormatError as err:
            raise ConfigError(
                "uc.source", str(path), f"a complete shard directory ({err})"
            ) from None
        return {"images": shards.all_images(), "labels": shards.all_labels()}
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # torch raises many types for a bad file
        raise ConfigError(
            "uc.source", str(path), f"a readable .pt file ({type(err).__name__})"
        ) from None
    if not isinstance(payload, dict) or not (
        {"noise", "cluster_ids", "eps"} <= payload.keys() or {"images", "labels"} <= payload.keys()
    ):
        raise ConfigError(
            "uc.source",
            str(path),
            "a noise.pt (noise, cluster_ids, eps) or a protected_train.pt (images, labels)",
        )
    return payload


def load_source(
    cfg: RootConfig,
    data: ImageSplits,
    rt: Runtime,
    new_bank: Callable[[RootConfig, int, ImageSplits, Runtime], torch.nn.Module],
) -> tuple[Protection, dict[str, Any]]:
    """The protection stored at ``cfg.uc.source``, checked against this job's training set."""
    path = source_file(str(cfg.uc.source))
    payload = _read(path)
    clean, n = data.train_images, len(data.train_images)
    if "noise" in payload:
        noise, ids = payload["noise"].float().to(rt.device), payload["cluster_ids"].long()
        eps = float(payload["eps"])
        if len(ids) != n or tuple(noise.shape[1:]) != tuple(clean.shape[1:]):
            raise ConfigError(
                "uc.source",
                str(path),
                f"noise for {n} training images of shape {tuple(clean.shape[1:])} "
                f"(it holds {len(ids)} ids and patterns of shape {tuple(noise.shape[1:])})",
            )
        ids = ids.to(rt.device)
        images = apply_cluster_noise(clean, ids, noise)
        k = int(noise.shape[0])
        untrained = lambda: new_bank(cfg, k, data, rt)().float()  # noqa: E731
        kind = "noise"
    else:
        images = payload["images"]
        if images.dtype != torch.uint8 or images.shape != clean.shape:
            raise ConfigError(
                "uc.source",
                str(path),
                f"uint8 images of shape {tuple(clean.shape)} "
                f"(it holds {images.dtype} {tuple(images.shape)})",
            )
        if not torch.equal(payload["labels"].long().cpu(), data.train_labels.cpu()):
            raise ConfigError(
                "uc.source", str(path), f"the training labels of {data.name} in their order"
            )
        if "untrained" in _controls(cfg):
            raise ConfigError(
                "evals.victims.controls",
                _controls(cfg),
                "no `untrained` control for a protected set without its generators",
            )
        images = images.to(clean.device)
        noise = (images.float() - clean.float()).div_(255).to(rt.device)
        ids = torch.arange(n, device=rt.device)
        eps = float(noise.abs().max())
        untrained = _no_generators
        kind = "protected set"
    protection = Protection(
        noise=noise,
        cluster_ids=ids,
        eps=eps,
        images=images,
        untrained=untrained,
        source=str(path),
    )
    return protection, {"uc_source": {"path": str(path), "kind": kind, "patterns": len(noise)}}


def _controls(cfg: RootConfig) -> list[str]:
    victims = cfg.evals.get("victims")
    return list(victims.controls) if victims is not None else []


def _no_generators() -> torch.Tensor:
    raise AssertionError("checked on load: a bare protected set has no untrained control")
