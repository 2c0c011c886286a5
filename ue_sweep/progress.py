"""Rank-0 progress: a bar per stage on a terminal, one log line per epoch in batch jobs."""

from __future__ import annotations

import logging
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from tqdm import tqdm

log = logging.getLogger("ue_sweep")


def _fmt(metrics: dict[str, Any]) -> str:
    return " ".join(
        f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}" for k, v in metrics.items()
    )


class StageProgress:
    def __init__(self, name: str, total: int, epochs: int, bar: tqdm | None, quiet: bool) -> None:
        self.name, self.total, self.epochs, self.bar, self.quiet = name, total, epochs, bar, quiet

    def advance(self, steps: int = 1) -> None:
        if self.bar is not None:
            self.bar.update(steps)

    def epoch_done(self, epoch: int, **metrics: Any) -> None:
        if self.bar is not None:
            self.bar.set_postfix_str(f"epoch {epoch + 1}/{self.epochs} {_fmt(metrics)}")
        elif not self.quiet:
            log.info("%s epoch %d/%d %s", self.name, epoch + 1, self.epochs, _fmt(metrics))


class Progress:
    """``mode``: auto (bar on a terminal, else log), bar, log, none. Silent off rank 0."""

    def __init__(self, mode: str = "auto", enabled: bool = True) -> None:
        if mode == "auto":
            mode = "bar" if sys.stderr.isatty() else "log"
        self.mode = mode if enabled else "none"

    def info(self, message: str, *args: Any) -> None:
        if self.mode != "none":
            log.info(message, *args)

    @contextmanager
    def stage(self, name: str, total_steps: int, epochs: int = 1) -> Iterator[StageProgress]:
        bar = None
        if self.mode == "bar":
            bar = tqdm(total=total_steps, desc=name, unit="step", dynamic_ncols=True, leave=True)
        try:
            yield StageProgress(name, total_steps, epochs, bar, quiet=self.mode == "none")
        finally:
            if bar is not None:
                bar.close()
