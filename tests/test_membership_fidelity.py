"""LiRA as the reference (Carlini et al. 2022 and their code): per-example centres by the median,
the fixed-variance claims that hold, and shadows trained like each target (its data condition and
recipe), shared through the store, or the result marked a lower bound where they cannot be."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from scipy import stats

from tests.conftest import SMOKE, run_cli
from ue_sweep.evals.membership.lira import lira_offline, lira_online


def _skewed():
    """6 shadows per example, 3 IN and 3 OUT, each world with one outlier: median != mean."""
    in_mask = torch.tensor([[True, True, True, False, False, False]] * 2)
    shadow = torch.tensor(
        [[0.0, 0.5, 9.0, -1.0, -0.8, 4.0], [2.0, 2.5, -6.0, 1.0, 1.5, 7.0]], dtype=torch.float64
    )
    return shadow, in_mask, torch.tensor([0.6, 1.4], dtype=torch.float64)


def test_per_example_centres_are_the_shadows_median_as_the_reference_code():
    shadow, in_mask, target = _skewed()
    dat_in = shadow[in_mask].view(2, 3).numpy()
    dat_out = shadow[~in_mask].view(2, 3).numpy()
    # the reference's fprtpr / plot.py: np.median centres, np.std (ddof 0) widths
    mean_in, mean_out = np.median(dat_in, 1), np.median(dat_out, 1)
    std_in, std_out = np.std(dat_in, 1), np.std(dat_out, 1)
    t = target.numpy()
    online = stats.norm.logpdf(t, mean_in, std_in) - stats.norm.logpdf(t, mean_out, std_out)
    np.testing.assert_allclose(lira_online(target, shadow, in_mask).numpy(), online, rtol=1e-12)
    offline = stats.norm.logcdf(t, mean_out, std_out)
    np.testing.assert_allclose(lira_offline(target, shadow, in_mask).numpy(), offline, rtol=1e-12)
    # an even count: the mean of the two middle values (numpy's median, not torch.median's)
    four = torch.tensor([[0.0, 1.0, 3.0, 100.0, 5.0, 6.0, 7.0, 8.0]], dtype=torch.float64)
    mask = torch.tensor([[True] * 4 + [False] * 4])
    expected = stats.norm.logcdf(2.0, 6.5, np.std([5.0, 6.0, 7.0, 8.0]))
    got = lira_offline(torch.tensor([2.0], dtype=torch.float64), four, mask)
    np.testing.assert_allclose(got.numpy(), [expected], rtol=1e-12)


def test_a_shared_width_is_a_common_factor_of_the_online_scores():
    """The docstring's claim: online with a fixed variance, any shared width w gives the
    per-view log-ratio ((t - c_out)^2 - (t - c_in)^2) / (2 w^2), so the ranking (the ROC) does
    not depend on how w is estimated."""
    g = torch.Generator().manual_seed(0)
    n, s, v = 300, 8, 3
    shadow = torch.randn(n, s, v, generator=g, dtype=torch.float64) * 2
    in_mask = torch.rand(n, s, generator=g).argsort(1) < s // 2
    target = torch.randn(n, v, generator=g, dtype=torch.float64) * 2
    online = lira_online(target, shadow, in_mask, fixed_variance=True)
    keep = in_mask.unsqueeze(-1).expand_as(shadow)
    c_in = torch.nanquantile(torch.where(keep, shadow, torch.nan), 0.5, dim=1)
    c_out = torch.nanquantile(torch.where(~keep, shadow, torch.nan), 0.5, dim=1)
    unit = ((target - c_out).pow(2) - (target - c_in).pow(2)).mean(-1) / 2  # w = 1
    width = float(shadow.std(unbiased=False))
    torch.testing.assert_close(online, unit / width**2)


@pytest.mark.slow
def test_each_target_gets_shadows_trained_like_it_or_a_lower_bound(tmp_path):
    """Protected, control and DP targets on the smoke setup: clean, protected and control
    targets get their own shadow set (condition-matched, shared through the store with a later
    job); the DP targets get the nearest set, recorded as a lower bound."""
    store = f"paths.artifact_dir={tmp_path / 'store'}"
    common = [
        *SMOKE,
        store,
        "trainer.threads=1",
        "evals.membership.shadows=2",
        "evals.membership.augmentations=2",
        "evals.victims.controls=[uniform]",
    ]
    first = [
        *common,
        "hydra.run.dir=first",
        "evals=[victims,privacy,membership]",
        "evals.privacy.controls=[uniform]",
        "evals.privacy.epsilons=[8]",
    ]
    proc = run_cli(first, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    record = json.loads((tmp_path / "first" / "result.json").read_text())
    victims = record["evals"]["membership"]["victims"]
    sets = {label: v["shadows"] for label, v in victims.items()}
    assert sets["clean"]["set"] == "clean" and sets["clean"]["matched"]
    assert sets["protected"]["set"] == "protected" and sets["protected"]["matched"]
    assert sets["uniform"]["set"] == "uniform" and sets["uniform"]["matched"]
    assert sets["protected"]["models"] == [
        "membership-shadow-protected-0",
        "membership-shadow-protected-1",
    ]
    for dp, near in (("dp-clean-eps8", "clean"), ("dp-protected-eps8", "protected")):
        assert sets[dp]["set"] == near and not sets[dp]["matched"]
        assert sets[dp]["bound"] == "lower bound" and "DP-SGD" in sets[dp]["reason"]
    stages = record["stages"]
    for tag in ("", "protected-", "uniform-"):
        assert stages[f"victim-membership-shadow-{tag}0"]["status"] == "computed"
    assert "dp-clean-eps8: LiRA is a lower bound" in proc.stdout
    # the protected shadows train on the protected pool: not the clean shadows' numbers
    published = victims["protected"]["queries"]["published"]["attacks"]["lira_online"]
    assert 0.0 <= published["auc"] <= 1.0

    again = [*common, "hydra.run.dir=again", "evals=[victims,membership]"]
    proc = run_cli(again, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    stages = json.loads((tmp_path / "again" / "result.json").read_text())["stages"]
    for tag in ("", "protected-", "uniform-"):
        for query in ("clean", "protected" if tag == "protected-" else "clean"):
            assert stages[f"membership-shadow-{tag}0-scores-{query}"]["status"] == "reused"
        assert f"victim-membership-shadow-{tag}0" not in stages, "scores reused: no model needed"


def test_a_defended_target_gets_shadows_with_its_recipe_and_a_dp_target_a_lower_bound():
    from ue_sweep.evals.context import TrainedVictim
    from ue_sweep.evals.membership.config import MembershipConfig
    from ue_sweep.evals.membership.shadow_sets import shadow_set
    from ue_sweep.evals.membership.shadows import ShadowPlan
    from ue_sweep.store.artifacts import StageKey

    images = torch.zeros(6, 1, 2, 2, dtype=torch.uint8)
    plan = ShadowPlan(images, torch.zeros(6, dtype=torch.long), torch.ones(6, 2, dtype=bool))
    recipe = object()  # stands in for a defense's VictimRecipe: only passed through

    def victim(recipe_key=None, dp_safe=False):
        return TrainedVictim(
            "v",
            images[:4],
            StageKey("victim", {}),
            {},
            {},
            recipe_key,
            recipe=recipe,
            dp_safe=dp_safe,
        )

    cfg = MembershipConfig()
    jpeg = shadow_set(cfg, plan, None, victim({"method": "jpeg", "quality": 10}), "clean")
    assert jpeg.tag.startswith("clean-") and jpeg.matched
    assert jpeg.recipe is recipe and jpeg.recipe_key == {"method": "jpeg", "quality": 10}
    assert jpeg.pool_images is plan.pool_images
    other = shadow_set(cfg, plan, None, victim({"method": "jpeg", "quality": 50}), "clean")
    assert other.tag != jpeg.tag, "one set per recipe"
    plain = shadow_set(cfg, plan, None, victim(), "clean")
    assert plain.tag == "" and plain.matched and plain.recipe is None
    dp = shadow_set(cfg, plan, None, victim({"method": "dp-sgd"}, dp_safe=True), "clean")
    assert not dp.matched and dp.record(2)["bound"] == "lower bound"
    unknown = shadow_set(cfg, plan, None, victim(), None)
    assert not unknown.matched
    off = shadow_set(MembershipConfig(shadow_match=False), plan, None, victim({"m": 1}), "clean")
    assert not off.matched and off.tag == "" and off.recipe is None
