"""From SAL tables to the paper's numbers: the learnable threshold beta, #LP and UD.

A table is ``{layer: [SAL per epoch]}`` (the same epochs for every layer). beta comes from the
clean victim alone: per epoch, 2-means of its layers' SALs, the threshold the midpoint of the two
centres; beta is their mean over epochs. #LP of a victim is the mean over epochs of the number of
its layers with SAL > beta; UD = #LP(victim) / #LP(clean), 1 for the clean victim, lower is more
unlearnable.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

Table = Mapping[str, Sequence[float]]


def two_means_threshold(values: Sequence[float]) -> float:
    """Midpoint of the two centres of the exact 2-means clustering of 1-D ``values``.

    In one dimension the optimal clusters are a split of the sorted values, so every split is
    tried (exact and deterministic, where Lloyd's algorithm may stop at a worse split). All
    values equal (or only one): that value.
    """
    v = sorted(float(x) for x in values)
    if not v:
        raise ValueError("2-means of no values")
    if v[0] == v[-1]:
        return v[0]
    best: tuple[float, float, float] | None = None
    for k in range(1, len(v)):
        low, high = v[:k], v[k:]
        c_low, c_high = math.fsum(low) / len(low), math.fsum(high) / len(high)
        sse = math.fsum((x - c_low) ** 2 for x in low) + math.fsum((x - c_high) ** 2 for x in high)
        if best is None or sse < best[0]:
            best = (sse, c_low, c_high)
    assert best is not None
    return (best[1] + best[2]) / 2


def epochs_of(table: Table) -> int:
    lengths = {len(v) for v in table.values()}
    if len(lengths) != 1:
        raise ValueError(f"a SAL table needs the same epochs for every layer, not {lengths}")
    return lengths.pop()


def thresholds(clean: Table) -> list[float]:
    """The clean victim's threshold of each epoch."""
    return [
        two_means_threshold([sal[t] for sal in clean.values()]) for t in range(epochs_of(clean))
    ]


def beta(clean: Table) -> float:
    return math.fsum(thresholds(clean)) / epochs_of(clean)


def learnable_per_epoch(table: Table, threshold: float) -> list[int]:
    """How many layers have SAL > ``threshold``, per epoch."""
    return [sum(sal[t] > threshold for sal in table.values()) for t in range(epochs_of(table))]


def learnable_parameters(table: Table, threshold: float) -> float:
    """#LP: the mean over epochs of the number of learnable layers."""
    counts = learnable_per_epoch(table, threshold)
    return math.fsum(counts) / len(counts)


def unlearnable_distances(
    tables: Mapping[str, Table], baseline: str
) -> tuple[float, dict[str, float], dict[str, float | None]]:
    """beta (from ``tables[baseline]``), #LP and UD of every table. UD is None for every table
    when the baseline has no learnable layer (#LP = 0: nothing to compare with); the baseline's
    own UD is then exactly 1."""
    threshold = beta(tables[baseline])
    lp = {name: learnable_parameters(t, threshold) for name, t in tables.items()}
    ud = {name: (lp[name] / lp[baseline] if lp[baseline] > 0 else None) for name in tables}
    return threshold, lp, ud


def rank_agreement(x: Mapping[str, float], y: Mapping[str, float]) -> float | None:
    """Kendall's tau-b between two scores of the same conditions (None for < 2 or no order):
    1 when they order every pair the same way."""
    names = [n for n in x if n in y]
    concordant = discordant = tied_x = tied_y = 0
    for i, a in enumerate(names):
        for b in names[i + 1 :]:
            dx, dy = x[a] - x[b], y[a] - y[b]
            if dx == 0 and dy == 0:
                continue
            if dx == 0:
                tied_x += 1
            elif dy == 0:
                tied_y += 1
            elif (dx > 0) == (dy > 0):
                concordant += 1
            else:
                discordant += 1
    n_x = concordant + discordant + tied_y
    n_y = concordant + discordant + tied_x
    if n_x == 0 or n_y == 0:
        return None
    return (concordant - discordant) / math.sqrt(n_x * n_y)
