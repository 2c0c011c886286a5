"""One detached sweep's life, the same on every scheduler (local, SLURM, the LSF emulator).

Three jobs, two of seconds and one of 5000 generator epochs: submitted detached, followed with
``status``, re-run (detached: submits nothing; waiting: waits on the running job), the long job
cancelled with ``ue-sweep cancel``, and the report lists it. Every wait is for a condition,
bounded by a deadline far beyond the expected seconds.
"""

from __future__ import annotations

import hashlib
import json
import re
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from tests.conftest import SMOKE, run_cli, ue_sweep_env

DEADLINE_S = 900.0
GRID = ["generator.epochs=1,2,5000", "hydra.sweep.dir=sweep"]


def _read(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def wait_for(condition: Callable[[], bool], what: str) -> None:
    deadline = time.monotonic() + DEADLINE_S
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(1.0)


def status_rows(cwd: Path) -> dict[str, list[str]]:
    """``ue-sweep status sweep``: job -> its row's words; ``summary`` -> the last line."""
    proc = run_cli(["status", "sweep"], cwd=cwd)
    assert proc.returncode == 0, proc.stderr[-2000:]
    lines = proc.stdout.strip().splitlines()
    rows = {line.split()[0]: line.split() for line in lines[2:-1]}
    return rows | {"summary": [lines[-1]]}


def _digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def detached_flow(cwd: Path, launcher: list[str], submissions: Callable[[], int]) -> None:
    """``submissions()``: how many submissions the scheduler has received for the sweep."""
    args = ["-m", *launcher, "hydra.launcher.wait=false", *SMOKE, *GRID]
    waiting_args = ["-m", *launcher, *SMOKE, *GRID]
    sweep = cwd / "sweep"
    try:
        started = time.monotonic()
        proc = run_cli(args, cwd=cwd)
        output = proc.stdout + proc.stderr
        assert proc.returncode == 0, output[-3000:]
        assert time.monotonic() - started < 120, "a detached sweep returns once submitted"
        assert "not waiting (hydra.launcher.wait=false)" in output
        assert "ue-sweep status sweep --watch" in output
        table = json.loads((sweep / "jobs.json").read_text())
        ids = [job["scheduler_id"] for job in table["jobs"]]
        assert len(set(ids)) == 3 and None not in ids
        assert _read(sweep / "2" / "result.json").get("status") != "completed"

        rows = status_rows(cwd)
        assert rows["#2"][1] in ("pending", "running"), rows
        assert rows["#2"][2] == ids[2]

        count = submissions()
        again = run_cli(args, cwd=cwd)
        assert again.returncode == 0, again.stderr[-3000:]
        assert "submitted 0 jobs" in again.stdout + again.stderr
        assert f"already queued or running as {ids[2]}" in again.stdout + again.stderr
        assert submissions() == count, "a re-run submits nothing twice"
        table = json.loads((sweep / "jobs.json").read_text())
        assert [job["scheduler_id"] for job in table["jobs"]] == ids

        for num in (0, 1):
            wait_for(
                lambda num=num: (
                    _read(sweep / str(num) / "result.json").get("status") == "completed"
                ),
                f"job {num} to complete",
            )
        wait_for(
            lambda: str(_read(sweep / "2" / "progress.json").get("stage")) == "generators",
            "the long job's generator epochs",
        )
        rows = status_rows(cwd)
        assert [rows[f"#{n}"][1] for n in range(3)] == ["completed", "completed", "running"], rows
        assert rows["#2"][4] == "generators" and rows["#2"][5].endswith("/5000"), rows["#2"]
        done = {n: _digest(sweep / str(n) / "result.json") for n in (0, 1)}

        # A waiting re-run attaches to the running job instead of submitting it again.
        waiting = subprocess.Popen(
            [sys.executable, "-m", "ue_sweep", *waiting_args],
            cwd=cwd,
            env=ue_sweep_env(),
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        assert waiting.stdout is not None
        seen = []
        for line in waiting.stdout:
            seen.append(line)
            if "already queued or running as" in line:
                break
        else:
            raise AssertionError("".join(seen)[-3000:])

        cancel = run_cli(["cancel", "sweep", "2"], cwd=cwd)
        assert cancel.returncode == 0, cancel.stderr[-3000:]
        assert cancel.stdout.split() == ["#2", "cancelled:", ids[2]], cancel.stdout
        rest, _ = waiting.communicate(timeout=DEADLINE_S)
        # It ends with the job; which end it reads first, the job's own (a local job that gets
        # the SIGINT it is stopped with records it as failed) or cancel's, is a race.
        assert re.search(r"3 jobs: 2 skipped, 1 (cancelled|failed)", rest), rest[-3000:]
        assert waiting.returncode != 0
        assert submissions() == count

        rows = status_rows(cwd)
        summary = "3 jobs: 2 completed, 0 running, 0 pending, 0 failed, 1 cancelled"
        assert rows["summary"] == [summary], rows
        assert {n: _digest(sweep / str(n) / "result.json") for n in (0, 1)} == done
        record = _read(sweep / "2" / "result.json")
        assert (record["status"], record["error"]["type"]) == ("cancelled", "Cancelled")

        report = run_cli(["report", "sweep", "--no-wandb"], cwd=cwd)
        assert report.returncode == 0, report.stderr[-3000:]
        assert "- cancelled: `2` (experiment=smoke" in report.stdout
        assert "1 cancelled, 0 unreadable" in report.stdout
    finally:
        if (sweep / "jobs.json").exists():
            run_cli(["cancel", "sweep"], cwd=cwd)
