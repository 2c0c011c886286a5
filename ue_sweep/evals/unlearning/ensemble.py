"""SISA constituents trained slice by slice, each slice's state an artifact, spread over ranks.

Constituent ``k`` starts from weights seeded by ``k`` and trains, slice after slice, on the
cumulative indices of its shard (``partition.py``): a fresh SGD optimizer with the victim recipe
and a cosine schedule over the slice's own steps, so that a slice's outcome depends on nothing
but its starting state and the exact indices it has seen; a global schedule over all slices
would tie every slice to the sizes of the later ones, which requests change. Each slice's state is
an artifact keyed by those indices (``keys.sisa_slice_key``), so a fit after a request starts
each constituent from the deepest slice whose key is unchanged (held in memory from this job's
earlier fit, or in the store from any job), and a later job with the same requests reuses all.

Shards are independent: rank ``r`` of ``W`` trains shards ``r, r + W, ...`` alone, as a world of
size 1 (``Runtime.solo``), seeded per shard and slice, so the ensemble does not depend on the
world size. The rank that trains a slice writes its artifact (one writer per entry; the store's
writes are atomic); the constituents' posteriors and per-shard records are gathered with
``all_gather_rows``. Slice artifacts take no lock: two jobs that need the same missing slice at
once both train it, and the last write stays.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import torch

from ue_sweep.config import RootConfig
from ue_sweep.data.placement import ON_DEVICE, Placement
from ue_sweep.evals.unlearning.partition import Partition, indices_digest
from ue_sweep.models.classifiers import FeatureClassifier
from ue_sweep.runtime.distributed import Runtime
from ue_sweep.runtime.progress import Progress
from ue_sweep.runtime.seeding import derive_seed
from ue_sweep.store.artifacts import ArtifactStore, StageKey
from ue_sweep.store.keys import sisa_slice_key
from ue_sweep.train.classifier import EVAL_BATCH, train_classifier
from ue_sweep.train.run import LabelledData, TrainingRun

#: columns of the per-shard record each rank contributes to a fit's gathered records; then
#: ``slice_steps`` and ``slice_seconds``, one per slice, as recorded when each was trained
RECORD = (
    "shard",
    "start",  # first slice trained by this fit (the number of slices reused)
    "steps",  # optimizer steps this fit took
    "seconds",  # their training seconds
    "size",  # training indices of the final slice
    "removed_seen",  # of the ``removed`` points, how many the final state trained on
)
PER_SLICE = ("slice_steps", "slice_seconds")


@dataclass
class Fit:
    """One fit of the ensemble: every constituent's posteriors on the queries and its record."""

    #: ``[S, Q, C]`` float64 softmax posteriors of each constituent on the query images
    posteriors: torch.Tensor
    #: one dict per shard: :data:`RECORD`'s numbers and :data:`PER_SLICE`'s lists
    shards: list[dict[str, Any]]
    #: this rank's constituents: shard -> final slice outcome (``state``, ``seen``, ``history``)
    local: dict[int, dict[str, Any]] = field(default_factory=dict)
    wall_seconds: float = 0.0

    def total(self, column: str) -> float:
        return sum(r[column] for r in self.shards)

    def steps_from(self, first: Sequence[int | None]) -> tuple[int, float]:
        """Steps and recorded seconds of every constituent's slices from ``first[k]`` on (None:
        none): what retraining from those slices costs, whether this fit trained or reused
        them."""
        steps, seconds = 0, 0.0
        for record, start in zip(self.shards, first, strict=True):
            if start is not None:
                steps += sum(record["slice_steps"][start:])
                seconds += sum(record["slice_seconds"][start:])
        return steps, seconds


