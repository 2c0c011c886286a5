"""`ue-sweep report`: exact table values on a synthetic sweep, CSV, valid PNGs, the missing jobs."""

from __future__ import annotations

import csv
import json
import socket
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image

from tests.conftest import run_cli
from tests.wandb_records import offline_runs
from ue_sweep.cli.report import eval_sections, write_report
from ue_sweep.cli.report import main as report_main
from ue_sweep.report.collect import Job, build_rows, collect
from ue_sweep.report.tables import markdown_table

MULTIRUN_YAML = """\
hydra:
  sweep:
    dir: sweep
  sweeper:
    _target_: hydra._internal.core_plugins.basic_sweeper.BasicSweeper
    max_batch_size: null
    params: null
  overrides:
    task:
    - dataset=digits,pets
    - batch_size="32","64"
    - seed=0,1
    - experiment=smoke
"""

# (job number, dataset, per-device batch, seed) -> clean, protected, random-noise accuracy.
# Hydra numbers the grid dataset-major, then batch size, then seed.
COMPLETED = {
    (0, "digits", 32, 0): (0.98, 0.40, 0.90),
    (1, "digits", 32, 1): (0.96, 0.30, 0.88),
    (2, "digits", 64, 0): (0.97, 0.52, 0.92),
    (3, "digits", 64, 1): (0.95, 0.58, 0.86),
    (4, "pets", 32, 0): (0.80, 0.25, 0.70),
}
FAILED = (5, "pets", 32, 1)
RUNNING = (6, "pets", 64, 0)
# Grid point 7 (pets, 64, seed 1) never started: no directory at all.


def _record(num: int, dataset: str, batch: int, seed: int, status: str) -> dict:
    overrides = [f"dataset={dataset}", f"batch_size={batch}", f"seed={seed}", "experiment=smoke"]
    logger = {"backend": "wandb", "project": "ue-sweep-test", "mode": "auto", "dir": None}
    record: dict = {
        "status": status,
        "config": {
            "dataset": {"name": dataset},
            "batch_size": {"per_device": batch},
            "logger": logger,
        },
        "overrides": overrides,
        "seed": seed,
        "job_dir": f"sweep/{num}",
        "updated_at": "2026-11-23T10:00:00+00:00",
    }
    if status == "completed":
        clean, protected, control = COMPLETED[(num, dataset, batch, seed)]
        record |= {
            "world_size": 1,
            "dataset": {"name": dataset},
            "batch": {"per_device": batch, "global": batch},
            "metrics": {
                "accuracy": {
                    "clean": clean,
                    "protected": protected,
                    "uniform": control,
                    "sign": round(control - 0.1, 6),
                }
            },
            "wandb": {"group": "synthetic-sweep", "sweep_key": "00000000"},
        }
    if status == "failed":
        record["error"] = {"type": "RuntimeError", "message": "CUDA out of memory", "traceback": ""}
    return record


@pytest.fixture
def sweep(tmp_path: Path) -> Path:
    root = tmp_path / "sweep"
    root.mkdir()
    (root / "multirun.yaml").write_text(MULTIRUN_YAML)
    jobs = [(*key, "completed") for key in COMPLETED] + [
        (*FAILED, "failed"),
        (*RUNNING, "running"),
    ]
    for num, dataset, batch, seed, status in jobs:
        job = root / str(num)
        job.mkdir()
        (job / "result.json").write_text(json.dumps(_record(num, dataset, batch, seed, status)))
    return root


