"""One ``seed`` drives everything: each consumer derives its own stream from it by name."""

from __future__ import annotations

import hashlib

import torch


def derive_seed(seed: int, *names: object) -> int:
    """A 63-bit seed for the stream ``names`` of run ``seed``: stable across runs and ranks."""
    text = "/".join([str(seed), *map(str, names)])
    return int.from_bytes(hashlib.blake2b(text.encode(), digest_size=8).digest(), "big") >> 1


def generator(seed: int, *names: object) -> torch.Generator:
    return torch.Generator().manual_seed(derive_seed(seed, *names))


def per_sample(seed: int, name: str, epoch: int, indices: torch.Tensor) -> list[torch.Generator]:
    """One generator per training sample for stream ``name`` of ``epoch``: a sample's random draws
    do not depend on which rank or batch it lands in, nor on where a resumed run restarts."""
    return [generator(seed, name, epoch, int(i)) for i in indices.tolist()]
