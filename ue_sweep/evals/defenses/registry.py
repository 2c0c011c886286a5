"""Defenses against unlearnable data: victim recipes (:class:`~ue_sweep.train.recipes.VictimRecipe`)
that train from scratch on a protected set, each with its structured config.

``DEFENSES`` maps a name to its config dataclass and recipe factory; :func:`build_defense` makes
the recipe for one victim.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from ue_sweep.evals.defenses.config import METHODS
from ue_sweep.evals.registry import lazy

if TYPE_CHECKING:
    from ue_sweep.train.recipes import VictimRecipe


@dataclass(frozen=True)
class Defense:
    config: type
    #: ``build(cfg, seed)``: the recipe of one victim; ``seed`` drives its random draws
    build: Callable[[Any, int], VictimRecipe]


DEFENSES: dict[str, Defense] = {
    name: Defense(config, lazy(builder)) for name, (config, builder) in METHODS.items()
}


def build_defense(name: str, cfg: Any = None, *, seed: int) -> VictimRecipe:
    """The recipe of defense ``name`` with ``cfg`` (its config dataclass, a mapping of its
    fields, or None for the defaults)."""
    if name not in DEFENSES:
        raise KeyError(f"unknown defense {name!r}; known: {', '.join(DEFENSES)}")
    defense = DEFENSES[name]
    if cfg is None:
        cfg = defense.config()
    elif isinstance(cfg, Mapping):
        cfg = defense.config(**cfg)
    elif not isinstance(cfg, defense.config):
        raise TypeError(f"defense {name!r} takes a {defense.config.__name__}, not {type(cfg)}")
    return defense.build(cfg, seed)
