"""The sweep's W&B workspace: its definition, and that every panel shows what the jobs and the
report really log (read back from offline runs)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest

from tests.conftest import SMOKE
from tests.test_loggers import _wandb_env
from tests.wandb_records import offline_runs
from ue_sweep.report.dashboard import (
    TABLES,
    WORKSPACE_FILE,
    Target,
    build_workspace,
    definition,
    write_dashboard,
)
from ue_sweep.report.dashboard import target as dashboard_target


def _job(wandb=None, logger=None) -> SimpleNamespace:
    return SimpleNamespace(wandb=wandb, logger=logger)


def test_a_sweep_that_did_not_log_to_wandb_gets_no_workspace(tmp_path):
    assert write_dashboard([_job(), _job(wandb="odd", logger={})], ["clean"], tmp_path) is None
    assert not (tmp_path / WORKSPACE_FILE).exists()


def test_the_target_is_the_first_job_that_logged(monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "offline")
    jobs = [_job(), _job({"group": "g", "project": "p"}, {"entity": "team", "mode": "auto"})]
    assert dashboard_target(jobs) == Target("p", "team", "g", "offline")


def _panels(plain: dict) -> dict[str, list[dict]]:
    return {s["name"]: s["panels"] for s in plain["sections"]}


def test_the_definition_has_the_figures_the_stage_curves_and_the_tables():
    workspace = build_workspace(Target("p", None, "sweep-1", "offline"), "e", ["clean", "sign"])
    plain = definition(workspace)
    assert (plain["project"], plain["name"]) == ("p", "ue-sweep sweep-1")
    assert plain["runset_settings"]["filters"] == "Metric(\"Group\") == 'sweep-1'"
    assert plain["runset_settings"]["groupby"] == [{"type": "Metric", "name": "JobType"}]
    panels = _panels(plain)
    assert list(panels) == [
        "Protected accuracy vs global batch size (Figures 3-4)",
        "uc runs: per-epoch curves",
        "victim runs: per-epoch curves",
        "Evaluation tables",
    ]
    chart, scatter, media = panels["Protected accuracy vs global batch size (Figures 3-4)"]
    assert chart["chart_name"] == "wandb/line/v0"
    assert chart["query"] == {"summaryTable": {"tableKey": "report/protected_accuracy"}}
    assert chart["chart_fields"] == {"x": "global_batch", "y": "mean", "stroke": "dataset"}
    assert (scatter["x"]["name"], scatter["y"]["name"]) == (
        "batch.global",
        "metrics.accuracy.protected",
    )
    assert media["media_keys"] == ["media/boxplot", "media/curves"]
    assert [p["x"] for p in panels["victim runs: per-epoch curves"]] == [
        "victim_clean/epoch",
        "victim_sign/epoch",
    ]
    assert [p["table_name"] for p in panels["Evaluation tables"]] == list(TABLES)
    json.dumps(plain)  # plain data


def _summary_has(summary: dict, dotted: str) -> bool:
    node = summary
    for part in dotted.split("."):
        if not isinstance(node, dict) or part not in node:
            return False
        node = node[part]
    return True


@pytest.mark.slow
@pytest.mark.timeout(1800)
def test_offline_the_report_writes_a_workspace_whose_panels_show_logged_data(tmp_path):
    env = _wandb_env(tmp_path, WANDB_MODE="offline")
    sweep = ["-m", *SMOKE, "logger=wandb", "batch_size=32,64", "hydra.sweep.dir=sweep"]
    proc = _run(sweep, tmp_path, env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = _run(["report", "sweep"], tmp_path, env)
    assert report.returncode == 0, report.stderr[-3000:]
    assert "not published (no W&B API key)" in report.stderr
    assert "run `ue-sweep report` on this sweep again" in report.stderr
    saved = json.loads((tmp_path / "sweep" / "report" / WORKSPACE_FILE).read_text())
    assert saved["published"] is None and saved["workspace"]["entity"] is None

    runs = offline_runs(tmp_path / "wandb-files")
    by_type = {t: [r for r in runs if r.run.job_type == t] for t in ("uc", "victim", "report")}
    assert [len(by_type[t]) for t in ("uc", "victim", "report")] == [2, 2, 1]
    groups = {r.run.run_group for r in runs}
    workspace = saved["workspace"]
    assert workspace["runset_settings"]["filters"] == f"Metric(\"Group\") == '{groups.pop()}'"
    assert not groups, "one group for the whole sweep"
    # Logged keys; a table's or an image's fields are read back as "<key>.<field>".
    history = {
        t: {k.split(".", 1)[0] for r in rs for h in r.history for k in h}
        for t, rs in by_type.items()
    }
    panels = _panels(workspace)
    for section, job_type in (
        ("uc runs: per-epoch curves", "uc"),
        ("victim runs: per-epoch curves", "victim"),
    ):
        for panel in panels[section]:
            missing = {panel["x"], *panel["y"]} - history[job_type]
            assert not missing, f"{panel['title']}: not logged by {job_type} runs: {missing}"
    victim_conditions = {p["title"] for p in panels["victim runs: per-epoch curves"]}
    assert victim_conditions == {
        "victim (clean)",
        "victim (protected)",
        "victim (uniform)",
        "victim (sign)",
        "victim (untrained)",
    }
    chart, scatter, media = panels["Protected accuracy vs global batch size (Figures 3-4)"]
    reported = history["report"]
    table_key = chart["query"]["summaryTable"]["tableKey"]
    assert table_key in reported
    (report_run,) = by_type["report"]
    (logged,) = [h for h in report_run.history if f"{table_key}.path" in h]
    table = json.loads((report_run.path / "files" / logged[f"{table_key}.path"]).read_text())
    assert set(chart["chart_fields"].values()) <= set(table["columns"])
    assert set(media["media_keys"]) <= reported
    assert {p["table_name"] for p in panels["Evaluation tables"]} <= reported
    for run in by_type["victim"]:
        assert _summary_has(run.summary, scatter["x"]["name"])
        assert _summary_has(run.summary, scatter["y"]["name"])


def _run(args: list[str], cwd: Path, env: dict[str, str]) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "ue_sweep", *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=1200,
    )
