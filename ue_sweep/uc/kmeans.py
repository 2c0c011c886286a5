"""k-means sharded over the ranks: no rank gathers the feature matrix, none waits on another's fit.

Each rank holds the rows of its shard (in rank order, as ``shard_bounds`` cuts them), assigns
them to the nearest centre, and the centre sums and counts are all-reduced: one Lloyd step costs
``N * k * D / world_size`` per rank and two small collectives. The initialisation is k-means++
(scikit-learn's greedy variant) on a seeded sample of rows chosen by their global index, so
every world size starts from the same centres; the result then differs between world sizes only
by the order in which the sums are added (floating-point tolerance). ``n_init`` seeded starts
are run and the one of least inertia is kept, as scikit-learn does.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from ue_sweep.runtime.distributed import Runtime
from ue_sweep.runtime.seeding import generator

# scikit-learn's default tolerance (the reference path uses it): stop when the squared shift of
# the centres is below TOL times the mean per-dimension variance of the features.
TOL = 1e-4
# k-means++ runs on at most this many rows per cluster (and at least MIN_SAMPLE): a seeded
# sample gathered on every rank, 80 MB at k=10 and 2048-dim float32 features.
SAMPLE_PER_CLUSTER = 1000
MIN_SAMPLE = 10_000
# Rows per assignment chunk: bounds the [chunk, k] distances and the temporaries of the rows.
CHUNK = 8192


@dataclass(frozen=True)
class ShardedFit:
    ids: torch.Tensor  # int64 [rows of this rank]: the cluster of each local row
    centers: torch.Tensor  # float32 [k, D], the same on every rank
    inertia: float  # sum of squared distances to the assigned centres, over all ranks
    iterations: int  # Lloyd steps of the kept start


def _sq_norms(x: torch.Tensor) -> torch.Tensor:
    return torch.linalg.vector_norm(x, dim=1).square_()


def _sq_dist(x: torch.Tensor, x_sq: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
    """Squared Euclidean distances ``[n, m]`` by one matrix product, clamped at 0."""
    return torch.addmm(x_sq[:, None] + _sq_norms(c)[None], x, c.T, alpha=-2).clamp_min_(0)


def _row_offsets(rows: int, rt: Runtime) -> tuple[int, int]:
    """This rank's first global row and the total row count."""
    counts = rt.all_gather_rows(torch.tensor([[rows]], dtype=torch.long)).flatten().tolist()
    return sum(counts[: rt.rank]), sum(counts)


def init_sample(local: torch.Tensor, k: int, seed: int, rt: Runtime) -> torch.Tensor:
    """The same seeded rows on every rank and every world size, in global row order."""
    offset, n = _row_offsets(len(local), rt)
    size = min(n, max(SAMPLE_PER_CLUSTER * k, MIN_SAMPLE))
    picked = torch.randperm(n, generator=generator(seed, "kmeans-sample"))[:size].sort().values
    mine = picked[(picked >= offset) & (picked < offset + len(local))] - offset
    return rt.all_gather_rows(local[mine.to(local.device)].float())


def kmeans_plus_plus(sample: torch.Tensor, k: int, g: torch.Generator) -> torch.Tensor:
    """Greedy k-means++ (as scikit-learn: 2 + log k candidates per centre, the one that lowers
    the potential most is kept); the random draws come from ``g`` on the CPU."""
    m = len(sample)
    x_sq = _sq_norms(sample)
    trials = 2 + int(math.log(k))
    chosen = [int(torch.randint(m, (1,), generator=g))]
    closest = _sq_dist(sample, x_sq, sample[chosen]).squeeze(1).double()
    for _ in range(1, k):
        pot = closest.sum()
        draws = torch.rand(trials, generator=g, dtype=torch.float64).to(sample.device) * pot
        cand = torch.searchsorted(closest.cumsum(0), draws).clamp_max_(m - 1)
        d = torch.minimum(closest[:, None], _sq_dist(sample, x_sq, sample[cand]).double())
        best = int(d.sum(0).argmin())
        chosen.append(int(cand[best]))
        closest = d[:, best]
    return sample[chosen].clone()