@dataclass
class SisaTrainer:
    """Fits SISA ensembles of ``cfg.victim`` models on one training pool (clean or protected)."""

    cfg: RootConfig
    rt: Runtime
    images: torch.Tensor  # uint8 training pool
    labels: torch.Tensor
    images_digest: str
    data_identity: dict[str, Any]
    test_images: torch.Tensor
    test_labels: torch.Tensor
    num_classes: int
    new_model: Callable[[], FeatureClassifier]
    epochs: Sequence[int]  # per slice
    progress: Progress
    store: ArtifactStore | None = None
    placement: Placement = ON_DEVICE
    name: str = "sisa"
    #: this rank's slice outcomes by artifact name: a later fit of this job reuses them
    memory: dict[str, dict[str, Any]] = field(default_factory=dict, repr=False)

    def keys(self, part: Partition, k: int) -> list[StageKey]:
        """The artifact keys of constituent ``k``'s slices, each chained to the one before."""
        keys: list[StageKey] = []
        for s, epochs in enumerate(self.epochs):
            seen = indices_digest(part.seen(k, s))
            previous = keys[-1] if keys else None
            keys.append(
                sisa_slice_key(
                    self.cfg, self.data_identity, self.images_digest, k, s, epochs, seen, previous
                )
            )
        return keys

    def fit(
        self, part: Partition, queries: torch.Tensor, removed: torch.Tensor | None = None
    ) -> Fit:
        """Train (or reuse) every constituent for ``part`` and score ``queries`` (uint8) with
        each. Collective: every rank calls it with the same arguments."""
        started = time.perf_counter()
        rt = self.rt
        keys = [self.keys(part, k) for k in range(part.shards)]
        stored = self._stored(keys)
        records, posteriors, local = [], [], {}
        for k in range(rt.rank, part.shards, rt.world_size):
            model, outcome, record = self._constituent(part, k, keys[k], stored[k])
            seen = outcome["seen"]
            record["removed_seen"] = (
                0 if removed is None else int(torch.isin(seen, removed.cpu()).sum())
            )
            history = outcome["history"]
            row = [float(record[c]) for c in RECORD]
            row += [float(h["steps"]) for h in history] + [h["seconds"] for h in history]
            records.append(torch.tensor(row, dtype=torch.float64))
            posteriors.append(self._posteriors(model, queries))
            local[k] = outcome
        width, q = len(RECORD) + 2 * len(self.epochs), len(queries)
        gathered = rt.all_gather_rows(
            torch.stack(records) if records else torch.zeros(0, width, dtype=torch.float64)
        ).cpu()
        scores = rt.all_gather_rows(
            torch.stack(posteriors)
            if posteriors
            else torch.zeros(0, q, self.num_classes, dtype=torch.float64)
        ).cpu()
        order = gathered[:, 0].argsort()
        shards = [self._record(row) for row in gathered[order].tolist()]
        return Fit(scores[order], shards, local, time.perf_counter() - started)

    def _record(self, row: list[float]) -> dict[str, Any]:
        fixed, r = len(RECORD), len(self.epochs)
        return {
            **{c: int(v) if c != "seconds" else v for c, v in zip(RECORD, row, strict=False)},
            "slice_steps": [int(v) for v in row[fixed : fixed + r]],
            "slice_seconds": row[fixed + r :],
        }

    def _stored(self, keys: list[list[StageKey]]) -> torch.Tensor:
        """``[S, R]``: which slice artifacts the store holds, as rank 0 sees it."""
        flags = torch.zeros(len(keys), len(self.epochs), dtype=torch.uint8)
        if self.store is not None and self.rt.is_main:
            for k, chain in enumerate(keys):
                for s, key in enumerate(chain):
                    flags[k, s] = self.store.complete(key)
        return self.rt.broadcast(flags).cpu().bool()

    def _find(self, key: StageKey, in_store: bool) -> dict[str, Any] | None:
        found = self.memory.get(key.name)
        if found is None and in_store and self.store is not None:
            loaded = self.store.load(key, repair=False)  # damaged: retrained and rewritten
            found = None if loaded is None else loaded[1]
        return found

    def _constituent(
        self, part: Partition, k: int, keys: list[StageKey], stored: torch.Tensor
    ) -> tuple[FeatureClassifier, dict[str, Any], dict[str, float]]:
        """Constituent ``k`` from its deepest reusable slice on: model, final outcome, record."""
        start, outcome = 0, None
        for s in reversed(range(len(keys))):
            outcome = self._find(keys[s], bool(stored[s]))
            if outcome is not None:
                start = s + 1
                break
        torch.manual_seed(derive_seed(self.cfg.seed, "sisa-init", k))
        model = self.new_model()
        history: list[dict[str, Any]] = []
        if outcome is not None:
            model.load_state_dict(outcome["state"])
            history = list(outcome["history"])
        steps, seconds = 0, 0.0
        for s in range(start, len(keys)):
            seen = part.seen(k, s)
            record = self._train_slice(model, k, s, seen)
            steps, seconds = steps + record["steps"], seconds + record["seconds"]
            history.append(record)
            outcome = {
                "state": {n: t.detach().cpu().clone() for n, t in model.state_dict().items()},
                "seen": seen,
                "history": list(history),
            }
            self.memory[keys[s].name] = outcome
            if self.store is not None:
                self.store.save(keys[s], outcome)
        assert outcome is not None
        record = {
            "shard": k,
            "start": start,
            "steps": steps,
            "seconds": seconds,
            "size": len(outcome["seen"]),
        }
        return model, outcome, record

    def _train_slice(
        self, model: FeatureClassifier, k: int, s: int, seen: torch.Tensor
    ) -> dict[str, Any]:
        epochs = self.epochs[s]
        # One test evaluation per slice (its last epoch): the constituent's accuracy as it grows.
        recipe = replace(self.cfg.victim, epochs=epochs, eval_every=epochs, average_last=1)
        data = LabelledData(
            self.images[seen.to(self.images.device)],
            self.labels[seen.to(self.labels.device)],
            self.test_images,
            self.test_labels,
            self.num_classes,
        )
        run = TrainingRun(
            self.rt.solo(),
            seed=derive_seed(self.cfg.seed, "sisa-data", k, s),
            progress=self.progress,
            name=f"{self.name} shard {k} slice {s}",
            placement=self.placement,
        )
        result = train_classifier(model, data, recipe, self.cfg.dataset.augment, run)
        return {
            "slice": s,
            "epochs": epochs,
            "size": len(seen),
            "steps": result.steps_per_epoch * epochs,
            "seconds": result.seconds,
            "test_accuracy": result.test.accuracy,
        }

    @torch.no_grad()
    def _posteriors(self, model: FeatureClassifier, queries: torch.Tensor) -> torch.Tensor:
        model.eval()
        out = []
        for start in range(0, len(queries), EVAL_BATCH):
            x = queries[start : start + EVAL_BATCH].to(self.rt.device).float().div_(255)
            with self.rt.autocast():
                logits, _ = model(x)
            out.append(torch.softmax(logits.double(), dim=1))
        if not out:
            return torch.zeros(0, self.num_classes, dtype=torch.float64, device=self.rt.device)
        return torch.cat(out)
