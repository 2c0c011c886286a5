"""What an evaluation gets from the job: the data, the protection, and a way to train victims."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from ue_sweep.config import RootConfig
from ue_sweep.data.placement import Placement
from ue_sweep.data.splits import ImageSplits
from ue_sweep.evals.registry import evaluations
from ue_sweep.models.classifiers import FeatureClassifier, build_classifier
from ue_sweep.runtime.distributed import Runtime
from ue_sweep.runtime.progress import Progress
from ue_sweep.runtime.seeding import derive_seed
from ue_sweep.store.artifacts import StageKey, Stages
from ue_sweep.store.checkpoint import JobCheckpoints
from ue_sweep.store.keys import content_digest, snapshots_key, victim_key
from ue_sweep.train.classifier import train_classifier
from ue_sweep.train.recipes import VictimRecipe
from ue_sweep.train.run import LabelledData, TrainingRun
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
    #: the images' labels when they are not the training split's (a subset), else None
    labels: torch.Tensor | None = None
    #: the recipe it trained with (its ``prepare`` made the images it saw), None for plain
    recipe: VictimRecipe | None = None
    #: CPU ``state_dict`` after each epoch the job's evaluations asked for, by epoch (0-based)
    snapshots: dict[int, dict[str, torch.Tensor]] = field(default_factory=dict)
    #: where the snapshots come from: ``training`` (the run that made this victim, now or in
    #: the job that stored it) or ``retrained`` (the stored victim had none: trained again)
    snapshot_source: str | None = None
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

    def images_digest(self, images: torch.Tensor) -> str:
        """SHA-256 of a training set (uint8 images), hashed once per job: what names the stages
        trained on it."""
        return self._digest(images)

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
        self,
        images: torch.Tensor,
        recipe_key: dict[str, Any] | None = None,
        labels: torch.Tensor | None = None,
        variant: str | None = None,
    ) -> StageKey:
        """The artifact key of the victim :meth:`train_victim` trains on these arguments (to
        ask the store whether it exists, e.g. a shadow model another job trained)."""
        return victim_key(
            self.cfg,
            self.data_identity,
            self._digest(images),
            self.rt.world_size,
            recipe=recipe_key,
            train_labels=None if labels is None else self._digest(labels),
            variant=variant,
        )

    def snapshot_epochs(self) -> tuple[int, ...]:
        """Epochs (0-based) whose weights the job's evaluations need from every victim."""
        wanted: set[int] = set()
        for name, eval_cfg in self.cfg.evals.items():
            if (epochs := evaluations()[name].snapshots) is not None:
                wanted.update(epochs(self.cfg, eval_cfg))
        return tuple(sorted(wanted))

    def train_victim(
        self,
        label: str,
        images: torch.Tensor,
        recipe: VictimRecipe | None = None,
        recipe_key: dict[str, Any] | None = None,
        labels: torch.Tensor | None = None,
        variant: str | None = None,
    ) -> dict[str, Any]:
        """A victim trained from scratch on ``images`` (uint8, the dataset's labels), evaluated
        on the clean test set: ``TrainResult.as_dict()``. Reused from the artifact store when a
        victim with the same images, model and recipe was trained before.

        ``label`` names the stage in this job (``victim-<label>``); ``recipe_key`` is what the
        ``recipe`` depends on (None for plain training). ``labels``: the images' labels when
        they are not the training split (a subset of it, e.g. a shadow model's). ``variant``
        names the victim's own initial weights and data order (shadow models differ by them);
        None: the same for every victim, so that only the images differ.
        """
        key = self.victim_key(images, recipe_key, labels, variant)
        stage = f"victim-{label}"

        def train(snapshot_epochs: tuple[int, ...] = ()) -> dict[str, Any]:
            return self._train_new_victim(label, images, labels, recipe, variant, snapshot_epochs)

        epochs = self.snapshot_epochs()
        snapshots: dict[str, Any] = {}
        source = None
        if epochs:
            # The weights per epoch are a stage of their own (with the run's result and final
            # state): a victim stored without them is retrained once, for them, and reused.
            snapshots = self.stages.run(
                f"{stage}-snapshots", snapshots_key(key, epochs), lambda: train(epochs)
            )
        outcome = self.stages.run(
            stage,
            key,
            (lambda: {"result": snapshots["result"], "state": snapshots["state"]})
            if snapshots
            else train,
        )
        if epochs:
            source = self._snapshot_source(label, stage, outcome, snapshots)
        self.victims[label] = TrainedVictim(
            label,
            images,
            key,
            outcome["result"],
            outcome["state"],
            recipe_key,
            labels=labels,
            recipe=recipe,
            snapshots=snapshots.get("snapshots", {}),
            snapshot_source=source,
        )
        return outcome["result"]

    def _train_new_victim(
        self,
        label: str,
        images: torch.Tensor,
        labels: torch.Tensor | None,
        recipe: VictimRecipe | None,
        variant: str | None,
        snapshot_epochs: tuple[int, ...],
    ) -> dict[str, Any]:
        """:meth:`train_victim`'s stage: a fresh model (seeded init) trained on ``images``; its
        result, final state and the snapshots asked for."""
        cfg, data = self.cfg, self.data
        streams = () if variant is None else (variant,)
        torch.manual_seed(derive_seed(cfg.seed, "victim-init", *streams))
        model = self.new_victim_model()
        result = train_classifier(
            model,
            LabelledData(
                images,
                data.train_labels if labels is None else labels,
                data.test_images,
                data.test_labels,
                data.num_classes,
            ),
            cfg.victim,
            cfg.dataset.augment,
            TrainingRun(
                self.rt,
                seed=derive_seed(cfg.seed, "victim-data", *streams),
                progress=self.progress,
                name=f"victim ({label})",
                placement=self.placement,
                checkpoint=self.checkpoints.stage(f"victim-{label}"),
            ),
            recipe=recipe,
            snapshot_epochs=snapshot_epochs,
        )
        out = {"result": result.as_dict(), "state": model.state_dict()}
        return out | ({"snapshots": result.snapshots} if snapshot_epochs else {})

    def _snapshot_source(
        self, label: str, stage: str, victim: dict[str, Any], snapshots: dict[str, Any]
    ) -> str:
        """``training`` when the snapshots come from the run that made the victim; when the
        stored victim had none and was retrained for them, ``retrained`` (the same curves) or
        ``retrained-differs`` (nondeterministic training), also said in the log."""
        status = {s: self.stages.provenance[s]["status"] for s in (stage, f"{stage}-snapshots")}
        if status != {stage: "reused", f"{stage}-snapshots": "computed"}:
            return "training"

        def curves(outcome: dict[str, Any]) -> list[dict[str, Any]]:
            return [
                {k: v for k, v in r.items() if k != "seconds"} for r in outcome["result"]["history"]
            ]

        same = curves(victim) == curves(snapshots)
        self.progress.info(
            "victim %s was stored without per-epoch weights: retrained for them (%s)",
            label,
            "the same curves as the stored run" if same else "curves differ from the stored run",
        )
        return "retrained" if same else "retrained-differs"
