"""The LSF backend: job script, state parsing, and whole jobs through the LSF emulator.

LSF itself cannot run here (no open LSF in the package registries); tests/lsf_emulator.py parses
the real #BSUB lines and answers in LSF's formats. See its docstring for what it covers.
"""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import submitit

from hydra_plugins.ue_sweep_launchers.config import LSFConf, SummitConf
from submitit_lsf.environment import compute_hosts, lsf_job_ref
from submitit_lsf.script import make_bsub_script
from submitit_lsf.watcher import LSFInfoWatcher
from tests import lsf_emulator
from tests.conftest import SMOKE, read_results, run_cli, ue_sweep_env
from tests.sweep_ops_flow import detached_flow
from ue_sweep.config import TrainerConfig
from ue_sweep.runtime.distributed import cpu_threads
from ue_sweep.runtime.env import DistEnv, DistributedSetupError, env_from_launcher

# Launcher-config keys under their make_bsub_script names (submitit's equivalence dict).
RENAMED = {"timeout_min": "walltime_min", "name": "job_name"}
# ue-sweep's own settings (check_only, wait) never reach submitit either.
NOT_SCRIPT = {"_target_", "submitit_folder", "max_num_timeout", "name", "check_only", "wait"}


def _preset_script(conf: type, tmp_path: Path, **overrides) -> str:
    """The job script a launcher preset writes, from the preset's own defaults."""
    values = {
        RENAMED.get(f.name, f.name): getattr(conf(project="P"), f.name)
        for f in dataclasses.fields(conf)
        if f.name not in NOT_SCRIPT
    }
    return make_bsub_script("python -m submitit_lsf.task F", tmp_path, **(values | overrides))


def test_summit_script_has_the_directives_and_resource_sets_of_the_machine(tmp_path):
    script = _preset_script(
        SummitConf, tmp_path, directives=["-G mygroup"], map_count=36, array_parallelism=4
    )
    lines = script.splitlines()
    for directive in (
        "#BSUB -J 'submitit[1-36]%4'",
        "#BSUB -nnodes 8",
        "#BSUB -W 120",
        "#BSUB -P P",
        "#BSUB -q batch",
        '#BSUB -alloc_flags "smt4"',
        "#BSUB -wa USR2",
        "#BSUB -wt 5",
        "#BSUB -G mygroup",
        f'#BSUB -o "{tmp_path}/lsf_%J_%I.out"',
    ):
        assert directive in lines
    assert not any(line.startswith(("#BSUB -n ", "#BSUB -R", "#BSUB -M")) for line in lines)
    assert lines.index("trap 'echo USR2 > \"$UE_LSF_SIGNAL_MARKER\"' USR2") < next(
        i for i, line in enumerate(lines) if line.startswith("jsrun")
    )


def test_summit_tasks_are_bound_to_their_cores_with_cuda_hooks_off(tmp_path):
    # items 1, 2: jsrun binds packed:1 by default, and Spectrum MPI's CUDA hooks fail NCCL jobs
    lines = _preset_script(SummitConf, tmp_path).splitlines()
    assert (
        'jsrun -n 48 -a 1 -c 7 -g 1 -r 6 -b packed:7 --smpiargs="-disable_gpu_hooks" '
        "python -m submitit_lsf.task F &"
    ) in lines
    assert "export UE_LSF_CPUS_PER_TASK=7" in lines


def test_a_jsrun_tasks_affinity_is_its_own_and_is_not_divided_again(monkeypatch):
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(28)), raising=False)
    six_per_node = DistEnv(rank=0, world_size=48, local_world_size=6)
    assert cpu_threads(TrainerConfig(), six_per_node, {"JSM_NAMESPACE_LOCAL_RANK": "0"}) == 28
    assert cpu_threads(TrainerConfig(), six_per_node, {}) == 28 // 6, "shared node: a share"
    assert cpu_threads(TrainerConfig(), six_per_node, {"UE_LSF_CPUS_PER_TASK": "7"}) == 7


