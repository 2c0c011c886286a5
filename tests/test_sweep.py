"""Sweep bookkeeping and rank detection under schedulers, without a scheduler."""

from __future__ import annotations

import json

import pytest

from ue_sweep.runtime.env import env_from_launcher
from ue_sweep.store.sweep import JobOutcome, PlannedJob, format_sweep_summary, sweep_name


def test_sweep_name_depends_on_the_grid_not_on_order_or_launcher():
    a = sweep_name(["-m", "batch_size=32,64", "clusters=5"])
    assert a == sweep_name(["clusters=5", "--multirun", "batch_size=32,64"])
    assert a == sweep_name(
        ["-m", "batch_size=32,64", "clusters=5", "hydra/launcher=slurm", "hydra.launcher.nodes=2"]
    )
    reporting = ["trainer.progress=log", "logger=wandb", "logger.project=x"]
    assert a == sweep_name(["-m", "batch_size=32,64", "clusters=5", *reporting])
    assert a != sweep_name(["-m", "batch_size=32,64", "clusters=10"])
    assert a != sweep_name(["-m", "batch_size=32,64", "clusters=5", "trainer.threads=1"])
    assert a.startswith("sweep-")
    assert sweep_name(["-m", "experiment=hpc_grid"]).startswith("hpc_grid-")


def _job(tmp_path, record=None, num=0) -> PlannedJob:
    job = PlannedJob.plan(num, ['batch_size="32"'], tmp_path / str(num), {"seed": 0}, 1)
    if record is not None:
        job.job_dir.mkdir(parents=True)
        (job.job_dir / "result.json").write_text(json.dumps(record))
    return job


def test_only_a_completed_record_with_the_same_fingerprint_counts_as_done(tmp_path):
    fresh = _job(tmp_path)
    assert fresh.label == "batch_size=32"
    assert fresh.completed_record() is None
    done = _job(tmp_path, {"status": "completed", "fingerprint": fresh.fingerprint}, num=1)
    assert done.completed_record() is not None
    other = _job(tmp_path, {"status": "completed", "fingerprint": "elsewhere"}, num=2)
    assert other.completed_record() is None
    running = _job(tmp_path, {"status": "running", "fingerprint": fresh.fingerprint}, num=3)
    assert running.completed_record() is None


def test_scheduler_ends_are_recorded_without_overwriting_the_jobs_own(tmp_path):
    killed = _job(tmp_path, {"status": "running", "restarts": 1})
    killed.record_unfinished("cancelled", "scheduler state CANCELLED by 0")
    record = killed.record()
    assert (record["status"], record["error"]["message"]) == (
        "cancelled",
        "scheduler state CANCELLED by 0",
    )
    failed = _job(tmp_path, {"status": "failed", "error": {"type": "ValueError"}}, num=1)
    failed.record_unfinished("cancelled", "late")
    assert failed.record()["status"] == "failed"
    cancelled = _job(tmp_path, {"status": "cancelled"}, num=3)
    cancelled.record_unfinished("failed", "scheduler state unknown")
    assert cancelled.record()["status"] == "cancelled", "ue-sweep cancel recorded it"
    never_started = _job(tmp_path, num=2)
    never_started.record_unfinished("failed", "scheduler state NODE_FAIL")
    assert never_started.record()["status"] == "failed"


def test_summary_counts_statuses_and_resumes(tmp_path):
    outcomes = [
        JobOutcome(0, "batch_size=32", "completed", restarts=2),
        JobOutcome(1, "batch_size=64", "skipped"),
        JobOutcome(2, "batch_size=128", "failed", detail="ConfigError: clusters.k=5000 ..."),
        JobOutcome(3, "batch_size=256", "cancelled", detail="Scheduler: CANCELLED"),
    ]
    text = format_sweep_summary("multirun/x", outcomes)
    assert text.splitlines()[0] == (
        "sweep multirun/x: 4 jobs: 1 completed, 1 skipped, 1 failed, "
        "1 cancelled; 1 resumed from checkpoints"
    )
    assert "(resumed 2x)" in text
    assert "ConfigError: clusters.k=5000" in text


def test_submitit_local_tasks_get_their_ranks(monkeypatch):
    monkeypatch.delenv("RANK", raising=False)
    for key, value in {
        "SUBMITIT_EXECUTOR": "local",
        "SUBMITIT_LOCAL_JOB_ID": "77",
        "SUBMITIT_LOCAL_NTASKS": "2",
        "SUBMITIT_LOCAL_GLOBALID": "1",
        "SUBMITIT_LOCAL_LOCALID": "1",
        "SUBMITIT_LOCAL_JOB_NUM_NODES": "1",
        "MASTER_PORT": "29511",
    }.items():
        monkeypatch.setenv(key, value)
    env = env_from_launcher()
    assert (env.rank, env.local_rank, env.world_size, env.local_world_size) == (1, 1, 2, 2)
    assert (env.master_addr, env.master_port, env.launcher) == ("127.0.0.1", 29511, "local")


