"""`evals=[membership]` end to end on smoke knobs: a shadow job, the attack job that collects
its scores, a job refused for a missing shadow, and the report."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from tests.conftest import SMOKE, run_cli
from ue_sweep.cli.report import write_report

pytestmark = pytest.mark.slow

TINY = ["evals.membership.shadows=2", "evals.membership.augmentations=2"]


def _job(root: Path, name: str, *overrides: str, ok: bool = True) -> dict:
    store = f"paths.artifact_dir={root / 'store'}"
    proc = run_cli([*SMOKE, f"hydra.run.dir={name}", store, *TINY, *overrides], cwd=root)
    assert (proc.returncode == 0) == ok, proc.stderr[-3000:]
    result = json.loads((root / name / "result.json").read_text())
    return result | {"_stdout": proc.stdout, "_stderr": proc.stderr}


def _victim_entries(root: Path) -> int:
    return len(list((root / "store").glob("victim-*.json")))


@pytest.fixture(scope="module")
def sweep(tmp_path_factory) -> tuple[Path, dict[str, dict]]:
    root = tmp_path_factory.mktemp("membership")
    jobs = {}
    role = ["evals=[membership]", "evals.membership.role=shadow", "evals.membership.shadow_index=0"]
    jobs["shadow"] = _job(root, "shadow0", *role)
    before = _victim_entries(root)
    jobs["refused"] = _job(
        root, "refused", "evals=[membership]", "evals.membership.in_process=false", ok=False
    )
    jobs["refused"]["_victims_added"] = _victim_entries(root) - before
    jobs["attack"] = _job(
        root, "attack", "evals=[victims,membership]", "evals.victims.controls=[sign]"
    )
    jobs["collect"] = _job(
        root, "collect", "evals=[membership]", "evals.membership.in_process=false"
    )
    return root, jobs


def test_a_shadow_job_trains_one_shadow_and_stores_its_scores(sweep):
    _, jobs = sweep
    outcome = jobs["shadow"]["evals"]["membership"]
    assert outcome["role"] == "shadow" and outcome["shadow_index"] == 0
    assert outcome["queries"] == ["clean", "protected", "uniform", "sign", "untrained"]
    assert jobs["shadow"]["stages"]["victim-membership-shadow-0"]["status"] == "computed"
    assert "victim-membership-shadow-1" not in jobs["shadow"]["stages"]


def test_a_missing_shadow_is_refused_before_anything_trains(sweep):
    _, jobs = sweep
    assert "shadow models [1] of 2 are not in the artifact store" in jobs["refused"]["_stderr"]
    assert jobs["refused"]["_victims_added"] == 0


def test_the_attack_job_collects_stored_shadow_scores_and_trains_the_missing_shadow(sweep):
    root, jobs = sweep
    stages = jobs["attack"]["stages"]
    assert "victim-membership-shadow-0" not in stages  # its scores were all stored
    assert stages["membership-shadow-0-scores-clean"]["status"] == "reused"
    assert stages["victim-membership-shadow-1"]["status"] == "computed"
    m = jobs["attack"]["evals"]["membership"]
    assert list(m["victims"]) == ["clean", "protected", "sign"]
    assert m["members"] == m["nonmembers"] > 100 and len(m["shadow_models"]) == 2
    for label, record in m["victims"].items():
        assert record["condition"] == label
        assert record["queries"]["clean"]["query_set"] == "clean"
        assert record["queries"]["published"]["query_set"] == label
        for query in record["queries"].values():
            assert list(query["attacks"]) == [
                "loss",
                "max_posterior",
                "lira_online",
                "lira_offline",
            ]
            for metrics in query["attacks"].values():
                assert metrics["members"] == metrics["nonmembers"] == m["members"]
                assert 0 <= metrics["auc"] <= 1 and 0 <= metrics["tpr_at_fpr"]["0.01"] <= 1
                assert metrics["balanced_accuracy"] == pytest.approx((1 + metrics["advantage"]) / 2)
    # the clean victim saw clean images: its published query is the clean one
    clean = m["victims"]["clean"]["queries"]
    assert clean["clean"]["attacks"] == clean["published"]["attacks"]
    assert (root / "attack" / "membership_roc.png").stat().st_size > 10_000
    assert "membership inference: " in jobs["attack"]["_stdout"]


def test_every_job_and_victim_gets_the_same_members_and_nonmembers(sweep):
    root, jobs = sweep
    a = torch.load(root / "attack" / "membership_scores.pt", weights_only=True)
    b = torch.load(root / "collect" / "membership_scores.pt", weights_only=True)
    assert torch.equal(a["members"], b["members"]) and torch.equal(a["nonmembers"], b["nonmembers"])
    # alone, the evaluation attacks its own clean and protected victims: the same artifacts,
    # the same shadows and the same points, so the same numbers
    collect = jobs["collect"]
    assert {s for s, p in collect["stages"].items() if p["status"] == "computed"} == set()
    mine, theirs = (
        collect["evals"]["membership"]["victims"],
        jobs["attack"]["evals"]["membership"]["victims"],
    )
    assert list(mine) == ["clean", "protected"]
    for label in mine:
        assert mine[label]["queries"] == theirs[label]["queries"]
        assert torch.equal(
            a["scores"][f"{label}/clean"]["loss"], b["scores"][f"{label}/clean"]["loss"]
        )


def test_the_report_has_the_membership_table_and_roc_figure(sweep):
    root, _ = sweep
    report = write_report(root, root / "report", use_wandb=False)
    section = next(s for s in report.sections if s.title == "Membership inference")
    assert section.header[:5] == ["dataset", "victim", "attack", "AUC (clean)", "TPR@1%FPR (clean)"]
    victims = {(r[1], r[2]) for r in section.rows}
    assert ("sign", "lira_online") in victims and ("protected", "loss") in victims
    clean_loss = next(r for r in section.rows if r[1:3] == ["clean", "loss"])
    assert clean_loss[3].count("±") == 1  # two attack jobs (attack, collect) of one seed
    assert (root / "report" / "membership_roc.png").stat().st_size > 10_000
    assert "## Membership inference" in (root / "report" / "report.md").read_text()