def test_the_plain_lsf_preset_uses_slots_span_and_blaunch(tmp_path):
    # item 3: -nnodes and jsrun exist only under IBM CSM/JSM
    script = _preset_script(LSFConf, tmp_path, nodes=2, tasks_per_node=4)
    lines = script.splitlines()
    assert "#BSUB -n 8" in lines and '#BSUB -R "span[ptile=4]"' in lines
    assert "-nnodes" not in script and "jsrun" not in script
    assert 'blaunch -z "$host" -no-shell env UE_LSF_RANK=$rank' in script
    assert "export UE_LSF_LAUNCH_HOST=" in lines, "the job shell runs on a compute host"


def test_slots_mode_reserves_cpus_per_task_slots_per_rank_and_memory_per_host(tmp_path):
    # items 10, 11
    script = make_bsub_script(
        "cmd", tmp_path, nodes=2, tasks_per_node=4, gpus_per_node=4, cpus_per_task=3, mem_gb=16
    )
    lines = script.splitlines()
    assert "#BSUB -n 24" in lines and '#BSUB -R "span[ptile=12]"' in lines
    assert '#BSUB -gpu "num=4/host"' in lines
    assert '#BSUB -R "rusage[mem=16GB/host]"' in lines and "-M" not in script
    mpirun = make_bsub_script("cmd", tmp_path, nodes=2, tasks_per_node=4, task_launcher="mpirun")
    assert "mpirun -np 8 --map-by ppr:4:node -x SUBMITIT_EXECUTOR" in mpirun
    assert "-x UE_LSF_LAUNCH_HOST" in mpirun and "-x UE_LSF_REQUEUE_MARKER" in mpirun
    assert "-x UE_LSF_SIGNAL_MARKER" in mpirun


def test_log_paths_are_quoted(tmp_path):
    script = make_bsub_script("cmd", tmp_path / "my jobs")
    assert f'#BSUB -o "{tmp_path}/my jobs/lsf_%J_%I.out"' in script.splitlines()
    with pytest.raises(ValueError, match="double quote"):
        make_bsub_script("cmd", tmp_path / 'a"b')


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"task_launcher": "srun"}, "task_launcher"),
        ({"walltime_min": 5}, "warning_time_min"),
        ({"allocation": "cores"}, "allocation"),
        ({"gpus_per_node": 6, "tasks_per_node": 1}, "one task per GPU"),  # item 8
        ({"gpus_per_node": 2, "tasks_per_node": 6}, "one task per GPU"),
        ({"allocation": "nnodes", "mem_gb": 64}, "whole-node"),
        ({"map_count": 1001}, "max_array_size"),
    ],
)
def test_bad_script_settings_are_refused(tmp_path, kwargs, message):
    with pytest.raises(ValueError, match=message):
        make_bsub_script("cmd", tmp_path, **kwargs)


def test_bjobs_output_maps_to_submitit_states():
    info = LSFInfoWatcher().read_info(
        "1001|0|RUN|-\n1002|1|DONE|-\n1002|2|EXIT|1\n1002|3|SSUSP|-\n"
        "Job <999> is not found\n1003|0|PEND|-\n"
        "1004|0|ZOMBI|-\n1005|0|POST_DONE|-\n1006|0|POST_ERR|1\n1007|0|PROV|-\n"
    )
    assert {k: v["State"] for k, v in info.items()} == {
        "1001": "RUNNING",
        "1002_0": "COMPLETED",
        "1002_1": "FAILED",
        "1002_2": "SUSPENDED",
        "1003": "PENDING",
        "1004": "UNKNOWN",  # item 6: LSF lost contact; the job may still run
        "1005": "COMPLETED",
        "1006": "FAILED",
        "1007": "PENDING",
    }
    watcher = LSFInfoWatcher()
    watcher._info_dict.update(info)
    assert not watcher.is_done("1002_2", mode="cache"), "a suspended job is not over"
    assert not watcher.is_done("1004", mode="cache"), "a zombie job is not over"
    assert watcher.is_done("1002_1", mode="cache")
    assert (lsf_job_ref("1002_1"), lsf_job_ref("1001")) == ("1002[2]", "1001")


