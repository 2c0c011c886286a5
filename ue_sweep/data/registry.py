"""Dataset name -> the module that checks, fetches and loads it. ``dataset.name`` is one of these.

Each module offers ``check(cfg, paths)`` (its files are present: cheap, no decoding),
``fetch(cfg, paths)`` (download with the dataset's own reader) and ``load(cfg, paths)``
(-> :class:`ImageSplits`, through the preprocessing cache). Modules are imported on use, since
torchvision's and medmnist's readers take seconds to import on every rank.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from types import ModuleType

from ue_sweep.config import DatasetConfig, PathsConfig, SurrogateConfig
from ue_sweep.data.splits import ImageSplits
from ue_sweep.errors import ConfigError


@dataclass(frozen=True)
class Entry:
    module: str
    # Whether the dataset has an official val split (`dataset.eval_split=val`).
    has_val: bool
    # Channels of the released images; None: per MedMNIST flag.
    channels: int | None


_DATASETS: dict[str, Entry] = {
    "digits": Entry("ue_sweep.data.digits", has_val=False, channels=1),
    "cifar10": Entry("ue_sweep.data.cifar10", has_val=False, channels=3),
    "pets": Entry("ue_sweep.data.pets", has_val=False, channels=3),
    "flowers102": Entry("ue_sweep.data.flowers102", has_val=True, channels=3),
    "flowers": Entry("ue_sweep.data.flowers", has_val=False, channels=3),
    "medmnist": Entry("ue_sweep.data.medmnist2d", has_val=True, channels=None),
}


def dataset_channels(cfg: DatasetConfig) -> int:
    """Channels the job's models see (after ``dataset.channels``), known without any file."""
    if cfg.channels == "rgb":
        return 3
    native = _DATASETS[cfg.name].channels
    if native is None:
        from ue_sweep.data.medmnist2d import flag_channels

        return flag_channels(str(cfg.flag))
    return native


def dataset_names() -> tuple[str, ...]:
    return tuple(sorted(_DATASETS))


def _module(cfg: DatasetConfig) -> ModuleType:
    return importlib.import_module(_DATASETS[cfg.name].module)


def check_dataset(
    cfg: DatasetConfig, paths: PathsConfig, surrogate: SurrogateConfig, files: bool = True
) -> None:
    """Fail before any compute on rules between dataset fields, or files that are missing.

    Single values are checked by their declared choices; files (unless ``files=False``) only
    when they are not about to be downloaded (``dataset.download``). Reading and decoding happen
    in :func:`load_dataset`.
    """
    if cfg.name == "medmnist":
        from ue_sweep.data import medmnist2d

        choices = {"flag": medmnist2d.flags(), "size": medmnist2d.sizes()}
        for key, accepted in choices.items():
            if getattr(cfg, key) is None:
                raise ConfigError(
                    f"dataset.{key}", None, "one of: " + ", ".join(str(c) for c in accepted)
                )
    else:
        for key in ("flag", "size"):
            if getattr(cfg, key) is not None:
                raise ConfigError(
                    f"dataset.{key}",
                    getattr(cfg, key),
                    f"unset for {cfg.name}: only MedMNIST has flags and released sizes "
                    "(dataset.image_size sets the training resolution)",
                )
    if surrogate.weights == "pretrained" and dataset_channels(cfg) != 3:
        raise ConfigError(
            "surrogate.weights",
            "pretrained",
            f"a 3-channel dataset for ImageNet weights ({cfg.flag or cfg.name} has "
            f"{dataset_channels(cfg)}; dataset.channels=rgb repeats the gray channel)",
        )
    if cfg.eval_split == "val" and not _DATASETS[cfg.name].has_val:
        raise ConfigError(
            "dataset.eval_split", "val", f"test: {cfg.name} has no official val split"
        )
    if files and not cfg.download:
        _module(cfg).check(cfg, paths)


def fetch_dataset(cfg: DatasetConfig, paths: PathsConfig) -> None:
    _module(cfg).fetch(cfg, paths)


def load_dataset(cfg: DatasetConfig, paths: PathsConfig) -> ImageSplits:
    """The configured dataset at ``dataset.image_size`` with ``dataset.channels`` applied.

    With ``dataset.download`` its files are fetched first (machines with internet access only).
    """
    module = _module(cfg)
    if cfg.download:
        module.fetch(cfg, paths)
    return module.load(cfg, paths).with_channels(cfg.channels)
