"""Rank bodies for the membership tests (importable, so spawned ranks can unpickle them)."""

from __future__ import annotations

import torch

from ue_sweep.config import ModelSpec, TrainerConfig
from ue_sweep.evals.membership.scores import SCORES, query_views, view_logits
from ue_sweep.models.classifiers import build_classifier
from ue_sweep.runtime.distributed import runtime
from ue_sweep.runtime.env import DistEnv

CPU = TrainerConfig(accelerator="cpu", timeout_s=60)


def query_scores(env: DistEnv, out: str) -> None:
    """Every score of 37 images (not a multiple of 2 ranks) under 3 views, as rank 0 sees them."""
    with runtime(env, CPU) as rt:
        g = torch.Generator().manual_seed(3)
        images = torch.randint(0, 256, (37, 1, 8, 8), generator=g, dtype=torch.uint8)
        labels = torch.randint(0, 4, (37,), generator=g)
        torch.manual_seed(0)
        model = build_classifier(ModelSpec(width=4), in_channels=1, num_classes=4, image_size=8)
        model = model.double().eval()
        logits = view_logits(model, images, query_views(3, 1, True), rt)
        if rt.is_main:
            torch.save({n: f(logits, labels) for n, f in SCORES.items()} | {"logits": logits}, out)