def test_array_ids_of_lsb_bjobs_display_enh_are_parsed():
    # item 5: with LSB_BJOBS_DISPLAY_ENH=Y the JOBID column reads 1002[1]
    info = LSFInfoWatcher().read_info("1002[1]|1|DONE|-\n1002[2]|2|RUN|-\n")
    assert {k: v["State"] for k, v in info.items()} == {"1002_0": "COMPLETED", "1002_1": "RUNNING"}


def test_the_launch_host_exported_by_the_job_shell_is_not_a_compute_host(tmp_path):
    # item 7: CSM launch nodes need not be called batch*/login*
    hostfile = tmp_path / "hosts"
    hostfile.write_text("ln07\nc1\nc1\nc2\n")
    csm = {"LSB_DJOB_HOSTFILE": str(hostfile), "UE_LSF_LAUNCH_HOST": "ln07.olcf.example"}
    assert compute_hosts(csm) == ["c1", "c2"]
    plain = {"LSB_HOSTS": "login3 login3 c2", "UE_LSF_LAUNCH_HOST": ""}
    assert compute_hosts(plain) == ["login3", "c2"], "plain LSF: the first host computes"
    assert compute_hosts({"LSB_HOSTS": "batch1 c1 c2"}) == ["c1", "c2"], "other job scripts"


def test_rank_0_fails_fast_when_the_master_is_not_its_own_host(monkeypatch):
    for key, value in {
        "SUBMITIT_EXECUTOR": "lsf",
        "LSB_JOBID": "42",
        "LSB_HOSTS": "192.0.2.1 192.0.2.2",  # TEST-NET-1: never an address of this machine
        "UE_LSF_LAUNCH_HOST": "",
        "UE_LSF_RANK": "0",
        "UE_LSF_LOCAL_RANK": "0",
        "UE_LSF_SIZE": "2",
    }.items():
        monkeypatch.setenv(key, value)
    with pytest.raises(DistributedSetupError, match=r"master address 192\.0\.2\.1"):
        env_from_launcher()
    monkeypatch.setenv("UE_LSF_RANK", "1")
    assert env_from_launcher().master_addr == "192.0.2.1", "other ranks only connect"


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


def _where_and_threads() -> tuple:
    return (*_where(), cpu_threads(TrainerConfig(), env_from_launcher()))


@pytest.mark.slow
@pytest.mark.parametrize(
    ("params", "launch_host"),
    [
        # Summit-like: -nnodes, jsrun bound to 2 cores, GPU hooks off, a launch node named ln07
        (
            {
                "lsf_allocation": "nnodes",
                "lsf_task_launcher": "jsrun",
                "lsf_smpiargs": "-disable_gpu_hooks",
                "cpus_per_task": 2,
            },
            "ln07",
        ),
        # plain LSF: 2 x 2 ranks of 2 slots each (-n 8, ptile 4), memory reserved, blaunch
        ({"cpus_per_task": 2, "mem_gb": 1}, None),
    ],
    ids=["summit", "plain"],
)
def test_every_task_of_a_two_node_job_reports_its_own_rank(lsf, monkeypatch, params, launch_host):
    if launch_host:
        monkeypatch.setenv("LSF_EMULATOR_LAUNCH_HOST", launch_host)
    executor = submitit.AutoExecutor(folder=lsf / "jobs" / "%j", cluster="lsf")
    executor.update_parameters(nodes=2, tasks_per_node=2, timeout_min=10, **params)
    job = executor.submit(_where_and_threads)
    ranks = job.results()
    assert [r[:4] for r in ranks] == [(0, 0, 4, 2), (1, 1, 4, 2), (2, 0, 4, 2), (3, 1, 4, 2)]
    # master: the first compute host (127.0.0.1 in the emulator), never the launch node
    assert {r[4:7] for r in ranks} == {("127.0.0.1", ranks[0][5], "lsf")}
    assert {r[7] for r in ranks} == {2}, "threads: the task's cpus_per_task"


