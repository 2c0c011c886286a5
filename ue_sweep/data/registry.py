"""Dataset name -> loader. ``dataset.name`` must be one of these."""

from __future__ import annotations

from collections.abc import Callable

from ue_sweep.config import DatasetConfig, PathsConfig
from ue_sweep.data import digits
from ue_sweep.data.splits import ImageSplits

Loader = Callable[[DatasetConfig, PathsConfig], ImageSplits]

_LOADERS: dict[str, Loader] = {
    "digits": digits.load,
}


def dataset_names() -> tuple[str, ...]:
    return tuple(sorted(_LOADERS))


def load_dataset(cfg: DatasetConfig, paths: PathsConfig) -> ImageSplits:
    return _LOADERS[cfg.name](cfg, paths)
