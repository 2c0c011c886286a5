"""Item 5: the digits grid ``-m batch_size=32,64,128 seed=0,1`` with and without the store.

With the default store (shared by the sweep's jobs) a batch-size grid fits one surrogate, one
clustering and one clean victim per seed; with a store per job every job computes every stage.
A per-job store is ``paths.artifact_dir`` interpolated from the job's grid point, since
``${hydra:runtime.output_dir}`` fails the multirun's pre-flight check (HydraConfig not set).
Both sweeps run with fewer generator and victim epochs than the demo, to fit the time budget.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from collections import Counter
from pathlib import Path

from benchmarks.rows import Row
from benchmarks.timing import timed

GRID = ["batch_size=32,64,128", "seed=0,1"]
SHORT = [
    "generator.epochs=2",
    "victim.epochs=2",
    "victim.average_last=1",
    "trainer.progress=log",
    "trainer.threads=1",
]
OWN_STORE = "paths.artifact_dir=artifacts/bs${batch_size.per_device}-seed${seed}"


def _sweep(cwd: Path, name: str, extra: list[str]) -> tuple[float, Counter]:
    env = {**os.environ, "UE_SWEEP_NAME": name}
    command = [sys.executable, "-m", "ue_sweep", "-m", *GRID, *SHORT, *extra]

    def call() -> None:
        subprocess.run(command, cwd=cwd, env=env, check=True, capture_output=True)

    wall = timed(call).wall
    stages: Counter = Counter()
    for result in sorted((cwd / "multirun" / name).glob("*/result.json")):
        for stage in json.loads(result.read_text())["stages"].values():
            stages[stage["status"]] += 1
    return wall, stages


def run() -> tuple[list[Row], dict]:
    with tempfile.TemporaryDirectory() as tmp:
        shared = _sweep(Path(tmp), "shared", [])
        own = _sweep(Path(tmp), "own", [OWN_STORE])
    raw = {
        name: {"wall_s": wall, "stages": dict(stages)}
        for name, (wall, stages) in (("shared", shared), ("own", own))
    }
    computed = {name: r["stages"].get("computed", 0) for name, r in raw.items()}
    case = f"digits {' '.join(GRID)}, generator/victim epochs 2"
    rows = [
        Row(
            "5 sweep",
            f"{case}: stage computations",
            "",
            "",
            None,
            None,
            "fewer with the store",
            value=f"{computed['own']} -> {computed['shared']} "
            f"({raw['shared']['stages'].get('reused', 0)} reused)",
        ),
        Row(
            "5 sweep",
            f"{case}: wall time",
            "store per job",
            "shared store",
            None,
            None,
            "> 1x",
            value=f"{own[0] / shared[0]:.2f}x ({own[0]:.0f} s -> {shared[0]:.0f} s)",
        ),
    ]
    return rows, raw
