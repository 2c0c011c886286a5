"""What every stage of a job runs with, and the clock of its stages."""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

from ue_sweep.data.placement import Placement
from ue_sweep.runtime.distributed import Runtime
from ue_sweep.runtime.progress import Progress
from ue_sweep.store.artifacts import Stages
from ue_sweep.store.checkpoint import JobCheckpoints


class StageTimer:
    """Wall seconds per stage name, summed over the times a stage runs."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}

    @contextmanager
    def __call__(self, stage: str) -> Iterator[None]:
        start = time.perf_counter()
        try:
            yield
        finally:
            self.seconds[stage] = self.seconds.get(stage, 0.0) + time.perf_counter() - start


@dataclass
class StageRun:
    """One job's means to run a stage: its ranks, where the data lives, its progress, the
    checkpoints of the running stage, the artifact store and the stage clock."""

    rt: Runtime
    progress: Progress
    placement: Placement
    checkpoints: JobCheckpoints
    stages: Stages
    timer: StageTimer
