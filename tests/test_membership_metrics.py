"""Membership inference building blocks: metrics against hand-computed ROC points, LiRA against
known Gaussians, scores exact over ranks."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from scipy import stats
from sklearn.metrics import roc_auc_score

from tests import membership_workers
from ue_sweep.evals.membership.lira import lira_offline, lira_online, shadow_membership
from ue_sweep.evals.membership.metrics import (
    advantage,
    attack_metrics,
    auc,
    balanced_accuracy,
    roc,
    roc_points,
    tpr_at_fpr,
)
from ue_sweep.evals.membership.scores import (
    View,
    logit_confidence,
    loss_score,
    query_views,
    true_class_posterior,
)
from ue_sweep.runtime.distributed import spawn
from ue_sweep.runtime.env import DistEnv

# Members 0.9 0.8 0.4 0.4, non-members 0.7 0.4 0.2 0.1: a tie at 0.4 across the classes.
SCORES = [0.9, 0.8, 0.4, 0.4, 0.7, 0.4, 0.2, 0.1]
MEMBER = [True] * 4 + [False] * 4


def test_roc_vertices_by_hand_with_a_tie_across_classes():
    curve = roc(SCORES, MEMBER)
    # thresholds 0.9, 0.8, 0.7, 0.4 (two members and a non-member at once), 0.2, 0.1
    assert curve.false_positives.tolist() == [0, 0, 0, 1, 2, 3, 4]
    assert curve.true_positives.tolist() == [0, 1, 2, 2, 4, 4, 4]
    assert curve.thresholds[1:].tolist() == [0.9, 0.8, 0.7, 0.4, 0.2, 0.1]


def test_auc_advantage_balanced_accuracy_and_low_fpr_tpr_by_hand():
    curve = roc(SCORES, MEMBER)
    # trapezoids: 1*(2+2)/2 + 1*(2+4)/2 + 1*4 + 1*4 = 13 of 16; Mann-Whitney: 4 + 4 + 2.5 * 2
    assert auc(curve) == 13 / 16
    assert advantage(curve) == 0.5  # TPR 0.5 at FPR 0, and TPR 1 at FPR 0.5
    assert balanced_accuracy(curve) == 0.75
    assert tpr_at_fpr(curve, 0.01) == 0.5  # 4 non-members: FPR 1% allows no false positive
    assert tpr_at_fpr(curve, 0.25) == 0.5
    assert tpr_at_fpr(curve, 0.49) == 0.5
    assert tpr_at_fpr(curve, 0.5) == 1.0


def test_perfect_inverted_and_uninformative_scores():
    assert auc(roc([3, 4, 1, 2], [True, True, False, False])) == 1.0
    assert tpr_at_fpr(roc([3, 4, 1, 2], [True, True, False, False]), 0.001) == 1.0
    assert auc(roc([1, 2, 3, 4], [True, True, False, False])) == 0.0
    flat = roc([5.0] * 6, [True, False] * 3)
    assert auc(flat) == 0.5 and advantage(flat) == 0.0 and tpr_at_fpr(flat, 0.5) == 0.0


def test_auc_agrees_with_scikit_learn_on_tied_random_scores():
    g = np.random.default_rng(0)
    scores = g.integers(0, 20, 301).astype(float)  # many ties
    member = g.random(301) < 0.4
    assert auc(roc(scores, member)) == pytest.approx(roc_auc_score(member, scores), abs=1e-15)


def test_attack_metrics_record_and_the_thinned_curve_keeps_the_low_fpr_steps():
    g = np.random.default_rng(1)
    member = np.r_[np.ones(400, bool), np.zeros(400, bool)]
    scores = g.normal(size=800) + member
    out = attack_metrics(scores, member)
    curve = roc(scores, member)
    assert out["members"] == out["nonmembers"] == 400
    assert out["tpr_at_fpr"] == {"0.001": tpr_at_fpr(curve, 0.001), "0.01": tpr_at_fpr(curve, 0.01)}
    points = roc_points(curve)
    assert len(points["fpr"]) <= 130 and points["fpr"][-1] == 1.0 and points["tpr"][-1] == 1.0
    assert points["fpr"][:4] == [1 / 400, 2 / 400, 3 / 400, 4 / 400]
    for f, t in zip(points["fpr"], points["tpr"], strict=True):
        assert t == tpr_at_fpr(curve, f)
    assert np.all(np.diff(points["tpr"]) >= 0)


def test_bad_inputs_are_refused():
    with pytest.raises(ValueError, match="member and one non-member"):
        roc([1.0, 2.0], [True, True])
    with pytest.raises(ValueError, match="finite"):
        roc([1.0, float("nan")], [True, False])
    with pytest.raises(ValueError, match="3 scores for 2"):
        roc([1.0, 2.0, 3.0], [True, False])


# --------------------------------------------------------------------------------------------
# LiRA
# --------------------------------------------------------------------------------------------


def _shadows(mean_in, std_in, mean_out, std_out):
    """4 shadows per example whose 2 IN (and 2 OUT) values are mean +- std: their sample mean
    and population standard deviation are exactly the Gaussian's."""
    mean_in, std_in, mean_out, std_out = (
        torch.tensor(v, dtype=torch.float64) for v in (mean_in, std_in, mean_out, std_out)
    )
    in_mask = torch.tensor([[True, False, True, False], [False, True, False, True]])
    values = torch.zeros(2, 4, dtype=torch.float64)
    for i in range(2):
        ins, outs = in_mask[i].nonzero().flatten(), (~in_mask[i]).nonzero().flatten()
        values[i, ins] = torch.stack([mean_in[i] - std_in[i], mean_in[i] + std_in[i]])
        values[i, outs] = torch.stack([mean_out[i] - std_out[i], mean_out[i] + std_out[i]])
    return values, in_mask


