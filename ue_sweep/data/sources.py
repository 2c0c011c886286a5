"""Where a file-backed dataset lives, and errors that say which file is wrong and how to fix it.

Every message names the file expected, the directory searched, and the one command that fetches
the dataset on a machine with internet access (compute nodes are usually offline).
"""

from __future__ import annotations

import os
import shlex
from collections.abc import Iterable
from pathlib import Path

import torch

from ue_sweep.config import DatasetConfig, PathsConfig
from ue_sweep.errors import MissingFileError


def dataset_root(cfg: DatasetConfig, paths: PathsConfig) -> Path:
    """``dataset.root``, else ``<paths.data_dir>/<dataset.name>``, as an absolute path."""
    root = Path(cfg.root) if cfg.root else Path(paths.data_dir) / cfg.name
    return root.expanduser().absolute()


def fetch_command(cfg: DatasetConfig, root: Path) -> str:
    target = f"{cfg.flag} --size {cfg.size}" if cfg.name == "medmnist" else cfg.name
    return f"ue-sweep-data fetch {target} --root {shlex.quote(str(root))}"


class DatasetFiles:
    """The files of one configured dataset, and the errors about them."""

    def __init__(self, cfg: DatasetConfig, paths: PathsConfig, title: str) -> None:
        self.title = title
        self.root = dataset_root(cfg, paths)
        self.command = fetch_command(cfg, self.root)

    def _fix(self, delete: Path | None) -> str:
        fetch = f"on a machine with internet access, run: {self.command}"
        return f"delete {delete} and, {fetch}" if delete else fetch

    def require(self, path: Path, what: str, *, delete: Path | None = None) -> Path:
        """``path`` if it exists, else a MissingFileError; ``delete`` what the fetch would skip
        (named only if it is there)."""
        if not path.exists():
            blocker = next((p for p in path.parents if p.exists()), None)
            if blocker is not None and not blocker.is_dir():
                raise MissingFileError(
                    f"{self.title} {what}",
                    path,
                    "point dataset.root (or paths.data_dir) at a directory",
                    problem=f"cannot exist: {blocker} is a file, not a directory",
                )
            if not self.root.exists() and path.parent != self.root:
                # Nothing of the dataset is there: fetch it (there is nothing to delete).
                raise MissingFileError(f"{self.title} dataset", self.root, self._fix(None))
            stale = delete if delete is not None and delete.exists() else None
            raise MissingFileError(f"{self.title} {what}", path, self._fix(stale))
        if not os.access(path, os.R_OK | (os.X_OK if path.is_dir() else 0)):
            raise MissingFileError(
                f"{self.title} {what}",
                path,
                "give the user the jobs run as read access, or point dataset.root at a copy",
                problem="is not readable",
            )
        return path

    def unreadable(self, path: Path, what: str, problem: str, delete: Path) -> MissingFileError:
        """The error for a present but damaged file; ``delete`` makes the fetch replace it."""
        return MissingFileError(f"{self.title} {what}", path, self._fix(delete), problem=problem)

    def check_labels(
        self, labels: torch.Tensor, num_classes: int, path: Path, what: str, delete: Path
    ) -> None:
        """Every label is a class index, or the file that holds them is reported."""
        bad = labels[(labels < 0) | (labels >= num_classes)]
        if bad.numel():
            raise self.unreadable(
                path,
                what,
                f"has label {int(bad[0])} outside 0..{num_classes - 1}",
                delete,
            )


def fingerprint(paths: Iterable[Path]) -> list[list[str | int]]:
    """Name, size and modification time of the files a cache entry was built from."""
    out: list[list[str | int]] = []
    for path in paths:
        stat = path.stat()
        out.append([path.name, stat.st_size, stat.st_mtime_ns])
    return out
