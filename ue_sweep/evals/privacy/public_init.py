"""Public pretraining for DP-SGD victims: start from the surrogate's public weights, freeze the
first layers, and let DP-SGD train the rest (the seed's recipe; Tramer and Boneh 2021 show how
much public features help DP-SGD).

Only a public surrogate qualifies: ``surrogate.weights: pretrained`` (torchvision's ImageNet
weights) or ``path`` (a checkpoint the user vouches for). A fitted surrogate (``fit``) trained
on the private training set, so starting from it would void the DP guarantee; it is refused
before any compute (``config.check_public_init``), as is ``none`` (random weights are no
pretraining).

The DP model has GroupNorm where the surrogate has BatchNorm (``models/dp_safe.py``): every
tensor whose name and shape agree is copied (convolutions, linear layers, the norms' affine
weights and biases); BatchNorm's running statistics have no GroupNorm counterpart, and a head
of another class count is left at its initialisation. ``freeze = N`` fixes the first N Conv2d
/ Linear layers (model order) and the normalisation layers before the (N+1)-th.
"""

from __future__ import annotations

from typing import Any

from torch import nn

from ue_sweep.config import RootConfig

_NORMS = (nn.BatchNorm2d, nn.GroupNorm, nn.LayerNorm)


def copy_public_weights(model: nn.Module, public: dict[str, Any]) -> list[str]:
    """Copy every tensor of ``public`` whose name and shape ``model`` shares; returns the names."""
    own = model.state_dict()
    shared = {k: v for k, v in public.items() if k in own and tuple(own[k].shape) == tuple(v.shape)}
    model.load_state_dict(shared, strict=False)
    return sorted(shared)


def freeze_first(model: nn.Module, count: int) -> list[str]:
    """Fix the first ``count`` Conv2d / Linear layers and the norm layers before the next one;
    returns the frozen modules' names."""
    frozen: list[str] = []
    seen = 0
    for name, module in model.named_modules():
        if isinstance(module, nn.Conv2d | nn.Linear):
            if seen == count:
                break
            seen += 1
        elif not isinstance(module, _NORMS) or seen == 0:
            continue
        module.requires_grad_(False)
        frozen.append(name)
    return frozen


def public_state(cfg: RootConfig, channels: int, image_size: int) -> tuple[dict[str, Any], str]:
    """The public surrogate's classifier state (as ``build_surrogate`` loads it: torchvision's
    or the checkpoint's weights, checked strictly against the architecture) and its source."""
    from ue_sweep.models import weights
    from ue_sweep.models.classifiers import build_classifier
    from ue_sweep.uc.surrogate import _stored_state  # the surrogate's own loading rules

    s = cfg.surrogate
    state, source = _stored_state(cfg)
    assert state is not None, "config.check_public_init admits public weights only"
    model = build_classifier(
        s,
        in_channels=channels,
        num_classes=weights.head_classes(state),
        image_size=image_size,
        normalize=s.normalize,
        input_size=s.input_size,
    )
    weights.load_into(model, state, s.arch, source)
    return model.state_dict(), source
