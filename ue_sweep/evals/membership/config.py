"""``evals.membership``: the attacks, query sets and shadow models of membership inference."""

from __future__ import annotations

from dataclasses import dataclass

from ue_sweep.config import setting

ATTACKS = ("loss", "max_posterior", "lira_online", "lira_offline")


QUERIES = ("clean", "published")


ROLES = ("attack", "shadow")


@dataclass
class MembershipConfig:
    # Share of each class of the training split reserved as non-members before any stage runs
    # (no victim, surrogate or generator sees them); the job takes the largest any evaluation asks.
    holdout_fraction: float = setting(0.25, gt=0.0, le=0.9)
    # Victims to attack: labels or shell patterns (`none-*`) of the victims earlier evaluations
    # trained; empty: all of them (alone: a clean and a protected victim of its own).
    victims: list[str] = setting([])  # noqa: RUF009 (a factory)
    # `clean`: the members' clean originals vs clean hold-out images; `published`: members as the
    # victim saw them vs hold-out images with the noise of their nearest cluster.
    query: list[str] = setting(list(QUERIES), one_of=QUERIES)  # noqa: RUF009 (a factory)
    attacks: list[str] = setting(list(ATTACKS), one_of=ATTACKS)  # noqa: RUF009 (a factory)
    # LiRA's shadow models (even: each example is IN for exactly half); 0: no LiRA.
    shadows: int = setting(4, ge=0)
    # One Gaussian width for every example (the paper's choice for few shadows), else each
    # example's own from its shadows (needs shadows >= 4).
    fixed_variance: bool = True
    # Query views for LiRA: identity, mirror (if the augmentation flips), shifts by the crop
    # padding.
    augmentations: int = setting(4, ge=1, le=18)
    # `shadow`: train only shadow `shadow_index` and store its scores (one job of a sweep).
    role: str = setting("attack", one_of=ROLES)
    shadow_index: int = setting(0, ge=0)
    # The attack job trains the shadows no shadow job left in the store; false: refuses to.
    in_process: bool = True
    # Shadows trained like each target (its data condition and recipe; LiRA's assumption), each
    # set shared through the store; false: the clean shadows for every target (then a noisy or
    # defended target's LiRA numbers are recorded as a lower bound). Shadow jobs (`role=shadow`)
    # train the clean set; the attack job trains the other sets it needs.
    shadow_match: bool = True


def holdout(cfg: MembershipConfig) -> float:
    return cfg.holdout_fraction
