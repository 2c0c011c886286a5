"""The classifier architectures by name, without torch: the command line checks names here."""

from __future__ import annotations

from ue_sweep.config import ModelSpec

# Below this input size a ResNet gets the CIFAR stem (3x3 conv, no max-pool) under `stem: auto`.
CIFAR_STEM_BELOW = 96
RESNETS = ("resnet18", "resnet34", "resnet50")


def arch_names() -> tuple[str, ...]:
    return ("small_cnn", *RESNETS)


def resolve_stem(spec: ModelSpec, input_size: int) -> str:
    if spec.stem != "auto":
        return spec.stem
    return "cifar" if input_size < CIFAR_STEM_BELOW else "imagenet"
