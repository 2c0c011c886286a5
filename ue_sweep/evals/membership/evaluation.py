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
from collections import defaultdict
from collections.abc import Sequence
from typing import Any

import torch

from ue_sweep.config import CONTROLS, RootConfig
from ue_sweep.errors import ConfigError, UserError
from ue_sweep.evals.context import EvalContext, TrainedVictim
from ue_sweep.evals.membership import shadows as shadow_models
from ue_sweep.evals.membership.attacks import SHADOW_ATTACKS, attack_scores
from ue_sweep.evals.membership.config import ATTACKS, QUERIES, MembershipConfig
from ue_sweep.evals.membership.figures import plot_rocs
from ue_sweep.evals.membership.metrics import attack_metrics
from ue_sweep.evals.membership.pairs import MembershipSplit, balanced_split
from ue_sweep.evals.membership.queries import CLEAN, QuerySet, clean_queries, published_queries
from ue_sweep.evals.membership.report import job_panels
from ue_sweep.evals.membership.scores import View, query_views, view_logits
from ue_sweep.evals.registry import evaluations
from ue_sweep.runtime.tracking import atomic_torch_save
from ue_sweep.store.artifacts import StageKey
from ue_sweep.uc.controls import control_noises
from ue_sweep.uc.noise import apply_cluster_noise

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


class _Published:
    """The training split under each noise condition of the job, to tell which one a victim
    trained on and to perturb the non-members alike."""

    def __init__(self, ctx: EvalContext, split: MembershipSplit) -> None:
        p, data = ctx.protection, ctx.data
        self.ctx, self.split = ctx, split
        self.noises = {"protected": p.noise} | control_noises(
            list(CONTROLS), p.noise, p.eps, ctx.cfg.seed, p.untrained
        )
        self._images: dict[str, torch.Tensor] = {"protected": p.images}
        self._holdout_clusters: torch.Tensor | None = None
        self._all_holdout_clusters: torch.Tensor | None = None
        self.clean = data.train_images

    def pool(self, name: str) -> torch.Tensor:
        """The shadows' pool ``train ++ holdout`` under condition ``name``: the published
        training images, the hold-out images with the noise of their nearest cluster."""
        data = self.ctx.data
        assert data.holdout_images is not None
        if name == CLEAN:
            return torch.cat([data.train_images, data.holdout_images.to(data.train_images.device)])
        assert self.ctx.protection.assign is not None, "refused by check() for uc.source"
        if self._all_holdout_clusters is None:
            self._all_holdout_clusters = self.ctx.protection.assign(data.holdout_images)
        held = apply_cluster_noise(
            data.holdout_images, self._all_holdout_clusters, self.noises[name]
        )
        published = self.images(name)
        return torch.cat([published, held.to(published.device)])

    def images(self, name: str) -> torch.Tensor:
        if name not in self._images:
            p = self.ctx.protection
            self._images[name] = apply_cluster_noise(
                self.ctx.data.train_images, p.cluster_ids, self.noises[name]
            )
        return self._images[name]

    def condition(self, images: torch.Tensor) -> str | None:
        """``clean``, ``protected`` or the control whose published set ``images`` are."""
        if images is self.clean or torch.equal(images, self.clean):
            return CLEAN
        for name in self.noises:
            candidate = self.images(name)
            if images is candidate or torch.equal(images, candidate):
                return name
        return None

    def queries(self, name: str) -> QuerySet:
        assert self.ctx.protection.assign is not None, "refused by check() for uc.source"
        if self._holdout_clusters is None:
            held = self.ctx.data.holdout_images
            assert held is not None
            self._holdout_clusters = self.ctx.protection.assign(
                held[self.split.nonmembers.to(held.device)]
            )
        return published_queries(
            name,
            self.images(name),
            self.noises[name],
            self._holdout_clusters,
            self.ctx.data,
            self.split,
        )


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


