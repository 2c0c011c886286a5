"""k cluster generators trained as one network.

Each generator is the ResNet generator of the UC reference (7x7 stem, strided downsampling,
residual blocks, transposed-conv upsampling, tanh), fed a fixed uniform-noise image. The k copies
are built as grouped convolutions (``groups=k``) with per-channel batch norm, which makes them
exactly k independent networks that one forward pass and one optimizer step advance together.

How the tanh output becomes a perturbation bounded by eps (``output``):

- ``reference``: ``clamp(tanh(x), -eps, eps)``, as the UC code. With eps far below 1 almost every
  pixel is clamped after a few steps, and a clamped pixel passes no gradient: the noise freezes
  into a binary pattern.
- ``tanh``: ``eps * tanh(x)``, smooth and bounded, every pixel keeps a gradient.
- ``ste``: the reference's clamp in the forward pass, a straight-through (identity) gradient in
  the backward pass, so clamped pixels can still move back inside the ball.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from ue_sweep.runtime.seeding import generator

OUTPUTS = ("reference", "tanh", "ste")


def _norm(channels: int) -> nn.Module:
    # Always batch statistics, as the reference uses them (its generators never leave train mode).
    return nn.BatchNorm2d(channels, track_running_stats=False)


class _GroupedResBlock(nn.Module):
    def __init__(self, channels: int, groups: int) -> None:
        super().__init__()
        self.block = nn.Sequential(
            nn.ReflectionPad2d(1),
            nn.Conv2d(channels, channels, 3, groups=groups, bias=False),
            _norm(channels),
            nn.ReLU(True),
            nn.ReflectionPad2d(1),
            nn.Conv2d(channels, channels, 3, groups=groups, bias=False),
            _norm(channels),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.block(x)


class GeneratorBank(nn.Module):
    """``forward()`` returns the k perturbations ``[k, C, H, W]``, each clamped to [-eps, eps]."""

    def __init__(
        self,
        k: int,
        channels: int,
        image_size: int,
        eps: float,
        *,
        ngf: int = 64,
        n_blocks: int = 6,
        n_downsampling: int = 2,
        output: str = "reference",
        seed: int = 0,
    ) -> None:
        super().__init__()
        if output not in OUTPUTS:
            raise ValueError(f"output must be one of {OUTPUTS}, not {output!r}")
        self.k, self.channels, self.image_size, self.eps = k, channels, image_size, eps
        self.output = output
        step = 2**n_downsampling
        size = math.ceil(image_size / step) * step
        z = torch.rand(1, k * channels, size, size, generator=generator(seed, "generator-input"))
        self.register_buffer("z", z)

        width = k * ngf
        layers: list[nn.Module] = [
            nn.ReflectionPad2d(3),
            nn.Conv2d(k * channels, width, 7, groups=k, bias=False),
            _norm(width),
            nn.ReLU(True),
        ]
        for _ in range(n_downsampling):
            layers += [
                nn.Conv2d(width, 2 * width, 3, stride=2, padding=1, groups=k, bias=False),
                _norm(2 * width),
                nn.ReLU(True),
            ]
            width *= 2
        layers += [_GroupedResBlock(width, k) for _ in range(n_blocks)]
        for _ in range(n_downsampling):
            layers += [
                nn.ConvTranspose2d(
                    width,
                    width // 2,
                    3,
                    stride=2,
                    padding=1,
                    output_padding=1,
                    groups=k,
                    bias=False,
                ),
                _norm(width // 2),
                nn.ReLU(True),
            ]
            width //= 2
        layers += [
            nn.ReflectionPad2d(3),
            nn.Conv2d(width, k * channels, 7, groups=k),
        ]
        self.net = nn.Sequential(*layers)

    def forward(self) -> torch.Tensor:
        out = self.net(self.z).view(self.k, self.channels, *self.z.shape[-2:])
        return self.bound(out[..., : self.image_size, : self.image_size])

    def bound(self, raw: torch.Tensor) -> torch.Tensor:
        """The network's raw output -> a perturbation in [-eps, eps], per ``self.output``."""
        out = raw.tanh()
        if self.output == "tanh":
            return self.eps * out
        clamped = out.clamp(-self.eps, self.eps)
        if self.output == "ste":
            return out + (clamped - out).detach()
        return clamped