def test_job_arrays_run_one_element_per_call(lsf, monkeypatch):
    monkeypatch.setenv("LSB_BJOBS_DISPLAY_ENH", "Y")  # item 5: bjobs ids read 1000[1]
    executor = submitit.AutoExecutor(folder=lsf / "jobs" / "%j", cluster="lsf")
    executor.update_parameters(timeout_min=10, lsf_array_parallelism=2)
    jobs = executor.map_array(pow, [2, 3, 4], [2, 2, 2])
    assert [job.job_id.split("_")[1] for job in jobs] == ["0", "1", "2"]
    assert [job.result() for job in jobs] == [4, 9, 16]
    (script,) = (lsf / "lsf-state").glob("job_*.sh")  # what bsub read on stdin
    assert "#BSUB -J 'submitit[1-3]%2'" in script.read_text().splitlines()


def test_grids_larger_than_max_job_array_size_go_out_as_several_arrays(lsf, monkeypatch):
    # item 12, with a log folder whose name has a space
    monkeypatch.setenv("LSF_EMULATOR_MAX_ARRAY_SIZE", "2")
    executor = submitit.AutoExecutor(folder=lsf / "my jobs" / "%j", cluster="lsf")
    executor.update_parameters(timeout_min=10)
    with pytest.raises(submitit.core.utils.FailedSubmissionError, match="MAX_JOB_ARRAY_SIZE"):
        executor.map_array(pow, [2, 3, 4], [2, 2, 2])
    executor.update_parameters(lsf_max_array_size=2)
    jobs = executor.map_array(pow, [2, 3, 4], [2, 2, 2])
    assert [job.result() for job in jobs] == [4, 9, 16]
    assert [job.job_id for job in jobs] == ["1000_0", "1000_1", "1001_0"]


def _wait(job: submitit.Job, limit_s: float = 120) -> None:
    """Wait for the job's end; fail (rather than hang) if it is not seen within limit_s."""
    deadline = time.monotonic() + limit_s
    while not job.done():
        assert time.monotonic() < deadline, f"job {job.job_id} never ended: {job.state}"
        time.sleep(0.5)


def _wait_for_lsf_end(job: submitit.Job, limit_s: float = 120) -> None:
    """Wait until the emulated LSF itself records the job's end: submitit calls a job done as
    soon as its result file exists, while the job's shell (and so its LSF state) may still run."""
    _wait(job, limit_s)
    main = int(job.job_id.split("_")[0])
    deadline = time.monotonic() + limit_s
    while lsf_emulator.load(main)["elements"]["0"]["stat"] not in ("DONE", "EXIT"):
        assert time.monotonic() < deadline, f"LSF never ended job {job.job_id}"
        time.sleep(0.2)


def _running_sleeper(lsf: Path) -> submitit.Job:
    """A job that sleeps for 5 minutes, returned once LSF runs it."""
    executor = submitit.AutoExecutor(folder=lsf / "jobs" / "%j", cluster="lsf")
    executor.update_parameters(timeout_min=10)
    job = executor.submit(time.sleep, 300)
    while job.state != "RUNNING":
        time.sleep(0.2)
    return job


def test_bkill_ends_a_job_as_cancelled(lsf):
    # item 6: the job report's TERM_OWNER, not just EXIT
    job = _running_sleeper(lsf)
    job.cancel()
    with pytest.raises(submitit.core.utils.UncompletedJobError):
        job.result()
    assert job.state == "CANCELLED"


