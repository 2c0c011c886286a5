"""Pictures of a job's noise: what UC did to the images, as uint8 RGB arrays and PNG files.

Small images (16x16 digits) are enlarged by pixel repetition so that the noise stays visible
and is not smoothed away by an image viewer.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torchvision.utils import make_grid

from ue_sweep.runtime.tracking import atomic_write

NOISE_PNG = "noise.png"
SAMPLES_PNG = "samples.png"
# Tiles are enlarged to at least this many pixels per side.
MIN_TILE = 64
# At most this many clusters are shown (k can be 100).
MAX_CLUSTERS = 10


def _to_rgb(grid: torch.Tensor) -> np.ndarray:
    """[C, H, W] float in [0, 1] -> [H, W, 3] uint8."""
    return grid.clamp(0, 1).mul(255).round().to(torch.uint8).permute(1, 2, 0).cpu().numpy()


def _enlarge(images: torch.Tensor) -> torch.Tensor:
    factor = max(1, -(-MIN_TILE // images.shape[-1]))
    return images.repeat_interleave(factor, dim=-2).repeat_interleave(factor, dim=-1)


def noise_grid(noise: torch.Tensor, eps: float) -> np.ndarray:
    """Every cluster's noise pattern ``[k, C, H, W]``, mapped from [-eps, eps] to [0, 1]."""
    scaled = (noise.float().cpu() / (2 * eps) + 0.5).clamp(0, 1)
    return _to_rgb(make_grid(_enlarge(scaled), nrow=min(len(noise), 10), padding=2, pad_value=1))


def sample_grid(
    clean: torch.Tensor,
    protected: torch.Tensor,
    cluster_ids: torch.Tensor,
    noise: torch.Tensor,
    eps: float,
) -> np.ndarray:
    """Rows: the noise, a clean training image and its protected version, for each cluster.

    The image shown for a cluster is its first member in dataset order.
    """
    ids = cluster_ids.cpu()
    clusters = [c for c in range(min(len(noise), MAX_CLUSTERS)) if bool((ids == c).any())]
    first = torch.stack([torch.nonzero(ids == c)[0, 0] for c in clusters])
    rows = [
        (noise[clusters].float().cpu() / (2 * eps) + 0.5).clamp(0, 1),
        clean[first.to(clean.device)].float().cpu() / 255,
        protected[first.to(protected.device)].float().cpu() / 255,
    ]
    tiles = _enlarge(torch.cat(rows))
    return _to_rgb(make_grid(tiles, nrow=len(clusters), padding=2, pad_value=1))


def save_png(path: Path, image: np.ndarray) -> None:
    atomic_write(path, lambda f: Image.fromarray(image).save(f, format="PNG"), "wb")
