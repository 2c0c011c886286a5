"""UEraser (Qin et al. 2023, "Learning the Unlearnable: Adversarial Augmentations Suppress
Unlearnable Example Attacks"): train on the worst of several heavy augmentations of each sample.

Each of ``draws`` views of a sample goes through the public code's policy
(github.com/lafeat/ueraser, kornia there), here without kornia: plasma brightness (p 0.5,
roughness 0.3-0.7, intensity 0.5-1) ``x + intensity * (2 m - 1)``, plasma contrast (p 0.5,
roughness 0.3-0.7) ``(x - 0.5) * 4 m + 0.5``, a channel shuffle (p 0.5) and torchvision's
``TrivialAugmentWide`` (kornia's ``TrivialAugment`` there), each clamped to [0, 1]. The plasma map
``m`` is fractal value noise (octaves of Gaussian noise on 2x2 ... 32x32 grids, amplitude
``roughness ** octave``, bilinearly upsampled, min-max scaled to [0, 1] per channel) in place of
kornia's diamond-square; finer octaves would carry less than ``0.7 ** 5`` of the amplitude. The
loss is the mean over samples of the largest cross-entropy over the views, all views in one
forward pass as in the public code; ``draws: 1`` is what the paper calls UEraser-Lite, more draws
UEraser-Max, and ``adversarial_epochs`` limits the max to the first epochs (its README: 60 of
200). Every view's randomness comes from its own generator (run seed, epoch, sample, draw), so it
depends neither on the rank nor on where a resumed run restarts.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from torchvision.transforms import v2

from ue_sweep.data.batches import Batch
from ue_sweep.evals.defenses.config import UEraserConfig
from ue_sweep.runtime.distributed import Runtime
from ue_sweep.runtime.seeding import generator
from ue_sweep.train.recipes import RecordingRecipe, VictimRecipe, upcast

# Finest plasma octave grid (2 ** MAX_OCTAVE cells a side).
MAX_OCTAVE = 5
ROUGHNESS = (0.3, 0.7)
INTENSITY = (0.5, 1.0)


def _uniform(g: torch.Generator, bounds: tuple[float, float]) -> float:
    lo, hi = bounds
    return lo + (hi - lo) * float(torch.rand((), generator=g, dtype=torch.float64))


def octaves(height: int, width: int) -> list[int]:
    """Grid sizes of the plasma octaves for an image of this size."""
    finest = min(MAX_OCTAVE, max(1, (max(height, width) - 1).bit_length()))
    return [2**k for k in range(1, finest + 1)]


def plasma(
    noise: list[torch.Tensor], roughness: torch.Tensor, size: tuple[int, int]
) -> torch.Tensor:
    """Fractal maps in [0, 1], ``[B, C, H, W]``, from per-octave noise ``[B, C, s, s]``."""
    weight = roughness.view(-1, 1, 1, 1)
    total = sum(
        weight**k * F.interpolate(grid, size=size, mode="bilinear", align_corners=True)
        for k, grid in enumerate(noise, start=1)
    )
    lo = total.amin((2, 3), keepdim=True)
    hi = total.amax((2, 3), keepdim=True)
    return (total - lo) / (hi - lo).clamp(min=1e-12)


@dataclass
class View:
    """The random choices of one view of one sample."""

    brightness: bool
    brightness_roughness: float
    intensity: float
    brightness_noise: list[torch.Tensor]
    contrast: bool
    contrast_roughness: float
    contrast_noise: list[torch.Tensor]
    shuffle: bool
    permutation: torch.Tensor
    trivial_seed: int


def draw_view(g: torch.Generator, channels: int, size: tuple[int, int]) -> View:
    """One view's choices, in a fixed order of draws from ``g``."""
    grids = octaves(*size)

    def noise() -> list[torch.Tensor]:
        return [torch.randn(channels, s, s, generator=g, dtype=torch.float64) for s in grids]

    return View(
        brightness=bool(torch.rand((), generator=g) < 0.5),
        brightness_roughness=_uniform(g, ROUGHNESS),
        intensity=_uniform(g, INTENSITY),
        brightness_noise=noise(),
        contrast=bool(torch.rand((), generator=g) < 0.5),
        contrast_roughness=_uniform(g, ROUGHNESS),
        contrast_noise=noise(),
        shuffle=bool(torch.rand((), generator=g) < 0.5),
        permutation=torch.randperm(channels, generator=g),
        trivial_seed=int(torch.randint(2**62, (), generator=g)),
    )


