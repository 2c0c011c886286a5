"""Which shadow models each membership target is compared with, and their scores.

The helpers of :mod:`ue_sweep.evals.membership.evaluation` around the shadow models of
:mod:`ue_sweep.evals.membership.shadows`: a target's set of shadows (trained like it where its
training can be repeated), the check that a shadow job's models are stored, a shadow job itself,
and every set's scores on the query sets its targets are attacked with.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import torch

from ue_sweep.errors import UserError
from ue_sweep.evals.membership import shadows as shadow_models
from ue_sweep.evals.membership.config import MembershipConfig
from ue_sweep.evals.membership.published import Published
from ue_sweep.evals.membership.queries import CLEAN, QuerySet
from ue_sweep.evals.membership.scores import View
from ue_sweep.store.artifacts import StageKey

if TYPE_CHECKING:
    from ue_sweep.evals.context import EvalContext, TrainedVictim


def shadow_scores_by_query(
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


def shadow_set(
    cfg: MembershipConfig,
    plan: shadow_models.ShadowPlan,
    published: Published | None,
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


def require_shadows(ctx: EvalContext, plan: shadow_models.ShadowPlan) -> None:
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


def run_shadow(
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


def target_shadows(
    ctx: EvalContext,
    cfg: MembershipConfig,
    plan: shadow_models.ShadowPlan | None,
    published: Published | None,
    victims: Sequence[TrainedVictim],
    conditions: dict[str, str | None],
    queries: dict[str, QuerySet],
    views: Sequence[View],
) -> tuple[dict[str, shadow_models.ShadowSet], dict[str, dict[str, torch.Tensor]], list[Any]]:
    """Each target's set of shadows (by label), each set's ``[2m, S, V]`` scores (by tag, then
    query set) and the clean set's shadow records; trains missing shadows when ``in_process``,
    else refuses before any scoring when one is not stored."""
    sets = (
        {v.label: shadow_set(cfg, plan, published, v, conditions[v.label]) for v in victims}
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
        for tag, set_ in by_tag.items():
            if absent := shadow_models.missing(ctx, plan, set_):
                raise UserError(
                    f"membership: shadows {absent} of set {tag or 'clean'} are not in the "
                    "artifact store; the attack job trains them with "
                    "evals.membership.in_process=true"
                )
    shadow: dict[str, dict[str, torch.Tensor]] = {}
    shadow_records: list[dict[str, Any]] = []
    for tag, set_ in by_tag.items():
        asked = [queries[q] for q in sorted(wanted[tag])]
        shadow[tag], records = shadow_scores_by_query(ctx, cfg, plan, asked, views, set_)  # type: ignore[arg-type]
        if not tag:
            shadow_records = records
    return sets, shadow, shadow_records
