"""Sweep operations without a scheduler: the job table, state words, status on odd sweep
directories, cancel's bookkeeping, the progress record, the check before queueing, and the
detached flow on the ``local`` launcher."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.conftest import SMOKE, refusal, run_cli
from tests.sweep_ops_flow import detached_flow
from ue_sweep.ops.cancel import main as cancel_main
from ue_sweep.ops.cancel import record_cancelled
from ue_sweep.ops.plan import format_plan, resources
from ue_sweep.ops.schedulers import normalize, parse_pipe_table
from ue_sweep.ops.status import format_status, job_state, stage_text, sweep_status
from ue_sweep.ops.status import main as status_main
from ue_sweep.ops.table import JOB_TABLE, JobTable
from ue_sweep.runtime.progress import Progress
from ue_sweep.store.sweep import PlannedJob


def test_scheduler_answers_are_read_per_array_element():
    text = "12_0|RUNNING\n12_[1-3,5%2]|PENDING\n13|CANCELLED by 0\n14_1.batch|COMPLETED\nnoise\n"
    states = parse_pipe_table(text)
    assert {k: states[k] for k in ("12_0", "12_1", "12_3", "12_5", "13")} == {
        "12_0": "RUNNING",
        "12_1": "PENDING",
        "12_3": "PENDING",
        "12_5": "PENDING",
        "13": "CANCELLED",
    }
    assert "12_4" not in states
    assert normalize("FAILED+") == "FAILED" and normalize("") == "UNKNOWN"


@pytest.mark.parametrize(
    ("result", "scheduler", "gone", "state"),
    [
        ("completed", "COMPLETED", False, "completed"),
        ("completed", None, False, "completed"),
        ("cancelled", None, False, "cancelled"),
        (None, "PENDING", False, "pending"),
        ("preempted", "REQUEUED", False, "pending"),
        ("running", "RUNNING", False, "running"),
        ("running", "CANCELLED", False, "cancelled"),
        ("running", "TIMEOUT", False, "failed"),
        ("running", "COMPLETED", False, "failed"),  # ended without a completed record
        ("running", None, True, "interrupted"),
        ("running", None, False, "running"),
        ("failed", None, False, "failed"),
        (None, None, False, "not started"),
        (None, "UNKNOWN", False, "unknown"),
    ],
)
def test_one_word_per_job_from_its_record_and_the_scheduler(result, scheduler, gone, state):
    assert job_state(result, scheduler, gone) == state


def test_stage_text_reads_the_progress_record():
    assert stage_text({"stage": "generators", "epoch": 3, "epochs": 50}, "running") == (
        "generators 3/50"
    )
    assert stage_text({"stage": "k-means", "epoch": 0, "epochs": 1}, "running") == "k-means"
    assert stage_text({"stage": "generators"}, "completed") == "done"
    assert stage_text({"stage": ["odd"]}, "running") == "-"
    assert stage_text(None, "pending") == "-"


def test_the_job_table_keeps_ids_of_the_same_configuration_only(tmp_path):
    table = JobTable.for_launch(tmp_path, "slurm", str(tmp_path / ".submitit/%j"))
    table.plan(0, ["seed=0"], tmp_path / "0", "fp0")
    table.plan(1, ["seed=1"], tmp_path / "1", "fp1")
    table.submitted({0: "12_0", 1: "12_1"})
    table.write()
    again = JobTable.for_launch(tmp_path, "slurm", str(tmp_path / ".submitit/%j"))
    again.plan(0, ["seed=0"], tmp_path / "0", "fp0")
    again.plan(1, ["seed=1"], tmp_path / "1", "another configuration")
    assert (again.jobs[0].scheduler_id, again.jobs[1].scheduler_id) == ("12_0", None)
    assert again.jobs[0].dir == "0"
    assert JobTable.for_launch(tmp_path, "lsf", None).jobs == {}, "another scheduler's ids"


ODD_FILES = {
    JOB_TABLE: "{not json",
    "0/result.json": "[1, 2, 3]",
    "0/progress.json": '{"stage": 7, "epoch": "x"}',
    "1/result.json": json.dumps({"status": {"nested": True}, "started_at": 5}),
    "2/result.json": "\x00\xff binary",
    "3/progress.json": "null",
    "multirun.yaml": "hydra: [unclosed",
    "notes.txt": "hello",
    "result.json/README": "a directory named like a result file",
}


@pytest.mark.parametrize("with_table", [False, True], ids=["no-table", "table"])
def test_status_on_a_sweep_with_odd_files_does_not_crash(tmp_path, capsys, with_table):
    for name, text in ODD_FILES.items():
        path = tmp_path / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(text.encode("utf-8", "surrogateescape"))
    (tmp_path / "4").write_text("a file where a job directory would be")
    if with_table:
        table = JobTable(tmp_path, "slurm", None, "elsewhere")
        for num in range(5):
            table.plan(num, [f"seed={num}"], tmp_path / str(num), f"fp{num}")
        table.write()
    assert status_main([str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "unreadable" in out and out.splitlines()[-1].startswith(
        f"{5 if with_table else 4} jobs: 0 completed"
    )


def _planned(tmp_path: Path, num: int) -> PlannedJob:
    return PlannedJob.plan(num, [f"seed={num}"], tmp_path / str(num), {"seed": num}, 1)


def test_cancel_records_cancelled_but_never_touches_a_completed_job(tmp_path):
    table = JobTable(tmp_path, "slurm", None, None)
    for num in range(3):
        table.plan(num, [f"seed={num}"], tmp_path / str(num), f"fp{num}")
    done = tmp_path / "0" / "result.json"
    done.parent.mkdir()
    done.write_text(json.dumps({"status": "completed", "metrics": {}}))
    running = tmp_path / "1" / "result.json"
    running.parent.mkdir()
    running.write_text(json.dumps({"status": "failed", "started_at": "x", "error": {}}))
    before = done.read_bytes()
    assert not record_cancelled(table, table.jobs[0], "test")
    assert record_cancelled(table, table.jobs[1], "killed by the test")
    assert record_cancelled(table, table.jobs[2], "never started")
    assert done.read_bytes() == before
    one = json.loads(running.read_text())
    assert (one["status"], one["error"]["message"], one["started_at"]) == (
        "cancelled",
        "killed by the test",
        "x",
    )
    two = json.loads((tmp_path / "2" / "result.json").read_text())
    assert (two["status"], two["overrides"], two["fingerprint"]) == ("cancelled", ["seed=2"], "fp2")


def test_cancel_refuses_what_it_cannot_cancel(tmp_path, capsys):
    with pytest.raises(SystemExit):
        cancel_main([str(tmp_path)])
    assert "no job table" in capsys.readouterr().err
    table = JobTable(tmp_path, "basic", None, None)
    table.plan(0, ["seed=0"], tmp_path / "0", "fp0")
    table.write()
    with pytest.raises(SystemExit):
        cancel_main([str(tmp_path), "7"])
    assert "no job 7" in capsys.readouterr().err
    assert cancel_main([str(tmp_path)]) == 2
    assert "inside its ue-sweep process" in capsys.readouterr().err


def test_the_plan_names_every_job_its_fate_and_the_resources(tmp_path):
    planned = [_planned(tmp_path, n) for n in range(3)]
    params = {"nodes": 2, "tasks_per_node": 4, "partition": "gpu", "qos": None, "setup": []}
    text = format_plan("sw", "slurm", params, planned, skipped=[0], active={2: "12_2"})
    lines = text.splitlines()
    assert lines[0] == (
        "plan for sweep sw (slurm): 3 jobs: 1 to submit, 1 completed (skipped), "
        "1 already queued or running"
    )
    assert lines[1] == "each job asks for: nodes=2 tasks_per_node=4 partition=gpu"
    assert lines[2].split()[:2] == ["#0", "skip"] and lines[3].split()[:2] == ["#1", "submit"]
    assert "already queued or running as 12_2" in lines[4]
    assert resources({}) == "no scheduler resources (runs in this process)"


def test_the_progress_record_follows_stage_epoch_and_step(tmp_path):
    path = tmp_path / "progress.json"
    progress = Progress("none", record=path, log_every_s=3600)
    with progress.stage("generators", total_steps=6, epochs=2) as bar:
        assert json.loads(path.read_text())["stage"] == "generators"
        for epoch in range(2):
            for _ in range(3):
                bar.advance()
            bar.epoch_done(epoch, kl=0.5)
            record = json.loads(path.read_text())
            position = (record["epoch"], record["epochs"], record["step"])
            assert position == (epoch + 1, 2, 3 * epoch + 3)
    assert record["wandb"] is None, "logger=none"
    with Progress("none", enabled=False, record=tmp_path / "rank1.json").stage("x", 1):
        assert not (tmp_path / "rank1.json").exists(), "only rank 0 keeps the record"


def test_status_lists_the_grid_of_a_sweep_without_a_table(tmp_path, capsys):
    (tmp_path / "multirun.yaml").write_text(
        "hydra:\n  sweeper:\n    _target_: hydra._internal.core_plugins.basic_sweeper."
        "BasicSweeper\n    params: null\n  overrides:\n    task:\n    - seed=0,1\n"
    )
    (tmp_path / "0").mkdir()
    (tmp_path / "0" / "result.json").write_text(
        json.dumps(
            {
                "status": "completed",
                "overrides": ["seed=0"],
                "started_at": "2026-01-01T10:00:00+00:00",
                "updated_at": "2026-01-01T11:02:03+00:00",
                "wandb": {"project": "p", "mode": "offline", "runs": {"uc": {"id": "a-0-uc"}}},
            }
        )
    )
    status = sweep_status(tmp_path)
    assert [(r.num, r.state, r.elapsed, r.wandb) for r in status.rows] == [
        (0, "completed", "1h02m", "p/a-0-uc (offline)"),
        (1, "not started", "-", "-"),
    ]
    assert format_status(status).splitlines()[-1] == (
        "2 jobs: 1 completed, 0 running, 0 pending, 0 failed, 0 cancelled, 1 not started"
    )


# -------------------------------------------------------------------- the real command line


def test_a_grid_with_one_jobs_data_missing_is_refused_whole_one_line_per_bad_job(
    tmp_path, monkeypatch
):
    # Submitted to SLURM (no controller is needed: nothing gets that far); job 1's files are
    # checked here, on the "login node", and job 0 (the embedded digits) is fine.
    args = ["-m", "hydra/launcher=slurm", *SMOKE, "dataset=digits,cifar10,pathmnist"]
    message = refusal(
        [*args, "paths.data_dir=nowhere", "hydra.sweep.dir=sweep"], tmp_path, monkeypatch
    )
    lines = message.splitlines()
    assert [line.split(" (")[0] for line in lines] == ["job #1", "job #2"], lines
    assert "dataset=cifar10" in lines[0] and "CIFAR-10 dataset not found" in lines[0]
    assert "MedMNIST pathmnist" in lines[1] and "ue-sweep-data fetch pathmnist" in lines[1]
    assert not (tmp_path / "sweep").exists(), "nothing written, nothing submitted"


@pytest.mark.slow
def test_check_only_prints_the_plan_and_runs_nothing(tmp_path):
    args = ["-m", *SMOKE, "seed=0,1", "hydra.launcher.check_only=true", "hydra.sweep.dir=sweep"]
    proc = run_cli(args, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "plan for sweep sweep (basic): 2 jobs: 2 to submit" in proc.stdout
    assert "nothing was submitted" in proc.stdout and "surrogate" not in proc.stdout
    assert not list((tmp_path / "sweep").glob("*/result.json"))


def test_detaching_the_in_process_launcher_is_refused(tmp_path, monkeypatch):
    args = ["-m", *SMOKE, "hydra.launcher.wait=false", "hydra.sweep.dir=s"]
    assert refusal(args, tmp_path, monkeypatch) == (
        "hydra.launcher.wait=false needs a launcher that submits the jobs (local, slurm, "
        "slurm_gpu, frontier, perlmutter, lsf, jsm, summit): the basic launcher runs them in "
        "this process"
    )
    assert not (tmp_path / "s").exists()


def test_check_only_without_a_multirun_is_refused_not_ignored(tmp_path, monkeypatch):
    args = [*SMOKE, "hydra.launcher.check_only=true", "hydra.run.dir=r"]
    assert refusal(args, tmp_path, monkeypatch) == (
        "hydra.launcher.check_only applies to a multirun (ue-sweep -m ...): a single run does "
        "not go through the launcher"
    )
    assert not (tmp_path / "r").exists()


@pytest.mark.slow
@pytest.mark.timeout(1800)
def test_a_detached_local_sweep_is_followed_rerun_cancelled_and_reported(tmp_path):
    def submissions() -> int:
        return len([p for p in (tmp_path / "sweep" / ".submitit").iterdir() if p.is_dir()])

    detached_flow(tmp_path, ["hydra/launcher=local", "hydra.launcher.timeout_min=60"], submissions)


def test_a_data_or_weights_file_that_cannot_be_read_is_refused(tmp_path, monkeypatch, compose_cfg):
    from ue_sweep.cli.validation import check_files, to_root_config
    from ue_sweep.errors import MissingFileError

    (tmp_path / "medmnist").mkdir()
    (tmp_path / "medmnist" / "pathmnist.npz").write_bytes(b"")
    (tmp_path / "surrogate.pt").write_bytes(b"")
    data = compose_cfg("experiment=smoke", f"paths.data_dir={tmp_path}", "dataset=pathmnist")
    weights = compose_cfg(
        "experiment=smoke",
        "surrogate.weights=path",
        f"surrogate.checkpoint={tmp_path / 'surrogate.pt'}",
    )
    jobs = [to_root_config(cfg, on_this_host=False) for cfg in (data, weights)]
    for job in jobs:
        check_files(job)
    monkeypatch.setattr("os.access", lambda path, mode: False)  # root could read anything
    with pytest.raises(MissingFileError, match=r"MedMNIST pathmnist .*file is not readable"):
        check_files(jobs[0])
    with pytest.raises(MissingFileError, match=r"surrogate checkpoint .* is not readable"):
        check_files(jobs[1])
