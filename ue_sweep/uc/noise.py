"""Applying cluster-wise noise: the protected training set, as a data owner publishes it."""

from __future__ import annotations

import torch


def apply_cluster_noise(
    images: torch.Tensor, cluster_ids: torch.Tensor, noise: torch.Tensor, chunk: int = 4096
) -> torch.Tensor:
    """uint8 images + their cluster's noise, clamped to [0, 1] and rounded back to uint8.

    The result is what a data owner would publish, so victims train on the quantised images. It
    stays where ``images`` are (host memory for host-placed data); the arithmetic runs on the
    noise's device.
    """
    out = torch.empty_like(images)
    for start in range(0, len(images), chunk):
        sl = slice(start, start + chunk)
        x = images[sl].to(noise.device).float().div(255) + noise[cluster_ids[sl]]
        out[sl] = x.clamp_(0, 1).mul_(255).round_().to(out.device, torch.uint8)
    return out
