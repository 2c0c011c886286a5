"""Membership inference: how much does each victim of the job give away about its training set?

``evals=[victims,membership]`` attacks every victim the earlier evaluations trained (clean,
protected, controls, defended; ``evals.membership.victims`` picks some), or, alone, trains a
clean and a protected victim itself. Members are a balanced, class-stratified, seeded draw from
the training split; non-members as many hold-out images (``holdout_fraction`` of each class,
reserved before any stage runs, so no stage saw them and every victim has the same ones). The
query sets (``query``: ``clean``, ``published``) are described in ``ue_sweep/membership/queries``.

Attacks: the loss threshold (Yeom et al.), the true-class posterior threshold (ML-Leaks), and
LiRA online / offline (Carlini et al. 2022) from ``shadows`` shadow models on the clean pool
``train ++ holdout`` (``ue_sweep/membership/shadows``). Metrics per victim, query and attack:
ROC AUC, balanced accuracy and advantage at the best threshold, TPR at 0.1% and 1% FPR; the
per-example scores go to ``membership_scores.pt`` and the ROC curves to ``membership_roc.png``.

Shadows are the expensive part: ``role=shadow shadow_index=i`` makes a job that trains only
shadow i and stores its scores, so a sweep spreads them over jobs; the attack job (``role=attack``)
collects them from the artifact store and, with ``in_process=true``, trains the missing ones.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from ue_sweep.config import RootConfig
from ue_sweep.errors import ConfigError
from ue_sweep.evals.context import EvalContext, TrainedVictim
from ue_sweep.evals.membership import shadows as shadow_models
from ue_sweep.evals.membership.attacks import SHADOW_ATTACKS, attack_scores
from ue_sweep.evals.membership.config import ATTACKS, QUERIES, MembershipConfig
from ue_sweep.evals.membership.figures import plot_rocs
from ue_sweep.evals.membership.metrics import attack_metrics
from ue_sweep.evals.membership.pairs import MembershipSplit, balanced_split
from ue_sweep.evals.membership.published import Published
from ue_sweep.evals.membership.queries import CLEAN, QuerySet, clean_queries
from ue_sweep.evals.membership.report import job_panels
from ue_sweep.evals.membership.scores import View, query_views, view_logits
from ue_sweep.evals.membership.shadow_sets import require_shadows, run_shadow, target_shadows
from ue_sweep.evals.registry import evaluations
from ue_sweep.runtime.tracking import atomic_torch_save

SCORES_FILE = "membership_scores.pt"
ROC_PNG = "membership_roc.png"
#: the victims the evaluation trains itself when no earlier evaluation trained any
OWN_VICTIMS = ("clean", "protected")


def _known_labels(job: RootConfig) -> list[str] | None:
    """The labels the evaluations before this one will train, or None when one of them does
    not say (then only the run can tell)."""
    found = evaluations()
    labels: list[str] = []
    for name, entry in job.evals.items():
        if name == "membership":
            break
        if found[name].victim_labels is None:
            return None
        labels += found[name].victim_labels(entry)
    return labels or list(OWN_VICTIMS)


def check(key: str, cfg: MembershipConfig, job: RootConfig) -> None:
    if not cfg.query:
        raise ConfigError(f"{key}.query", cfg.query, "at least one of: " + ", ".join(QUERIES))
    if not cfg.attacks:
        raise ConfigError(f"{key}.attacks", cfg.attacks, "at least one of: " + ", ".join(ATTACKS))
    if cfg.shadows % 2:
        raise ConfigError(
            f"{key}.shadows", cfg.shadows, "an even number (each example IN for half of them)"
        )
    lira = [a for a in cfg.attacks if a in SHADOW_ATTACKS]
    if lira and cfg.shadows < 2:
        raise ConfigError(
            f"{key}.shadows", cfg.shadows, f">= 2 for {', '.join(lira)} (or drop them from attacks)"
        )
    if lira and not cfg.fixed_variance and cfg.shadows < 4:
        raise ConfigError(
            f"{key}.fixed_variance",
            False,
            f"true with {cfg.shadows} shadows (a per-example variance needs >= 2 IN and 2 OUT "
            "shadows: shadows >= 4)",
        )
    if cfg.role == "shadow" and not cfg.shadow_index < cfg.shadows:
        raise ConfigError(
            f"{key}.shadow_index", cfg.shadow_index, f"< evals.membership.shadows={cfg.shadows}"
        )
    if "published" in cfg.query and job.uc.source is not None:
        raise ConfigError(
            f"{key}.query",
            cfg.query,
            "[clean] with uc.source: perturbing hold-out images needs the surrogate that "
            "assigns them to clusters, which a stored protection does not carry",
        )
    known = _known_labels(job)
    for pattern in cfg.victims if known is not None else ():
        if not fnmatch.filter(known, pattern):
            raise ConfigError(
                f"{key}.victims",
                pattern,
                "a label (or pattern) of this job's victims: " + ", ".join(known),
            )


# --------------------------------------------------------------------------------------------
# Run
# --------------------------------------------------------------------------------------------


def _select(ctx: EvalContext, cfg: MembershipConfig) -> tuple[list[TrainedVictim], dict[str, str]]:
    """The victims to attack and why the others of the job are left out."""
    if not ctx.victims:  # alone in the job: a clean and a protected victim of its own
        ctx.train_victim("clean", ctx.data.train_images)
        ctx.train_victim("protected", ctx.protection.images)
    labels = list(ctx.victims)
    for pattern in cfg.victims:
        if not fnmatch.filter(labels, pattern):
            raise ConfigError(
                "evals.membership.victims",
                pattern,
                "a label of this job's victims: " + ", ".join(labels),
            )
    chosen = [
        label
        for label in labels
        if not cfg.victims or any(fnmatch.fnmatch(label, p) for p in cfg.victims)
    ]
    n = len(ctx.data.train_images)
    picked, skipped = [], {}
    for label in chosen:
        victim = ctx.victims[label]
        if victim.labels is not None or len(victim.images) != n:
            skipped[label] = "not trained on the whole training split: its members are unknown here"
        else:
            picked.append(victim)
    return picked, skipped


def _group_accuracy(logits: torch.Tensor, labels: torch.Tensor, is_member: torch.Tensor) -> dict:
    hits = logits[:, 0].argmax(1).cpu() == labels
    return {
        "members": float(hits[is_member].double().mean()),
        "nonmembers": float(hits[~is_member].double().mean()),
    }


@dataclass
class _Attacks:
    """What every target's attacks share: the query sets and views, the shadows, the split."""

    ctx: EvalContext
    cfg: MembershipConfig
    queries: dict[str, QuerySet]
    views: Sequence[View]
    plan: shadow_models.ShadowPlan | None
    sets: dict[str, shadow_models.ShadowSet]
    shadow: dict[str, dict[str, torch.Tensor]]
    split: MembershipSplit
    #: per-example scores by ``victim/query``, for the scores file
    saved: dict[str, Any] = field(default_factory=dict)

    def victim_record(self, victim: TrainedVictim, condition: str | None) -> dict[str, Any]:
        """``victim``'s accuracy and every attack's metrics on each query set."""
        cfg, plan, sets, is_member = self.cfg, self.plan, self.sets, self.split.is_member
        in_mask = plan.keep[self.split.pool_index] if plan else None
        model = self.ctx.victim_model(victim.label)
        record: dict[str, Any] = {
            "condition": condition,
            "test_accuracy": float(victim.result["mean_last"]["accuracy"]),
            "queries": {},
        }
        if victim.label in sets:
            # which shadows LiRA compared this target with ("lower bound" where unmatched)
            record["shadows"] = sets[victim.label].record(plan.count)  # type: ignore[union-attr]
        for query in cfg.query:
            name = CLEAN if query == "clean" else condition
            if name is None:
                record["queries"][query] = {
                    "skipped": "its training images carry no noise of this job (clean, UC, "
                    "a control): the non-members cannot be perturbed alike"
                }
                continue
            q = self.queries[name]
            logits = view_logits(model, q.images, self.views, self.ctx.rt)
            attacks = [a for a in cfg.attacks if plan or a not in SHADOW_ATTACKS]
            own = self.shadow.get(sets[victim.label].tag, {}) if victim.label in sets else {}
            scores = attack_scores(
                logits, q.labels, attacks, own.get(name), in_mask, cfg.fixed_variance
            )
            record["queries"][query] = {
                "query_set": name,
                "accuracy": _group_accuracy(logits, q.labels, is_member),
                "attacks": {a: attack_metrics(s, is_member) for a, s in scores.items()},
            }
            self.saved[f"{victim.label}/{query}"] = {a: s.cpu() for a, s in scores.items()}
        return record


