"""Whole sweeps on a real SLURM cluster (`.ci/slurm-cluster start DIR` and its SLURM_CONF).

`.ci/run` starts a single-node cluster with accounting before the tests; elsewhere these tests
are skipped unless `scontrol ping` reaches a controller.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.conftest import SMOKE, read_results, run_cli, ue_sweep_env
from tests.sweep_ops_flow import detached_flow, status_rows


def _controller_answers() -> bool:
    if shutil.which("scontrol") is None:
        return False
    ping = subprocess.run(["scontrol", "ping"], capture_output=True, text=True)
    return ping.returncode == 0 and "UP" in ping.stdout


pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(
        not _controller_answers(),
        reason="no SLURM controller answers `scontrol ping` (start one: .ci/slurm-cluster start "
        "DIR, then export SLURM_CONF=DIR/slurm.conf)",
    ),
]

# One CPU per task (and so one thread: SLURM_CPUS_PER_TASK): two jobs share the 2-core node.
SLURM_LAUNCHER = [
    "hydra/launcher=slurm",
    "hydra.launcher.timeout_min=10",
    "hydra.launcher.cpus_per_task=1",
]
SLURM = ["-m", *SLURM_LAUNCHER, *SMOKE]
# Long enough to be requeued mid-run, right after its first generator checkpoint.
# Long enough that SLURM's requeue (SIGTERM, then SIGKILL after KillWait) lands mid-run: scope
# `all` trains k times slower per epoch than the demo's `cluster`.
LONG = ["generator.epochs=30", "generator.scope=all"]


def _start_sweep(args: list[str], cwd: Path) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "ue_sweep", *args],
        cwd=cwd,
        env=ue_sweep_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def _wait_for(condition, what: str, proc: subprocess.Popen, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if proc.poll() is not None:
            pytest.fail(f"the sweep ended before {what}:\n{proc.stdout.read()[-3000:]}")
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.5)


def _slurm_job_id(sweep: Path, job_num: int) -> str:
    """The SLURM id of job ``job_num``, from submitit's folders: ``<array>_<index>`` for the
    elements of an array, the plain job id when a single job was submitted."""
    ids = sorted(p.name for p in (sweep / ".submitit").iterdir() if p.is_dir())
    return ids[0] if len(ids) == 1 else next(i for i in ids if i.endswith(f"_{job_num}"))


def _scontrol(*args: str) -> None:
    subprocess.run(["scontrol", *args], check=True, capture_output=True, text=True)


def test_a_grid_with_a_two_task_ddp_job_runs_to_completion(tmp_path):
    proc = run_cli(
        [*SLURM, "hydra.launcher.tasks_per_node=2", "batch_size=32,64", "hydra.sweep.dir=sweep"],
        cwd=tmp_path,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    records = read_results(tmp_path / "sweep")
    assert [(r["status"], r["world_size"], r["launcher"]) for r in records] == [
        ("completed", 2, "slurm")
    ] * 2
    assert sorted(r["batch"]["global"] for r in records) == [64, 128]
    assert "2 jobs: 2 completed" in proc.stdout + proc.stderr
    # Every task logged as its own rank.
    logs = sorted(p.name for p in (tmp_path / "sweep" / "0").glob("*.log"))
    assert len(logs) == 2, logs


def test_a_requeued_job_finishes_from_its_checkpoint_like_an_uninterrupted_one(tmp_path):
    reference = _start_sweep([*SLURM, *LONG, "hydra.sweep.dir=reference"], tmp_path)
    sweep = _start_sweep([*SLURM, *LONG, "hydra.sweep.dir=sweep"], tmp_path)
    checkpoint = tmp_path / "sweep" / "0" / "checkpoints" / "generators.pt"
    _wait_for(checkpoint.exists, "the first generator checkpoint", sweep)
    job_id = _slurm_job_id(tmp_path / "sweep", 0)
    _scontrol("requeue", job_id)
    # SLURM holds a requeued job until a begin time two minutes ahead: start it now.
    _wait_for(
        lambda: "BeginTime" in _job_state(job_id) or "PENDING" in _job_state(job_id),
        "the requeue",
        sweep,
    )
    _scontrol("update", f"jobid={job_id}", "StartTime=now")
    output, _ = sweep.communicate(timeout=300)
    assert sweep.returncode == 0, output[-3000:]
    assert reference.wait(timeout=300) == 0
    (a,) = read_results(tmp_path / "sweep")
    (b,) = read_results(tmp_path / "reference")
    assert (a["status"], a["restarts"], b["restarts"]) == ("completed", 1, 0)
    assert a["generator"]["loss_history"] == b["generator"]["loss_history"]
    assert _without_timings(a["metrics"]) == _without_timings(b["metrics"])
    assert "1 resumed from checkpoints" in output


def _without_timings(value):
    if isinstance(value, dict):
        return {k: _without_timings(v) for k, v in value.items() if k != "seconds"}
    if isinstance(value, list):
        return [_without_timings(v) for v in value]
    return value


def _job_state(job_id: str) -> str:
    return subprocess.run(
        ["scontrol", "show", "job", job_id], capture_output=True, text=True
    ).stdout


def test_a_failing_job_is_reported_failed_while_its_sibling_completes(tmp_path):
    # k=2000 exceeds the 1347 training images: the job fails when it sees the data.
    proc = run_cli([*SLURM, "clusters.k=10,2000", "hydra.sweep.dir=sweep"], cwd=tmp_path)
    output = proc.stdout + proc.stderr
    assert proc.returncode != 0
    assert "2 jobs: 1 completed, 1 failed" in output, output[-3000:]
    statuses = {r["config"]["clusters"]["k"]: r["status"] for r in read_results(tmp_path / "sweep")}
    assert statuses == {10: "completed", 2000: "failed"}
    failed = json.loads((tmp_path / "sweep" / "1" / "result.json").read_text())
    assert "clusters.k" in failed["error"]["message"]


def test_a_cancelled_job_is_reported_and_not_waited_on(tmp_path):
    started = time.monotonic()
    sweep = _start_sweep([*SLURM, "generator.epochs=1,2000", "hydra.sweep.dir=sweep"], tmp_path)
    long_job = tmp_path / "sweep" / "1" / "checkpoints" / "generators.pt"
    _wait_for(long_job.exists, "the long job to train", sweep)
    # A sweep whose submitting process waits is followed and cancelled from another shell too.
    job_id = _slurm_job_id(tmp_path / "sweep", 1)
    assert status_rows(tmp_path)["#1"][1:4] == ["running", job_id, "RUNNING"]
    cancel = run_cli(["cancel", "sweep", "1"], cwd=tmp_path)
    assert cancel.returncode == 0 and cancel.stdout.split() == ["#1", "cancelled:", job_id]
    output, _ = sweep.communicate(timeout=180)
    assert "2 jobs: 1 completed, 1 cancelled" in output, output[-3000:]
    assert sweep.returncode != 0 and "job #1 (" in output and "cancelled: scheduler state" in output
    assert "Traceback" not in output, "one line per job that did not complete"
    assert time.monotonic() - started < 240, "2000 epochs would take 25 minutes"
    statuses = [r["status"] for r in read_results(tmp_path / "sweep")]
    assert statuses == ["completed", "cancelled"]


@pytest.fixture
def sbatch_calls(tmp_path, monkeypatch) -> Path:
    """Every sbatch call of the test is logged to the returned file (then made for real)."""
    bin_dir, calls = tmp_path / "bin", tmp_path / "sbatch-calls"
    bin_dir.mkdir()
    real = shutil.which("sbatch")
    (bin_dir / "sbatch").write_text(f'#!/bin/sh\necho "$@" >> {calls}\nexec {real} "$@"\n')
    (bin_dir / "sbatch").chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}:{os.environ['PATH']}")
    return calls


def _sbatch_count(calls: Path) -> int:
    return len(calls.read_text().splitlines()) if calls.exists() else 0


@pytest.mark.timeout(1800)
def test_a_detached_sweep_is_followed_rerun_cancelled_and_reported(tmp_path, sbatch_calls):
    # A time limit the long job never reaches: it must be running when it is cancelled.
    launcher = [*SLURM_LAUNCHER, "hydra.launcher.timeout_min=60"]
    detached_flow(tmp_path, launcher, lambda: _sbatch_count(sbatch_calls))
    assert _sbatch_count(sbatch_calls) == 1, "one job array for the grid, nothing more"


def test_a_grid_with_a_missing_dataset_never_reaches_sbatch(tmp_path, sbatch_calls):
    args = [*SLURM, "dataset=digits,cifar10", f"paths.data_dir={tmp_path / 'none'}"]
    proc = run_cli([*args, "hydra.sweep.dir=sweep"], cwd=tmp_path)
    assert proc.returncode == 2, proc.stderr[-3000:]
    (line,) = proc.stderr.strip().splitlines()
    assert line.startswith("job #1 (") and "CIFAR-10 dataset not found" in line
    assert not sbatch_calls.exists() and not (tmp_path / "sweep").exists()


def test_check_only_prints_the_plan_and_calls_no_sbatch(tmp_path, sbatch_calls):
    done = run_cli([*SLURM, "seed=0", "hydra.sweep.dir=sweep"], cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    calls = _sbatch_count(sbatch_calls)
    proc = run_cli(
        [*SLURM, "seed=0,1", "hydra.launcher.check_only=true", "hydra.sweep.dir=sweep"],
        cwd=tmp_path,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    output = proc.stdout + proc.stderr
    assert "plan for sweep sweep (slurm): 2 jobs: 1 to submit, 1 completed (skipped)" in output
    assert "each job asks for: nodes=1 tasks_per_node=1 cpus_per_task=1 timeout_min=10" in output
    assert "check only (hydra.launcher.check_only=true): nothing was submitted" in output
    assert _sbatch_count(sbatch_calls) == calls and not (tmp_path / "sweep" / "1").exists()