def test_srun_step_tasks_get_their_ranks_and_a_shared_port(monkeypatch):
    for key in ("RANK", "SUBMITIT_EXECUTOR", "MASTER_PORT"):
        monkeypatch.delenv(key, raising=False)
    env = {
        "SLURM_STEP_NUM_TASKS": "8",
        "SLURM_NTASKS": "8",
        "SLURM_PROCID": "5",
        "SLURM_LOCALID": "1",
        "SLURM_JOB_NUM_NODES": "2",
        "SLURM_JOB_ID": "4242",
        "SLURM_JOB_NODELIST": "gpu[07-08]",
    }
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    first = env_from_launcher()
    assert (first.rank, first.local_rank, first.world_size, first.local_world_size) == (5, 1, 8, 4)
    assert (first.master_addr, first.launcher) == ("gpu07", "slurm")
    monkeypatch.setenv("SLURM_PROCID", "0")
    assert env_from_launcher().master_port == first.master_port


@pytest.mark.parametrize(
    ("variables", "expected"),
    [
        (
            {
                "JSM_NAMESPACE_RANK": "7",
                "JSM_NAMESPACE_LOCAL_RANK": "1",
                "JSM_NAMESPACE_SIZE": "12",
            },
            (7, 1, 12, 6),
        ),
        (
            {
                "OMPI_COMM_WORLD_RANK": "3",
                "OMPI_COMM_WORLD_LOCAL_RANK": "3",
                "OMPI_COMM_WORLD_SIZE": "12",
            },
            (3, 3, 12, 6),
        ),
    ],
)
def test_lsf_tasks_get_ranks_from_jsrun_or_mpirun_and_skip_the_launch_node(
    monkeypatch, tmp_path, variables, expected
):
    for key in ("RANK", "SUBMITIT_EXECUTOR", "MASTER_PORT"):
        monkeypatch.delenv(key, raising=False)
    hostfile = tmp_path / "hosts"
    hostfile.write_text("batch3\n" + "h41n07\n" * 42 + "h41n08\n" * 42)
    monkeypatch.setenv("LSB_JOBID", "31337")
    monkeypatch.setenv("LSB_DJOB_HOSTFILE", str(hostfile))
    for key, value in variables.items():
        monkeypatch.setenv(key, value)
    env = env_from_launcher()
    assert (env.rank, env.local_rank, env.world_size, env.local_world_size) == expected
    assert (env.master_addr, env.launcher) == ("h41n07", "lsf")


def _grid(experiment: str) -> list[tuple[str, int, int]]:
    """(dataset, per-device batch, global batch) of every job the preset's multirun submits."""
    from hydra import compose, initialize_config_module
    from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
    from hydra.core.override_parser.overrides_parser import OverridesParser

    from ue_sweep.cli.compose import register

    register()

    overrides = [f"experiment={experiment}", "hydra.launcher.project=ABC123"]
    with initialize_config_module("ue_sweep.conf", version_base="1.3"):
        hydra_cfg = compose("config", overrides=overrides, return_hydra_config=True).hydra
        params = [f"{k}={v}" for k, v in hydra_cfg.sweeper.params.items()]
        parsed = OverridesParser.create().parse_overrides(params)
        (batch,) = BasicSweeper.split_arguments(parsed, max_batch_size=None)
        world = hydra_cfg.launcher.nodes * hydra_cfg.launcher.tasks_per_node
        grid = []
        for job in batch:
            cfg = compose("config", overrides=[*overrides, *job])
            dataset = dict(o.split("=", 1) for o in job)["dataset"]
            per_device = cfg.batch_size.per_device
            grid.append((dataset, per_device, per_device * world))
    return grid


@pytest.mark.slow
def test_the_hpc_grid_preset_is_six_datasets_by_six_batch_sizes_on_48_gpus():
    grid = _grid("hpc_grid")
    assert len(grid) == 36
    assert {d for d, _, _ in grid} == {
        "pets",
        "flowers",
        "flowers102",
        "pathmnist",
        "bloodmnist",
        "organamnist",
    }
    assert sorted({(p, g) for _, p, g in grid}) == [
        (32, 1536),
        (64, 3072),
        (128, 6144),
        (256, 12288),
        (512, 24576),
        (1024, 49152),
    ]


def test_the_medmnist_small_batch_preset_runs_two_datasets_up_to_512():
    grid = _grid("medmnist_small_batch")
    assert {d for d, _, _ in grid} == {"pathmnist", "bloodmnist"}
    assert sorted({g for _, _, g in grid}) == [1536, 3072, 6144, 12288, 24576]
    assert len(grid) == 10