def test_zombi_and_prov_elements_are_not_finished(lsf):
    # item 6 through the emulator: states it does not reach by itself
    job = _running_sleeper(lsf)
    for stat, state in (("ZOMBI", "UNKNOWN"), ("PROV", "PENDING")):
        lsf_emulator.set_state(int(job.job_id), 0, stat)
        job.watcher.update()  # not mode="force": submitit skips it within 1 ms of the last call
        info = job.watcher.get_info(job.job_id, mode="cache")
        assert (info["LSFState"], info["State"]) == (stat, state)
        assert not job.watcher.is_done(job.job_id, mode="cache")
    job.cancel()


def test_a_job_lsf_has_forgotten_ends_as_its_job_report_says(lsf, monkeypatch):
    # item 4: forgotten at once (CLEAN_PERIOD 0), killed without a result file
    monkeypatch.setenv("LSF_EMULATOR_CLEAN_PERIOD", "0")
    executor = submitit.AutoExecutor(folder=lsf / "jobs" / "%j", cluster="lsf")
    executor.update_parameters(timeout_min=10)
    job = executor.submit(os._exit, 3)
    _wait(job)
    assert job.state == "FAILED"
    assert job.watcher.get_info(job.job_id, mode="cache")["LSFState"] == "forgotten"


def test_forgotten_jobs_fall_back_to_bhist_then_are_lost_after_a_bounded_time(lsf, monkeypatch):
    # item 4: bjobs exits 255 for the unknown id; the known job's line still counts
    executor = submitit.AutoExecutor(folder=lsf / "jobs" / "%j", cluster="lsf")
    executor.update_parameters(timeout_min=10)
    finished, running = executor.submit(os._exit, 0), executor.submit(time.sleep, 300)
    _wait_for_lsf_end(finished)
    while running.state != "RUNNING":
        time.sleep(0.2)
    for log in (lsf / "jobs").glob("lsf_*.out"):
        log.unlink()  # no job report left: only bhist knows
    monkeypatch.setenv("LSF_EMULATOR_CLEAN_PERIOD", "0")
    watcher = LSFInfoWatcher()
    for job_id in (finished.job_id, running.job_id, "999"):
        watcher.register_job(job_id)
    watcher.update()
    states = {j: watcher.get_state(j, mode="cache") for j in (finished.job_id, running.job_id)}
    assert states == {finished.job_id: "COMPLETED", running.job_id: "RUNNING"}
    assert watcher.get_state("999", mode="cache") == "UNKNOWN", "not yet lost"
    monkeypatch.setattr(watcher, "lost_after_s", 0.0)
    monkeypatch.setenv("LSF_EMULATOR_NO_HISTORY", "1")
    watcher.update()
    assert watcher.get_state("999", mode="cache") == "LOST"
    assert watcher.is_done("999", mode="cache")
    running.cancel()


def _requeue_once(counter: Path) -> str:
    """First run: ask for a requeue as submitit's timeout handler does, then die."""
    if not counter.exists():
        counter.touch()
        submitit.JobEnvironment()._requeue(1)
        os._exit(1)
    return "second run"


