"""The one epoch loop every training stage runs: resumable, preemptible, distributed.

Victims, DP-SGD victims and the generator bank differ only in what a step does and what an
epoch's record holds; the loop owns the rest: the resume position, the progress bar, the
preemption check at every step, the all-reduce of the epoch's running sums, the history and the
checkpoint after every epoch.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TypeVar

from ue_sweep.runtime.preemption import preemptible

if TYPE_CHECKING:
    import torch

    from ue_sweep.runtime.distributed import Runtime
    from ue_sweep.runtime.progress import Progress
    from ue_sweep.store.checkpoint import LoopPosition, Resumable

Batch = TypeVar("Batch")


@dataclass(frozen=True)
class EpochClose:
    """What an epoch leaves: its record (JSON-able, kept in the history and the checkpoint)
    and the values the progress line shows."""

    record: Any
    shown: dict[str, Any]


@dataclass
class EpochLoop:
    """One stage's epochs: ``epochs`` of ``steps_per_epoch`` steps each, with ``num_sums``
    running float64 sums per rank, all-reduced at the end of each epoch."""

    resumable: Resumable
    rt: Runtime
    progress: Progress
    name: str
    epochs: int
    steps_per_epoch: int
    num_sums: int

    def start(self) -> LoopPosition:
        """Restore the trained objects and the loop's position (the start when nothing is
        saved); the caller may add to ``history`` before :meth:`run`."""
        return self.resumable.start(num_sums=self.num_sums, device=self.rt.device)

    def run(
        self,
        loop: LoopPosition,
        batches: Callable[[int, int], Iterable[Batch]],
        step: Callable[[Batch, torch.Tensor], None],
        close: Callable[[int, torch.Tensor, float], EpochClose],
    ) -> LoopPosition:
        """Train from ``loop``'s position to the last epoch.

        ``batches(epoch, first_step)``: the epoch's batches from ``first_step`` on (after any
        per-epoch set-up); ``step(batch, sums)``: one training step, adding its figures to the
        rank's running ``sums``; ``close(epoch, totals, started)``: the epoch's record from the
        all-reduced ``totals`` (``started``: the epoch's ``perf_counter`` start).
        """

        def save(epoch: int, at_step: int) -> None:
            self.resumable.save_at(loop, epoch, at_step, loop.history)

        total_steps = self.epochs * self.steps_per_epoch
        with self.progress.stage(self.name, total_steps, self.epochs) as bar:
            bar.advance(loop.epoch * self.steps_per_epoch + loop.step)
            for epoch in range(loop.epoch, self.epochs):
                started = time.perf_counter()
                first_step = loop.step if epoch == loop.epoch else 0
                steps = batches(epoch, first_step)
                for batch in preemptible(steps, first_step, self.rt, lambda s, e=epoch: save(e, s)):
                    step(batch, loop.sums)
                    bar.advance()
                totals = self.rt.all_reduce_sum(loop.sums)
                loop.sums.zero_()
                closed = close(epoch, totals, started)
                loop.history.append(closed.record)
                save(epoch + 1, 0)
                bar.epoch_done(epoch, **closed.shown)
        return loop
