"""Every attack's per-example score from the target model's logits (and the shadows' scores)."""

from __future__ import annotations

from collections.abc import Sequence

import torch

from ue_sweep.evals.membership.lira import lira_offline, lira_online
from ue_sweep.evals.membership.scores import logit_confidence, loss_score, max_posterior

#: ``loss``: Yeom et al.'s loss threshold; ``max_posterior``: ML-Leaks' threshold on the largest
#: posterior (label-free; the true class's posterior would rank exactly as the loss does);
#: ``lira_*``: Carlini et al.'s likelihood ratio from shadows
SHADOW_ATTACKS = ("lira_online", "lira_offline")


def attack_scores(
    logits: torch.Tensor,
    labels: torch.Tensor,
    attacks: Sequence[str],
    shadow: torch.Tensor | None = None,
    in_mask: torch.Tensor | None = None,
    fixed_variance: bool = True,
) -> dict[str, torch.Tensor]:
    """float64 ``[N]`` scores (higher: member) of each attack in ``attacks``.

    ``logits``: the target's ``[N, V, classes]`` under the query views (the threshold attacks
    use the first, the identity); ``shadow``: the shadows' logit-scaled confidences
    ``[N, S, V]`` on the same queries, ``in_mask`` ``[N, S]`` which shadows trained on each.
    """
    labels = labels.to(logits.device)
    out: dict[str, torch.Tensor] = {}
    for attack in attacks:
        if attack == "loss":
            out[attack] = loss_score(logits[:, 0], labels)
        elif attack == "max_posterior":
            out[attack] = max_posterior(logits[:, 0])
        else:
            if shadow is None or in_mask is None:
                raise ValueError(f"{attack} needs shadow scores")
            lira = lira_online if attack == "lira_online" else lira_offline
            target = logit_confidence(logits, labels)
            out[attack] = lira(target, shadow.to(target.device), in_mask, fixed_variance)
    return out
