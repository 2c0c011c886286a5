"""Resumable jobs: a fingerprint of what a job computes, and its per-stage checkpoints on disk.

A job directory holds ``checkpoints/<stage>.pt`` (the running state of a training stage, rewritten
atomically every epoch and on preemption) until the job completes; finished stages are
artifacts (``artifacts.py``), shared with the other jobs. Every file carries the job's
fingerprint; files from a different configuration or world size are ignored, so a re-used job
directory never resumes someone else's run.
"""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch

from ue_sweep.runtime.tracking import atomic_torch_save

log = logging.getLogger(__name__)

CHECKPOINT_DIR = "checkpoints"
# Keys that change how a job reports or how long it waits, not what it computes.
NON_SEMANTIC_KEYS = (("trainer", "progress"), ("trainer", "timeout_s"), ("logger",))


def fingerprint(config: dict[str, Any], world_size: int) -> str:
    """Hash of the resolved job config (reporting keys removed) and the world size."""
    semantic = json.loads(json.dumps(config))
    for path in NON_SEMANTIC_KEYS:
        node = semantic
        for key in path[:-1]:
            node = node.get(key, {})
        node.pop(path[-1], None)
    payload = json.dumps({"config": semantic, "world_size": world_size}, sort_keys=True)
    return hashlib.sha256(payload.encode()).hexdigest()[:16]


def earlier_attempt(record: Any, fp: str) -> dict[str, Any] | None:
    """``record`` (a ``result.json``) if it was written by the job with fingerprint ``fp``."""
    return record if isinstance(record, dict) and record.get("fingerprint") == fp else None


@dataclass(frozen=True)
class StageCheckpoint:
    """The running state of one training stage. Only the main rank writes it."""

    path: Path | None
    fingerprint: str = ""
    writer: bool = False

    def load(self) -> dict[str, Any] | None:
        """The saved state; None if there is none, it is another job's, or it is damaged.

        A damaged file (truncated, or not a checkpoint at all) would fail every re-run, so the
        writer moves it aside and the stage restarts from its previous good state. The file is
        read with ``weights_only=True``: a pickle payload is refused, never executed.
        """
        if self.path is None or not self.path.exists():
            return None
        import torch  # here, not at import: fingerprints are computed on the login node

        try:
            state = torch.load(self.path, map_location="cpu", weights_only=True)
        except Exception as err:  # torch raises many types for a bad file; all mean "damaged"
            first = (str(err).splitlines() or [""])[0].split(". ")[0]
            return self._damaged(f"{type(err).__name__}: {first}")
        if not isinstance(state, dict):
            return self._damaged(f"holds a {type(state).__name__}, not a checkpoint")
        if state.get("fingerprint") != self.fingerprint:
            log.warning("ignoring %s: it belongs to another configuration", self.path)
            return None
        return state

    def _damaged(self, problem: str) -> None:
        assert self.path is not None
        if not self.writer:
            log.warning(
                "checkpoint %s is unreadable (%s): restarting its stage", self.path, problem
            )
            return None
        aside = self.path.with_name(f"{self.path.name}.corrupt-{time.strftime('%Y%m%dT%H%M%S')}")
        try:
            self.path.replace(aside)
        except FileNotFoundError:  # another attempt moved it already
            return None
        log.warning(
            "checkpoint %s is unreadable (%s): moved it to %s and restarting the stage",
            self.path,
            problem,
            aside.name,
        )
        return None

    def save(self, state: dict[str, Any]) -> None:
        if self.path is not None and self.writer:
            atomic_torch_save(self.path, {**state, "fingerprint": self.fingerprint})


#: A stage checkpoint that neither loads nor saves (unit tests, throwaway runs).
NO_CHECKPOINT = StageCheckpoint(path=None)


@dataclass(frozen=True)
class JobCheckpoints:
    """The checkpoint directory of one job; with ``root=None`` nothing is saved or resumed."""

    root: Path | None
    fingerprint: str = ""
    writer: bool = False

    def _file(self, name: str) -> Path | None:
        return None if self.root is None else self.root / f"{name}.pt"

    def stage(self, name: str) -> StageCheckpoint:
        return StageCheckpoint(self._file(name), self.fingerprint, self.writer)

    def saved(self) -> bool:
        """Whether any stage of this job saved state that a new attempt resumes from."""
        return self.root is not None and any(self.root.glob("*.pt"))

    def clear(self) -> None:
        """Delete the directory once the job's result is recorded: it is never read again."""
        if self.root is not None and self.writer:
            shutil.rmtree(self.root, ignore_errors=True)


#: Checkpoints of a job that is never resumed (unit tests, throwaway runs).
NO_CHECKPOINTS = JobCheckpoints(root=None)


class Resumable:
    """Saves and restores a training loop: its stateful objects plus loop variables.

    ``objects`` are anything with ``state_dict``/``load_state_dict`` (modules, optimizers,
    schedules); loop variables (position, running sums, history) travel as keyword arguments.
    """

    def __init__(self, checkpoint: StageCheckpoint, **objects: Any) -> None:
        self.checkpoint, self.objects = checkpoint, objects

    def restore(self) -> dict[str, Any] | None:
        """Load the objects from the checkpoint; returns its loop variables, or None."""
        state = self.checkpoint.load()
        if state is None:
            return None
        for name, obj in self.objects.items():
            obj.load_state_dict(state[name])
        log.info(
            "resuming %s at epoch %d, step %d", self.checkpoint.path, state["epoch"], state["step"]
        )
        return state

    def save(self, **loop_variables: Any) -> None:
        self.checkpoint.save(
            {name: obj.state_dict() for name, obj in self.objects.items()} | loop_variables
        )

    def start(self, num_sums: int, device: torch.device) -> LoopPosition:
        """Restore the objects, if saved, and the loop's position (the start, if not)."""
        import torch

        saved = self.restore() or {}
        step = saved.get("step", 0)
        sums = (
            saved["sums"].to(device)
            if step
            else torch.zeros(num_sums, device=device, dtype=torch.float64)
        )
        return LoopPosition(
            epoch=saved.get("epoch", 0),
            step=step,
            sums=sums,
            history=saved.get("history", []),
            earlier_seconds=saved.get("seconds", 0.0),
        )

    def save_at(self, loop: LoopPosition, epoch: int, step: int, history: list[Any]) -> None:
        """Save the objects with the loop standing at ``step`` of ``epoch``."""
        self.save(
            epoch=epoch, step=step, sums=loop.sums.cpu(), history=history, seconds=loop.seconds
        )


@dataclass
class LoopPosition:
    """Where a training loop stands: what a resume needs besides the trained objects."""

    epoch: int
    step: int
    #: running sums of the current epoch on this rank (float64), updated in place
    sums: torch.Tensor
    #: per-epoch records, in the plain form they are saved in
    history: list[Any]
    #: training time of earlier attempts
    earlier_seconds: float
    started: float = field(default_factory=time.perf_counter)

    @property
    def seconds(self) -> float:
        """Training time over all attempts so far."""
        return self.earlier_seconds + time.perf_counter() - self.started