@pytest.mark.slow
def test_rank_0_requeues_through_the_job_shell(lsf):
    # item 9: the emulator refuses brequeue inside tasks, as sites without LSF on compute nodes;
    # the job shell's exit code, named by bsub -Q, requeues the job
    executor = submitit.AutoExecutor(folder=lsf / "jobs" / "%j", cluster="lsf")
    executor.update_parameters(timeout_min=10, lsf_allocation="nnodes", lsf_task_launcher="jsrun")
    job = executor.submit(_requeue_once, lsf / "counter")
    assert job.result() == "second run"
    (state,) = [json.loads(p.read_text()) for p in (lsf / "lsf-state").glob("job_*.json")]
    assert state["elements"]["0"]["runs"] == 2
    assert not list((lsf / "jobs").glob("*.requeue")), "the marker is consumed"


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
def test_the_warning_signal_checkpoints_and_requeues_and_the_job_finishes(lsf):
    # The warning LSF sends at -wt before the run limit, sent here with bkill -s once the first
    # generator epoch is checkpointed, so that the test does not depend on the machine's speed;
    # 31 epochs remain to be interrupted. The signal reaches the job shell only; the task sees
    # the shell's signal marker. Rank 0 leaves the requeue marker and the job shell exits with
    # the code of bsub -Q.
    # a run limit far beyond the test, so that -wa never warns on its own
    walltime = ["hydra.launcher.timeout_min=6000"]
    args = ["-m", *LSF_SWEEP, *walltime, *SMOKE, "generator.epochs=32", "hydra.sweep.dir=sweep"]
    proc = subprocess.Popen(
        [sys.executable, "-m", "ue_sweep", *args],
        cwd=lsf,
        env=ue_sweep_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    checkpoint = lsf / "sweep" / "0" / "checkpoints" / "generators.pt"
    while not checkpoint.exists():
        assert proc.poll() is None, proc.communicate()[0][-3000:]
        time.sleep(0.2)
    subprocess.run(["bkill", "-s", "USR2", "1000"], check=True)
    output = proc.communicate(timeout=900)[0]
    assert proc.returncode == 0, output[-3000:]
    (record,) = read_results(lsf / "sweep")
    assert record["status"] == "completed" and record["restarts"] == 1
    (job,) = [json.loads(p.read_text()) for p in (lsf / "lsf-state").glob("job_*.json")]
    assert job["elements"]["0"]["runs"] == 2, "requeued by bsub -Q"
    assert "resumed 1x" in output


@pytest.mark.slow
def test_the_summit_preset_refuses_to_submit_without_a_project(lsf):
    proc = run_cli(["-m", "hydra/launcher=summit", *SMOKE, "hydra.sweep.dir=sweep"], cwd=lsf)
    assert proc.returncode != 0
    assert "Missing mandatory value: hydra.launcher.project" in proc.stderr
    assert not list((lsf / "lsf-state").glob("job_*")), "nothing was submitted"


def _bsub_count(lsf: Path) -> int:
    """Submissions the emulated LSF received (one per bsub: an array is one)."""
    return len(list((lsf / "lsf-state").glob("job_*.json")))


@pytest.mark.slow
@pytest.mark.timeout(1800)
def test_a_detached_sweep_is_followed_rerun_cancelled_and_reported(lsf):
    # a run limit the long job never reaches: it must be running when it is cancelled
    detached_flow(lsf, [*LSF_SWEEP, "hydra.launcher.timeout_min=600"], lambda: _bsub_count(lsf))
    assert _bsub_count(lsf) == 1, "one job array for the grid, nothing more"


@pytest.mark.slow
def test_a_grid_with_a_missing_dataset_never_reaches_bsub(lsf):
    args = ["-m", *LSF_SWEEP, *SMOKE, "dataset=digits,cifar10", f"paths.data_dir={lsf / 'none'}"]
    proc = run_cli([*args, "hydra.sweep.dir=sweep"], cwd=lsf)
    assert proc.returncode == 2, proc.stderr[-3000:]
    (line,) = proc.stderr.strip().splitlines()
    assert line.startswith("job #1 (") and "CIFAR-10 dataset not found" in line
    assert _bsub_count(lsf) == 0 and not (lsf / "sweep").exists()


@pytest.mark.slow
def test_check_only_prints_the_plan_and_calls_no_bsub(lsf):
    args = ["-m", "hydra/launcher=summit", "hydra.launcher.project=ABC", *SMOKE, "seed=0,1"]
    proc = run_cli([*args, "hydra.launcher.check_only=true", "hydra.sweep.dir=sweep"], cwd=lsf)
    assert proc.returncode == 0, proc.stderr[-3000:]
    output = proc.stdout + proc.stderr
    assert "plan for sweep sweep (lsf): 2 jobs: 2 to submit" in output
    assert (
        "each job asks for: nodes=8 tasks_per_node=6 gpus_per_node=6 cpus_per_task=7 "
        "timeout_min=120 queue=batch project=ABC allocation=nnodes alloc_flags=smt4 "
        "task_launcher=jsrun" in output
    )
    assert _bsub_count(lsf) == 0
