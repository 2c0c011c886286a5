"""The LSF defects found against IBM Spectrum LSF 10.1's and OLCF's documents, each through the
emulator behaviour that used to hide it (tests/lsf_emulator.py is a test double, not LSF).

Findings (issue 27): 2 requeue race, 3 per-slot reservation, 4 warning signal under jsrun and
blaunch, 5 blaunch's shell, 6 one resource set per node, 7 stuck states, 8 bhist of a requeued
job and its full event-log scan, 9 cancel of a finished job and rolled-over ids.
"""

from __future__ import annotations

import dataclasses
import datetime
import json
import os
import subprocess
import time
from pathlib import Path

import pytest
import submitit

from submitit_lsf.script import make_bsub_script
from submitit_lsf.watcher import LSFInfoWatcher, state_from_bhist
from tests import lsf_emulator
from tests.test_lsf import _running_sleeper, _wait, _wait_for_lsf_end
from ue_sweep.ops.cancel import cancel
from ue_sweep.ops.schedulers import LSFScheduler
from ue_sweep.ops.status import _rows_from_table
from ue_sweep.ops.table import JobTable
from ue_sweep.runtime.tracking import now


def _executor(lsf: Path, folder: str = "jobs") -> submitit.AutoExecutor:
    executor = submitit.AutoExecutor(folder=lsf / folder / "%j", cluster="lsf")
    executor.update_parameters(timeout_min=10)
    return executor


def _element(lsf: Path, job_id: str) -> dict:
    state = json.loads((lsf / "lsf-state" / f"job_{job_id.split('_')[0]}.json").read_text())
    return state["elements"]["0"]


def _requeue_once_late(counter: Path) -> str:
    """First run: ask for a requeue, then leave at once, as a preempted job does."""
    if not counter.exists():
        counter.touch()
        submitit.JobEnvironment()._requeue(1)
        os._exit(1)
    return "second run"


@pytest.mark.slow
def test_a_requeue_does_not_race_the_job_shells_exit(lsf, monkeypatch):
    # finding 2: brequeue lands after the shell that called it has exited (mbatchd acts later);
    # bsub -Q needs no command at all
    monkeypatch.setenv("LSF_EMULATOR_BREQUEUE_DELAY", "2")
    job = _executor(lsf).submit(_requeue_once_late, lsf / "counter")
    _wait(job)
    assert job.result() == "second run"
    element = _element(lsf, job.job_id)
    assert element["runs"] == 2
    assert any("Requeued job is waiting" in event for event in element["history"])


def test_gpu_and_memory_are_reserved_per_host_where_lsf_reserves_per_slot(lsf, monkeypatch):
    # finding 3: RESOURCE_RESERVE_PER_TASK=Y would multiply num=2 and mem=2GB by 2 slots
    monkeypatch.setenv("LSF_EMULATOR_RESOURCE_RESERVE_PER_TASK", "Y")
    monkeypatch.setenv("LSF_EMULATOR_HOST_GPUS", "2")
    monkeypatch.setenv("LSF_EMULATOR_HOST_MEM_GB", "2")
    executor = _executor(lsf)
    executor.update_parameters(tasks_per_node=2, gpus_per_node=2, cpus_per_task=1, mem_gb=2)
    job = executor.submit(pow, 2, 5)
    _wait(job, limit_s=60)
    assert job.results() == [32, 32]


def _wait_for_signal(folder: Path, limit_s: float = 30) -> str:
    """Say ready, then sleep until USR2 arrives."""
    import signal

    got = []
    signal.signal(signal.SIGUSR2, lambda *_: got.append(True))
    rank = os.environ.get("JSM_NAMESPACE_RANK") or os.environ["UE_LSF_RANK"]
    (folder / f"ready{rank}").touch()
    deadline = time.monotonic() + limit_s
    while not got and time.monotonic() < deadline:
        time.sleep(0.1)
    return "signalled" if got else "never signalled"


@pytest.mark.slow
@pytest.mark.parametrize(
    "params",
    [{"lsf_allocation": "nnodes", "lsf_task_launcher": "jsrun"}, {}],
    ids=["jsrun", "blaunch"],
)
def test_the_warning_signal_reaches_every_task_on_every_host(lsf, params):
    # finding 4: LSF signals the job shell; jsrun's forwarding is undocumented, and blaunch'd
    # tasks run on other hosts (the emulator's tasks run in their own sessions)
    executor = _executor(lsf)
    executor.update_parameters(nodes=2, tasks_per_node=1, **params)
    job = executor.submit(_wait_for_signal, lsf)
    deadline = time.monotonic() + 120
    while len(list(lsf.glob("ready*"))) < 2:
        assert time.monotonic() < deadline and not job.done(), "tasks never started"
        time.sleep(0.2)
    subprocess.run(["bkill", "-s", "USR2", job.job_id], check=True, capture_output=True)
    _wait(job)
    assert job.results() == ["signalled", "signalled"]


def test_blaunch_does_not_resplit_a_folder_with_spaces(lsf):
    # finding 5: without -no-shell, blaunch runs the command line through a shell again
    job = _executor(lsf, "my jobs").submit(pow, 3, 2)
    _wait(job)
    assert job.result() == 9


def _local_gpus() -> tuple:
    return (os.environ["JSM_NAMESPACE_LOCAL_RANK"], os.environ.get("CUDA_VISIBLE_DEVICES"))


