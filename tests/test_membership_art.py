"""Cross-check of the loss and posterior attacks against ART (adversarial-robustness-toolbox).

ART has no plain threshold attack (its black-box attack trains a classifier on the loss or the
posteriors together with the one-hot label), but its PyTorch estimator computes the per-example
loss and posteriors, and its privacy metric ``get_roc_for_fpr`` is LiRA's TPR at FPR <= alpha.
So: ART's per-example losses and posteriors of one small trained model equal ours, and the
attacks' TPR at low FPR and AUC from ART's numbers equal ours.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from art.estimators.classification import PyTorchClassifier
from art.metrics.privacy.worst_case_mia_score import get_roc_for_fpr
from sklearn.metrics import roc_auc_score
from torch import nn

from ue_sweep.config import ModelSpec
from ue_sweep.evals.membership.metrics import auc, roc, tpr_at_fpr
from ue_sweep.evals.membership.scores import loss_score, max_posterior
from ue_sweep.models.classifiers import build_classifier


class _Logits(nn.Module):
    """ART's estimators expect a module returning logits; ours also return features."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x)[0]


@pytest.fixture(scope="module")
def trained():
    """A small CNN overfit on 40 of 80 noisy images: members score better than non-members."""
    g = torch.Generator().manual_seed(0)
    images = torch.rand(80, 1, 8, 8, generator=g)
    labels = torch.randint(0, 3, (80,), generator=g)
    torch.manual_seed(0)
    model = build_classifier(ModelSpec(width=8), in_channels=1, num_classes=3, image_size=8)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    for _ in range(60):
        logits, _ = model(images[:40])
        loss = nn.functional.cross_entropy(logits, labels[:40])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    model.eval()
    with torch.no_grad():
        ours, _ = model(images)
    art = PyTorchClassifier(
        _Logits(model),
        loss=nn.CrossEntropyLoss(),
        input_shape=(1, 8, 8),
        nb_classes=3,
        clip_values=(0.0, 1.0),
    )
    member = np.r_[np.ones(40, bool), np.zeros(40, bool)]
    return images.numpy(), labels.numpy(), ours, art, member


def test_art_per_example_loss_and_posteriors_are_ours(trained):
    images, labels, logits, art, _ = trained
    art_loss = art.compute_loss(images, labels, reduction="none")
    ours = -loss_score(logits, torch.from_numpy(labels)).numpy()
    np.testing.assert_allclose(art_loss, ours, rtol=1e-5, atol=1e-6)
    posteriors = torch.from_numpy(art.predict(images)).double().softmax(1)
    np.testing.assert_allclose(
        posteriors.max(1).values.numpy(), max_posterior(logits).numpy(), rtol=1e-5
    )


def test_low_fpr_tpr_and_auc_from_art_numbers_match_ours(trained):
    images, labels, logits, art, member = trained
    attacks = {
        "loss": (
            -art.compute_loss(images, labels, reduction="none"),
            loss_score(logits, torch.from_numpy(labels)),
        ),
        "max_posterior": (
            torch.from_numpy(art.predict(images)).double().softmax(1).max(1).values.numpy(),
            max_posterior(logits),
        ),
    }
    for art_scores, ours in attacks.values():
        curve = roc(ours, member)
        assert auc(curve) > 0.6  # the model did overfit: the check is not on a flat curve
        assert auc(curve) == pytest.approx(roc_auc_score(member, art_scores), abs=1e-12)
        for fpr in (0.001, 0.01, 0.1, 0.3):
            (_, art_tpr, _), *_ = get_roc_for_fpr(
                attack_proba=art_scores, attack_true=member.astype(int), targeted_fpr=fpr
            )
            assert tpr_at_fpr(curve, fpr) == pytest.approx(art_tpr, abs=1e-12)
