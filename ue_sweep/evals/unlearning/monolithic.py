"""The baseline SISA is read against: one model on the whole training pool, attacked on the same
forgotten points and hold-out images before and after its full retrain without them.

Bourtoule et al. compare SISA with retraining a single model from scratch; the seed asks what
the attacks see on that model. "Before" is the job's plain victim on the pool (the same artifact
the ``victims`` evaluation trains: same images, seed, recipe); "after" is the same recipe from
the same initial weights on the pool minus the requests (a victim on a subset, its own artifact).
Neither joins the job's victims: later evaluations do not attack them.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import torch

from ue_sweep.evals.membership.metrics import attack_metrics
from ue_sweep.evals.unlearning.aggregate import accuracy

if TYPE_CHECKING:
    from ue_sweep.evals.context import EvalContext
    from ue_sweep.evals.unlearning.evaluation import Queries

#: rows per forward pass (memory only)
BATCH = 512


def _posteriors(ctx: EvalContext, label: str, images: torch.Tensor) -> torch.Tensor:
    """float64 softmax posteriors of victim ``label`` on uint8 ``images``, on the CPU."""
    model = ctx.victim_model(label)
    out = []
    with torch.no_grad():
        for start in range(0, len(images), BATCH):
            x = images[start : start + BATCH].to(ctx.rt.device).float().div_(255)
            logits, _ = model(x)
            out.append(logits.double().softmax(1).cpu())
    return torch.cat(out)


def monolithic_attacks(
    ctx: EvalContext,
    condition: str,
    images: torch.Tensor,
    removed: torch.Tensor,
    queries: Queries,
    scores: dict[str, Callable[[torch.Tensor, torch.Tensor], torch.Tensor]],
) -> dict[str, Any]:
    """Accuracy and each attack of ``scores`` (on log-posteriors and labels) of the single model
    before and after its full retrain; ``queries``: the ensemble's query rows (the test images,
    the removed points, then as many hold-out images) and their labels."""
    test_labels, member_labels = queries.test_labels, queries.member_labels
    reference_labels = queries.reference_labels
    labels = ctx.data.train_labels
    keep = torch.ones(len(images), dtype=torch.bool)
    keep[removed] = False
    rows = torch.nonzero(keep).flatten()
    trained = {
        "before": (f"sisa-single-{condition}", images, None),
        "after": (
            f"sisa-single-{condition}-retrained",
            images[rows.to(images.device)],
            labels[rows.to(labels.device)],
        ),
    }
    t, q = len(test_labels), len(member_labels)
    is_member = torch.arange(2 * q) < q
    attacked = torch.cat([member_labels, reference_labels]).cpu()
    out: dict[str, Any] = {"train_size": {"before": len(images), "after": len(rows)}}
    for when, (label, x, y) in trained.items():
        result = ctx.train_victim(label, x, labels=y)
        p = _posteriors(ctx, label, queries.images)
        ctx.victims.pop(label)  # a baseline, not a victim of the job's
        log_p = p.clamp_min(torch.finfo(p.dtype).tiny).log()
        test, rest = log_p.split([t, 2 * q])
        out[when] = {
            "accuracy": accuracy(test.argmax(1), test_labels.cpu()),
            "victim_accuracy": float(result["mean_last"]["accuracy"]),
            "attacks": {
                name: attack_metrics(score(rest, attacked), is_member)
                for name, score in scores.items()
            },
        }
    return out
