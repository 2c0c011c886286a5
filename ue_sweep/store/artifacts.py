"""Finished stages as artifacts shared by the jobs of a sweep.

A stage (surrogate fit, clusters, generators, one victim) is keyed by a :class:`StageKey`: the
slice of the config it depends on, the keys of the stages it reads, and the world size where it
changes the maths. Its outcome is stored once under ``<store>/<stage>-<digest>.pt`` with a
manifest ``<stage>-<digest>.json`` (the key's inputs, the file's SHA-256, the job that made it);
any later job with the same key loads it instead of computing it again.

Concurrency: rank 0 of a job takes an advisory ``flock`` on ``locks/<name>.lock`` while it
computes, so a job that needs the same artifact waits for it instead of computing it twice (the
lock dies with its process, so a killed job never blocks the others). Writes are atomic (temp file
+ rename, the manifest last), and an entry whose file does not match its manifest is moved aside
and recomputed, with a warning. On a filesystem without ``flock`` (some Lustre mounts) jobs
compute concurrently and the first finished entry is the one every later job reads.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import json
import logging
import os
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from ue_sweep.runtime import preemption
from ue_sweep.runtime.distributed import Runtime
from ue_sweep.runtime.tracking import atomic_torch_save, atomic_write_json

log = logging.getLogger(__name__)

LOCK_DIR = "locks"
# Seconds between two looks at an artifact another job is computing; every rank of the waiting
# job meets once per look, so no collective waits longer than this.
POLL_S = 2.0


@dataclass(frozen=True)
class StageKey:
    """What a stage's outcome depends on: JSON-able ``inputs`` (config slices, upstream keys)."""

    stage: str
    inputs: dict[str, Any]

    @property
    def digest(self) -> str:
        payload = json.dumps({"stage": self.stage, "inputs": self.inputs}, sort_keys=True)
        return hashlib.sha256(payload.encode()).hexdigest()[:20]

    @property
    def name(self) -> str:
        return f"{self.stage}-{self.digest}"


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


class ArtifactStore:
    """A directory of finished stages. Only rank 0 of a job writes; every rank may read."""

    def __init__(self, root: Path, producer: str = "") -> None:
        self.root, self.producer = root, producer

    def _files(self, key: StageKey) -> tuple[Path, Path]:
        return self.root / f"{key.name}.pt", self.root / f"{key.name}.json"

    def path(self, key: StageKey) -> Path:
        return self._files(key)[0]

    def complete(self, key: StageKey) -> bool:
        """Whether the entry's manifest, written last, exists (its integrity is checked on load)."""
        return self._files(key)[1].exists()

    def load(
        self, key: StageKey, repair: bool = True
    ) -> tuple[dict[str, Any], dict[str, Any]] | None:
        """The entry's manifest and stored outcome, or None if there is none or it is damaged
        (its file does not match the manifest's SHA-256, or does not load). A damaged entry is
        moved aside when ``repair`` (rank 0), so that the caller recomputes it."""
        data, meta = self._files(key)
        if not meta.exists():
            return None
        try:
            manifest = json.loads(meta.read_text())
            intact = data.exists() and _sha256(data) == manifest["sha256"]
        except (OSError, ValueError, KeyError, TypeError):
            intact = False
        if not intact:
            problem = "its file does not match its manifest"
        else:
            try:
                return manifest, torch.load(data, map_location="cpu", weights_only=True)
            except Exception as err:  # torch raises many types for a bad file: all "damaged"
                problem = f"{type(err).__name__} on loading"
        if repair:
            self._set_aside(key, problem)
        return None

    def save(self, key: StageKey, outcome: dict[str, Any]) -> None:
        data, meta = self._files(key)
        atomic_torch_save(data, outcome)
        atomic_write_json(
            meta,
            {
                "stage": key.stage,
                "inputs": key.inputs,
                "sha256": _sha256(data),
                "producer": self.producer,
                "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            },
        )

    def _set_aside(self, key: StageKey, problem: str) -> None:
        stamp = time.strftime("%Y%m%dT%H%M%S")
        for path in self._files(key):
            with contextlib.suppress(FileNotFoundError):  # another job set it aside already
                path.replace(path.with_name(f"{path.name}.corrupt-{stamp}"))
        log.warning("artifact %s is damaged (%s): set aside, recomputing", key.name, problem)

    @contextmanager
    def try_lock(self, key: StageKey) -> Iterator[bool]:
        """Hold ``key``'s lock if no other process does; yields whether it is held (also True
        where the filesystem has no locks: then nothing stops a second computation)."""
        lock = self.root / LOCK_DIR / f"{key.name}.lock"
        lock.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError as err:
                if err.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                    yield False
                    return
                log.warning("no file locks in %s (%s): jobs may compute %s twice", lock, err, key)
            yield True
        finally:
            os.close(fd)


# What rank 0 decides, and every rank follows, on each look at an artifact.
_WAIT, _REUSE, _COMPUTE = 0, 1, 2


@dataclass
class Stages:
    """Runs a job's stages through the store: reuse a finished one, else compute and save it.

    ``store=None`` computes every stage (unit tests, throwaway runs). ``provenance`` is what
    ``result.json`` records under ``stages``: ``computed``, or ``reused`` with the artifact and
    the job that produced it.
    """

    rt: Runtime
    store: ArtifactStore | None = None

    def __post_init__(self) -> None:
        self.provenance: dict[str, dict[str, Any]] = {}

    def run(
        self, label: str, key: StageKey, compute: Callable[[], dict[str, Any]]
    ) -> dict[str, Any]:
        """The outcome of stage ``label`` (a job-unique name, e.g. ``victim-clean``).

        ``compute`` runs on every rank (the stages are collective); rank 0 saves its outcome.
        """
        record: dict[str, Any] = {"key": key.digest}
        if self.store is None:
            self.provenance[label] = {"status": "computed", **record}
            return compute()
        store, rt = self.store, self.rt
        record["artifact"] = str(store.path(key))
        while True:
            with store.try_lock(key) if rt.is_main else _no_lock() as held:
                decision = _REUSE if rt.is_main and store.complete(key) else _WAIT
                decision = _COMPUTE if decision == _WAIT and held else decision
                decision = int(rt.broadcast(torch.tensor([decision])).item())
                if decision == _COMPUTE:
                    outcome = compute()
                    if rt.is_main:
                        store.save(key, outcome)
                    self.provenance[label] = {"status": "computed", **record}
                    return outcome
                if decision == _REUSE:
                    found = store.load(key, repair=rt.is_main)
                    failed = rt.all_reduce_sum(torch.tensor([int(found is None)]))
                    if found is not None and int(failed.item()) == 0:
                        manifest, outcome = found
                        self.provenance[label] = {
                            "status": "reused",
                            **record,
                            "producer": manifest.get("producer"),
                        }
                        return outcome
                    # damaged (set aside by rank 0), or not yet visible on a rank's node
            if preemption.requested(rt):
                raise preemption.Preempted(f"while waiting for artifact {key.name}")
            if rt.is_main and decision == _WAIT:
                log.info("waiting for %s, which another job is computing", key.name)
            time.sleep(POLL_S)


@contextmanager
def _no_lock() -> Iterator[bool]:
    yield False
