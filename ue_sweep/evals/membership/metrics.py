"""How well a membership score separates members from non-members: ROC, AUC, low-FPR TPR.

Every attack here produces one score per example, higher meaning "more likely a member"; the
metrics look only at the order of the scores (a threshold sweep), so any monotone transform of
a score gives the same numbers. Counts are kept as integers (false positives out of the
non-members, true positives out of the members), so "TPR at FPR <= alpha" is decided exactly,
without float comparisons of rates.

Thresholds are swept on the same points the metrics are reported on (as in Carlini et al. 2022):
balanced accuracy and advantage are the best threshold's, an optimistic (attacker-favourable)
reading; AUC and TPR at a fixed FPR need no chosen threshold.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

#: the false-positive rates at which TPR is reported (LiRA's 0.1% and 1%)
LOW_FPRS = (0.001, 0.01)


@dataclass(frozen=True)
class Roc:
    """The ROC curve's vertices, one per distinct score (highest first), from (0, 0) to (1, 1).

    ``false_positives[i]`` / ``true_positives[i]``: non-members / members scoring at least the
    i-th highest distinct score (the threshold ``thresholds[i]``; ``inf`` for the first vertex).
    """

    false_positives: np.ndarray  # int64, non-decreasing, 0 .. negatives
    true_positives: np.ndarray  # int64, non-decreasing, 0 .. positives
    thresholds: np.ndarray  # float64, decreasing
    positives: int
    negatives: int

    @property
    def fpr(self) -> np.ndarray:
        return self.false_positives / self.negatives

    @property
    def tpr(self) -> np.ndarray:
        return self.true_positives / self.positives


def _as_numpy(x: np.ndarray | torch.Tensor | Sequence[float]) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        x = x.detach().cpu().double().numpy()
    return np.asarray(x, dtype=np.float64).ravel()


def roc(scores: np.ndarray | torch.Tensor, is_member: np.ndarray | torch.Tensor) -> Roc:
    """The ROC of ``scores`` (higher: member) against the truth ``is_member`` (bool per example).

    Tied scores form one vertex (the curve goes diagonally across a tie), so the area under it
    counts a tied member/non-member pair as half right, as the Mann-Whitney statistic does.
    """
    s = _as_numpy(scores)
    y = _as_numpy(is_member).astype(bool)
    if s.shape != y.shape:
        raise ValueError(f"{s.size} scores for {y.size} membership labels")
    if not np.isfinite(s).all():
        raise ValueError("membership scores must be finite")
    positives, negatives = int(y.sum()), int((~y).sum())
    if positives == 0 or negatives == 0:
        raise ValueError("a ROC needs at least one member and one non-member")
    order = np.argsort(-s, kind="stable")
    s, y = s[order], y[order]
    # the last example of each run of equal scores closes a vertex
    last = np.r_[np.nonzero(np.diff(s))[0], s.size - 1]
    tp = np.cumsum(y)[last]
    fp = (last + 1) - tp
    return Roc(
        false_positives=np.r_[0, fp].astype(np.int64),
        true_positives=np.r_[0, tp].astype(np.int64),
        thresholds=np.r_[np.inf, s[last]],
        positives=positives,
        negatives=negatives,
    )


def auc(curve: Roc) -> float:
    """Area under the ROC curve (trapezoids between vertices), exact in integer counts."""
    fp, tp = curve.false_positives, curve.true_positives
    # sum of (fp_i - fp_{i-1}) * (tp_i + tp_{i-1}) / 2, as integers until the one division
    twice = int(np.sum(np.diff(fp) * (tp[1:] + tp[:-1])))
    return twice / (2 * curve.positives * curve.negatives)


def advantage(curve: Roc) -> float:
    """Membership advantage (Yeom et al. 2018): the best threshold's TPR - FPR."""
    return float(np.max(curve.tpr - curve.fpr))


def balanced_accuracy(curve: Roc) -> float:
    """The best threshold's accuracy with members and non-members weighted equally,
    (TPR + TNR) / 2 = (1 + advantage) / 2: the accuracy of the best threshold on a balanced set."""
    return float(np.max((curve.tpr + 1 - curve.fpr) / 2))


def tpr_at_fpr(curve: Roc, fpr: float) -> float:
    """The highest TPR of any threshold whose FPR is at most ``fpr``.

    With n non-members the FPRs come in steps of 1/n: below 1/n only thresholds with no false
    positive count, so TPR at 0.1% FPR from a few hundred non-members is TPR at zero FPR.
    """
    allowed = np.floor(fpr * curve.negatives + 1e-9)  # false positives an FPR of `fpr` allows
    return float(curve.true_positives[curve.false_positives <= allowed].max() / curve.positives)


def roc_points(curve: Roc, max_points: int = 128) -> dict[str, list[float]]:
    """The curve thinned for a result file and a log-log figure: TPR at FPR <= f (the step
    envelope, as :func:`tpr_at_fpr`) at every reachable FPR below 1% and at log-spaced FPRs
    above, at most about ``max_points`` of them."""
    n = curve.negatives
    reachable = np.unique(curve.false_positives[1:]) / n
    fine = reachable[reachable <= 0.01]
    coarse = np.geomspace(max(0.01, 1 / n), 1.0, max(2, max_points - min(len(fine), max_points)))
    grid = np.unique(np.r_[fine[: max_points // 2], coarse, 1.0])
    grid = grid[grid > 0]
    return {
        "fpr": [float(f) for f in grid],
        "tpr": [tpr_at_fpr(curve, float(f)) for f in grid],
    }


def attack_metrics(
    scores: np.ndarray | torch.Tensor,
    is_member: np.ndarray | torch.Tensor,
    fprs: Sequence[float] = LOW_FPRS,
) -> dict[str, object]:
    """Every metric of one attack on one victim, JSON-able (rates as fractions)."""
    curve = roc(scores, is_member)
    return {
        "auc": auc(curve),
        "balanced_accuracy": balanced_accuracy(curve),
        "advantage": advantage(curve),
        "tpr_at_fpr": {f"{f:g}": tpr_at_fpr(curve, f) for f in fprs},
        "members": curve.positives,
        "nonmembers": curve.negatives,
        "roc": roc_points(curve),
    }
