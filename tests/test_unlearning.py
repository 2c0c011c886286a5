"""`evals=[unlearning]`: bad input refused before compute, and one tiny end-to-end job."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.conftest import SMOKE, run_cli
from ue_sweep.cli.validation import to_root_config
from ue_sweep.data.holdout import reserve_holdout
from ue_sweep.data.registry import load_dataset
from ue_sweep.errors import ConfigError
from ue_sweep.evals.registry import holdout_fraction
from ue_sweep.evals.unlearning.evaluation import epoch_budget
from ue_sweep.job.pipeline import check_against_data

U = "evals.unlearning"


@pytest.mark.parametrize(
    ("override", "says"),
    [
        (f"{U}.shards=0", f"{U}.shards=0 is not accepted; expected an integer >= 1"),
        (f"{U}.slices=0", f"{U}.slices=0 is not accepted; expected an integer >= 1"),
        (f"{U}.requests=0", f"{U}.requests=0 is not accepted; expected an integer >= 1"),
        (f"{U}.holdout_fraction=0", f"{U}.holdout_fraction=0.0 is not accepted"),
        (f"{U}.conditions=[]", f"{U}.conditions=[] is not accepted; expected at least one"),
        (f"{U}.conditions=[dirty]", "a list of distinct values of: clean, protected"),
        # 2e/(R+1) epochs per slice: 4 slices need a budget of at least 3 (2.5) epochs
        (f"{U}.slices=4 {U}.epochs=2", f"{U}.epochs=2 is not accepted; expected at least 3 "),
    ],
)
def test_bad_knobs_are_refused_with_the_config(compose_cfg, override, says):
    with pytest.raises(ConfigError) as err:
        to_root_config(compose_cfg("evals=[unlearning]", *override.split()))
    assert says in str(err.value)


@pytest.mark.parametrize(
    ("overrides", "budget"),
    [
        ((f"{U}.slices=16",), 9),  # victim.epochs=8 of the demo: raised to one epoch per slice
        (("victim.epochs=1",), 2),  # the smoke preset's victims, the default 3 slices
        (("victim.epochs=5",), 5),
        ((f"{U}.epochs=4",), 4),
    ],
)
def test_an_unset_budget_is_the_victims_epochs_at_least_one_per_slice(
    compose_cfg, overrides, budget
):
    cfg = to_root_config(compose_cfg("evals=[unlearning]", *overrides))
    assert epoch_budget(cfg.evals["unlearning"], cfg) == budget


@pytest.mark.parametrize(
    ("text", "extra", "says"),
    [
        ("1 2 2", "", "distinct indices (repeated: [2])"),
        ("3 x", "", "non-negative integer indices only (found 'x')"),
        ("", "", "at least one training index"),
        ("1 2", f"{U}.requests=2", f"{U}.requests=2 is not accepted; expected unset with"),
    ],
)
def test_bad_request_files_are_refused_with_the_config(compose_cfg, tmp_path, text, extra, says):
    path = tmp_path / "requests.txt"
    path.write_text(text)
    overrides = ["evals=[unlearning]", f"{U}.request_file={path}", *extra.split()]
    with pytest.raises(ConfigError) as err:
        to_root_config(compose_cfg(*overrides))
    assert says in str(err.value)


def _check_with_data(compose_cfg, *overrides: str) -> None:
    """The pipeline's data checks, on the digits demo with the job's hold-out reserved."""
    cfg = to_root_config(compose_cfg("evals=[unlearning]", *overrides))
    data = reserve_holdout(
        load_dataset(cfg.dataset, cfg.paths), holdout_fraction(cfg.evals), cfg.dataset.split_seed
    )
    check_against_data(cfg, data)


@pytest.mark.parametrize(
    ("overrides", "says"),
    [
        ([f"{U}.requests=5000"], f"{U}.requests=5000 is not accepted; expected at most the 1211"),
        ([f"{U}.requests=200"], "at most the 136 hold-out images"),
        ([f"{U}.shards=700", f"{U}.slices=2"], "shards x slices (700 x 2) at most the 1211"),
        (
            [f"{U}.shards=600", f"{U}.slices=2", f"{U}.requests=130"],
            "requests that leave a point in the first slice of every shard",
        ),
    ],
)
def test_requests_and_shards_that_do_not_fit_the_pool_are_refused_before_compute(
    compose_cfg, overrides, says
):
    with pytest.raises(ConfigError) as err:
        _check_with_data(compose_cfg, *overrides)
    assert says in str(err.value)


def test_request_file_indices_outside_the_pool_are_refused_before_compute(compose_cfg, tmp_path):
    path = tmp_path / "requests.txt"
    path.write_text("0, 7\n1210\n")
    _check_with_data(compose_cfg, f"{U}.request_file={path}")  # the last index of 1211: fine
    path.write_text("0 7 1211 99999\n")
    with pytest.raises(ConfigError) as err:
        _check_with_data(compose_cfg, f"{U}.request_file={path}")
    assert "indices of the 1211 training images, 0..1210 (found [1211, 99999])" in str(err.value)


@pytest.mark.slow
def test_a_tiny_unlearning_job_forgets_its_requests_and_reports_them(tmp_path: Path):
    knobs = [
        "evals=[unlearning]",
        f"{U}.shards=3",
        f"{U}.slices=2",
        f"{U}.epochs=2",
        f"{U}.requests=4",
    ]
    proc = run_cli([*SMOKE, "hydra.run.dir=job", *knobs], cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    record = json.loads((tmp_path / "job" / "result.json").read_text())
    m = record["evals"]["unlearning"]
    assert m["epochs_per_slice"] == [1, 1] and m["requests"] == 4
    assert record["dataset"]["holdout_size"] == 136  # evals.unlearning.holdout_fraction=0.1
    for condition in ("clean", "protected"):
        c = m["conditions"][condition]
        assert c["removed_in_training"] == {"before": 4, "after": 0}
        cost = c["cost"]
        assert 0 < cost["unlearning_steps"] == cost["trained_steps"] <= cost["full_retrain_steps"]
        assert cost["ratio"] == cost["unlearning_steps"] / cost["full_retrain_steps"]
        for when in ("before", "after"):
            for target in ("ensemble", "shard"):
                assert 0 <= c["attacks"][when][target]["loss"]["auc"] <= 1
                assert c["attacks"][when][target]["loss"]["members"] == 4
        # the single model on the same pool, attacked on the same points before / after
        single, n = c["single_model"], record["dataset"]["train_size"]
        assert single["train_size"] == {"before": n, "after": n - 4}
        for when in ("before", "after"):
            for attack in ("loss", "true_class_posterior"):
                found = single[when]["attacks"][attack]
                assert found["members"] == found["nonmembers"] == 4
    assert record["stages"]["victim-sisa-single-clean-retrained"]["status"] == "computed"
    assert "single model on the pool, full retrain" in proc.stdout
    assert "unlearning (SISA, 3 shards x 2 slices" in proc.stdout

    # The same job again reuses every slice: nothing to train, the same figures.
    again = run_cli([*SMOKE, "hydra.run.dir=again", *knobs], cwd=tmp_path)
    assert again.returncode == 0, again.stderr[-3000:]
    second = json.loads((tmp_path / "again" / "result.json").read_text())["evals"]["unlearning"]
    for condition in ("clean", "protected"):
        c, first = second["conditions"][condition], m["conditions"][condition]
        assert c["initial"]["computed_slices"] == 0 and c["cost"]["trained_steps"] == 0
        assert c["cost"]["unlearning_steps"] == first["cost"]["unlearning_steps"]
        assert c["accuracy"] == first["accuracy"]

    report = run_cli(["report", ".", "--no-wandb"], cwd=tmp_path)
    assert report.returncode == 0, report.stderr[-2000:]
    assert "## Machine unlearning (SISA)" in report.stdout
    assert "| digits | protected |" in report.stdout
    assert (tmp_path / "report" / "unlearning.csv").exists()
