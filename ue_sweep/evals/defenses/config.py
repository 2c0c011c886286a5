"""The structured configs of the defenses, and which module builds each one's recipe.

Free of torch: the command line types ``evals.defenses.<method>.<key>=...`` from these alone.
Adding a defense: its config here and one line in :data:`METHODS`, its recipe in a module of
this package.
"""

from __future__ import annotations

from dataclasses import dataclass, field, make_dataclass

from ue_sweep.config import setting

# The undefended victims' name in the defense table.
NONE = "none"


@dataclass
class EpicConfig:
    # Medoids per selection as a fraction of the points still training (split by class size).
    subset_fraction: float = setting(0.2, gt=0.0, lt=1.0)
    # First epoch that starts with a selection, and epochs between selections.
    start_epoch: int = setting(2, ge=0)
    interval: int = setting(2, ge=1)
    # Points of clusters with at most this many points are dropped, never to return.
    cluster_threshold: int = setting(1, ge=0)
    # `kept`: every point never dropped, weight 1 (EPIC's code); `medoids`: the medoids only,
    # each weighted by its cluster's size.
    train_on: str = setting("kept", one_of=("kept", "medoids"))


@dataclass
class JpegConfig:
    # libjpeg quality factor (1-100) of the compression round trip.
    quality: int = setting(10, ge=1, le=100)


@dataclass
class GrayscaleConfig:
    """Grayscale has no settings: ITU-R 601 luma, replicated to every channel."""


@dataclass
class PosterizeConfig:
    # Most significant bits kept of each 8-bit channel value.
    bits: int = setting(2, ge=1, le=8)


@dataclass
class AdversarialConfig:
    # L-inf radius, ascent steps and step size, in [0, 1] pixel units.
    eps: float = setting(8 / 255, gt=0.0, le=1.0)
    steps: int = setting(10, ge=1)
    step_size: float = setting(2 / 255, gt=0.0, le=1.0)
    # Start from a uniform point of the eps-ball (Madry et al.) instead of the image itself.
    random_start: bool = True


@dataclass
class UEraserConfig:
    # Augmented views per sample; the loss is the largest of their losses.
    draws: int = setting(5, ge=1)
    # Epochs (from the first) that take the max over `draws`; later ones train on one view.
    # null: every epoch.
    adversarial_epochs: int | None = setting(None, ge=0)


#: name -> (its structured config, "module:function" that builds one victim's recipe)
METHODS: dict[str, tuple[type, str]] = {
    "epic": (EpicConfig, "ue_sweep.evals.defenses.epic:build_epic"),
    "jpeg": (JpegConfig, "ue_sweep.evals.defenses.iss:build_jpeg"),
    "grayscale": (GrayscaleConfig, "ue_sweep.evals.defenses.iss:build_grayscale"),
    "posterize": (PosterizeConfig, "ue_sweep.evals.defenses.iss:build_posterize"),
    "adversarial": (AdversarialConfig, "ue_sweep.evals.defenses.adversarial:build_adversarial"),
    "ueraser": (UEraserConfig, "ue_sweep.evals.defenses.ueraser:build_ueraser"),
}

#: ``evals.defenses``: which methods run, and one structured config per method
#: (``evals.defenses.epic.subset_fraction=0.3``), so a new defense needs no edit here.
DefensesConfig = make_dataclass(
    "DefensesConfig",
    [
        ("methods", list[str], setting(list(METHODS), one_of=tuple(METHODS))),
        # Also train each defense on clean data: what the defense costs a data user.
        ("on_clean", bool, field(default=True)),
        *((name, config, field(default_factory=config)) for name, (config, _) in METHODS.items()),
    ],
)


def victim_labels(cfg: DefensesConfig) -> list[str]:
    """The labels of the victims the evaluation trains (``EvalContext.victims``)."""
    conditions = ["protected", "clean"] if cfg.on_clean else ["protected"]
    return [f"{NONE}-protected", f"{NONE}-clean"] + [
        f"{method}-{c}" for method in cfg.methods for c in conditions
    ]
