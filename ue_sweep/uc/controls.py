"""Control noise for UC's victims: what a victim learns from noise that was *not* optimised.

Every control carries UC's cluster structure (one fixed pattern per cluster, applied to that
cluster's images), so a victim can use it as a shortcut exactly as it could use UC's noise; only
the optimisation is missing. A control weaker than UC in energy would overstate what the
optimisation adds, so two controls are scaled to UC's energy cluster by cluster:

- ``uniform``: uniform in [-eps, eps] (RMS eps / sqrt(3)), the classic random-noise control;
- ``sign``: random +-1 per pixel, scaled to the RMS of the cluster's UC noise (at most eps);
- ``untrained``: the generator bank's output before training (the starting point of UC's
  optimisation), scaled within [-eps, eps] to the same RMS.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from ue_sweep.runtime.seeding import generator

# Bisection steps for the energy-matching scale: 2^-60 of the bracket, far below uint8 rounding.
_BISECTION_STEPS = 60


def rms(noise: torch.Tensor) -> torch.Tensor:
    """Root mean square of each cluster's pattern ``[k, C, H, W] -> [k]``."""
    return noise.double().flatten(1).pow(2).mean(1).sqrt()


def energy_matched(pattern: torch.Tensor, target_rms: torch.Tensor, eps: float) -> torch.Tensor:
    """``clamp(s_i * pattern_i, -eps, eps)`` per cluster i, with s_i chosen so its RMS is
    ``target_rms[i]`` (or as close as the eps ball allows).

    The RMS of the clamped, scaled pattern grows monotonically with the scale, so a bisection
    finds it; a pattern of zeros stays zero.
    """
    p = pattern.double()
    magnitude = p.abs().flatten(1)
    smallest = magnitude.where(magnitude > 0, torch.inf).min(1).values
    # From this scale on every nonzero pixel is clamped: the largest RMS the ball allows.
    lo = torch.zeros(len(p), dtype=torch.float64, device=p.device)
    hi = torch.where(smallest.isfinite(), eps / smallest, torch.zeros_like(smallest))
    target = target_rms.double().to(p.device)

    def scaled(s: torch.Tensor) -> torch.Tensor:
        return (s.view(-1, *[1] * (p.dim() - 1)) * p).clamp(-eps, eps)

    for _ in range(_BISECTION_STEPS):
        mid = (lo + hi) / 2
        below = rms(scaled(mid)) < target
        lo, hi = torch.where(below, mid, lo), torch.where(below, hi, mid)
    return scaled(hi).to(pattern.dtype)


def uniform_noise(like: torch.Tensor, eps: float, seed: int) -> torch.Tensor:
    g = generator(seed, "random-noise-control")
    noise = torch.rand(like.shape, generator=g, dtype=torch.float32).mul_(2 * eps).sub_(eps)
    return noise.to(like.device)


def sign_noise(uc_noise: torch.Tensor, eps: float, seed: int) -> torch.Tensor:
    g = generator(seed, "sign-noise-control")
    signs = torch.randint(0, 2, uc_noise.shape, generator=g).float().mul_(2).sub_(1)
    return energy_matched(signs.to(uc_noise.device), rms(uc_noise), eps)


def untrained_noise(uc_noise: torch.Tensor, untrained: torch.Tensor, eps: float) -> torch.Tensor:
    return energy_matched(untrained, rms(uc_noise), eps)


def control_noises(
    names: list[str],
    uc_noise: torch.Tensor,
    eps: float,
    seed: int,
    untrained: Callable[[], torch.Tensor],
) -> dict[str, torch.Tensor]:
    """The requested controls' ``[k, C, H, W]`` noise; ``untrained()`` is called only if needed."""
    makers: dict[str, Callable[[], torch.Tensor]] = {
        "uniform": lambda: uniform_noise(uc_noise, eps, seed),
        "sign": lambda: sign_noise(uc_noise, eps, seed),
        "untrained": lambda: untrained_noise(uc_noise, untrained(), eps),
    }
    return {name: makers[name]() for name in names}
