"""Victims that DP-SGD can train: no batch statistics, no in-place ops under backward hooks.

Opacus computes per-sample gradients with full backward hooks, which forbid modifying a hooked
module's output in place (opacus issue 828, pytorch issue 61519): torchvision's ResNets do that
twice, ``ReLU(inplace=True)`` and ``out += identity``. Rather than pin an old Opacus, the DP
victims use ResNet blocks that add out of place, ReLUs that allocate, and GroupNorm instead of
BatchNorm (Opacus' ``ModuleValidator.fix``: a sample's normalisation must not depend on its
batch). Same layout and initialisation as the standard victims otherwise.
"""

from __future__ import annotations

import logging
from typing import TypeVar

import torch
from torch import nn
from torchvision.models.resnet import BasicBlock, Bottleneck, ResNet


class SafeBasicBlock(BasicBlock):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + identity)


class SafeBottleneck(Bottleneck):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return self.relu(out + identity)


#: torchvision's block and stage depths of each ResNet
LAYOUTS: dict[str, tuple[type[nn.Module], list[int]]] = {
    "resnet18": (SafeBasicBlock, [2, 2, 2, 2]),
    "resnet34": (SafeBasicBlock, [3, 4, 6, 3]),
    "resnet50": (SafeBottleneck, [3, 4, 6, 3]),
}


def safe_resnet(name: str) -> ResNet:
    """torchvision's ResNet ``name`` (no weights) built from the out-of-place blocks."""
    block, layers = LAYOUTS[name]
    return ResNet(block, layers)


M = TypeVar("M", bound=nn.Module)


def make_dp_safe(model: M) -> M:
    """``model`` with allocating ReLUs and GroupNorm for BatchNorm, checked by Opacus' validator
    (raises ``UnsupportedModuleError`` on anything else it cannot train)."""
    from opacus.validators import ModuleValidator

    for module in model.modules():
        if isinstance(module, nn.ReLU):
            module.inplace = False
    # The fixer logs every replaced layer at INFO: one line per norm layer of every DP victim.
    logging.getLogger("opacus.validators").setLevel(logging.WARNING)
    fixed = ModuleValidator.fix(model)
    ModuleValidator.validate(fixed, strict=True)
    return fixed
