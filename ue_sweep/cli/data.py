"""The ``ue-sweep-data`` command: fetch a dataset where there is internet access (login nodes).

::

    ue-sweep-data fetch pathmnist --size 28
    ue-sweep-data fetch dermamnist --size 64 --root /gpfs/project/data/medmnist
    ue-sweep-data fetch pets paths.data_dir=/gpfs/project/data dataset.image_size=128

NAME is a ``dataset`` config option (``cifar10``, ``pets``, ``pathmnist``, ...) or any MedMNIST 2D
flag; further arguments are Hydra overrides, as for ``ue-sweep``. The dataset's own reader
downloads the files to the root a job with the same options reads (``dataset.root``, default
``<paths.data_dir>/<name>``). The dataset is then loaded the way a job loads it, which checks the
files and builds the preprocessing cache for ``dataset.image_size``, so the jobs of a sweep start
from the cache.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence
from dataclasses import replace
from importlib import resources

from hydra import compose, initialize_config_module

from ue_sweep.cli.compose import quote_numeric_choices, register
from ue_sweep.cli.validation import to_root_config
from ue_sweep.config import RootConfig
from ue_sweep.data.registry import fetch_dataset, load_dataset
from ue_sweep.data.sources import dataset_root
from ue_sweep.errors import ConfigError, UserError


def dataset_options() -> tuple[str, ...]:
    """The options of the ``dataset`` config group."""
    group = resources.files("ue_sweep.conf") / "dataset"
    return tuple(
        sorted(f.name.removesuffix(".yaml") for f in group.iterdir() if f.name.endswith(".yaml"))
    )


def _medmnist_flags() -> tuple[str, ...]:
    from ue_sweep.data import medmnist2d  # imports medmnist (and torch): only when asked

    return tuple(medmnist2d.flags())


def compose_dataset(
    name: str, size: int | None, root: str | None, overrides: Sequence[str]
) -> RootConfig:
    """The validated job config that ``ue-sweep dataset=NAME ...`` would run with."""
    if name in dataset_options():
        chosen = [f"dataset={name}"]
    elif name in _medmnist_flags():
        chosen = ["dataset=medmnist", f"dataset.flag={name}"]
    else:
        accepted = sorted({*dataset_options(), *_medmnist_flags()})
        raise ConfigError("dataset", name, "one of: " + ", ".join(accepted))
    chosen.append("dataset.download=true")  # validation then expects no files yet
    if size is not None:
        chosen.append(f"dataset.size={size}")
    if root is not None:
        chosen.append(f"dataset.root={root}")
    with initialize_config_module("ue_sweep.conf", version_base="1.3"):
        cfg = compose("config", overrides=quote_numeric_choices([*chosen, *overrides]))
    return to_root_config(cfg)


def fetch(args: argparse.Namespace) -> int:
    cfg = compose_dataset(args.name, args.size, args.root, args.overrides)
    root = dataset_root(cfg.dataset, cfg.paths)
    print(f"fetching {args.name} into {root}")
    try:
        fetch_dataset(cfg.dataset, cfg.paths)
    except (OSError, RuntimeError) as err:  # network or disk trouble, reported by the reader
        print(f"download failed: {type(err).__name__}: {err}", file=sys.stderr)
        return 1
    data = load_dataset(replace(cfg.dataset, download=False), cfg.paths)
    print(
        f"{data.name}: {len(data.train_images)} train / {len(data.test_images)} test images, "
        f"{data.num_classes} classes, {data.channels}x{data.image_size}x{data.image_size}, "
        f"test set: {data.test_split}; files and preprocessing cache in {root}"
    )
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    register()
    parser = argparse.ArgumentParser(
        prog="ue-sweep-data", description="Fetch and prepare ue-sweep datasets."
    )
    commands = parser.add_subparsers(dest="command", required=True)
    fetching = commands.add_parser(
        "fetch",
        help="download a dataset with its own reader, check it and build its cache",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    fetching.add_argument("name", help="a dataset config option or a MedMNIST 2D flag")
    fetching.add_argument("--size", type=int, help="MedMNIST image size: 28, 64, 128 or 224")
    fetching.add_argument("--root", help="directory for the files (default: the job's)")
    fetching.add_argument("overrides", nargs="*", help="Hydra overrides, as for ue-sweep")
    # Overrides may follow the options too; argparse leaves those to us.
    args, extra = parser.parse_known_args(argv)
    unknown = [arg for arg in extra if arg.startswith("-")]
    if unknown:
        parser.error(f"unrecognized arguments: {' '.join(unknown)}")
    args.overrides = [*args.overrides, *extra]
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    try:
        return fetch(args)
    except UserError as err:
        print(err, file=sys.stderr)
        return 2
