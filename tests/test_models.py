"""Feature-returning classifiers, the grouped generator bank, and surrogate weight loading."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torchvision
from torch import nn

from ue_sweep.config import ModelSpec, SurrogateConfig
from ue_sweep.errors import ConfigError, MissingFileError
from ue_sweep.models import weights
from ue_sweep.models.classifiers import build_classifier
from ue_sweep.models.generators import GeneratorBank


@pytest.mark.parametrize(
    ("arch", "stem", "channels", "size"),
    [
        ("small_cnn", "auto", 1, 16),
        ("resnet18", "cifar", 3, 32),
        ("resnet18", "imagenet", 1, 64),
        ("resnet50", "auto", 3, 32),
    ],
)
def test_forward_returns_logits_and_the_features_the_head_sees(arch, stem, channels, size):
    model = build_classifier(
        ModelSpec(arch=arch, stem=stem, width=8),
        in_channels=channels,
        num_classes=7,
        image_size=size,
    ).eval()
    x = torch.rand(2, channels, size, size)
    logits, features = model(x)
    assert logits.shape == (2, 7)
    assert features.shape == (2, model.feature_dim)
    torch.testing.assert_close(model.head(features), logits)
    assert not any(m._forward_hooks for m in model.modules())


def test_input_resize_and_imagenet_normalisation_happen_inside_the_model():
    model = build_classifier(
        ModelSpec(arch="resnet18"),
        in_channels=3,
        num_classes=10,
        image_size=16,
        normalize="imagenet",
        input_size=64,
    ).eval()
    seen = {}

    def capture(module, inputs, output):
        seen["x"] = inputs[0]

    model.body.conv1.register_forward_hook(capture)
    x = torch.full((1, 3, 16, 16), 0.5)
    model(x)
    assert seen["x"].shape[-1] == 64
    expected = (0.5 - 0.485) / 0.229
    assert seen["x"][0, 0].mean().item() == pytest.approx(expected, abs=1e-5)


def _single_generator_from_group(bank: GeneratorBank, j: int) -> GeneratorBank:
    """Copy group ``j`` of a k-generator bank into a bank of one generator."""
    k = bank.k
    single = GeneratorBank(
        1, bank.channels, bank.image_size, bank.eps, ngf=4, n_blocks=1, n_downsampling=2
    ).to(bank.z.dtype)
    single.z.copy_(bank.z.view(k, bank.channels, *bank.z.shape[-2:])[j : j + 1].view_as(single.z))
    for src, dst in zip(bank.net.modules(), single.net.modules(), strict=True):
        if isinstance(src, nn.ConvTranspose2d):  # weight [in, out/groups, kh, kw]
            step = src.weight.shape[0] // k
            dst.weight.data.copy_(src.weight.data[j * step : (j + 1) * step])
        elif isinstance(src, nn.Conv2d | nn.BatchNorm2d):  # out-channels first
            step = src.weight.shape[0] // k
            dst.weight.data.copy_(src.weight.data[j * step : (j + 1) * step])
            if src.bias is not None:
                dst.bias.data.copy_(src.bias.data[j * step : (j + 1) * step])
    return single


def test_generator_bank_is_k_independent_generators():
    torch.manual_seed(0)
    # float64, so that grouped and plain convolutions agree to rounding
    bank = GeneratorBank(3, 2, 12, eps=0.5, ngf=4, n_blocks=1, n_downsampling=2, seed=5).double()
    with torch.no_grad():
        for p in bank.parameters():  # move BN affine params away from 1/0 too
            p.add_(0.1 * torch.randn_like(p))
        noise = bank()
        assert noise.shape == (3, 2, 12, 12)
        assert noise.abs().max() <= 0.5
        for j in range(3):
            single = _single_generator_from_group(bank, j)
            torch.testing.assert_close(single()[0], noise[j], rtol=1e-10, atol=1e-12)


def test_generator_handles_sizes_not_divisible_by_the_downsampling():
    bank = GeneratorBank(2, 1, 28, eps=8 / 255, ngf=4, n_blocks=1, n_downsampling=3)
    assert bank().shape == (2, 1, 28, 28)


def _save_torchvision_resnet18(path: Path) -> dict[str, torch.Tensor]:
    torch.manual_seed(1)
    state = torchvision.models.resnet18(weights=None).state_dict()
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(state, path)
    return state


def test_pretrained_weights_load_from_the_torch_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    path = weights.pretrained_file("resnet18")
    assert path == tmp_path / "hub" / "checkpoints" / "resnet18-f37072fd.pth"
    state = _save_torchvision_resnet18(path)
    cfg = SurrogateConfig(arch="resnet18", weights="pretrained", stem="imagenet")
    weights.check_surrogate_weights(cfg)
    loaded = weights.imagenet_state("resnet18")
    assert weights.head_classes(loaded) == 1000
    model = build_classifier(cfg, in_channels=3, num_classes=1000, image_size=224)
    weights.load_into(model, loaded, "resnet18", "test")
    torch.testing.assert_close(model.body.conv1.weight, state["conv1.weight"])
    torch.testing.assert_close(model.head.weight, state["fc.weight"])


def test_corrupt_checkpoint_is_reported_as_unreadable(tmp_path):
    path = tmp_path / "surrogate.pt"
    path.write_bytes(b"not a checkpoint")
    with pytest.raises(MissingFileError) as err:
        weights.read_state(path)
    # The file is there: the message names it, not a directory to put it in.
    assert str(err.value).startswith(
        f"surrogate checkpoint is unreadable (UnpicklingError): {path}; re-create or re-copy"
    )
    assert "expected" not in str(err.value)


def test_checkpoint_of_another_architecture_is_refused(tmp_path):
    path = tmp_path / "r18.pt"
    _save_torchvision_resnet18(path)
    model = build_classifier(
        ModelSpec(arch="small_cnn"), in_channels=3, num_classes=1000, image_size=32
    )
    with pytest.raises(ConfigError, match=r"surrogate.checkpoint=.*a state dict of a small_cnn"):
        weights.load_into(model, weights.read_state(path), "small_cnn", str(path))


@pytest.mark.parametrize(
    ("device", "world", "per_device", "setting", "expected"),
    [
        ("cuda", 48, 10, None, True),  # the HPC grid's victims: 10 images per GPU
        ("cuda", 48, 32, None, False),
        ("cuda", 1, 10, None, False),  # one rank: its statistics are already global
        ("cpu", 2, 10, None, False),  # SyncBatchNorm needs CUDA
        ("cuda", 48, 10, False, False),
        ("cuda", 2, 64, True, True),
    ],
)
def test_sync_batchnorm_defaults_on_for_small_per_gpu_batches(
    device, world, per_device, setting, expected
):
    from ue_sweep.config import TrainingConfig
    from ue_sweep.runtime.distributed import Runtime
    from ue_sweep.runtime.env import DistEnv
    from ue_sweep.train.classifier import uses_sync_batchnorm

    # A Runtime is plain data: no process group or GPU is needed to describe one.
    rt = Runtime(DistEnv(world_size=world), torch.device(device), backend="nccl")
    assert uses_sync_batchnorm(TrainingConfig(sync_batchnorm=setting), per_device, rt) is expected