@pytest.mark.slow
def test_report_command_writes_the_table_csv_figures_and_lists_missing_jobs(sweep, tmp_path):
    wandb_dir = tmp_path / "wandb-files"
    proc = run_cli(
        ["report", str(sweep)],
        cwd=tmp_path,
        timeout=120,
        WANDB_MODE="offline",
        WANDB_DIR=str(wandb_dir),
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = sweep / "report"

    # Table 1 by hand. digits at 32: seeds 40% and 30% -> 35.0 ± 7.1 (sample std 7.07);
    # at 64: 52%, 58% -> 55.0 ± 4.2. Clean: seed 0 (98 + 97) / 2 = 97.5, seed 1 (96 + 95) / 2
    # = 95.5 -> 96.5 ± 1.4. Controls: uniform seed 0 91, seed 1 87 -> 89.0 ± 2.8; sign is 10
    # points lower (79.0 ± 2.8), so it is the strongest control. pets has one completed job
    # (seed 0 at 32), marked n=1; its 64 cell is empty.
    table = (
        "| dataset | 32 | 64 | clean | strongest control |\n"
        "| --- | ---: | ---: | ---: | ---: |\n"
        "| digits | 35.0 ± 7.1 | 55.0 ± 4.2 | 96.5 ± 1.4 | sign: 79.0 ± 2.8 |\n"
        "| pets | 25.0 (n=1) | – | 80.0 (n=1) | sign: 60.0 (n=1) |"
    )
    markdown = (out / "report.md").read_text()
    assert table in markdown
    assert table in proc.stdout

    with (out / "table.csv").open() as f:
        rows = {r["dataset"]: r for r in csv.DictReader(f)}
    digits, pets = rows["digits"], rows["pets"]
    assert digits["protected_32_mean"] == "35.0000" and digits["protected_32_std"] == "7.0711"
    assert digits["protected_64_mean"] == "55.0000" and digits["protected_64_std"] == "4.2426"
    assert (digits["clean_mean"], digits["clean_std"], digits["clean_n"]) == (
        "96.5000",
        "1.4142",
        "2",
    )
    assert (digits["uniform_mean"], digits["uniform_std"]) == ("89.0000", "2.8284")
    assert (digits["sign_mean"], digits["sign_std"]) == ("79.0000", "2.8284")
    assert digits["strongest_control"] == pets["strongest_control"] == "sign"
    assert (pets["protected_32_mean"], pets["protected_32_std"], pets["protected_32_n"]) == (
        "25.0000",
        "",
        "1",
    )
    assert (pets["protected_64_mean"], pets["protected_64_n"]) == ("", "0")

    with (out / "jobs.csv").open() as f:
        jobs = list(csv.DictReader(f))
    assert sorted(j["status"] for j in jobs) == ["completed"] * 5 + ["failed", "running"]

    # The failed, missing (running) and never-started jobs are listed with what identifies them.
    failed = "- failed: `5` (dataset=pets,batch_size=32,seed=1,experiment=smoke): RuntimeError: "
    assert failed + "CUDA out of memory" in markdown
    assert "- missing: `6` (dataset=pets,batch_size=64,seed=0,experiment=smoke)" in markdown
    assert (
        "- incomplete: dataset=pets,batch_size=64,seed=1,experiment=smoke: in the sweep's grid"
        in markdown
    )

    for name in ("protected_by_batch.png", "accuracy_vs_batch.png"):
        with Image.open(out / name) as image:
            image.verify()
        with Image.open(out / name) as image:
            assert image.format == "PNG"
            assert 600 <= image.width <= 3000 and 400 <= image.height <= 3000
        assert f"![{name}]({name})" in markdown

    # The jobs logged to W&B, so the report is logged too: one offline run, grouped with them.
    (run,) = offline_runs(wandb_dir)
    assert (run.run.job_type, run.run.run_group, run.run.project) == (
        "report",
        "synthetic-sweep",
        "ue-sweep-test",
    )
    (logged,) = [h for h in run.history if "report/table._type" in h]
    assert logged["report/table._type"] == "table-file"
    assert logged["report/table.nrows"] == 2


def test_rows_split_by_other_swept_settings_and_ignore_bookkeeping():
    def job(seed: int, clusters: int, protected: float) -> Job:
        return Job(
            dir=".",
            status="completed",
            overrides=(
                f"clusters={clusters}",
                f"seed={seed}",
                "trainer.progress=log",
                "logger=wandb",
            ),
            dataset="digits",
            seed=seed,
            global_batch=64,
            accuracy={"clean": 0.9, "protected": protected, "uniform": 0.8},
        )

    rows = build_rows([job(0, 5, 0.2), job(1, 5, 0.4), job(0, 10, 0.6)])
    assert [r.label for r in rows] == ["digits (clusters=10)", "digits (clusters=5)"]
    assert rows[1].protected[64].mean == pytest.approx(0.3)
    assert rows[0].protected[64].n == 1


def test_partial_sweep_without_multirun_yaml_still_gives_a_table(sweep):
    (sweep / "multirun.yaml").unlink()
    report = collect(sweep, sections=eval_sections)
    assert report.incomplete == [] and "no multirun.yaml" in str(report.grid_note)
    assert "| digits | 35.0 ± 7.1 |" in markdown_table(report)


# Result files no ue-sweep job writes: each is listed as unreadable, the rest of the sweep reported.
ODD_RESULTS = {
    "completed-without-fields": '{"status": "completed"}',
    "a-list": "[]",
    "null": "null",
    "truncated": '{"status": "comp',
    "wrong-types": '{"status": "completed", "dataset": 3, "batch": [], "metrics": "x"}',
}


@pytest.mark.parametrize("content", ODD_RESULTS.values(), ids=ODD_RESULTS.keys())
def test_an_odd_result_file_is_listed_as_unreadable(sweep, tmp_path, capsys, content):
    (sweep / "odd").mkdir()
    (sweep / "odd" / "result.json").write_text(content)
    assert report_main([str(sweep), "--out", str(tmp_path / "out"), "--no-wandb"]) == 0
    markdown = (tmp_path / "out" / "report.md").read_text()
    assert "8 result files: 5 completed, 1 failed, 0 interrupted, 1 missing" in markdown
    assert "1 unreadable; 1 grid points without a result file." in markdown
    assert "- unreadable: `odd`: result file unreadable: " in markdown
    assert "| digits | 35.0 ± 7.1 |" in markdown


@pytest.mark.parametrize("out", ["/proc/ue-sweep-report", "{sweep}/0/result.json/report"])
def test_an_unwritable_output_directory_is_one_line(sweep, capsys, out):
    assert report_main([str(sweep), "--out", out.format(sweep=sweep), "--no-wandb"]) == 2
    errors = capsys.readouterr().err.strip().splitlines()
    assert len(errors) == 1 and errors[0].startswith("ue-sweep report: cannot write to ")


def test_a_running_result_whose_process_is_gone_is_interrupted(sweep, tmp_path):
    dead = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"],
        check=True,
        capture_output=True,
        text=True,
    )
    record = json.loads((sweep / "6" / "result.json").read_text())
    record |= {"host": socket.gethostname(), "pid": int(dead.stdout)}
    (sweep / "6" / "result.json").write_text(json.dumps(record))
    write_report(sweep, tmp_path / "out", use_wandb=False)
    markdown = (tmp_path / "out" / "report.md").read_text()
    assert "1 interrupted, 0 missing" in markdown
    assert "- interrupted: `6` (dataset=pets,batch_size=64,seed=0,experiment=smoke): " in markdown
    assert f"process {int(dead.stdout)} on {socket.gethostname()} is gone" in markdown