def _lloyd_pass(
    local: torch.Tensor,
    local_sq: torch.Tensor,
    centers: torch.Tensor,
    rt: Runtime,
    inertia: bool = False,
) -> tuple[torch.Tensor, torch.Tensor, float]:
    """Assign the local rows; return their labels, the all-reduced centre sums (float64, the
    counts in the last column), and with ``inertia`` the all-reduced sum of squared distances
    to the assigned centres (computed directly, not by the expanded form the assignment uses)."""
    k, dim = centers.shape
    stats = torch.zeros(k, dim + 2, dtype=torch.float64, device=local.device)
    labels = torch.empty(len(local), dtype=torch.long, device=local.device)
    for start in range(0, len(local), CHUNK):
        x = local[start : start + CHUNK].float()
        lab = _sq_dist(x, local_sq[start : start + CHUNK], centers).argmin(1)
        labels[start : start + len(x)] = lab
        # float32 within a chunk, float64 across chunks and ranks.
        stats[:, :dim] += torch.zeros_like(centers).index_add_(0, lab, x)
        stats[:, dim] += torch.bincount(lab, minlength=k)
        if inertia:
            stats[0, dim + 1] += (x - centers[lab]).pow_(2).sum(1, dtype=torch.float64).sum()
    stats = rt.all_reduce_sum(stats)
    return labels, stats[:, : dim + 1], float(stats[0, dim + 1])


def _mean_variance(local: torch.Tensor, rt: Runtime) -> float:
    dim = local.shape[1]
    moments = torch.zeros(2 * dim + 1, dtype=torch.float64, device=local.device)
    for start in range(0, len(local), CHUNK):
        x = local[start : start + CHUNK].float()
        moments[:dim] += x.sum(0, dtype=torch.float64)
        moments[dim : 2 * dim] += x.pow(2).sum(0, dtype=torch.float64)
        moments[-1] += len(x)
    moments = rt.all_reduce_sum(moments)
    n = moments[-1]
    mean = moments[:dim] / n
    return float((moments[dim : 2 * dim] / n - mean.pow(2)).clamp_min(0).mean())


def _one_start(
    local: torch.Tensor,
    local_sq: torch.Tensor,
    start: torch.Tensor,
    max_iter: int,
    tol: float,
    rt: Runtime,
) -> ShardedFit:
    centers = start.float()
    steps = 0
    for steps in range(1, max_iter + 1):  # noqa: B007 (the count of steps is reported)
        _, sums, _ = _lloyd_pass(local, local_sq, centers, rt)
        counts = sums[:, -1:]
        # An empty cluster keeps its centre (rare after k-means++; scikit-learn relocates it).
        new = torch.where(counts > 0, sums[:, :-1] / counts.clamp_min(1), centers.double())
        shift = float((new - centers.double()).pow(2).sum())
        centers = new.float()
        if shift <= tol:
            break
    labels, _, inertia = _lloyd_pass(local, local_sq, centers, rt, inertia=True)
    return ShardedFit(ids=labels, centers=centers, inertia=inertia, iterations=steps)


def fit_sharded(
    local: torch.Tensor,
    k: int,
    n_init: int,
    max_iter: int,
    seed: int,
    rt: Runtime,
    tol: float = TOL,
) -> ShardedFit:
    """k-means of the rows of every rank (``local`` holds this rank's); collective over ranks.

    Every rank returns the same centres and inertia and the labels of its own rows. ``tol`` 0
    runs all ``max_iter`` steps unless the centres stop moving (the benchmark's fixed work).
    """
    sample = init_sample(local, k, seed, rt)
    tol = tol * _mean_variance(local, rt) if tol > 0 else 0.0
    # Squared row norms once per fit: N floats, not a pass over N x D per step.
    local_sq = torch.cat(
        [_sq_norms(local[i : i + CHUNK].float()) for i in range(0, len(local), CHUNK)]
        or [local.new_zeros(0)]
    )
    best: ShardedFit | None = None
    for i in range(n_init):
        start = kmeans_plus_plus(sample, k, generator(seed, "kmeans-init", i))
        fit = _one_start(local, local_sq, start, max_iter, tol, rt)
        if best is None or fit.inertia < best.inertia:
            best = fit
    assert best is not None  # n_init >= 1 (config rule)
    return best
