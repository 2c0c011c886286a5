"""The LSF backend: job script, state parsing, and whole jobs through the LSF emulator.

LSF itself cannot run here (no open LSF in the package registries); tests/lsf_emulator.py parses
the real #BSUB lines and answers in LSF's formats. See its docstring for what it covers.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import submitit

from submitit_lsf.environment import lsf_job_ref
from submitit_lsf.executor import LSFInfoWatcher
from submitit_lsf.script import make_bsub_script
from tests.conftest import SMOKE, read_results, run_cli
from ue_sweep.distributed import env_from_launcher


def test_summit_script_has_the_directives_and_resource_sets_of_the_machine(tmp_path):
    script = make_bsub_script(
        "python -u -m submitit_lsf.task /jobs/%j",
        tmp_path / "%j",
        job_name="ue",
        nodes=8,
        tasks_per_node=6,
        gpus_per_node=6,
        cpus_per_task=7,
        walltime_min=120,
        project="ABC123",
        queue="batch",
        alloc_flags="smt4",
        directives=["-G mygroup"],
        map_count=36,
        array_parallelism=4,
    )
    lines = script.splitlines()
    for directive in (
        "#BSUB -J 'ue[1-36]%4'",
        "#BSUB -nnodes 8",
        "#BSUB -W 120",
        "#BSUB -P ABC123",
        "#BSUB -q batch",
        '#BSUB -alloc_flags "smt4"',
        "#BSUB -wa USR2",
        "#BSUB -wt 5",
        "#BSUB -G mygroup",
        f"#BSUB -o {tmp_path}/lsf_%J_%I.out",
    ):
        assert directive in lines
    assert "jsrun -n 48 -a 1 -c 7 -g 1 -r 6 python -u -m submitit_lsf.task /jobs/%j &" in lines
    assert lines.index("trap 'kill -USR2 \"${tasks[@]}\" 2>/dev/null' USR2") < next(
        i for i, line in enumerate(lines) if line.startswith("jsrun")
    )


def test_slot_allocation_and_other_task_launchers(tmp_path):
    slots = make_bsub_script(
        "cmd",
        tmp_path,
        nodes=2,
        tasks_per_node=4,
        gpus_per_node=4,
        allocation="slots",
        task_launcher="mpirun",
    )
    assert "#BSUB -n 8" in slots and '#BSUB -R "span[ptile=4]"' in slots
    assert '#BSUB -gpu "num=4"' in slots
    assert "mpirun -np 8 --map-by ppr:4:node -x SUBMITIT_EXECUTOR" in slots
    blaunch = make_bsub_script("cmd", tmp_path, nodes=2, tasks_per_node=3, task_launcher="blaunch")
    assert 'blaunch -z "$host" env UE_LSF_RANK=$rank' in blaunch


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"task_launcher": "srun"}, "task_launcher"),
        ({"walltime_min": 5}, "warning_time_min"),
        ({"allocation": "cores"}, "allocation"),
    ],
)
def test_bad_script_settings_are_refused(tmp_path, kwargs, message):
    with pytest.raises(ValueError, match=message):
        make_bsub_script("cmd", tmp_path, **kwargs)


def test_bjobs_output_maps_to_submitit_states():
    info = LSFInfoWatcher().read_info(
        "1001|0|RUN|-\n1002|1|DONE|-\n1002|2|EXIT|1\n1002|3|SSUSP|-\n"
        "Job <999> is not found\n1003|0|PEND|-\n"
    )
    assert {k: v["State"] for k, v in info.items()} == {
        "1001": "RUNNING",
        "1002_0": "COMPLETED",
        "1002_1": "FAILED",
        "1002_2": "SUSPENDED",
        "1003": "PENDING",
    }
    watcher = LSFInfoWatcher()
    watcher._info_dict.update(info)
    assert not watcher.is_done("1002_2", mode="cache"), "a suspended job is not over"
    assert watcher.is_done("1002_1", mode="cache")
    assert (lsf_job_ref("1002_1"), lsf_job_ref("1001")) == ("1002[2]", "1001")


@pytest.fixture
def lsf(tmp_path, monkeypatch) -> Path:
    """The emulated LSF commands first on PATH, with their own state directory."""
    bin_dir = tmp_path / "lsf-bin"
    bin_dir.mkdir()
    from tests import lsf_emulator

    lsf_emulator.install(str(bin_dir))
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.setenv("LSF_EMULATOR_STATE", str(tmp_path / "lsf-state"))
    return tmp_path


def _where() -> tuple:
    env = env_from_launcher()
    return (
        env.rank,
        env.local_rank,
        env.world_size,
        env.local_world_size,
        env.master_addr,
        env.master_port,
        env.launcher,
    )


@pytest.mark.parametrize("task_launcher", ["jsrun", "blaunch"])
def test_every_task_of_a_two_node_job_reports_its_own_rank(lsf, task_launcher):
    executor = submitit.AutoExecutor(folder=lsf / "jobs" / "%j", cluster="lsf")
    executor.update_parameters(
        nodes=2,
        tasks_per_node=2,
        timeout_min=10,
        lsf_task_launcher=task_launcher,
        lsf_project="ABC123",
    )
    job = executor.submit(_where)
    ranks = job.results()
    assert [r[:4] for r in ranks] == [(0, 0, 4, 2), (1, 1, 4, 2), (2, 0, 4, 2), (3, 1, 4, 2)]
    # master: the first compute host (127.0.0.1 in the emulator), not the batch launch node
    assert {r[4:] for r in ranks} == {("127.0.0.1", ranks[0][5], "lsf")}


def test_job_arrays_run_one_element_per_call(lsf):
    executor = submitit.AutoExecutor(folder=lsf / "jobs" / "%j", cluster="lsf")
    executor.update_parameters(timeout_min=10, lsf_array_parallelism=2)
    jobs = executor.map_array(pow, [2, 3, 4], [2, 2, 2])
    assert [job.job_id.split("_")[1] for job in jobs] == ["0", "1", "2"]
    assert [job.result() for job in jobs] == [4, 9, 16]
    (script,) = (lsf / "lsf-state").glob("job_*.sh")  # what bsub read on stdin
    assert "#BSUB -J 'submitit[1-3]%2'" in script.read_text().splitlines()


def test_bkill_ends_a_job_as_failed(lsf):
    executor = submitit.AutoExecutor(folder=lsf / "jobs" / "%j", cluster="lsf")
    executor.update_parameters(timeout_min=10)
    import time

    job = executor.submit(time.sleep, 300)
    while job.state != "RUNNING":
        time.sleep(0.2)
    job.cancel()
    with pytest.raises(submitit.core.utils.UncompletedJobError):
        job.result()
    assert job.state == "FAILED"


LSF_SWEEP = ["hydra/launcher=lsf", "hydra.launcher.timeout_min=10", "hydra.launcher.project=X"]


@pytest.mark.slow
def test_a_ue_sweep_grid_of_two_task_ddp_jobs_runs_through_lsf(lsf):
    proc = run_cli(
        [
            "-m",
            *LSF_SWEEP,
            "hydra.launcher.tasks_per_node=2",
            "batch_size=32,64",
            *SMOKE,
            "hydra.sweep.dir=sweep",
        ],
        cwd=lsf,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    records = read_results(lsf / "sweep")
    assert [(r["status"], r["world_size"], r["launcher"]) for r in records] == [
        ("completed", 2, "lsf")
    ] * 2
    assert sorted(r["batch"]["global"] for r in records) == [64, 128]
    assert "2 jobs: 2 completed" in proc.stdout + proc.stderr


@pytest.mark.slow
def test_walltime_warning_checkpoints_and_requeues_and_the_job_finishes(lsf):
    # One emulated minute lasts 2 s: -W 20 with -wt 10 warns after 20 s of a run, while the
    # 32 generator epochs take about 25 s here. Each run gets further, so the job completes
    # after one requeue (or more on a slower machine).
    proc = run_cli(
        [
            "-m",
            *LSF_SWEEP,
            "hydra.launcher.timeout_min=20",
            "hydra.launcher.warning_time_min=10",
            *SMOKE,
            "generator.epochs=32",
            "hydra.sweep.dir=sweep",
        ],
        cwd=lsf,
        timeout=300,
        LSF_EMULATOR_MINUTE="2",
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    (record,) = read_results(lsf / "sweep")
    assert record["status"] == "completed" and record["restarts"] >= 1
    (job,) = [json.loads(p.read_text()) for p in (lsf / "lsf-state").glob("job_*.json")]
    assert job["elements"]["0"]["runs"] == record["restarts"] + 1, "requeued by brequeue"
    assert f"resumed {record['restarts']}x" in proc.stdout + proc.stderr


def test_the_summit_preset_refuses_to_submit_without_a_project(lsf):
    proc = run_cli(["-m", "hydra/launcher=summit", *SMOKE, "hydra.sweep.dir=sweep"], cwd=lsf)
    assert proc.returncode != 0
    assert "Missing mandatory value: hydra.launcher.project" in proc.stderr
    assert not list((lsf / "lsf-state").glob("job_*")), "nothing was submitted"
