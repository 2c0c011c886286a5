"""Measuring under contention: wall and CPU seconds, interleaved repetitions, best of each.

The benchmarks share their cores with other work, which inflates wall time by whatever else
runs. CPU seconds of the process (all its threads) are much less sensitive to that; both are
kept, and a variant's figure is its best repetition, the one least disturbed.
"""

from __future__ import annotations

import math
import os
import platform
import time
from collections.abc import Callable
from dataclasses import dataclass
from importlib import metadata


@dataclass(frozen=True)
class Timing:
    wall: float
    cpu: float

    def as_dict(self) -> dict[str, float]:
        return {"wall_s": self.wall, "cpu_s": self.cpu}


def timed(fn: Callable[[], object]) -> Timing:
    wall, cpu = time.perf_counter(), time.process_time()
    fn()
    return Timing(time.perf_counter() - wall, time.process_time() - cpu)


def interleaved(variants: dict[str, Callable[[], object]], reps: int) -> dict[str, list[Timing]]:
    """Each variant once per round, ``reps`` rounds, so a burst of load hits all of them."""
    runs: dict[str, list[Timing]] = {name: [] for name in variants}
    for _ in range(reps):
        for name, fn in variants.items():
            runs[name].append(timed(fn))
    return runs


def best(runs: list[Timing]) -> Timing:
    return Timing(min(t.wall for t in runs), min(t.cpu for t in runs))


def loglog_slope(xs: list[float], ys: list[float]) -> float:
    """Least-squares exponent p of ``y ~ x**p``."""
    lx, ly = [math.log(x) for x in xs], [math.log(y) for y in ys]
    mx, my = sum(lx) / len(lx), sum(ly) / len(ly)
    return sum((a - mx) * (b - my) for a, b in zip(lx, ly, strict=True)) / sum(
        (a - mx) ** 2 for a in lx
    )


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def machine() -> dict[str, object]:
    """What the figures were measured on."""
    versions = {}
    for dist in ("torch", "torchvision", "numpy", "pillow", "hydra-core"):
        try:
            versions[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            versions[dist] = None
    return {
        "host": platform.node(),
        "cpu": _cpu_model(),
        "cores": os.cpu_count(),
        "affinity": len(os.sched_getaffinity(0)),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "versions": versions,
    }


def load_average() -> list[float]:
    return list(os.getloadavg())