def _shadow_scores(
    ctx: EvalContext,
    cfg: MembershipConfig,
    plan: shadow_models.ShadowPlan,
    queries: Sequence[QuerySet],
    views: Sequence[View],
    shadow_set: shadow_models.ShadowSet | None = None,
) -> tuple[dict[str, torch.Tensor], list[dict[str, Any]]]:
    """``[2m, S, V]`` shadow scores (of ``shadow_set``) per query set, and each shadow's
    record."""
    per_query: dict[str, list[torch.Tensor]] = defaultdict(list)
    records = []
    for i in range(plan.count):
        scores, info = shadow_models.shadow_scores(ctx, plan, i, queries, views, shadow_set)
        for name, s in scores.items():
            per_query[name].append(s)
        records.append(info)
    return {name: torch.stack(s, 1) for name, s in per_query.items()}, records


def _shadow_set(
    cfg: MembershipConfig,
    plan: shadow_models.ShadowPlan,
    published: _Published | None,
    victim: TrainedVictim,
    condition: str | None,
) -> shadow_models.ShadowSet:
    """The shadows trained like ``victim``: the pool under its data condition, its recipe; or
    the nearest set, marked unmatched (its LiRA numbers are a lower bound), when its training
    cannot be repeated on a shadow's subset."""
    plain = victim.recipe_key is None

    def unmatched(reason: str, tag: str = "") -> shadow_models.ShadowSet:
        base = plan.clean_set()
        pool = base.pool_images if not tag else published.pool(tag)  # type: ignore[union-attr]
        return shadow_models.ShadowSet(tag, pool, matched=False, reason=reason)

    if condition is None:
        return unmatched("its training images carry no noise of this job: shadows on clean data")
    if not cfg.shadow_match:
        if condition == CLEAN and plain:
            return plan.clean_set()
        return unmatched("evals.membership.shadow_match=false: shadows on clean data")
    near = "" if condition == CLEAN else condition
    if victim.dp_safe:
        return unmatched(
            "a DP-SGD victim: shadows are trained without DP-SGD on the same data condition", near
        )
    if condition != CLEAN and published is None:
        return unmatched("no published query set: shadows on clean data")
    if plain:
        if condition == CLEAN:
            return plan.clean_set()
        return shadow_models.ShadowSet(condition, published.pool(condition))  # type: ignore[union-attr]
    digest = StageKey("shadow-recipe", victim.recipe_key).digest[:8]
    pool = plan.pool_images if condition == CLEAN else published.pool(condition)  # type: ignore[union-attr]
    return shadow_models.ShadowSet(f"{condition}-{digest}", pool, victim.recipe, victim.recipe_key)


def _require_shadows(ctx: EvalContext, plan: shadow_models.ShadowPlan) -> None:
    """``in_process=false``: every shadow model must be in the store before anything trains."""
    absent = shadow_models.missing(ctx, plan)
    if absent:
        store = ctx.stages.store
        raise UserError(
            f"membership: shadow models {absent} of {plan.count} are not in the artifact store "
            f"{store.root if store else '(none)'}; run the shadow jobs first "
            "(evals.membership.role=shadow evals.membership.shadow_index="
            f"{','.join(map(str, absent))}, same paths.artifact_dir), or set "
            "evals.membership.in_process=true"
        )


def _run_shadow(
    ctx: EvalContext,
    cfg: MembershipConfig,
    plan: shadow_models.ShadowPlan,
    queries: dict[str, QuerySet],
    views: Sequence[View],
) -> dict[str, Any]:
    """One shadow job: train shadow ``shadow_index`` and store its scores on every query set
    the attack may ask for (clean, and published under UC's noise and each control)."""
    _, info = shadow_models.shadow_scores(
        ctx, plan, cfg.shadow_index, list(queries.values()), views
    )
    return {
        "role": "shadow",
        "shadow_index": cfg.shadow_index,
        "shadows": cfg.shadows,
        "shadow": info,
        "queries": list(queries),
    }