def augment(images: torch.Tensor, views: list[View]) -> torch.Tensor:
    """A view of every image (float ``[B, C, H, W]`` in [0, 1]), ``views[i]`` for image i."""
    device, dtype = images.device, images.dtype
    size = (images.shape[-2], images.shape[-1])

    def column(values: list[float] | list[bool]) -> torch.Tensor:
        return torch.tensor(values, dtype=dtype, device=device).view(-1, 1, 1, 1)

    def field(noise: list[list[torch.Tensor]], roughness: list[float]) -> torch.Tensor:
        grids = [torch.stack(octave).to(device, dtype) for octave in zip(*noise, strict=True)]
        return plasma(grids, column(roughness), size)

    bright = field([v.brightness_noise for v in views], [v.brightness_roughness for v in views])
    bright = (images + column([v.intensity for v in views]) * (2 * bright - 1)).clamp(0, 1)
    x = torch.where(column([v.brightness for v in views]) > 0, bright, images)
    contrast = field([v.contrast_noise for v in views], [v.contrast_roughness for v in views])
    contrast = ((x - 0.5) * 4 * contrast + 0.5).clamp(0, 1)
    x = torch.where(column([v.contrast for v in views]) > 0, contrast, x)
    order = torch.stack([v.permutation for v in views]).to(device)
    shuffled = x.gather(1, order[:, :, None, None].expand_as(x))
    x = torch.where(column([v.shuffle for v in views]) > 0, shuffled, x)
    trivial = v2.TrivialAugmentWide()
    out = torch.empty_like(x)
    # TrivialAugmentWide draws from torch's global CPU generator: seed it per view, and restore
    # the caller's state afterwards.
    with torch.random.fork_rng(devices=[]):
        for i, view in enumerate(views):
            torch.default_generator.manual_seed(view.trivial_seed)
            out[i] = trivial(x[i]).clamp(0, 1)
    return out


class UEraser(RecordingRecipe):
    """Max-loss training over augmented views; records the mean max loss and the mean view loss
    per epoch."""

    name = "ueraser"

    def __init__(self, cfg: UEraserConfig, seed: int) -> None:
        super().__init__("max_loss", "mean_loss")
        self.cfg, self.seed = cfg, seed

    def draws(self, epoch: int) -> int:
        limit = self.cfg.adversarial_epochs
        return self.cfg.draws if limit is None or epoch < limit else 1

    def views(self, batch: Batch, draws: int) -> torch.Tensor:
        """``[draws, B, C, H, W]`` augmented views of the batch."""
        _, c, h, w = batch.images.shape
        indices = batch.indices.tolist()
        return torch.stack(
            [
                augment(
                    batch.images,
                    [
                        draw_view(generator(self.seed, "ueraser", self.epoch, i, d), c, (h, w))
                        for i in indices
                    ],
                )
                for d in range(draws)
            ]
        )

    def loss(
        self, model: nn.Module, batch: Batch, rt: Runtime
    ) -> tuple[torch.Tensor, torch.Tensor]:
        views = self.views(batch, self.draws(self.epoch))
        draws, b = views.shape[:2]
        with rt.autocast():
            logits, _ = model(views.flatten(0, 1))
        labels = batch.labels.repeat(draws)
        losses = F.cross_entropy(upcast(logits), labels, reduction="none").view(draws, b)
        worst, pick = losses.max(0)
        self.stats.add(max_loss=worst, mean_loss=losses.mean(0))
        chosen = logits.view(draws, b, -1)[pick, torch.arange(b, device=pick.device)]
        return self.reduce(worst, batch), chosen

    def end_epoch(self, epoch: int, rt: Runtime) -> None:
        self.stats.close(epoch, rt, draws=self.draws(epoch))


def build_ueraser(cfg: UEraserConfig, seed: int) -> VictimRecipe:
    return UEraser(cfg, seed)