def run(ctx: EvalContext, cfg: MembershipConfig) -> dict[str, Any]:
    data, rt = ctx.data, ctx.rt
    assert data.holdout_images is not None and data.holdout_labels is not None
    split = balanced_split(data.train_labels, data.holdout_labels, ctx.cfg.seed)
    augment = ctx.cfg.dataset.augment
    views = query_views(cfg.augmentations, augment.crop_padding, augment.hflip)
    plan = shadow_models.shadow_plan(data, cfg.shadows, ctx.cfg.seed) if cfg.shadows else None
    published = Published(ctx, split) if "published" in cfg.query else None
    queries = {CLEAN: clean_queries(data, split)}
    if cfg.role == "shadow":
        assert plan is not None
        if published is not None:
            queries |= {name: published.queries(name) for name in published.noises}
        return run_shadow(ctx, cfg, plan, queries, views)

    if plan is not None and not cfg.in_process:
        require_shadows(ctx, plan)
    victims, skipped = _select(ctx, cfg)
    conditions = {v.label: published.condition(v.images) if published else None for v in victims}
    for condition in {c for c in conditions.values() if c and c != CLEAN}:
        queries[condition] = published.queries(condition)  # type: ignore[union-attr]
    ctx.progress.info(
        "membership: %d members vs %d hold-out non-members, %d views; attacking %s",
        split.size,
        split.size,
        len(views),
        ", ".join(v.label for v in victims),
    )
    # Each target's shadows (trained like it where its training can be repeated), and the
    # query sets each set of shadows is scored on.
    sets, shadow, shadow_records = target_shadows(
        ctx, cfg, plan, published, victims, conditions, queries, views
    )
    attacks = _Attacks(ctx, cfg, queries, views, plan, sets, shadow, split)
    outcome_victims = {v.label: attacks.victim_record(v, conditions[v.label]) for v in victims}
    outcome = {
        "role": "attack",
        "members": split.size,
        "nonmembers": split.size,
        "holdout_size": data.holdout_size,
        "train_size": len(data.train_images),
        "views": [v.name for v in views],
        "shadows": cfg.shadows,
        "fixed_variance": cfg.fixed_variance,
        "query": list(cfg.query),
        "shadow_models": shadow_records,
        "victims": outcome_victims,
        "skipped": skipped,
    }
    if rt.is_main:
        _save(ctx, split, attacks.saved, outcome)
    return outcome


def _save(
    ctx: EvalContext, split: MembershipSplit, saved: dict[str, Any], outcome: dict[str, Any]
) -> None:
    """The per-example scores and the ROC curves, next to the job's result."""
    atomic_torch_save(
        ctx.job_dir / SCORES_FILE,
        {
            "members": split.members,
            "nonmembers": split.nonmembers,
            "is_member": split.is_member,
            "scores": saved,
        },
    )
    plot_rocs(job_panels(outcome), ctx.job_dir / ROC_PNG)