@pytest.mark.slow
def test_one_resource_set_per_node_shares_the_nodes_gpus(lsf, tmp_path):
    # finding 6: CUDA IPC needs the node's GPUs in one resource set
    lines = make_bsub_script(
        "cmd",
        tmp_path,
        nodes=8,
        tasks_per_node=6,
        gpus_per_node=6,
        cpus_per_task=7,
        allocation="nnodes",
        task_launcher="jsrun",
        resource_sets="node",
    ).splitlines()
    assert "jsrun -n 8 -a 6 -c 42 -g 6 -r 1 -b packed:7 cmd &" in lines
    with pytest.raises(ValueError, match="jsrun setting"):
        make_bsub_script("cmd", tmp_path, resource_sets="node")
    executor = _executor(lsf)
    executor.update_parameters(
        nodes=2,
        tasks_per_node=2,
        gpus_per_node=2,
        lsf_allocation="nnodes",
        lsf_task_launcher="jsrun",
        lsf_resource_sets="node",
    )
    job = executor.submit(_local_gpus)
    _wait(job)
    assert job.results() == [("0", "0,1"), ("1", "0,1")] * 2


def test_a_job_stuck_in_psusp_is_reported_after_a_bounded_time(lsf, monkeypatch):
    # finding 7: LSF suspends a job that failed to start repeatedly (PSUSP) until someone acts
    job = _running_sleeper(lsf)
    lsf_emulator.set_state(int(job.job_id), 0, "PSUSP")
    watcher = LSFInfoWatcher(delay_s=0)
    watcher.register_job(job.job_id)
    watcher.update()
    assert watcher.get_state(job.job_id, mode="cache") == "PENDING", "not stuck yet"
    monkeypatch.setattr(watcher, "stuck_after_s", 0.0)
    watcher.update()
    assert watcher.get_state(job.job_id, mode="cache") == "STUCK"
    assert watcher.is_done(job.job_id, mode="cache")
    lsf_emulator.set_state(int(job.job_id), 0, "RUN")
    job.cancel()


def _requeued_by_hand(counter: Path) -> str:
    """First run waits to be requeued with brequeue; the second one finishes."""
    if not counter.exists():
        counter.touch()
        time.sleep(300)
    return "done"


@pytest.mark.slow
def test_bhist_reads_the_last_run_of_a_requeued_job_without_scanning_every_log(lsf, monkeypatch):
    # finding 8: the first run's "Exited" line must not win over the last run's end, and
    # `bhist -n 0` reads every event log file
    job = _executor(lsf).submit(_requeued_by_hand, lsf / "counter")
    while not (lsf / "counter").exists():
        time.sleep(0.2)
    time.sleep(1.0)
    subprocess.run(["brequeue", job.job_id], check=True, capture_output=True)
    _wait(job)
    while _element(lsf, job.job_id)["stat"] != "DONE":  # the result file may come first
        time.sleep(0.2)
    history = " ".join(_element(lsf, job.job_id)["history"])
    assert history.index("Exited with exit code") < history.index("Done successfully")
    assert state_from_bhist(job.job_id) == "COMPLETED"
    calls = (lsf / "lsf-state" / "bhist_calls").read_text().splitlines()
    assert calls and not any("-n 0" in call for call in calls)


def _table(lsf: Path, ids: dict[int, str], submitted_at: str) -> JobTable:
    sweep = lsf / "sweep"
    table = JobTable(sweep, "lsf", str(lsf / "jobs" / "%j"), "here")
    for num, job_id in ids.items():
        table.plan(num, [f"seed={num}"], sweep / str(num), f"f{num}")
        table.submitted({num: job_id})
        table.jobs[num] = dataclasses.replace(table.jobs[num], submitted_at=submitted_at)
        (sweep / str(num)).mkdir(parents=True, exist_ok=True)
    table.write()
    return table


def test_cancel_kills_and_records_every_job_it_can_and_names_the_others(lsf, monkeypatch):
    # finding 9: bkill exits 255 as soon as one id has ended, yet ends the others
    running = _running_sleeper(lsf)
    finished = _executor(lsf).submit(pow, 2, 2)
    _wait_for_lsf_end(finished)
    table = _table(lsf, {0: running.job_id, 1: finished.job_id}, now())
    refused = LSFScheduler(lsf / "jobs" / "%j").cancel([running.job_id, finished.job_id])
    assert refused == {finished.job_id: "Job has already finished"}
    _wait(running)
    assert running.state == "CANCELLED"

    # The same race inside `ue-sweep cancel`: a job that ends between the look-up and bkill.
    again = _running_sleeper(lsf)
    table = _table(lsf, {0: again.job_id, 1: finished.job_id}, now())
    monkeypatch.setattr(LSFScheduler, "states", lambda self, ids: dict.fromkeys(ids, "RUNNING"))
    lines = cancel(table, [0, 1], timeout_s=0)
    assert lines[0].startswith(f"#0   cancelled: {again.job_id}")
    assert lines[1] == f"#1   could not be cancelled: {finished.job_id}: Job has already finished"
    assert json.loads((lsf / "sweep" / "0" / "result.json").read_text())["status"] == "cancelled"


def test_a_job_id_is_trusted_only_with_its_submission_time(lsf):
    # finding 9: ids roll over (999999 by default); an id recorded two days ago that LSF now
    # gives to a job submitted today is someone else's job
    other = _running_sleeper(lsf)
    old = (datetime.datetime.now(datetime.UTC) - datetime.timedelta(days=2)).isoformat()
    table = _table(lsf, {0: other.job_id}, old)
    assert table.trusted([0]) == {}
    assert table.active([0]) == {}
    assert _rows_from_table(table)[0].scheduler_state is None
    (line,) = cancel(table, [0], timeout_s=0)
    assert line == "#0   not queued or running (not submitted): nothing to cancel"
    assert other.state == "RUNNING", "never cancelled"
    fresh = _table(lsf, {0: other.job_id}, now())
    assert fresh.trusted([0]) == {0: other.job_id}
    assert cancel(fresh, [0], timeout_s=30)[0].startswith(f"#0   cancelled: {other.job_id}")