def test_lira_scores_are_the_known_gaussians_likelihood_ratio_and_one_sided_tail():
    mean_in, std_in, mean_out, std_out = [4.0, 1.0], [0.5, 2.0], [1.0, -1.0], [1.5, 0.25]
    shadow, in_mask = _shadows(mean_in, std_in, mean_out, std_out)
    target = torch.tensor([3.0, 0.5], dtype=torch.float64)
    expected = stats.norm.logpdf(target, mean_in, std_in) - stats.norm.logpdf(
        target, mean_out, std_out
    )
    torch.testing.assert_close(lira_online(target, shadow, in_mask).numpy(), expected)
    torch.testing.assert_close(
        lira_offline(target, shadow, in_mask).numpy(), stats.norm.logcdf(target, mean_out, std_out)
    )
    # fixed variance: one deviation, that of all the observations used
    common = float(shadow.std(unbiased=False))
    torch.testing.assert_close(
        lira_online(target, shadow, in_mask, fixed_variance=True).numpy(),
        stats.norm.logpdf(target, mean_in, common) - stats.norm.logpdf(target, mean_out, common),
    )
    out_common = float(shadow[~in_mask].std(unbiased=False))
    torch.testing.assert_close(
        lira_offline(target, shadow, in_mask, fixed_variance=True).numpy(),
        stats.norm.logcdf(target, mean_out, out_common),
    )


def test_lira_averages_its_views_and_stays_finite_on_identical_shadows():
    shadow, in_mask = _shadows([4.0, 1.0], [0.5, 2.0], [1.0, -1.0], [1.5, 0.25])
    target = torch.tensor([3.0, 0.5], dtype=torch.float64)
    two_views = lira_online(
        torch.stack([target, target + 1], -1), torch.stack([shadow, shadow + 1], -1), in_mask
    )
    torch.testing.assert_close(two_views, lira_online(target, shadow, in_mask))
    flat = lira_online(target, torch.ones(2, 4, dtype=torch.float64), in_mask)
    assert torch.isfinite(flat).all()


