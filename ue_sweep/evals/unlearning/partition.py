"""Shards, slices, epochs per slice and unlearning requests: the bookkeeping of SISA.

The training pool (the job's training split, after any hold-out) is cut by a seeded permutation
into ``shards`` disjoint shards that cover it, and each shard, in that order, into ``slices``
slices. Constituent model ``k`` trains on slice 0 of shard ``k``, then on slices 0-1, and so on
(cumulative data), so a removed point only invalidates the slices from its own on.

Epochs per slice follow Bourtoule et al. (section V-A, and ``sisa.py`` of
cleverhans-lab/machine-unlearning): a constituent with a budget of ``e`` epochs on its whole
shard trains ``e' = 2e / (R + 1)`` epochs on each of its ``R`` cumulative slices, which visits the
same number of samples as ``e`` epochs on the shard (``sum_s e' (s + 1) / R = e``); the integer
epochs of slice ``s`` are ``floor((s + 1) e') - floor(s e')``, as in the reference code.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

from ue_sweep.errors import ConfigError
from ue_sweep.runtime.seeding import generator
from ue_sweep.train.evaluate import shard_bounds


def slice_epochs(epochs: int, slices: int) -> list[int]:
    """Epochs of each slice for a budget of ``epochs`` on the whole shard (exact integers)."""
    return [
        ((s + 1) * 2 * epochs) // (slices + 1) - (s * 2 * epochs) // (slices + 1)
        for s in range(slices)
    ]


def steps_per_epoch(n: int, batch: int) -> int:
    """Optimizer steps of one epoch on ``n`` samples: the victim trainer drops an incomplete last
    batch only when a full one exists (``data/batches.py``)."""
    return n // batch if n >= batch else int(n > 0)


def indices_digest(indices: torch.Tensor) -> str:
    """SHA-256 of a sorted set of training indices (int64 bytes): what a slice checkpoint saw."""
    return hashlib.sha256(indices.to(torch.int64).cpu().numpy().tobytes()).hexdigest()


@dataclass(frozen=True)
class Partition:
    """``slices[k][s]``: the training indices of slice ``s`` of shard ``k``, in the seeded order."""

    slices: tuple[tuple[torch.Tensor, ...], ...]

    @property
    def shards(self) -> int:
        return len(self.slices)

    @property
    def num_slices(self) -> int:
        return len(self.slices[0])

    def shard(self, k: int) -> torch.Tensor:
        return torch.cat(self.slices[k])

    def seen(self, k: int, s: int) -> torch.Tensor:
        """Sorted indices constituent ``k`` has trained on once slice ``s`` is done."""
        return torch.cat(self.slices[k][: s + 1]).sort().values

    def locate(self, indices: torch.Tensor) -> list[tuple[int, int]]:
        """(shard, slice) of each index."""
        where = {}
        for k, shard in enumerate(self.slices):
            for s, part in enumerate(shard):
                where.update(dict.fromkeys(part.tolist(), (k, s)))
        return [where[int(i)] for i in indices.tolist()]

    def first_changed(self, removed: torch.Tensor) -> list[int | None]:
        """Per shard, the first slice holding a removed point (None: the shard is untouched):
        the slice its constituent retrains from."""
        first: list[int | None] = [None] * self.shards
        for k, s in self.locate(removed):
            first[k] = s if first[k] is None else min(first[k], s)
        return first

    def without(self, removed: torch.Tensor) -> Partition:
        """The same shards and slices with the removed points taken out."""
        gone = set(removed.tolist())
        return Partition(
            tuple(
                tuple(part[[i not in gone for i in part.tolist()]] for part in shard)
                for shard in self.slices
            )
        )


def full_retrain_steps(part: Partition, epochs: Sequence[int], batch: int) -> list[int]:
    """Per shard, the steps of training its constituent from scratch on ``part``."""
    return [
        sum(e * steps_per_epoch(len(part.seen(k, s)), batch) for s, e in enumerate(epochs))
        for k in range(part.shards)
    ]


def single_request_ratio(part: Partition, epochs: Sequence[int], batch: int) -> float:
    """The mean over every training point of the retraining cost (steps) of a request for that
    point alone, over a full retrain without it: SISA's expected speed-up for one uniform
    request, counted exactly from the slice sizes (no training)."""
    sizes = [[len(part.seen(k, s)) for s in range(len(epochs))] for k in range(part.shards)]

    def steps(k: int, start: int, minus: int) -> int:
        return sum(
            epochs[s] * steps_per_epoch(sizes[k][s] - minus, batch)
            for s in range(start, len(epochs))
        )

    total, points = 0.0, 0
    for k in range(part.shards):
        others = sum(steps(j, 0, 0) for j in range(part.shards) if j != k)
        for s, piece in enumerate(part.slices[k]):
            total += len(piece) * steps(k, s, 1) / (others + steps(k, 0, 1))
            points += len(piece)
    return total / points


def partition(n: int, shards: int, slices: int, seed: int) -> Partition:
    """``shards`` disjoint shards covering ``range(n)`` (sizes differ by at most one), each cut
    into ``slices`` contiguous slices of its seeded order."""
    order = torch.randperm(n, generator=generator(seed, "sisa-shards"))
    out = []
    for k in range(shards):
        lo, hi = shard_bounds(n, k, shards)
        shard = order[lo:hi]
        out.append(tuple(shard[slice(*shard_bounds(len(shard), s, slices))] for s in range(slices)))
    return Partition(tuple(out))


def draw_requests(n: int, count: int, seed: int) -> torch.Tensor:
    """``count`` distinct training indices, seeded, sorted: the points users ask to forget."""
    return torch.randperm(n, generator=generator(seed, "sisa-requests"))[:count].sort().values


def read_request_file(key: str, path: str) -> torch.Tensor:
    """The indices of a request file: integers separated by whitespace or commas, ``#`` starts a
    comment. Refused (ConfigError naming ``key``) when unreadable, empty, not integers, negative
    or with duplicates; the range is checked against the training pool once the data is loaded."""
    try:
        text = Path(path).expanduser().read_text()
    except OSError as err:
        raise ConfigError(
            key, path, f"a readable file of training indices ({err.strerror})"
        ) from err
    tokens = [t for line in text.splitlines() for t in re.split(r"[\s,]+", line.split("#")[0])]
    tokens = [t for t in tokens if t]
    bad = next((t for t in tokens if not re.fullmatch(r"\d+", t)), None)
    if bad is not None:
        raise ConfigError(key, path, f"non-negative integer indices only (found {bad!r})")
    if not tokens:
        raise ConfigError(key, path, "at least one training index")
    values = [int(t) for t in tokens]
    if len(set(values)) != len(values):
        twice = sorted({v for v in values if values.count(v) > 1})
        raise ConfigError(key, path, f"distinct indices (repeated: {twice[:5]})")
    return torch.tensor(sorted(values), dtype=torch.long)
