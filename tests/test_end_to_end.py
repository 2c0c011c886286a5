"""The real `ue-sweep` command end to end: protection effect, result files, multirun, DDP."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from importlib import metadata
from pathlib import Path

import pytest
import torch

from tests.conftest import SMOKE, read_results, run_cli, ue_sweep_env

pytestmark = pytest.mark.slow

# The demo with 1,348 training images (test_fraction 0.2498), so that batches split evenly over
# 1 or 2 ranks and both runs see identical global batches.
DEMO = ["dataset.test_fraction=0.2498", "trainer.progress=log"]


@pytest.fixture(scope="module")
def demo_job(tmp_path_factory) -> tuple[Path, dict]:
    cwd = tmp_path_factory.mktemp("demo")
    proc = run_cli([*DEMO, "hydra.run.dir=job"], cwd=cwd)
    assert proc.returncode == 0, proc.stderr[-3000:]
    job = cwd / "job"
    return job, json.loads((job / "result.json").read_text()) | {"_stdout": proc.stdout}


def test_demo_shows_a_protection_effect_against_equal_strength_controls(demo_job):
    _, record = demo_job
    metrics = record["metrics"]
    acc = metrics["accuracy"]
    assert set(acc) == {"clean", "protected", "uniform", "sign", "untrained"}
    # 20 points: below the smallest drop over seeds 0-9 (34 points, docs/DEMO_STUDY.md), since a
    # CPU with another rounding order trains as differently as another seed.
    assert acc["clean"] > 0.95
    assert acc["protected"] < acc["clean"] - 0.2
    assert acc["protected"] < acc["uniform"] - 0.2
    strongest = min(("uniform", "sign", "untrained"), key=acc.__getitem__)
    assert metrics["strongest_control"] == strongest
    assert metrics["control_gap"] == pytest.approx(acc[strongest] - acc["protected"])
    # Energy-matched controls change the published images as much as UC does.
    energy = metrics["energy"]
    for control in ("sign", "untrained"):
        assert energy[control]["noise_rms"] == pytest.approx(energy["protected"]["noise_rms"])
        assert energy[control]["published_rms"] == pytest.approx(
            energy["protected"]["published_rms"], rel=0.05
        )
    assert energy["uniform"]["noise_rms_over_eps"] == pytest.approx(3**-0.5, rel=0.05)
    summary = record["_stdout"]
    for line in (
        "clean data",
        "UC-protected",
        "uniform-noise control",
        "sign-noise control",
        "untrained-generator",
        "strongest control (",
        "target hit rate",
    ):
        assert line in summary


def test_generator_stage_records_that_it_optimised(demo_job):
    _, record = demo_job
    generator = record["generator"]
    history = generator["history"]
    assert [h["epoch"] for h in history] == list(range(10))
    assert generator["initial"]["epoch"] == -1
    assert history[-1]["loss"] < history[0]["loss"]
    for h in (generator["initial"], *history):
        assert 0 <= h["target_hit_rate"] <= 1 and 0 <= h["saturated_fraction"] <= 1
        assert 0 <= h["surrogate_accuracy"] <= 1
    assert history[-1]["target_hit_rate"] > generator["initial"]["target_hit_rate"]


def test_result_file_records_config_versions_batch_timings_and_metrics(demo_job):
    job, record = demo_job
    assert record["status"] == "completed"
    assert record["seed"] == 0
    assert record["config"]["generator"]["epochs"] == 10
    assert "dataset.test_fraction=0.2498" in record["overrides"]
    assert record["versions"]["torch"] == metadata.version("torch")
    assert record["world_size"] == 1
    assert record["batch"] == {
        "per_device": 64,
        "global": 64,
        "lr_scaling": "none",
        "lr_factor": 1.0,
    }
    assert record["surrogate"]["weights"] == "fit"
    assert record["surrogate"]["fit"]["test_accuracy"] > 0.9
    assert record["dataset"]["train_size"] == 1348
    assert record["dataset"]["test_split"].startswith("stratified")
    assert set(record["timings_s"]) >= {
        "data",
        "surrogate",
        "features",
        "kmeans",
        "generators",
        "evals.victims",
        "total",
    }
    assert {s: p["status"] for s, p in record["stages"].items()} == dict.fromkeys(
        [
            "surrogate",
            "clusters",
            "generators",
            *(f"victim-{c}" for c in ("clean", "protected", "uniform", "sign", "untrained")),
        ],
        "computed",
    )
    assert record["throughput"]["generator_images_per_s"] > 0
    clusters = record["clusters"]
    assert sum(clusters["sizes"]) == 1348 and clusters["targets"] == [1, 2, 3, 4, 5, 6, 7, 8, 9, 0]
    epochs = record["config"]["victim"]["epochs"]
    for condition in ("clean", "protected", "uniform", "sign", "untrained"):
        victim = record["metrics"]["victims"][condition]
        assert victim["total"] == 449
        assert len(victim["history"]) == epochs
        assert victim["history"][-1]["test_accuracy"] == victim["accuracy"]
        last = [h["test_accuracy"] for h in victim["history"][-3:]]
        assert victim["mean_last"] == {
            "epochs": 3,
            "accuracy": pytest.approx(sum(last) / 3),
            "balanced_accuracy": pytest.approx(
                sum(h["test_balanced_accuracy"] for h in victim["history"][-3:]) / 3
            ),
            "worst_class_accuracy": pytest.approx(
                sum(h["test_worst_class_accuracy"] for h in victim["history"][-3:]) / 3
            ),
        }
        assert record["metrics"]["accuracy"][condition] == victim["mean_last"]["accuracy"]
        assert record["metrics"]["final_accuracy"][condition] == victim["accuracy"]
        assert victim["sync_batchnorm"] is False

    noise = torch.load(job / "noise.pt", weights_only=True)
    eps = record["config"]["generator"]["eps"]
    assert noise["noise"].shape == (10, 1, 16, 16)
    assert noise["noise"].abs().max() <= eps + 1e-6
    controls = torch.load(job / "controls.pt", weights_only=True)
    assert set(controls) == {"uniform", "sign", "untrained"}
    for control in controls.values():
        assert control.shape == (10, 1, 16, 16) and control.abs().max() <= eps + 1e-6
    assert noise["cluster_ids"].shape == (1348,)
    protected = torch.load(job / "protected_train.pt", weights_only=True)
    assert protected["images"].dtype == torch.uint8
    assert protected["images"].shape == (1348, 1, 16, 16)


def test_multirun_runs_one_job_per_grid_point(tmp_path):
    proc = run_cli(
        ["-m", "batch_size=32,64", "clusters=5,10", *SMOKE, "hydra.sweep.dir=sweep"], cwd=tmp_path
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    records = read_results(tmp_path / "sweep")
    assert [r["status"] for r in records] == ["completed"] * 4
    grid = sorted((r["batch"]["per_device"], r["clusters"]["k"]) for r in records)
    assert grid == [(32, 5), (32, 10), (64, 5), (64, 10)]


def test_two_processes_agree_with_one(demo_job, tmp_path):
    """The demo again on 2 spawned ranks with half the per-device batch and the same surrogate.

    The arithmetic is exact step by step (tests/test_distributed.py, in float64), but over
    hundreds of float32 Adam steps rounding differences flip saturated pixels (two 1-process runs
    with 1 and 2 CPU threads differ as much), so whole runs are compared by their outcome.
    """
    job, one = demo_job
    proc = run_cli(
        [
            *DEMO,
            "surrogate.weights=path",
            f"surrogate.checkpoint={job / 'surrogate.pt'}",
            "batch_size.per_device=32",
            "trainer.devices=2",
            "hydra.run.dir=two",
        ],
        cwd=tmp_path,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    two = json.loads((tmp_path / "two" / "result.json").read_text())
    assert (one["world_size"], two["world_size"]) == (1, 2)
    assert one["batch"]["global"] == two["batch"]["global"] == 64
    assert two["launcher"] == "spawn"
    n1, n2 = (torch.load(d / "noise.pt", weights_only=True) for d in (job, tmp_path / "two"))
    assert torch.equal(n1["cluster_ids"], n2["cluster_ids"])
    for record in (one, two):
        history = record["generator"]["history"]
        assert history[-1]["loss"] < history[0]["loss"]
        acc = record["metrics"]["accuracy"]
        assert acc["protected"] < min(acc["clean"], acc["uniform"]) - 0.2
    assert two["metrics"]["victims"]["clean"]["total"] == 449


def _spawned_ranks(pid: int) -> list[int]:
    children = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        children += [int(c) for c in (task / "children").read_text().split()]
    return [
        c
        for c in children
        if "spawn_main" in Path(f"/proc/{c}/cmdline").read_text().replace("\0", " ")
    ]


def _wait_for_log(log: Path, text: str, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not (log.exists() and text in log.read_text()):
        assert time.monotonic() < deadline, f"{text!r} never appeared in {log}"
        time.sleep(0.5)


def test_a_killed_rank_fails_the_job_and_is_recorded(tmp_path):
    args = [
        *SMOKE,
        "trainer.devices=2",
        "generator.epochs=200",
        "trainer.timeout_s=30",
        "hydra.run.dir=job",
    ]
    proc = subprocess.Popen(
        [sys.executable, "-m", "ue_sweep", *args],
        cwd=tmp_path,
        env=ue_sweep_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        _wait_for_log(tmp_path / "job" / "ue_sweep.log", "k-means", timeout=120)
        ranks = _spawned_ranks(proc.pid)
        assert len(ranks) == 2
        os.kill(ranks[1], signal.SIGKILL)
        output, _ = proc.communicate(timeout=60)
    finally:
        proc.kill()
    assert proc.returncode != 0
    record = json.loads((tmp_path / "job" / "result.json").read_text())
    assert record["status"] == "failed"
    assert "died (signal SIGKILL)" in record["error"]["message"]
    # An expected end: one line with the rank, the signal and the command that resumes; the
    # traceback only in the job's log.
    (line,) = [line for line in output.splitlines() if "died (signal SIGKILL)" in line]
    assert line.startswith("rank 1 of 2 died (signal SIGKILL)")
    assert line.endswith(f"resume with: ue-sweep {' '.join(args)}")
    assert "Traceback" not in output and "HYDRA_FULL_ERROR" not in output
    assert "Traceback" in (tmp_path / "job" / "ue_sweep.log").read_text()


def test_torchrun_ranks_share_one_job_and_only_rank_zero_writes(tmp_path):
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--standalone",
            "--nproc_per_node=2",
            "-m",
            "ue_sweep",
            *SMOKE,
            "hydra.run.dir=job",
        ],
        cwd=tmp_path,
        env=ue_sweep_env(),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    job = tmp_path / "job"
    record = json.loads((job / "result.json").read_text())
    assert (record["world_size"], record["launcher"]) == (2, "torchrun")
    assert record["batch"]["global"] == 2 * record["batch"]["per_device"]
    assert (job / ".hydra" / "config.yaml").exists()
    assert (job / "ue_sweep.rank1.log").exists()
    assert "k-means" not in (job / "ue_sweep.rank1.log").read_text()


def test_demo_records_its_diagnostics(demo_job):
    _, record = demo_job
    d = record["diagnostics"]
    k = record["clusters"]["k"]
    for key in ("purity", "sign_agreement", "gradient_share", "target_hit_rate"):
        assert 0 <= d[key] <= 1 and len(d["per_cluster"][key]) == k
    assert d["label_nmi"] == record["clusters"]["label_nmi"]
    assert d["target_hit_rate"] == record["generator"]["history"][-1]["target_hit_rate"]
    assert "cluster purity" in record["_stdout"]


@pytest.mark.parametrize(
    "overrides",
    [
        ["generator=direct", "surrogate.fit_on=rotation"],
        ["surrogate.fit_on=half_classes", "generator.against=random_train", "clusters=3"],
    ],
)
def test_label_free_surrogates_direct_patterns_and_the_hpc_codes_loss_run(tmp_path, overrides):
    """A small run of each new choice: the surrogate's fit task and the generators' loss model
    change, every stage still runs and records its diagnostics."""
    proc = run_cli([*SMOKE, *overrides, "evals=[]", "hydra.run.dir=job"], cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    record = json.loads((tmp_path / "job" / "result.json").read_text())
    fit_on = record["config"]["surrogate"]["fit_on"]
    assert record["surrogate"]["fit"]["fit_on"] == fit_on
    assert (
        record["surrogate"]["fit"]["train_size"]
        == {
            "rotation": 4 * record["dataset"]["train_size"],
            "half_classes": sum(record["dataset"]["train_class_counts"][:5]),
        }[fit_on]
    )
    assert 0 <= record["diagnostics"]["purity"] <= 1
