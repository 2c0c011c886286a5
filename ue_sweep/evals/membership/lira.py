"""LiRA, the likelihood-ratio attack of Carlini et al. 2022 ("Membership Inference Attacks From
First Principles"), from shadow models' scores.

Shadow model ``s`` trains on the examples with ``in_mask[:, s]``; each example is IN for exactly
half of the shadows (:func:`shadow_membership`, the balanced design of the paper's code), so every
example has the same number of IN and OUT observations. Per example and query view, the shadows'
logit-scaled confidences give a Gaussian for the IN world and one for the OUT world:

- ``online``: log N(t; mu_in, s_in) - log N(t; mu_out, s_out), the likelihood ratio of the target
  model's score ``t``;
- ``offline``: log P[Z <= t], Z ~ N(mu_out, s_out): the paper's one-sided test against OUT
  only (the paper's code uses the OUT log-density instead; the one-sided test is the paper's
  text, and does not call an unusually *low* confidence a member);
- ``fixed_variance``: one standard deviation shared by every example and both worlds (the
  paper's choice for few shadows) instead of each example's own: online, the standard deviation
  of all the shadow observations the attack uses (IN and OUT); offline, of the OUT ones (as the
  reference code). Online, a shared width only scales every per-view log-ratio by the same
  1 / (2 s^2), so the ROC does not depend on it; offline it does (log Phi is not linear, and
  the views' scores are averaged), which is why it follows the reference there.

Per example and view, each world's centre is the **median** of its shadows' scores (the
reference code's ``np.median``: linear interpolation between the two middle values of an even
count) and its width the population (ddof 0) standard deviation; a per-example deviation is
floored at :data:`MIN_STD` so identical observations give a finite score. The per-view scores
are averaged over the views. Everything is float64.
"""

from __future__ import annotations

import math

import torch

from ue_sweep.runtime.seeding import generator

#: the smallest standard deviation a Gaussian gets (logit-scaled confidences are O(1..30))
MIN_STD = 1e-6
_LOG_SQRT_2PI = 0.5 * math.log(2 * math.pi)


def shadow_membership(pool: int, shadows: int, seed: int) -> torch.Tensor:
    """bool ``[pool, shadows]``: which shadows train on each example, seeded; every example is IN
    for exactly ``shadows // 2`` of them (a random half per example), so each shadow trains on
    about half of the pool."""
    if shadows < 2 or shadows % 2:
        raise ValueError(f"LiRA needs an even number of shadows >= 2, got {shadows}")
    draws = torch.rand(pool, shadows, generator=generator(seed, "lira-shadows"))
    ranks = draws.argsort(1).argsort(1)
    return ranks < shadows // 2


def _masked_moments(x: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Median (the centre, as the reference code) and population standard deviation (about the
    mean) over the shadows where ``mask``: ``x`` ``[N, S, V]``, ``mask`` ``[N, S]`` -> two
    ``[N, V]``."""
    m = mask.to(x.dtype).unsqueeze(-1)
    count = m.sum(1)
    if bool((count == 0).any()):
        raise ValueError("every example needs at least one shadow observation in each world")
    mean = (x * m).sum(1) / count
    var = ((x - mean.unsqueeze(1)).pow(2) * m).sum(1) / count
    kept = torch.where(mask.unsqueeze(-1).expand_as(x), x, torch.nan)
    return torch.nanquantile(kept, 0.5, dim=1), var.sqrt()


def _log_normal(t: torch.Tensor, mean: torch.Tensor, std: torch.Tensor) -> torch.Tensor:
    return -0.5 * ((t - mean) / std).pow(2) - std.log() - _LOG_SQRT_2PI


def _check(
    target: torch.Tensor, shadow: torch.Tensor, in_mask: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    target, shadow = target.double(), shadow.double()
    if target.dim() == 1:  # a single view
        target, shadow = target.unsqueeze(-1), shadow.unsqueeze(-1)
    n, s, v = shadow.shape
    if target.shape != (n, v) or in_mask.shape != (n, s):
        raise ValueError(
            f"LiRA: target scores {tuple(target.shape)}, shadow scores {tuple(shadow.shape)} "
            f"and IN mask {tuple(in_mask.shape)} do not match ([N, V], [N, S, V], [N, S])"
        )
    return target, shadow, in_mask.to(torch.bool).to(shadow.device)


def _fixed_std(shadow: torch.Tensor) -> torch.Tensor:
    return shadow.std(unbiased=False).clamp_min(MIN_STD)


def lira_online(
    target: torch.Tensor,
    shadow: torch.Tensor,
    in_mask: torch.Tensor,
    fixed_variance: bool = False,
) -> torch.Tensor:
    """Online LiRA score per example (higher: member), float64 ``[N]``.

    ``target``: the attacked model's logit-scaled confidences ``[N, V]`` (or ``[N]``);
    ``shadow``: the shadows' ``[N, S, V]`` (or ``[N, S]``); ``in_mask``: bool ``[N, S]``.
    """
    target, shadow, in_mask = _check(target, shadow, in_mask)
    centre_in, std_in = _masked_moments(shadow, in_mask)
    centre_out, std_out = _masked_moments(shadow, ~in_mask)
    if fixed_variance:
        std_in = std_out = _fixed_std(shadow).expand_as(centre_in)
    else:
        std_in, std_out = std_in.clamp_min(MIN_STD), std_out.clamp_min(MIN_STD)
    ratio = _log_normal(target, centre_in, std_in) - _log_normal(target, centre_out, std_out)
    return ratio.mean(-1)


def lira_offline(
    target: torch.Tensor,
    shadow: torch.Tensor,
    in_mask: torch.Tensor,
    fixed_variance: bool = False,
) -> torch.Tensor:
    """Offline LiRA score per example (higher: member), float64 ``[N]``: the log-probability
    that an OUT model scores at most the target's score (only the OUT shadows are used)."""
    target, shadow, in_mask = _check(target, shadow, in_mask)
    centre_out, std_out = _masked_moments(shadow, ~in_mask)
    if fixed_variance:
        std_out = _fixed_std(shadow[~in_mask]).expand_as(centre_out)
    else:
        std_out = std_out.clamp_min(MIN_STD)
    return torch.special.log_ndtr((target - centre_out) / std_out).mean(-1)
