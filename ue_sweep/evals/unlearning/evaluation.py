"""SISA training and machine unlearning: after a request, is a forgotten image like a new one?

``evals=[unlearning]`` trains a SISA ensemble (Bourtoule et al., IEEE S&P 2021; ``ue_sweep/sisa``)
on the clean and on the UC-protected training set, records its clean-test accuracy under both
aggregations, serves the unlearning requests (seeded random training points, or a file of
indices), retrains the affected constituents from the first slice that held a removed point, and
records the accuracy again, what the retraining cost against retraining every constituent from
scratch on the remaining data, and membership attacks (``ue_sweep/membership``: loss and
true-class posterior) on the removed points against an equal-sized seeded sample of hold-out
images that no model of the job saw, before and after unlearning.

Attacks query the clean images for both conditions (what a data owner holds; the hold-out has
no protected version), scored two ways: by the ensemble's mean posterior (the deployed model),
and by the constituent of the removed point's shard (the one that trained on it), each
hold-out image paired with a removed point and scored by that point's constituent.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch

from ue_sweep.config import RootConfig
from ue_sweep.data.splits import ImageSplits
from ue_sweep.errors import ConfigError
from ue_sweep.evals.context import EvalContext
from ue_sweep.evals.membership.metrics import attack_metrics
from ue_sweep.evals.membership.scores import SCORES
from ue_sweep.evals.unlearning.aggregate import accuracy, majority_vote, mean_posterior
from ue_sweep.evals.unlearning.config import CONDITIONS, DEFAULT_REQUESTS, UnlearningConfig
from ue_sweep.evals.unlearning.ensemble import Fit, SisaTrainer
from ue_sweep.evals.unlearning.monolithic import monolithic_attacks
from ue_sweep.evals.unlearning.partition import (
    Partition,
    draw_requests,
    full_retrain_steps,
    partition,
    read_request_file,
    single_request_ratio,
    slice_epochs,
    steps_per_epoch,
)
from ue_sweep.runtime.seeding import generator

ATTACKS = ("loss", "true_class_posterior")


def epoch_budget(cfg: UnlearningConfig, root: RootConfig) -> int:
    """A constituent's epochs: ``epochs``, else the victim's, at least one per slice (so that
    the smoke preset's 1-epoch victims run with the default 3 slices)."""
    if cfg.epochs is not None:
        return cfg.epochs
    return max(root.victim.epochs, (cfg.slices + 2) // 2)


def check(key: str, cfg: UnlearningConfig, root: RootConfig) -> None:
    """Before any compute: every slice gets an epoch, the request file is well formed."""
    if not cfg.conditions:
        raise ConfigError(f"{key}.conditions", [], "at least one of: " + ", ".join(CONDITIONS))
    budget = epoch_budget(cfg, root)
    if 2 * budget < cfg.slices + 1:  # 2e/(R+1) >= 1: else some slice trains no epoch at all
        raise ConfigError(
            f"{key}.epochs",
            budget,
            f"at least {(cfg.slices + 2) // 2} epochs for {cfg.slices} slices (each slice "
            "trains 2e/(slices+1) of them, at least one; null: victim.epochs, or that minimum)",
        )
    if cfg.request_file is not None:
        if cfg.requests != DEFAULT_REQUESTS:
            raise ConfigError(
                f"{key}.requests",
                cfg.requests,
                f"unset with {key}.request_file (the file's indices are the requests)",
            )
        read_request_file(f"{key}.request_file", cfg.request_file)


def removed_points(key: str, cfg: UnlearningConfig, n: int, seed: int) -> torch.Tensor:
    """The sorted training indices to forget: the file's, or ``requests`` seeded draws."""
    if cfg.request_file is not None:
        return read_request_file(f"{key}.request_file", cfg.request_file)
    return draw_requests(n, cfg.requests, seed)


def check_data(key: str, cfg: UnlearningConfig, root: RootConfig, data: ImageSplits) -> None:
    """Before any stage: the requests, shards and slices fit the training pool and hold-out."""
    n = len(data.train_images)
    if cfg.shards * cfg.slices > n:
        raise ConfigError(
            f"{key}.shards",
            cfg.shards,
            f"shards x slices ({cfg.shards} x {cfg.slices}) at most the {n} training images",
        )
    if cfg.request_file is None and cfg.requests > n:
        raise ConfigError(f"{key}.requests", cfg.requests, f"at most the {n} training images")
    removed = removed_points(key, cfg, n, root.seed)
    if cfg.request_file is not None and int(removed.max()) >= n:
        outside = [i for i in removed.tolist() if i >= n][:5]
        raise ConfigError(
            f"{key}.request_file",
            cfg.request_file,
            f"indices of the {n} training images, 0..{n - 1} (found {outside})",
        )
    if len(removed) > data.holdout_size:
        raise ConfigError(
            f"{key}.requests",
            len(removed),
            f"at most the {data.holdout_size} hold-out images the attacks compare them with "
            f"(raise {key}.holdout_fraction)",
        )
    left = partition(n, cfg.shards, cfg.slices, root.seed).without(removed)
    empty = [k for k in range(left.shards) if len(left.slices[k][0]) == 0]
    if empty:
        raise ConfigError(
            f"{key}.requests",
            len(removed),
            f"requests that leave a point in the first slice of every shard (they empty shard "
            f"{empty[0]}'s); fewer requests, shards or slices",
        )


def _reference(data: ImageSplits, count: int, seed: int) -> torch.Tensor:
    """A seeded sample of ``count`` hold-out indices: the never-seen side of the attacks."""
    order = torch.randperm(data.holdout_size, generator=generator(seed, "sisa-reference"))
    return order[:count].sort().values


def _log(p: torch.Tensor) -> torch.Tensor:
    """Log-posteriors as logits (softmax(log p) = p) for the membership scores, finite."""
    return p.clamp_min(torch.finfo(p.dtype).tiny).log()


@dataclass(frozen=True)
class Queries:
    """Rows of every fit's posteriors: the test set, then the removed points, then as many
    hold-out images (clean images throughout)."""

    images: torch.Tensor
    test_labels: torch.Tensor
    member_labels: torch.Tensor
    reference_labels: torch.Tensor
    #: each removed point's shard, which also scores its paired hold-out image
    member_shards: torch.Tensor

    def scored(self, fit: Fit) -> dict[str, Any]:
        t, q = len(self.test_labels), len(self.member_labels)
        test, members, refs = fit.posteriors.split([t, q, q], dim=1)
        ensemble = mean_posterior(test).argmax(1)
        out: dict[str, Any] = {
            "accuracy": {
                "mean_posterior": accuracy(ensemble, self.test_labels),
                "majority_vote": accuracy(majority_vote(test), self.test_labels),
                "constituents": [accuracy(p.argmax(1), self.test_labels) for p in test],
            }
        }
        labels = torch.cat([self.member_labels, self.reference_labels]).cpu()
        is_member = torch.arange(2 * q) < q
        rows = torch.arange(q)
        posteriors = {
            "ensemble": mean_posterior(torch.cat([members, refs], dim=1)),
            "shard": torch.cat([members[self.member_shards, rows], refs[self.member_shards, rows]]),
        }
        out["attacks"] = {
            target: {
                attack: attack_metrics(SCORES[attack](_log(p), labels), is_member)
                for attack in ATTACKS
            }
            for target, p in posteriors.items()
        }
        return out


def _cost(
    before: Fit,
    after: Fit,
    first: Sequence[int | None],
    left: Partition,
    epochs: Sequence[int],
    budget: int,
    batch: int,
) -> dict[str, Any]:
    """What serving the requests costs: each affected constituent's slices from its first
    changed one (steps and the seconds recorded when they were trained, in this job or the one
    that stored them), against retraining every constituent from scratch on what remains."""
    full = full_retrain_steps(left, epochs, batch)
    steps, seconds = after.steps_from(first)
    initial_steps, initial_seconds = before.steps_from([0] * before.posteriors.shape[0])
    per_step = initial_seconds / initial_steps
    remaining = sum(len(left.shard(k)) for k in range(left.shards))
    return {
        "unlearning_steps": steps,
        "full_retrain_steps": sum(full),
        "ratio": steps / sum(full),
        "unlearning_seconds": seconds,
        # Estimated, not measured: the full retrain's exact step count at the seconds per step
        # of the initial fit's slices, as recorded when they were trained.
        "full_retrain_seconds_estimated": sum(full) * per_step,
        "seconds_per_step": per_step,
        # One model without SISA, the same epoch budget on all the remaining points.
        "single_model_steps": budget * steps_per_epoch(remaining, batch),
        "retrained_from": list(first),
        "expected_single_request_ratio": single_request_ratio(left, epochs, batch),
        # What this job trained to serve them (0 when a job with the same requests did).
        "trained_steps": int(after.total("steps")),
        "trained_wall_seconds": after.wall_seconds,
    }


@dataclass(frozen=True)
class _Requests:
    """The unlearning requests and the partitions they are served on."""

    removed: torch.Tensor
    #: the hold-out images paired with the removed points
    reference: torch.Tensor
    part: Partition
    #: ``part`` without the removed points
    left: Partition
    epochs: list[int]


def _queries(data: ImageSplits, requests: _Requests) -> Queries:
    """Every fit's query rows: the test set, the removed points, their paired hold-out images."""
    removed, reference = requests.removed, requests.reference
    assert data.holdout_images is not None and data.holdout_labels is not None
    on = data.train_images.device
    return Queries(
        images=torch.cat(
            [
                data.test_images,
                data.train_images[removed.to(on)],
                data.holdout_images[reference.to(data.holdout_images.device)],
            ]
        ),
        test_labels=data.test_labels.cpu(),
        member_labels=data.train_labels[removed.to(data.train_labels.device)].cpu(),
        reference_labels=data.holdout_labels[reference.to(data.holdout_labels.device)].cpu(),
        member_shards=torch.tensor([k for k, _ in requests.part.locate(removed)]),
    )


def _sisa_trainer(
    ctx: EvalContext, condition: str, images: torch.Tensor, epochs: list[int]
) -> SisaTrainer:
    data = ctx.data
    return SisaTrainer(
        cfg=ctx.cfg,
        rt=ctx.rt,
        images=images,
        labels=data.train_labels,
        images_digest=ctx.images_digest(images),
        data_identity=ctx.data_identity,
        test_images=data.test_images,
        test_labels=data.test_labels,
        num_classes=data.num_classes,
        new_model=ctx.new_victim_model,
        epochs=epochs,
        progress=ctx.progress,
        store=ctx.stages.store,
        placement=ctx.placement,
        name=f"sisa ({condition})",
    )


def _condition(
    ctx: EvalContext,
    cfg: UnlearningConfig,
    condition: str,
    requests: _Requests,
    queries: Queries,
) -> dict[str, Any]:
    """One training pool's SISA fits before and after the requests, what they cost, and the
    single model they are read against."""
    root, removed, epochs = ctx.cfg, requests.removed, requests.epochs
    images = {"clean": ctx.data.train_images, "protected": ctx.protection.images}[condition]
    sisa = _sisa_trainer(ctx, condition, images, epochs)
    before = sisa.fit(requests.part, queries.images, removed)
    after = sisa.fit(requests.left, queries.images, removed)
    scored = {"before": queries.scored(before), "after": queries.scored(after)}
    return {
        "accuracy": {when: s["accuracy"] for when, s in scored.items()},
        "attacks": {when: s["attacks"] for when, s in scored.items()},
        "cost": _cost(
            before,
            after,
            requests.part.first_changed(removed),
            requests.left,
            epochs,
            epoch_budget(cfg, root),
            root.victim.batch_size,
        ),
        "initial": {
            "computed_slices": int(sum(cfg.slices - r["start"] for r in before.shards)),
            "steps": int(before.total("steps")),
            "seconds": before.total("seconds"),
        },
        # Removed points among each constituent's training indices, read from the
        # checkpoints it was rebuilt from: all of them before, none after.
        "removed_in_training": {
            "before": int(before.total("removed_seen")),
            "after": int(after.total("removed_seen")),
        },
        # One model on the whole pool, before and after its full retrain without the
        # requests, attacked on the same points (the baseline SISA is read against)
        "single_model": monolithic_attacks(
            ctx, condition, images, removed, queries, {a: SCORES[a] for a in ATTACKS}
        ),
    }


def run(ctx: EvalContext, cfg: UnlearningConfig) -> dict[str, Any]:
    root, data = ctx.cfg, ctx.data
    n = len(data.train_images)
    removed = removed_points("evals.unlearning", cfg, n, root.seed)
    part = partition(n, cfg.shards, cfg.slices, root.seed)
    left = part.without(removed)
    epochs = slice_epochs(epoch_budget(cfg, root), cfg.slices)
    reference = _reference(data, len(removed), root.seed)
    requests = _Requests(removed, reference, part, left, epochs)
    queries = _queries(data, requests)
    ctx.progress.info(
        "unlearning: %d shards x %d slices (%s epochs per slice), %d requests from %s",
        cfg.shards,
        cfg.slices,
        epochs,
        len(removed),
        "random points" if cfg.request_file is None else cfg.request_file,
    )
    outcome: dict[str, Any] = {
        "shards": cfg.shards,
        "slices": cfg.slices,
        "epochs": epoch_budget(cfg, root),
        "epochs_per_slice": epochs,
        "requests": len(removed),
        "request_source": "random" if cfg.request_file is None else cfg.request_file,
        "removed": removed.tolist(),
        "reference": reference.tolist(),
        "shard_sizes": [len(part.shard(k)) for k in range(part.shards)],
        "conditions": {},
    }
    for condition in cfg.conditions:
        outcome["conditions"][condition] = _condition(ctx, cfg, condition, requests, queries)
    return outcome
