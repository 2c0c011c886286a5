"""Surrogate weights from torchvision's ImageNet releases or from a checkpoint file.

Compute nodes are offline, so pretrained weights come only from the local torch hub cache; a
missing file is an error that says where it was expected and how to fetch it on a connected
machine. Nothing here ever falls back to random weights.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch

from ue_sweep.config import SurrogateConfig
from ue_sweep.errors import ConfigError, MissingFileError
from ue_sweep.models.classifiers import FeatureClassifier

IMAGENET_WEIGHTS = {
    "resnet18": "ResNet18_Weights.IMAGENET1K_V1",
    "resnet34": "ResNet34_Weights.IMAGENET1K_V1",
    "resnet50": "ResNet50_Weights.IMAGENET1K_V1",
}
IMAGENET_CLASSES = 1000


def pretrained_file(arch: str) -> Path:
    """Where torchvision keeps (and looks for) the ImageNet weights of ``arch``."""
    import torchvision

    weights = torchvision.models.get_weight(IMAGENET_WEIGHTS[arch])
    return Path(torch.hub.get_dir()) / "checkpoints" / Path(weights.url).name


def fetch_command(arch: str) -> str:
    return (
        'on a connected machine run: python -c "import torchvision; '
        f"torchvision.models.get_weight('{IMAGENET_WEIGHTS[arch]}').get_state_dict()\" "
        "(set TORCH_HOME to the same shared directory on both machines)"
    )


def check_surrogate_weights(cfg: SurrogateConfig) -> None:
    """Fail before any compute if the requested weights cannot be loaded."""
    if cfg.weights == "pretrained":
        if cfg.arch not in IMAGENET_WEIGHTS:
            raise ConfigError(
                "surrogate.weights",
                "pretrained",
                f"one of none, fit, path for {cfg.arch} (ImageNet weights exist for "
                + ", ".join(sorted(IMAGENET_WEIGHTS))
                + ")",
            )
        if cfg.stem == "cifar":
            raise ConfigError("surrogate.stem", "cifar", "auto or imagenet with ImageNet weights")
        path = pretrained_file(cfg.arch)
        if not path.is_file():
            raise MissingFileError(
                f"ImageNet weights for {cfg.arch}", path, fetch_command(cfg.arch)
            )
        _require_readable(f"ImageNet weights for {cfg.arch}", path)
    elif cfg.weights == "path":
        path = Path(str(cfg.checkpoint)).expanduser()
        what = "surrogate checkpoint (surrogate.checkpoint)"
        if not path.is_file():
            raise MissingFileError(
                what,
                path.absolute(),
                "point surrogate.checkpoint at a state-dict file, e.g. the surrogate.pt "
                "a `surrogate.weights=fit` job wrote",
            )
        _require_readable(what, path.absolute())


def _require_readable(what: str, path: Path) -> None:
    if not os.access(path, os.R_OK):
        raise MissingFileError(
            what, path, "give the user the jobs run as read access", problem="is not readable"
        )


def _as_classifier_state(state: dict[str, Any]) -> dict[str, torch.Tensor]:
    """Accept our own layout (body./head.) or a torchvision model's (fc. is the head)."""
    for wrapper in ("state_dict", "model"):
        if wrapper in state and isinstance(state[wrapper], dict):
            state = state[wrapper]
    state = {k.removeprefix("module."): v for k, v in state.items()}
    if any(k.startswith("body.") for k in state):
        return state
    return {(f"head.{k[3:]}" if k.startswith("fc.") else f"body.{k}"): v for k, v in state.items()}


def read_state(path: Path) -> dict[str, torch.Tensor]:
    try:
        raw = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:
        raise MissingFileError(
            "surrogate checkpoint",
            path,
            "re-create or re-copy the file",
            problem=f"is unreadable ({type(err).__name__})",
        ) from err
    if not isinstance(raw, dict):
        raise MissingFileError(
            "surrogate checkpoint", path, "save a state dict", problem="holds no state dict"
        )
    return _as_classifier_state(raw)


def head_classes(state: dict[str, torch.Tensor]) -> int:
    return int(state["head.weight"].shape[0])


def load_into(
    model: FeatureClassifier, state: dict[str, torch.Tensor], arch: str, source: str
) -> None:
    """Load ``state`` strictly; a checkpoint of another architecture is a config error."""
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as err:
        problems = [line.strip() for line in str(err).splitlines()[1:] if line.strip()]
        raise ConfigError(
            "surrogate.checkpoint",
            source,
            f"a state dict of a {arch} surrogate ({len(problems)} mismatches, first: "
            f"{problems[0] if problems else err})",
        ) from err


def imagenet_state(arch: str) -> dict[str, torch.Tensor]:
    return read_state(pretrained_file(arch))
