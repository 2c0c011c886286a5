"""The frozen surrogate whose feature space the clusters and the UC loss live in."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from ue_sweep.config import RootConfig
from ue_sweep.data.placement import Placement
from ue_sweep.data.splits import ImageSplits
from ue_sweep.errors import MissingFileError
from ue_sweep.models import weights
from ue_sweep.models.classifiers import FeatureClassifier, build_classifier
from ue_sweep.runtime.distributed import Runtime
from ue_sweep.runtime.progress import Progress
from ue_sweep.runtime.seeding import derive_seed
from ue_sweep.store.artifacts import StageKey, Stages
from ue_sweep.store.checkpoint import NO_CHECKPOINTS, JobCheckpoints
from ue_sweep.train.classifier import train_classifier
from ue_sweep.train.run import LabelledData, TrainingRun
from ue_sweep.uc.surrogate_fit import fit_classes, fit_task


def _stored_state(cfg: RootConfig) -> tuple[dict[str, torch.Tensor] | None, str]:
    s = cfg.surrogate
    if s.weights == "pretrained":
        path = weights.pretrained_file(s.arch)
        return weights.read_state(path), f"torchvision {weights.IMAGENET_WEIGHTS[s.arch]} ({path})"
    if s.weights == "path":
        path = Path(str(s.checkpoint)).expanduser().absolute()
        state = weights.read_state(path)
        if "head.weight" not in state:
            raise MissingFileError(
                "surrogate checkpoint",
                path,
                "save the full classifier",
                problem="has no classifier head (head.weight / fc.weight)",
            )
        return state, str(path)
    return None, "random initialisation" if s.weights == "none" else "fitted in this job"


def build_surrogate(
    cfg: RootConfig,
    data: ImageSplits,
    rt: Runtime,
    progress: Progress,
    placement: Placement,
    stages: Stages,
    key: StageKey,
    checkpoints: JobCheckpoints = NO_CHECKPOINTS,
) -> tuple[FeatureClassifier, dict[str, Any]]:
    """Build the surrogate with the configured weights, frozen and in eval mode.

    ``data`` must already be placed (``placement``). With ``weights: fit`` the surrogate is first
    trained (with DDP) on the protector's own training set, or reused from the artifact store
    (stage ``surrogate``, keyed by ``key``) where a job has fitted it.
    """
    s = cfg.surrogate
    state, source = _stored_state(cfg)
    torch.manual_seed(derive_seed(cfg.seed, "surrogate-init"))
    model = build_classifier(
        s,
        in_channels=data.channels,
        num_classes=weights.head_classes(state)
        if state is not None
        else fit_classes(s.fit_on, data.num_classes),
        image_size=data.image_size,
        normalize=s.normalize,
        input_size=s.input_size,
    )
    if state is not None:
        weights.load_into(model, state, s.arch, source)
    model.to(rt.device)
    info: dict[str, Any] = {"arch": s.arch, "weights": s.weights, "source": source}
    if s.weights == "fit":
        info["fit_on"] = s.fit_on
    if s.weights == "fit":
        fitted = stages.run(
            "surrogate",
            key,
            lambda: _fit(model, cfg, data, rt, progress, placement, checkpoints),
        )
        model.load_state_dict(fitted["state"])
        info["fit"] = fitted["fit"]
    model.eval().requires_grad_(False)
    return model, info


def _fit(
    model: FeatureClassifier,
    cfg: RootConfig,
    data: ImageSplits,
    rt: Runtime,
    progress: Progress,
    placement: Placement,
    checkpoints: JobCheckpoints,
) -> dict[str, Any]:
    """Fit the surrogate on the training set (as ``surrogate.fit_on`` says): its weights and how
    the fit went; its test accuracy is on the same task (rotations, or the fitted classes)."""
    task = fit_task(cfg.surrogate.fit_on, data)
    result = train_classifier(
        model,
        LabelledData(
            task.train_images,
            task.train_labels,
            task.test_images,
            task.test_labels,
            task.num_classes,
        ),
        cfg.surrogate.fit,
        cfg.dataset.augment,
        TrainingRun(
            rt,
            seed=derive_seed(cfg.seed, "surrogate-fit"),
            progress=progress,
            name="surrogate fit",
            placement=placement,
            checkpoint=checkpoints.stage("surrogate"),
        ),
    )
    fit = {
        "fit_on": cfg.surrogate.fit_on,
        "train_size": len(task.train_images),
        "epochs": cfg.surrogate.fit.epochs,
        "test_accuracy": result.test.accuracy,
        "seconds": result.seconds,
    }
    return {"state": model.state_dict(), "fit": fit}


def loss_model(cfg: RootConfig, data: ImageSplits, rt: Runtime) -> FeatureClassifier | None:
    """The network the generators' loss uses when it is not the surrogate (None: it is).

    ``generator.against=random_train`` reproduces the public HPC code, whose ResNet-50
    checkpoint never loaded (its key filter cannot match the ``resnet.`` prefix) and whose model
    stayed in train mode: a seeded random network of the surrogate's architecture whose batch
    norm uses each batch's statistics. Its weights are never trained (no gradient reaches them).
    """
    if cfg.generator.against == "surrogate":
        return None
    s = cfg.surrogate
    torch.manual_seed(derive_seed(cfg.seed, "random-loss-model"))
    model = build_classifier(
        s,
        in_channels=data.channels,
        num_classes=data.num_classes,
        image_size=data.image_size,
        normalize=s.normalize,
        input_size=s.input_size,
    )
    return model.to(rt.device).train().requires_grad_(False)
