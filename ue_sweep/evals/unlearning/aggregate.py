"""The SISA ensemble's output from its constituents' posteriors (Bourtoule et al., section IV).

Both of the reference code's strategies (``aggregation.py`` of cleverhans-lab/machine-unlearning,
uniform weights): each constituent's argmax as a one-hot vote, or its softmax posterior, averaged
over constituents; the label is the argmax of the average (ties go to the lowest class, as
``argmax`` breaks them).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def mean_posterior(posteriors: torch.Tensor) -> torch.Tensor:
    """``[S, N, C]`` constituent posteriors -> ``[N, C]`` their mean."""
    return posteriors.mean(dim=0)


def votes(posteriors: torch.Tensor) -> torch.Tensor:
    """``[S, N, C]`` -> ``[N, C]`` the share of constituents whose argmax is each class."""
    return F.one_hot(posteriors.argmax(dim=2), posteriors.shape[2]).to(posteriors.dtype).mean(0)


def majority_vote(posteriors: torch.Tensor) -> torch.Tensor:
    """``[N]`` labels by plurality of the constituents' argmax labels."""
    return votes(posteriors).argmax(dim=1)


def accuracy(labels: torch.Tensor, truth: torch.Tensor) -> float:
    return float((labels.cpu() == truth.cpu()).double().mean())
