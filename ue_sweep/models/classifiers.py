"""Classifiers whose ``forward`` returns ``(logits, features)``.

Features are the input of the final linear layer (global-pooled). Returning them from ``forward``
instead of capturing them with a forward hook keeps them correct under DistributedDataParallel and
torch.compile, where hooks on submodules are unreliable.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ue_sweep.config import ModelSpec
from ue_sweep.models.archs import resolve_stem

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class FeatureClassifier(nn.Module):
    """``body`` maps images to pooled features, ``head`` features to logits."""

    def __init__(
        self,
        body: nn.Module,
        feature_dim: int,
        num_classes: int,
        *,
        normalize: str = "none",
        input_size: int | None = None,
    ) -> None:
        super().__init__()
        self.body = body
        self.head = nn.Linear(feature_dim, num_classes)
        self.feature_dim = feature_dim
        self.input_size = input_size
        self.normalize = normalize
        if normalize == "imagenet":
            self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), False)
            self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1), False)

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x = images
        if self.input_size is not None and x.shape[-1] != self.input_size:
            x = F.interpolate(x, size=self.input_size, mode="bilinear", align_corners=False)
        if self.normalize == "imagenet":
            x = (x - self.mean) / self.std
        features = self.body(x)
        return self.head(features), features


def _conv_bn(cin: int, cout: int) -> list[nn.Module]:
    return [nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(True)]


def small_cnn(in_channels: int, width: int) -> tuple[nn.Module, int]:
    """Five 3x3 conv layers in three stages, for CPU-sized experiments and tests."""
    w = width
    body = nn.Sequential(
        *_conv_bn(in_channels, w),
        *_conv_bn(w, w),
        nn.MaxPool2d(2),
        *_conv_bn(w, 2 * w),
        *_conv_bn(2 * w, 2 * w),
        nn.MaxPool2d(2),
        *_conv_bn(2 * w, 4 * w),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
    )
    return body, 4 * w


def resnet(name: str, in_channels: int, stem: str, dp_safe: bool = False) -> tuple[nn.Module, int]:
    """torchvision's ResNet ``name`` with its head removed and the stem adapted; ``dp_safe``:
    built from residual blocks that add out of place (models/dp_safe.py)."""
    # Imported on use: torchvision adds seconds to the start of every rank.
    import torchvision

    if dp_safe:
        from ue_sweep.models.dp_safe import safe_resnet

        net = safe_resnet(name)
    else:
        net = getattr(torchvision.models, name)(weights=None)
    if stem == "cifar":
        net.conv1 = nn.Conv2d(in_channels, 64, 3, stride=1, padding=1, bias=False)
        net.maxpool = nn.Identity()
    elif in_channels != 3:
        net.conv1 = nn.Conv2d(in_channels, 64, 7, stride=2, padding=3, bias=False)
    feature_dim = net.fc.in_features
    net.fc = nn.Identity()
    return net, feature_dim


def build_classifier(
    spec: ModelSpec,
    *,
    in_channels: int,
    num_classes: int,
    image_size: int,
    normalize: str = "none",
    input_size: int | None = None,
    dp_safe: bool = False,
) -> FeatureClassifier:
    """``dp_safe``: the architecture DP-SGD trains (GroupNorm, no in-place ops; dp_safe.py)."""
    if spec.arch == "small_cnn":
        body, dim = small_cnn(in_channels, spec.width)
    else:
        stem = resolve_stem(spec, input_size or image_size)
        body, dim = resnet(spec.arch, in_channels, stem, dp_safe)
    model = FeatureClassifier(body, dim, num_classes, normalize=normalize, input_size=input_size)
    if dp_safe:
        from ue_sweep.models.dp_safe import make_dp_safe

        model = make_dp_safe(model)
    return model
