"""Rank-0 progress: a bar per stage on a terminal, log lines in batch jobs, epochs to the tracker.

In ``log`` mode (batch jobs, whose output goes to a file) a stage logs one line per epoch and,
inside long epochs, a line every ``log_every_s`` seconds with the step count and the time left.
Every epoch also reaches the run logger (W&B), with the stage's steps per second. With a
``record`` path, rank 0 also keeps ``progress.json`` in the job directory up to date (the stage,
its epoch and step, and the W&B runs), which ``ue-sweep status`` reads from another shell.
"""

from __future__ import annotations

import logging
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from tqdm import tqdm

from ue_sweep.runtime.loggers import RunLogger
from ue_sweep.runtime.tracking import atomic_write_json, now

PROGRESS_FILE = "progress.json"

log = logging.getLogger("ue_sweep")
# What the progress record keeps of the run logger's description.
_TRACKED = ("project", "entity", "group", "mode", "runs")


def _fmt(metrics: dict[str, Any]) -> str:
    return " ".join(
        f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}" for k, v in metrics.items()
    )


class StageProgress:
    def __init__(
        self,
        name: str,
        total: int,
        epochs: int,
        bar: tqdm | None,
        mode: str,
        run_logger: RunLogger,
        log_every_s: float,
        record: Callable[[dict[str, Any]], None] | None = None,
    ) -> None:
        self.name, self.total, self.epochs, self.bar, self.mode = name, total, epochs, bar, mode
        self.run_logger, self.log_every_s, self.record = run_logger, log_every_s, record
        self.done = self.epochs_seen = self.epoch = 0
        self.started = self._last_line = self._epoch_started = time.monotonic()
        self._last_record = self.started
        self._epoch_start_step = 0
        self._write_record()

    def _write_record(self) -> None:
        if self.record is not None:
            self.record(
                {
                    "stage": self.name,
                    "epoch": self.epoch,
                    "epochs": self.epochs,
                    "step": self.done,
                    "steps": self.total,
                }
            )
            self._last_record = time.monotonic()

    def advance(self, steps: int = 1) -> None:
        self.done += steps
        if self.bar is not None:
            self.bar.update(steps)
        elif self.mode == "log" and time.monotonic() - self._last_line >= self.log_every_s:
            self._log_position()
        if self.record is not None and time.monotonic() - self._last_record >= self.log_every_s:
            self._write_record()

    def _log_position(self) -> None:
        now = time.monotonic()
        rate = self.done / max(now - self.started, 1e-9)
        left = (self.total - self.done) / rate if rate > 0 else float("inf")
        log.info(
            "%s step %d/%d (%.0f%%), %.3g steps/s, %s left",
            self.name,
            self.done,
            self.total,
            100 * self.done / max(self.total, 1),
            rate,
            tqdm.format_interval(left) if left != float("inf") else "?",
        )
        self._last_line = now

    def epoch_done(self, epoch: int, **metrics: Any) -> None:
        now = time.monotonic()
        steps_per_s = (self.done - self._epoch_start_step) / max(now - self._epoch_started, 1e-9)
        self._epoch_started, self._epoch_start_step = now, self.done
        self.epochs_seen += 1
        self.epoch = epoch + 1
        self._write_record()
        self.run_logger.log_epoch(self.name, epoch, {**metrics, "steps_per_s": steps_per_s})
        if self.bar is not None:
            self.bar.set_postfix_str(f"epoch {epoch + 1}/{self.epochs} {_fmt(metrics)}")
        elif self.mode == "log":
            log.info("%s epoch %d/%d %s", self.name, epoch + 1, self.epochs, _fmt(metrics))
            self._last_line = now


class Progress:
    """``mode``: auto (bar on a terminal, else log), bar, log, none. Silent off rank 0.

    ``run_logger`` receives every epoch's metrics and is what the pipeline reports its stages,
    pictures and final values to; rank 0 alone gets a real one. ``record``: where to keep the
    progress record (rank 0's job directory), at every stage start and epoch end and at most
    once per ``log_every_s`` in between.
    """

    def __init__(
        self,
        mode: str = "auto",
        enabled: bool = True,
        run_logger: RunLogger | None = None,
        log_every_s: float = 60.0,
        record: Path | None = None,
    ) -> None:
        if mode == "auto":
            mode = "bar" if sys.stderr.isatty() else "log"
        self.mode = mode if enabled else "none"
        self.run_logger = run_logger if run_logger is not None and enabled else RunLogger()
        self.log_every_s = log_every_s
        self.record_path = record if enabled else None

    def _record(self, position: dict[str, Any]) -> None:
        assert self.record_path is not None
        tracked = self.run_logger.describe()
        runs = None if tracked is None else {k: tracked.get(k) for k in _TRACKED}
        try:
            atomic_write_json(self.record_path, {**position, "wandb": runs, "updated_at": now()})
        except OSError as err:  # a full or read-only disk must not stop the training
            log.warning("progress record %s not written: %s", self.record_path, err)
            self.record_path = None

    def info(self, message: str, *args: Any) -> None:
        if self.mode != "none":
            log.info(message, *args)

    @contextmanager
    def stage(self, name: str, total_steps: int, epochs: int = 1) -> Iterator[StageProgress]:
        bar = None
        if self.mode == "bar":
            bar = tqdm(total=total_steps, desc=name, unit="step", dynamic_ncols=True, leave=True)
        stage = StageProgress(
            name,
            total_steps,
            epochs,
            bar,
            self.mode,
            self.run_logger,
            self.log_every_s,
            self._record if self.record_path is not None else None,
        )
        try:
            yield stage
        finally:
            if bar is not None:
                bar.close()
            elif self.mode == "log" and stage.epochs_seen == 0 and stage.done == total_steps:
                # Stages without epochs (k-means) say when they end and how long they took.
                elapsed = tqdm.format_interval(time.monotonic() - stage.started)
                log.info("%s done in %s", name, elapsed)
