"""The training split under each noise condition of a job, as membership inference sees it.

A victim is matched to the condition it trained on (clean, UC's noise, a control) by its images;
the non-members and the shadows' pool are perturbed alike, with the noise of their nearest
cluster.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch

from ue_sweep.config import CONTROLS
from ue_sweep.evals.membership.pairs import MembershipSplit
from ue_sweep.evals.membership.queries import CLEAN, QuerySet, published_queries
from ue_sweep.uc.controls import control_noises
from ue_sweep.uc.noise import apply_cluster_noise

if TYPE_CHECKING:
    from ue_sweep.evals.context import EvalContext


class Published:
    """The training split under each noise condition of the job, to tell which one a victim
    trained on and to perturb the non-members alike."""

    def __init__(self, ctx: EvalContext, split: MembershipSplit) -> None:
        p, data = ctx.protection, ctx.data
        self.ctx, self.split = ctx, split
        self.noises = {"protected": p.noise} | control_noises(
            list(CONTROLS), p.noise, p.eps, ctx.cfg.seed, p.untrained
        )
        self._images: dict[str, torch.Tensor] = {"protected": p.images}
        self._holdout_clusters: torch.Tensor | None = None
        self._all_holdout_clusters: torch.Tensor | None = None
        self.clean = data.train_images

    def pool(self, name: str) -> torch.Tensor:
        """The shadows' pool ``train ++ holdout`` under condition ``name``: the published
        training images, the hold-out images with the noise of their nearest cluster."""
        data = self.ctx.data
        assert data.holdout_images is not None
        if name == CLEAN:
            return torch.cat([data.train_images, data.holdout_images.to(data.train_images.device)])
        assert self.ctx.protection.assign is not None, "refused by check() for uc.source"
        if self._all_holdout_clusters is None:
            self._all_holdout_clusters = self.ctx.protection.assign(data.holdout_images)
        held = apply_cluster_noise(
            data.holdout_images, self._all_holdout_clusters, self.noises[name]
        )
        published = self.images(name)
        return torch.cat([published, held.to(published.device)])

    def images(self, name: str) -> torch.Tensor:
        if name not in self._images:
            p = self.ctx.protection
            self._images[name] = apply_cluster_noise(
                self.ctx.data.train_images, p.cluster_ids, self.noises[name]
            )
        return self._images[name]

    def condition(self, images: torch.Tensor) -> str | None:
        """``clean``, ``protected`` or the control whose published set ``images`` are."""
        if images is self.clean or torch.equal(images, self.clean):
            return CLEAN
        for name in self.noises:
            candidate = self.images(name)
            if images is candidate or torch.equal(images, candidate):
                return name
        return None

    def queries(self, name: str) -> QuerySet:
        assert self.ctx.protection.assign is not None, "refused by check() for uc.source"
        if self._holdout_clusters is None:
            held = self.ctx.data.holdout_images
            assert held is not None
            self._holdout_clusters = self.ctx.protection.assign(
                held[self.split.nonmembers.to(held.device)]
            )
        return published_queries(
            name,
            self.images(name),
            self.noises[name],
            self._holdout_clusters,
            self.ctx.data,
            self.split,
        )
