"""Clean-test accuracy, exact over the full test set whatever the world size.

Each rank takes a contiguous slice of the test set (no padding, so no duplicates), counts correct
predictions per class, and the counts are summed over ranks.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from ue_sweep.distributed import Runtime


@dataclass(frozen=True)
class EvalResult:
    per_class_correct: tuple[int, ...]
    per_class_total: tuple[int, ...]

    @property
    def correct(self) -> int:
        return sum(self.per_class_correct)

    @property
    def total(self) -> int:
        return sum(self.per_class_total)

    @property
    def accuracy(self) -> float:
        return self.correct / self.total if self.total else float("nan")

    @property
    def per_class_accuracy(self) -> list[float | None]:
        return [
            c / t if t else None
            for c, t in zip(self.per_class_correct, self.per_class_total, strict=True)
        ]

    @property
    def balanced_accuracy(self) -> float:
        present = [a for a in self.per_class_accuracy if a is not None]
        return sum(present) / len(present) if present else float("nan")

    def as_dict(self) -> dict[str, object]:
        return {
            "accuracy": self.accuracy,
            "balanced_accuracy": self.balanced_accuracy,
            "correct": self.correct,
            "total": self.total,
            "per_class_accuracy": self.per_class_accuracy,
        }


def shard_bounds(n: int, rank: int, world_size: int) -> tuple[int, int]:
    """Contiguous, non-overlapping slice of ``n`` items for ``rank``; slices cover all items."""
    return n * rank // world_size, n * (rank + 1) // world_size


@torch.no_grad()
def evaluate(
    model: nn.Module,
    images: torch.Tensor,
    labels: torch.Tensor,
    num_classes: int,
    batch_size: int,
    rt: Runtime,
) -> EvalResult:
    was_training = model.training
    model.eval()
    lo, hi = shard_bounds(len(images), rt.rank, rt.world_size)
    counts = torch.zeros(2, num_classes, dtype=torch.long, device=rt.device)
    for start in range(lo, hi, batch_size):
        stop = min(start + batch_size, hi)
        x = images[start:stop].to(rt.device).float().div_(255)
        y = labels[start:stop].to(rt.device)
        with rt.autocast():
            logits, _ = model(x)
        hits = logits.argmax(1) == y
        counts[0] += torch.bincount(y[hits], minlength=num_classes)
        counts[1] += torch.bincount(y, minlength=num_classes)
    counts = rt.all_reduce_sum(counts).cpu()
    model.train(was_training)
    return EvalResult(tuple(counts[0].tolist()), tuple(counts[1].tolist()))
