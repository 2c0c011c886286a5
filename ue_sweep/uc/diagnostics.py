"""How much of a job's protection is UC's optimisation, and how much its cluster structure.

Recorded in every job's ``result.json`` under ``diagnostics`` (and so in W&B's summary and the
report), per cluster and overall:

- ``purity``: share of a cluster's images that carry its majority label (the labels the victim
  trains on), next to the clusters' NMI with those labels. Purity 1 means every cluster is a
  subset of one class: any fixed pattern per cluster is then class-wise noise, a known shortcut.
- ``sign_agreement``: share of noise pixels whose sign equals that of the untrained bank's
  output (the start of UC's optimisation); 0.5 is what independent noise gives, 1 means the
  optimisation kept its starting pattern's signs. ``correlation``: Pearson correlation of the
  two over pixels.
- ``saturated_fraction`` and ``target_hit_rate`` of the published noise (``uc/monitor.py``).
- ``gradient_share``: share of noise pixels that ever received a non-zero gradient through the
  output bound during training (:class:`GradientCoverage`). Under the reference clamp a pixel at
  +-eps passes none, so a low share says most of the pattern was never optimised; a pixel also
  gets none where every image it was added to was clipped to [0, 1] there.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch

from ue_sweep.runtime.distributed import Runtime

if TYPE_CHECKING:
    from ue_sweep.config import RootConfig
    from ue_sweep.data.splits import ImageSplits
    from ue_sweep.models.classifiers import FeatureClassifier
    from ue_sweep.uc.clustering import Clusters


def purity(ids: torch.Tensor, labels: torch.Tensor, k: int) -> tuple[float, list[float | None]]:
    """Overall and per-cluster majority-label share; an empty cluster's purity is None."""
    ids, labels = ids.cpu().long(), labels.cpu().long()
    classes = int(labels.max()) + 1 if len(labels) else 1
    table = torch.zeros(k, classes, dtype=torch.long)
    table.index_put_((ids, labels), torch.ones_like(ids), accumulate=True)
    sizes, majority = table.sum(1), table.max(1).values
    per_cluster = [
        float(m) / float(s) if s > 0 else None
        for m, s in zip(majority.tolist(), sizes.tolist(), strict=True)
    ]
    overall = float(majority.sum()) / max(int(sizes.sum()), 1)
    return overall, per_cluster


def sign_agreement(noise: torch.Tensor, start: torch.Tensor) -> tuple[float, list[float]]:
    """Share of pixels with the same sign (zero counts as its own sign), overall and per pattern
    of ``[k, ...]`` tensors."""
    same = (noise.sign() == start.to(noise.device).sign()).flatten(1).double()
    return float(same.mean()), same.mean(1).tolist()


def _pearson(a: torch.Tensor, b: torch.Tensor) -> float | None:
    a, b = a.double() - a.double().mean(), b.double() - b.double().mean()
    norm = float(a.norm() * b.norm())
    return float((a * b).sum()) / norm if norm > 0 else None


def correlation(noise: torch.Tensor, start: torch.Tensor) -> tuple[float | None, list]:
    """Pearson correlation over pixels, overall and per pattern (None for a constant one)."""
    start = start.to(noise.device)
    per = [_pearson(n.flatten(), s.flatten()) for n, s in zip(noise, start, strict=True)]
    return _pearson(noise.flatten(), start.flatten()), per


def saturation(noise: torch.Tensor, eps: float, threshold: float = 0.99) -> list[float]:
    """Per pattern: share of pixels at ``|delta| >= threshold * eps`` (as ``uc/monitor.py``)."""
    return (noise.abs() >= threshold * eps).flatten(1).double().mean(1).tolist()


def passes_gradient(noise: torch.Tensor, eps: float, clamped: bool) -> torch.Tensor:
    """Pixels whose bound passes a gradient: under the reference clamp exactly those strictly
    inside the ball (a clamped pixel equals +-eps exactly); every pixel for smooth bounds."""
    if not clamped:
        return torch.ones_like(noise, dtype=torch.bool)
    return noise.detach().abs() < torch.tensor(eps, dtype=noise.dtype)


class GradientCoverage:
    """Which noise pixels ever received a non-zero gradient during generator training.

    Each rank ORs its own steps in; :meth:`merge` takes the union over ranks (once per epoch).
    Saved in the stage checkpoint (``state_dict``), so a resumed job keeps what it saw.
    """

    def __init__(self, shape: tuple[int, ...], device: torch.device) -> None:
        self.seen = torch.zeros(shape, dtype=torch.bool, device=device)

    def update(self, noise: torch.Tensor, grad: torch.Tensor, eps: float, clamped: bool) -> None:
        self.seen |= passes_gradient(noise, eps, clamped) & (grad != 0)

    def merge(self, rt: Runtime) -> None:
        if rt.world_size > 1:
            self.seen = rt.all_reduce_sum(self.seen.double()) > 0

    def shares(self) -> tuple[float, list[float]]:
        seen = self.seen.flatten(1).double()
        return float(seen.mean()), seen.mean(1).tolist()

    def state_dict(self) -> dict[str, torch.Tensor]:
        return {"seen": self.seen.cpu()}

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        self.seen = state["seen"].to(self.seen.device)


def protection_diagnostics(
    noise: torch.Tensor,
    untrained: torch.Tensor,
    ids: torch.Tensor,
    labels: torch.Tensor,
    eps: float,
    label_nmi: float,
    gradient: dict[str, Any],
    hit_rate: dict[str, Any],
) -> dict[str, Any]:
    """The ``diagnostics`` record of a job (see the module docstring)."""
    k = int(noise.shape[0])
    pure, pure_k = purity(ids, labels, k)
    agree, agree_k = sign_agreement(noise, untrained)
    corr, corr_k = correlation(noise, untrained)
    sat_k = saturation(noise, eps)
    return {
        "label_nmi": label_nmi,
        "purity": pure,
        "sign_agreement": agree,
        "correlation": corr,
        "saturated_fraction": sum(sat_k) / k,
        "target_hit_rate": hit_rate.get("overall"),
        "gradient_share": gradient.get("overall"),
        "per_cluster": {
            "purity": pure_k,
            "sign_agreement": agree_k,
            "correlation": corr_k,
            "saturated_fraction": sat_k,
            "target_hit_rate": hit_rate.get("per_cluster"),
            "gradient_share": gradient.get("per_cluster"),
        },
    }


def job_diagnostics(
    cfg: RootConfig,
    surrogate: FeatureClassifier,
    data: ImageSplits,
    clusters: Clusters,
    noise: torch.Tensor,
    untrained_bank: torch.nn.Module,
    gradient: dict[str, Any],
    rt: Runtime,
) -> dict[str, Any]:
    """A computed protection's diagnostics, on the monitor's image subset of the generator
    stage (the same seed, so its hit rate is the last epoch's)."""
    from ue_sweep.runtime.seeding import derive_seed
    from ue_sweep.uc.monitor import NoiseMonitor

    with torch.no_grad():
        start = untrained_bank().float()
    monitor = NoiseMonitor(
        surrogate,
        data.train_images,
        data.train_labels,
        clusters,
        cfg.generator.eps,
        cfg.generator.monitor_images,
        derive_seed(cfg.seed, "generator-data"),
        rt,
    )
    return protection_diagnostics(
        noise,
        start,
        clusters.ids,
        data.train_labels,
        cfg.generator.eps,
        clusters.label_agreement(data.train_labels),
        gradient,
        monitor.hit_rates(noise),
    )
