"""``generator.kind=direct``: the k noise patterns themselves are the parameters.

No network stands between the optimiser and the noise: pattern i is ``eps * tanh(w_i)`` of a
free tensor ``w`` ``[k, C, H, W]``. The tanh bound is smooth, so every pixel keeps a gradient
(no pixel freezes at +-eps as under the reference clamp) and no projection step is needed after
the optimiser's step. It answers whether UC's objective can be reached on a dataset at a given
eps at all, apart from what the generator architecture allows. ``w`` starts as seeded standard
normal noise, so the start (the ``untrained`` control) is a random pattern of RMS about 0.6 eps.

The module has the generator bank's interface (``forward()`` -> ``[k, C, H, W]``, ``bound``,
``output``), so training, DDP, checkpoints and the artifact store treat both alike.
"""

from __future__ import annotations

import torch
from torch import nn

from ue_sweep.runtime.seeding import generator


class DirectNoise(nn.Module):
    """``forward()`` returns the k patterns ``eps * tanh(w)``."""

    # How the output is bounded, in the bank's terms (uc/diagnostics.py reads it).
    output = "tanh"

    def __init__(self, k: int, channels: int, image_size: int, eps: float, *, seed: int = 0):
        super().__init__()
        self.k, self.channels, self.image_size, self.eps = k, channels, image_size, eps
        shape = (k, channels, image_size, image_size)
        self.w = nn.Parameter(torch.randn(shape, generator=generator(seed, "direct-noise")))

    def forward(self) -> torch.Tensor:
        return self.bound(self.w)

    def bound(self, raw: torch.Tensor) -> torch.Tensor:
        return self.eps * raw.tanh()
