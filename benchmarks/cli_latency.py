"""Item 7: how fast the command line answers when it computes nothing.

Each command runs cold in a new process, 5 times, and the median counts; ``python -c pass`` in
the same loop is the floor a Python command cannot beat. Goal: every command under 1 s on an
idle machine (the check path imports no torch; tests/test_layout.py guards that).

Python's bytecode cache is on, as on a user's install (``PYTHONDONTWRITEBYTECODE``, which some
sandboxes set, is removed), and one untimed run of each command before the timed ones writes it,
as the first run after an install does.
"""

from __future__ import annotations

import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from benchmarks.rows import Row
from benchmarks.timing import Timing

RUNS = 5
ENTRY = "from ue_sweep.cli.main import main; main()"
COMMANDS = {
    "refused command line (batch_size.per_device=-1)": ["batch_size.per_device=-1"],
    "ue-sweep --help": ["--help"],
    "ue-sweep status SWEEP_DIR": ["status", "{sweep}"],
    "ue-sweep cancel --help": ["cancel", "--help"],
    "ue-sweep report --help": ["report", "--help"],
}


def _seconds(argv: list[str], cwd: Path) -> float:
    env = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
    started = time.perf_counter()
    subprocess.run(argv, cwd=cwd, env=env, capture_output=True, check=False)
    return time.perf_counter() - started


def run() -> tuple[list[Row], dict]:
    with tempfile.TemporaryDirectory() as tmp:
        cwd = Path(tmp)
        sweep = cwd / "multirun" / "empty"
        sweep.mkdir(parents=True)
        argvs = {
            name: [sys.executable, "-c", ENTRY, *(a.format(sweep=sweep) for a in args)]
            for name, args in COMMANDS.items()
        }
        argvs["floor"] = [sys.executable, "-c", "pass"]
        for argv in argvs.values():
            _seconds(argv, cwd)  # writes the bytecode cache; not timed
        runs: dict[str, list[float]] = {name: [] for name in argvs}
        for _ in range(RUNS):  # interleaved: a burst of load hits every command alike
            for name, argv in argvs.items():
                runs[name].append(_seconds(argv, cwd))
    median = {name: statistics.median(times) for name, times in runs.items()}
    floor = median.pop("floor")
    rows = [
        Row(
            "7 cli",
            name,
            "python -c pass",
            "command",
            Timing(floor, floor),
            Timing(seconds, seconds),
            "< 1 s",
            value=f"{seconds:.2f} s (median of {RUNS}; floor {floor:.2f} s)",
        )
        for name, seconds in median.items()
    ]
    return rows, {"median_s": median, "floor_s": floor, "runs_s": runs}
