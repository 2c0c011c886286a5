"""Clean-test metrics, exact over the full test set whatever the world size.

Each rank takes a contiguous slice of the test set (no padding, so no duplicates) and counts its
confusion matrix; the matrices are summed over ranks, and every metric comes from the summed
matrix through scikit-learn's functions: accuracy, balanced accuracy, macro-F1, per-class
recall, the worst class's recall, and head / medium / tail accuracy by the training-class
frequency of the victim (thirds of the classes, most frequent first).
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from functools import cached_property

import numpy as np
import torch
from torch import nn

from ue_sweep.runtime.distributed import Runtime

#: class groups by training frequency, most frequent first
FREQUENCY_GROUPS = ("head", "medium", "tail")


@dataclass(frozen=True)
class EvalResult:
    #: confusion[true][predicted] counts over the whole test set
    confusion: tuple[tuple[int, ...], ...]
    #: training images per class the victim saw (for head / medium / tail); None: unknown
    train_counts: tuple[int, ...] | None = None

    @property
    def per_class_correct(self) -> tuple[int, ...]:
        return tuple(row[c] for c, row in enumerate(self.confusion))

    @property
    def per_class_total(self) -> tuple[int, ...]:
        return tuple(sum(row) for row in self.confusion)

    @property
    def correct(self) -> int:
        return sum(self.per_class_correct)

    @property
    def total(self) -> int:
        return sum(self.per_class_total)

    @property
    def accuracy(self) -> float:
        return self._sklearn["accuracy"] if self.total else float("nan")

    @property
    def per_class_accuracy(self) -> list[float | None]:
        """Recall of each class; None for a class without test images."""
        return self._sklearn["recall"]

    @property
    def balanced_accuracy(self) -> float:
        """Mean recall over the classes present in the test set."""
        return self._sklearn["balanced_accuracy"] if self.total else float("nan")

    @property
    def macro_f1(self) -> float:
        """Unweighted mean F1 over the classes present in the test set."""
        return self._sklearn["macro_f1"] if self.total else float("nan")

    @property
    def worst_class_accuracy(self) -> float:
        present = [a for a in self.per_class_accuracy if a is not None]
        return min(present) if present else float("nan")

    @property
    def frequency_groups(self) -> dict[str, list[int]] | None:
        """Classes by training frequency: thirds (``np.array_split``, so the head gets the extra
        class), most frequent first, ties by class index."""
        if self.train_counts is None:
            return None
        order = sorted(range(len(self.train_counts)), key=lambda c: (-self.train_counts[c], c))
        thirds = np.array_split(np.array(order, dtype=np.int64), len(FREQUENCY_GROUPS))
        return {g: t.tolist() for g, t in zip(FREQUENCY_GROUPS, thirds, strict=True)}

    @property
    def group_accuracy(self) -> dict[str, float | None] | None:
        """Mean recall of each frequency group's classes present in the test set."""
        groups = self.frequency_groups
        if groups is None:
            return None
        recall = self.per_class_accuracy
        out: dict[str, float | None] = {}
        for name, classes in groups.items():
            values = [recall[c] for c in classes if recall[c] is not None]
            out[name] = float(np.mean(values)) if values else None
        return out

    @cached_property
    def _sklearn(self) -> dict[str, object]:
        """The metrics from the confusion matrix, as scikit-learn computes them from labels:
        each cell (t, p) is one (true, predicted) pair weighted by its count."""
        from sklearn.metrics import (
            accuracy_score,
            balanced_accuracy_score,
            f1_score,
            recall_score,
        )

        matrix = np.asarray(self.confusion, dtype=np.int64)
        true, pred = np.nonzero(matrix)
        weight = matrix[true, pred]
        present = [c for c, n in enumerate(matrix.sum(1)) if n > 0]
        if not present:
            return {"recall": [None] * len(matrix)}
        recall = recall_score(
            true, pred, labels=present, average=None, sample_weight=weight, zero_division=0
        )
        per_class: list[float | None] = [None] * len(matrix)
        for c, r in zip(present, recall, strict=True):
            per_class[c] = float(r)
        with warnings.catch_warnings():  # classes predicted but absent from the test set
            warnings.simplefilter("ignore", UserWarning)
            balanced = float(balanced_accuracy_score(true, pred, sample_weight=weight))
        return {
            "accuracy": float(accuracy_score(true, pred, sample_weight=weight)),
            "balanced_accuracy": balanced,
            "macro_f1": float(
                f1_score(
                    true,
                    pred,
                    labels=present,
                    average="macro",
                    sample_weight=weight,
                    zero_division=0,
                )
            ),
            "recall": per_class,
        }

    def as_dict(self) -> dict[str, object]:
        return {
            "accuracy": self.accuracy,
            "balanced_accuracy": self.balanced_accuracy,
            "macro_f1": self.macro_f1,
            "worst_class_accuracy": self.worst_class_accuracy,
            "correct": self.correct,
            "total": self.total,
            "per_class_accuracy": self.per_class_accuracy,
            "group_accuracy": self.group_accuracy,
            "frequency_groups": self.frequency_groups,
            "train_class_counts": None if self.train_counts is None else list(self.train_counts),
            "confusion": [list(row) for row in self.confusion],
        }


def shard_bounds(n: int, rank: int, world_size: int) -> tuple[int, int]:
    """Contiguous, non-overlapping slice of ``n`` items for ``rank``; slices cover all items."""
    return n * rank // world_size, n * (rank + 1) // world_size


def input_dtype(model: nn.Module) -> torch.dtype:
    """float32 images, or float64 for a float64 model (exact tests)."""
    return torch.float64 if next(model.parameters()).dtype == torch.float64 else torch.float32


def class_counts(labels: torch.Tensor, num_classes: int) -> tuple[int, ...]:
    return tuple(torch.bincount(labels.cpu(), minlength=num_classes).tolist())


@torch.no_grad()
def evaluate(
    model: nn.Module,
    images: torch.Tensor,
    labels: torch.Tensor,
    num_classes: int,
    batch_size: int,
    rt: Runtime,
    train_counts: tuple[int, ...] | None = None,
) -> EvalResult:
    """The test metrics of ``model``; ``train_counts`` (images per class it trained on) gives
    the head / medium / tail split."""
    was_training = model.training
    model.eval()
    lo, hi = shard_bounds(len(images), rt.rank, rt.world_size)
    confusion = torch.zeros(num_classes * num_classes, dtype=torch.long, device=rt.device)
    for start in range(lo, hi, batch_size):
        stop = min(start + batch_size, hi)
        x = images[start:stop].to(rt.device, input_dtype(model)).div_(255)
        y = labels[start:stop].to(rt.device)
        with rt.autocast():
            logits, _ = model(x)
        cells = y * num_classes + logits.argmax(1)
        confusion += torch.bincount(cells, minlength=num_classes * num_classes)
    matrix = rt.all_reduce_sum(confusion).cpu().view(num_classes, num_classes)
    model.train(was_training)
    return EvalResult(tuple(tuple(row) for row in matrix.tolist()), train_counts)