def test_lira_online_separates_members_drawn_from_the_in_gaussian():
    """Many shadows from per-example Gaussians: online LiRA on targets drawn from each example's
    own IN / OUT Gaussian beats a global threshold on the raw score (per-example difficulty)."""
    g = torch.Generator().manual_seed(0)
    n, s = 400, 32
    difficulty = torch.randn(n, generator=g, dtype=torch.float64) * 3
    mean_in, mean_out = difficulty + 1.0, difficulty
    in_mask = shadow_membership(n, s, seed=0)
    noise = torch.randn(n, s, generator=g, dtype=torch.float64) * 0.5
    shadow = torch.where(in_mask, mean_in[:, None], mean_out[:, None]) + noise
    member = torch.arange(n) < n // 2
    target = torch.where(member, mean_in, mean_out) + 0.5 * torch.randn(n, generator=g).double()
    lira = auc(roc(lira_online(target, shadow, in_mask), member))
    raw = auc(roc(target, member))
    # the known Gaussians' best test (means 2 deviations apart): AUC Phi(2 / sqrt 2) = 0.92
    assert lira > 0.85 > 0.6 > raw


def test_shadow_membership_is_balanced_per_example_and_seeded():
    keep = shadow_membership(1000, 8, seed=3)
    assert keep.shape == (1000, 8) and keep.sum(1).eq(4).all()
    assert keep.sum(0).min() > 420 and keep.sum(0).max() < 580  # about half the pool each
    assert torch.equal(keep, shadow_membership(1000, 8, seed=3))
    assert not torch.equal(keep, shadow_membership(1000, 8, seed=4))
    with pytest.raises(ValueError, match="even"):
        shadow_membership(10, 3, seed=0)


# --------------------------------------------------------------------------------------------
# Scores
# --------------------------------------------------------------------------------------------


def test_scores_match_their_definitions_and_stay_finite_at_extreme_logits():
    logits = torch.tensor([[2.0, 0.5, -1.0], [0.0, 3.0, 1.0]], dtype=torch.float64)
    labels = torch.tensor([0, 2])
    p = logits.softmax(1)[torch.arange(2), labels]
    torch.testing.assert_close(
        loss_score(logits, labels), -F.cross_entropy(logits, labels, reduction="none")
    )
    torch.testing.assert_close(true_class_posterior(logits, labels), p)
    torch.testing.assert_close(logit_confidence(logits, labels), (p / (1 - p)).log())
    # p_y = 1 - 2e-44: the naive form gives inf; z_y - logsumexp(others) = 100 - log 2
    extreme = logit_confidence(torch.tensor([[100.0, 0.0, 0.0]], dtype=torch.float64), labels[:1])
    assert extreme.item() == pytest.approx(100 - np.log(2), abs=1e-12)
    # per view: [N, V, classes]
    views = torch.stack([logits, logits.flip(1)], 1)
    assert logit_confidence(views, labels).shape == (2, 2)
    torch.testing.assert_close(
        logit_confidence(views, labels)[:, 0], logit_confidence(logits, labels)
    )


def test_query_views_identity_first_then_mirror_and_shifts():
    views = query_views(4, shift=2, hflip=True)
    assert views == [View(), View(flip=True), View(dy=2), View(flip=True, dy=2)]
    assert query_views(20, shift=0, hflip=False) == [View()]
    assert len(query_views(20, shift=1, hflip=False)) == 9
    x = torch.arange(9.0).view(1, 1, 3, 3)
    assert torch.equal(View()(x), x)
    assert View(flip=True)(x)[0, 0, 0].tolist() == [2.0, 1.0, 0.0]
    # content moves down one row, zero fill on top
    assert View(dy=1)(x)[0, 0].tolist() == [[0.0, 0.0, 0.0], [0.0, 1.0, 2.0], [3.0, 4.0, 5.0]]
    assert View(dx=-1)(x)[0, 0].tolist() == [[1.0, 2.0, 0.0], [4.0, 5.0, 0.0], [7.0, 8.0, 0.0]]


def test_scores_are_exact_over_ranks(tmp_path):
    one, two = str(tmp_path / "one.pt"), str(tmp_path / "two.pt")
    membership_workers.query_scores(DistEnv(), one)
    spawn(membership_workers.query_scores, 2, (two,))
    a, b = torch.load(one), torch.load(two)
    assert a["logits"].shape == (37, 3, 4) and a["logits"].dtype == torch.float64
    for name in ("logits", "loss", "true_class_posterior", "logit_confidence"):
        torch.testing.assert_close(b[name], a[name], rtol=1e-12, atol=1e-12)
