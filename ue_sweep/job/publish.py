"""What a job publishes: the noise, the protected training set (one file, or one shard per
rank for large sets) and their pictures."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ue_sweep.config import RootConfig
from ue_sweep.data.splits import ImageSplits
from ue_sweep.report.media import NOISE_PNG, SAMPLES_PNG, noise_grid, sample_grid, save_png
from ue_sweep.runtime.tracking import atomic_torch_save
from ue_sweep.uc.protection import Protection

NOISE_FILE = "noise.pt"
PROTECTED_FILE = "protected_train.pt"
PROTECTED_SHARDS = "protected_train"


def protected_name(cfg: RootConfig, n: int) -> str | None:
    """Where the protected set goes: one file for small sets, one shard per rank above
    ``protected_shards_above`` images (written by every rank), or nowhere."""
    if not cfg.save_protected:
        return None
    return PROTECTED_SHARDS if n > cfg.protected_shards_above else PROTECTED_FILE


def publish(
    cfg: RootConfig,
    data: ImageSplits,
    p: Protection,
    job_dir: Path,
    tracker: Any,
    single_file: bool,
) -> None:
    """Rank 0: the noise, the protected set as it would be published (``single_file``; else
    every rank wrote its shard), and their pictures."""
    atomic_torch_save(
        job_dir / NOISE_FILE,
        {
            "noise": p.noise.cpu(),
            "cluster_ids": p.cluster_ids.cpu(),
            "eps": p.eps,
            **p.extra,
        },
    )
    if single_file:
        atomic_torch_save(
            job_dir / PROTECTED_FILE,
            {
                "images": p.images.cpu(),
                "labels": data.train_labels.cpu(),
                "classes": list(data.classes),
            },
        )
    pictures = {
        "noise": noise_grid(p.noise, p.eps),
        "samples": sample_grid(data.train_images, p.images, p.cluster_ids, p.noise, p.eps),
    }
    save_png(job_dir / NOISE_PNG, pictures["noise"])
    save_png(job_dir / SAMPLES_PNG, pictures["samples"])
    tracker.log_images(
        pictures,
        captions={
            "noise": "UC noise of each cluster, [-eps, eps] shown as [0, 1]",
            "samples": "per cluster: noise, a clean training image, its protected version",
        },
    )
