"""Per-class medoids by greedy facility location, the selection step of EPIC.

Pure tensor code (no ranks): :mod:`ue_sweep.evals.defenses.epic` runs it class by class.
"""

from __future__ import annotations

import torch

# Elements of one temporary block of the greedy's gain computation (128 MiB in float64).
GAIN_BLOCK = 1 << 24


def class_budgets(counts: list[int], total: int) -> list[int]:
    """Medoids per class: proportional to the class sizes ``counts``, summing exactly to
    ``total``, at least 1 for every non-empty class and at most its size.

    Largest remainders: each class gets the floor of its quota ``total * n_c / N`` (at least 1
    when non-empty), and the seats left go to the largest fractional remainders, ties to the
    lower class index (remainders compared exactly, as integers). A ``total`` below the number of
    non-empty classes is raised to it.
    """
    n = sum(counts)
    if n == 0:
        return [0] * len(counts)
    nonempty = sum(c > 0 for c in counts)
    total = min(max(total, nonempty), n)
    budgets = [max(total * c // n, 1 if c else 0) for c in counts]
    # q_c - b_c as an exact fraction over n: positive only for classes still below their quota
    deficit = [total * c - b * n for c, b in zip(counts, budgets, strict=True)]
    left = total - sum(budgets)
    order = sorted(range(len(counts)), key=lambda i: (-deficit[i], i))
    for i in order[: max(left, 0)]:
        budgets[i] += 1
    # Seats handed out by the minimum of 1 beyond the total come back from the classes furthest
    # over their quota, never below 1.
    for _ in range(-left):
        i = min((i for i in range(len(counts)) if budgets[i] > 1), key=lambda i: (deficit[i], -i))
        budgets[i] -= 1
        deficit[i] += n
    return budgets


def similarity(gradients: torch.Tensor) -> torch.Tensor:
    """``exp(-||g_i - g_j|| / d)`` for ``d``-dimensional rows: the Euclidean kernel of submodlib's
    FacilityLocationFunction (``gamma = 1 / n_features``) that EPIC's public code uses."""
    distance = torch.cdist(gradients, gradients, compute_mode="donot_use_mm_for_euclid_dist")
    return torch.exp(-distance / gradients.shape[1])


def greedy_facility_location(sim: torch.Tensor, budget: int) -> torch.Tensor:
    """Indices of ``budget`` medoids in greedy order, maximising ``F(S) = sum_i max_{j in S}
    sim[i, j]`` (non-negative ``sim``). Each step adds the element of largest marginal gain,
    the lowest index among ties; it continues through zero gains, like EPIC's
    ``stopIfZeroGain=False``.
    """
    n = sim.shape[0]
    cover = sim.new_zeros(n)
    taken = torch.zeros(n, dtype=torch.bool, device=sim.device)
    rows = max(1, GAIN_BLOCK // max(n, 1))
    order = []
    for _ in range(min(budget, n)):
        gains = sim.new_zeros(n)
        for start in range(0, n, rows):
            block = sim[start : start + rows] - cover[start : start + rows, None]
            gains += block.clamp_(min=0).sum(0)
        gains[taken] = -1.0
        j = int(gains.argmax())
        order.append(j)
        taken[j] = True
        cover = torch.maximum(cover, sim[:, j])
    return torch.tensor(order, dtype=torch.long, device=sim.device)


def assign(sim: torch.Tensor, medoids: torch.Tensor) -> torch.Tensor:
    """Position in ``medoids`` of each point's most similar medoid (a medoid is its own)."""
    nearest = sim[:, medoids].argmax(1)
    nearest[medoids] = torch.arange(len(medoids), device=sim.device)
    return nearest
