"""Preprocessed splits cached as tensor files next to the data, so a sweep decodes images once.

One file holds one split at one resolution: uint8 images ``[N, C, H, W]``, int64 labels, the
class names, and the fingerprint (name, size, mtime) of the source files it was built from. A
file whose fingerprint no longer matches, or that cannot be read, is rebuilt.

Concurrent jobs may race to build the same file. Each writes a complete temporary file and
renames it into place (atomic on POSIX file systems), so a reader only ever sees a whole file and
the last rename wins with identical content; a job that already mapped the old file keeps reading
its inode. The race wastes work, never a result. Within one job rank 0 loads first and the other
ranks read its file (see ``pipeline``). Files are loaded memory-mapped, so ranks and DataLoader
workers on one node share the page cache instead of holding copies.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from pathlib import Path

import torch

from ue_sweep.data.splits import Split
from ue_sweep.runtime.tracking import atomic_torch_save

log = logging.getLogger(__name__)

CACHE_DIR = "ue-sweep-cache"
# Bump when the preprocessing changes, so that old files are rebuilt rather than reused.
FORMAT = 1


def cache_path(root: Path, key: str) -> Path:
    return root / CACHE_DIR / f"{key}.pt"


def _read(path: Path, sources: list[list[str | int]]) -> Split | None:
    if not path.is_file():
        return None
    try:
        payload = torch.load(path, map_location="cpu", mmap=True, weights_only=True)
        if payload["format"] != FORMAT or payload["sources"] != sources:
            log.info("cache %s was built from other files; rebuilding it", path)
            return None
        return Split(payload["images"], payload["labels"], tuple(payload["classes"]))
    except Exception as err:  # an unreadable cache is rebuilt from the sources, never trusted
        log.warning("cache %s is unreadable (%s: %s); rebuilding it", path, type(err).__name__, err)
        return None


def _write(path: Path, sources: list[list[str | int]], split: Split) -> None:
    payload = {
        "format": FORMAT,
        "sources": sources,
        "images": split.images.contiguous(),
        "labels": split.labels,
        "classes": list(split.classes),
    }
    try:
        atomic_torch_save(path, payload)
        umask = os.umask(0)
        os.umask(umask)
        path.chmod(0o666 & ~umask)  # temporary files are private; a shared data dir is not
    except OSError as err:
        log.warning("cannot write cache %s (%s); later jobs will preprocess again", path, err)


def cached_split(path: Path, sources: list[list[str | int]], build: Callable[[], Split]) -> Split:
    """The split stored at ``path`` when it was built from ``sources``, else ``build()`` stored."""
    split = _read(path, sources)
    if split is not None:
        return split
    log.info("preprocessing into %s", path)
    split = build()
    _write(path, sources, split)
    return split