def run(ctx: EvalContext, cfg: MembershipConfig) -> dict[str, Any]:
    data, rt = ctx.data, ctx.rt
    assert data.holdout_images is not None and data.holdout_labels is not None
    split = balanced_split(data.train_labels, data.holdout_labels, ctx.cfg.seed)
    augment = ctx.cfg.dataset.augment
    views = query_views(cfg.augmentations, augment.crop_padding, augment.hflip)
    plan = shadow_models.shadow_plan(data, cfg.shadows, ctx.cfg.seed) if cfg.shadows else None
    published = _Published(ctx, split) if "published" in cfg.query else None
    queries = {CLEAN: clean_queries(data, split)}
    if cfg.role == "shadow":
        assert plan is not None
        if published is not None:
            queries |= {name: published.queries(name) for name in published.noises}
        return _run_shadow(ctx, cfg, plan, queries, views)

    if plan is not None and not cfg.in_process:
        _require_shadows(ctx, plan)
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
    sets = (
        {v.label: _shadow_set(cfg, plan, published, v, conditions[v.label]) for v in victims}
        if plan
        else {}
    )
    wanted: dict[str, set[str]] = defaultdict(set)
    for v in victims:
        if v.label in sets:
            names = {CLEAN} if "clean" in cfg.query else set()
            if "published" in cfg.query and conditions[v.label]:
                names.add(conditions[v.label])  # type: ignore[arg-type]
            wanted[sets[v.label].tag] |= names
    by_tag = {s.tag: s for s in sets.values()}
    if plan is not None and not cfg.in_process:
        for tag, shadow_set in by_tag.items():
            if absent := shadow_models.missing(ctx, plan, shadow_set):
                raise UserError(
                    f"membership: shadows {absent} of set {tag or 'clean'} are not in the "
                    "artifact store; the attack job trains them with "
                    "evals.membership.in_process=true"
                )
    shadow: dict[str, dict[str, torch.Tensor]] = {}
    shadow_records: list[dict[str, Any]] = []
    for tag, shadow_set in by_tag.items():
        asked = [queries[q] for q in sorted(wanted[tag])]
        shadow[tag], records = _shadow_scores(ctx, cfg, plan, asked, views, shadow_set)  # type: ignore[arg-type]
        if not tag:
            shadow_records = records
    in_mask = plan.keep[split.pool_index] if plan else None
    is_member = split.is_member
    outcome_victims: dict[str, Any] = {}
    saved: dict[str, Any] = {}
    for victim in victims:
        model = ctx.victim_model(victim.label)
        record: dict[str, Any] = {
            "condition": conditions[victim.label],
            "test_accuracy": float(victim.result["mean_last"]["accuracy"]),
            "queries": {},
        }
        if victim.label in sets:
            # which shadows LiRA compared this target with ("lower bound" where unmatched)
            record["shadows"] = sets[victim.label].record(plan.count)  # type: ignore[union-attr]
        for query in cfg.query:
            name = CLEAN if query == "clean" else conditions[victim.label]
            if name is None:
                record["queries"][query] = {
                    "skipped": "its training images carry no noise of this job (clean, UC, "
                    "a control): the non-members cannot be perturbed alike"
                }
                continue
            q = queries[name]
            logits = view_logits(model, q.images, views, rt)
            attacks = [a for a in cfg.attacks if plan or a not in SHADOW_ATTACKS]
            own = shadow.get(sets[victim.label].tag, {}) if victim.label in sets else {}
            scores = attack_scores(
                logits, q.labels, attacks, own.get(name), in_mask, cfg.fixed_variance
            )
            record["queries"][query] = {
                "query_set": name,
                "accuracy": _group_accuracy(logits, q.labels, is_member),
                "attacks": {a: attack_metrics(s, is_member) for a, s in scores.items()},
            }
            saved[f"{victim.label}/{query}"] = {a: s.cpu() for a, s in scores.items()}
        outcome_victims[victim.label] = record
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
        atomic_torch_save(
            ctx.job_dir / SCORES_FILE,
            {
                "members": split.members,
                "nonmembers": split.nonmembers,
                "is_member": is_member,
                "scores": saved,
            },
        )
        plot_rocs(job_panels(outcome), ctx.job_dir / ROC_PNG)
    return outcome
