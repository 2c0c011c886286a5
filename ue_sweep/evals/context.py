"""What an evaluation gets from the job: the data, the protection, and a way to train victims."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from ue_sweep.artifacts import StageKey, Stages
from ue_sweep.checkpoint import JobCheckpoints
from ue_sweep.config import RootConfig
from ue_sweep.data.placement import Placement
from ue_sweep.data.splits import ImageSplits
from ue_sweep.distributed import Runtime
from ue_sweep.keys import content_digest, victim_key
from ue_sweep.models.classifiers import FeatureClassifier, build_classifier
from ue_sweep.progress import Progress
from ue_sweep.seeding import derive_seed
from ue_sweep.train.classifier import train_classifier
from ue_sweep.train.recipes import VictimRecipe
from ue_sweep.uc.protection import Protection


@dataclass(frozen=True)
class TrainedVictim:
    """A victim this job trained or reused: what it trained on, how, and what it scored.

    Later evaluations (membership inference, learnability) attack or probe the victims the
    earlier ones trained; they find them in :attr:`EvalContext.victims`.
    """

    label: str
    #: the uint8 training images, before the recipe's ``prepare`` (labels: the dataset's)
    images: torch.Tensor
    key: StageKey
    #: ``TrainResult.as_dict()``
    result: dict[str, Any]
    #: the trained model's ``state_dict``
    state: dict[str, torch.Tensor]
    #: what the recipe depends on (a defense's settings), None for plain training
    recipe_key: dict[str, Any] | None = None
    #: the DP-SGD architecture (GroupNorm, no in-place ops: models/dp_safe.py)
    dp_safe: bool = False


@dataclass
class EvalContext:
    cfg: RootConfig
    rt: Runtime
    data: ImageSplits
    placement: Placement
    progress: Progress
    stages: Stages
    checkpoints: JobCheckpoints
    job_dir: Path
    data_identity: dict[str, Any]
    protection: Protection
    #: SHA-256 of each training set a victim was asked for, by tensor (kept alive here): the
    #: clean and protected sets serve several victims and are hashed once
    _digests: dict[int, tuple[torch.Tensor, str]] = field(default_factory=dict, repr=False)
    #: every victim trained or reused so far in this job, by label, in order
    victims: dict[str, TrainedVictim] = field(default_factory=dict)

    def _digest(self, images: torch.Tensor) -> str:
        if id(images) not in self._digests:
            self._digests[id(images)] = images, content_digest(self.rt, images)
        return self._digests[id(images)][1]

    def new_victim_model(self, dp_safe: bool = False) -> FeatureClassifier:
        """A freshly initialised ``cfg.victim`` model for this dataset, on the device (the
        caller seeds the initialisation); ``dp_safe``: its DP-SGD architecture."""
        data = self.data
        return build_classifier(
            self.cfg.victim,
            in_channels=data.channels,
            num_classes=data.num_classes,
            image_size=data.image_size,
            dp_safe=dp_safe,
        ).to(self.rt.device)

    def victim_model(self, label: str) -> FeatureClassifier:
        """Victim ``label``'s trained model, in eval mode on the device (a new copy each call)."""
        victim = self.victims[label]
        model = self.new_victim_model(dp_safe=victim.dp_safe)
        model.load_state_dict(victim.state)
        return model.eval()

    def victim_key(
        self, images: torch.Tensor, recipe_key: dict[str, Any] | None = None
    ) -> StageKey:
        """The artifact key of a victim of ``cfg.victim`` on ``images`` trained by the recipe
        that ``recipe_key`` names (None: plain training)."""
        cfg, rt = self.cfg, self.rt
        return victim_key(
            cfg, self.data_identity, self._digest(images), rt.world_size, recipe=recipe_key
        )

    def train_victim(
        self,
        label: str,
        images: torch.Tensor,
        recipe: VictimRecipe | None = None,
        recipe_key: dict[str, Any] | None = None,
    ) -> dict[str, Any]:
        """A victim trained from scratch on ``images`` (uint8, the dataset's labels), evaluated
        on the clean test set: ``TrainResult.as_dict()``. Reused from the artifact store when a
        victim with the same images, model and recipe was trained before.

        ``label`` names the stage in this job (``victim-<label>``); ``recipe_key`` is what the
        ``recipe`` depends on (None for plain training).
        """
        cfg, rt, data = self.cfg, self.rt, self.data
        key = self.victim_key(images, recipe_key)
        stage = f"victim-{label}"

        def train() -> dict[str, Any]:
            # Same initial weights and data order for every victim: only the images differ.
            torch.manual_seed(derive_seed(cfg.seed, "victim-init"))
            model = self.new_victim_model()
            result = train_classifier(
                model,
                images,
                data.train_labels,
                data.test_images,
                data.test_labels,
                data.num_classes,
                cfg.victim,
                cfg.dataset.augment,
                rt,
                seed=derive_seed(cfg.seed, "victim-data"),
                progress=self.progress,
                name=f"victim ({label})",
                placement=self.placement,
                checkpoint=self.checkpoints.stage(stage),
                recipe=recipe,
            )
            return {"result": result.as_dict(), "state": model.state_dict()}

        outcome = self.stages.run(stage, key, train)
        self.victims[label] = TrainedVictim(
            label, images, key, outcome["result"], outcome["state"], recipe_key
        )
        return outcome["result"]
