"""UC diagnostics (purity, sign agreement, gradient coverage), the direct patterns, the
surrogate's fitting tasks and the presets of issue 25, on hand-computable inputs."""

from __future__ import annotations

import pytest
import torch

from ue_sweep.cli.validation import to_root_config
from ue_sweep.config import AugmentConfig, BatchSizeConfig, GeneratorConfig, ModelSpec
from ue_sweep.data.splits import ImageSplits
from ue_sweep.models.classifiers import build_classifier
from ue_sweep.models.direct import DirectNoise
from ue_sweep.runtime.progress import Progress
from ue_sweep.train.run import TrainingRun
from ue_sweep.uc.clustering import Clusters
from ue_sweep.uc.diagnostics import (
    GradientCoverage,
    correlation,
    passes_gradient,
    protection_diagnostics,
    purity,
    saturation,
    sign_agreement,
)
from ue_sweep.uc.diagnostics_table import diagnostics_markdown
from ue_sweep.uc.features import extract_features
from ue_sweep.uc.surrogate_fit import fit_classes, fit_task, rotated
from ue_sweep.uc.train_generators import (
    ClusteredImages,
    UCObjective,
    train_generators,
    uc_loss_grad,
)

from .dist_workers import calibrated_surrogate, separable_images


def test_purity_is_each_clusters_majority_label_share():
    ids = torch.tensor([0, 0, 0, 1, 1])
    labels = torch.tensor([2, 2, 1, 0, 0])
    overall, per = purity(ids, labels, k=3)
    assert per == [pytest.approx(2 / 3), 1.0, None]  # cluster 2 is empty
    assert overall == pytest.approx(4 / 5)


def test_sign_agreement_and_correlation_compare_the_noise_with_its_start():
    start = torch.tensor([[1.0, 1.0, 1.0, 1.0], [1.0, -2.0, 3.0, -4.0]])
    noise = torch.tensor([[1.0, -1.0, 1.0, -1.0], [2.0, -4.0, 6.0, -8.0]])
    overall, per = sign_agreement(noise, start)
    assert per == [0.5, 1.0] and overall == 0.75
    total, per_corr = correlation(noise, start)
    assert per_corr[0] is None, "a constant start has no correlation"
    assert per_corr[1] == pytest.approx(1.0)
    assert correlation(-noise[1:], start[1:])[0] == pytest.approx(-1.0)
    assert total is not None and -1 <= total <= 1


def test_only_the_reference_clamp_withholds_gradients_from_pixels_at_eps():
    eps = 0.5
    noise = torch.tensor([[0.5, -0.5, 0.2, 0.0]])
    grad = torch.tensor([[1.0, 1.0, 0.0, 1.0]])
    assert passes_gradient(noise, eps, clamped=True).tolist() == [[False, False, True, True]]
    clamped, smooth = (
        GradientCoverage((1, 4), torch.device("cpu")),
        GradientCoverage((1, 4), torch.device("cpu")),
    )
    clamped.update(noise, grad, eps, clamped=True)
    smooth.update(noise, grad, eps, clamped=False)
    assert clamped.shares() == (0.25, [0.25])  # only the 0.0 pixel: inside and with a gradient
    assert smooth.shares() == (0.75, [0.75])
    # Coverage is a union over steps, and survives a checkpoint.
    clamped.update(torch.zeros(1, 4), torch.ones(1, 4), eps, clamped=True)
    restored = GradientCoverage((1, 4), torch.device("cpu"))
    restored.load_state_dict(clamped.state_dict())
    assert restored.shares() == (1.0, [1.0])


def test_saturation_per_pattern_counts_pixels_at_099_eps():
    noise = torch.tensor([[[0.1, 0.099]], [[0.05, -0.1]]])
    assert saturation(noise, 0.1) == [1.0, 0.5]


def test_protection_diagnostics_record_and_its_report_table():
    noise = torch.tensor([[[0.1, -0.1]], [[0.1, 0.1]]])
    start = torch.tensor([[[0.2, 0.3]], [[0.1, 0.1]]])
    record = protection_diagnostics(
        noise,
        start,
        torch.tensor([0, 0, 1]),
        torch.tensor([3, 4, 4]),
        eps=0.1,
        label_nmi=0.5,
        gradient={"overall": 0.25, "per_cluster": [0.5, 0.0]},
        hit_rate={"overall": 0.5, "per_cluster": [1.0, 0.0]},
    )
    assert record["purity"] == pytest.approx(2 / 3)
    assert record["per_cluster"]["purity"] == [0.5, 1.0]
    assert record["sign_agreement"] == 0.75
    assert record["per_cluster"]["sign_agreement"] == [0.5, 1.0]
    assert record["saturated_fraction"] == 1.0
    assert record["gradient_share"] == 0.25 and record["target_hit_rate"] == 0.5
    table = diagnostics_markdown([("0", record)])
    assert table.splitlines()[2].startswith("| `0` | 0.500 | 0.667 | 0.750 |")


def test_direct_patterns_stay_within_eps_and_every_pixel_gets_a_gradient():
    direct = DirectNoise(2, 1, 4, eps=0.1, seed=0)
    noise = direct()
    assert noise.shape == (2, 1, 4, 4) and noise.abs().max() < 0.1
    noise.sum().backward()
    assert (direct.w.grad > 0).all()
    torch.testing.assert_close(DirectNoise(2, 1, 4, eps=0.1, seed=0)(), noise.detach())


def test_temperature_divides_the_features_before_the_softmax(rt):
    torch.manual_seed(0)
    surrogate = build_classifier(ModelSpec(width=4), in_channels=1, num_classes=3, image_size=8)
    surrogate = surrogate.eval().requires_grad_(False)
    images = torch.rand(4, 1, 8, 8)
    ids = torch.tensor([0, 1, 0, 1])
    noise = torch.rand(2, 1, 8, 8) * 0.1
    targets = torch.softmax(torch.randn(2, surrogate.feature_dim), -1)
    kl, _, _ = uc_loss_grad(
        surrogate, images, ids, noise, UCObjective(targets, "cluster", 64, temperature=0.5), rt
    )
    _, feats = surrogate((images + noise[ids]).clamp(0, 1))
    expected = torch.nn.functional.kl_div(
        (feats / 0.5).log_softmax(-1), targets[ids], reduction="none"
    ).sum(-1)
    torch.testing.assert_close(
        kl.float(), torch.stack([expected[[0, 2]].sum(), expected[[1, 3]].sum()])
    )


def test_direct_patterns_train_and_record_their_gradient_share(rt):
    n, k = 24, 3
    images = separable_images(n, k)
    surrogate = calibrated_surrogate(images)
    clusters = Clusters(
        ids=torch.arange(n) % k,
        centers=extract_features(surrogate, images, 8, rt)[:k],
        targets=torch.tensor([1, 2, 0]),
        inertia=0.0,
    )
    direct = DirectNoise(k, 1, 8, eps=0.3, seed=1)
    stats = train_generators(
        direct,
        surrogate,
        ClusteredImages(images, torch.zeros(n, dtype=torch.long), clusters),
        GeneratorConfig(kind="direct", output="tanh", epochs=3, lr=0.1, eps=0.3, scope="cluster"),
        BatchSizeConfig(per_device=8),
        AugmentConfig(0, False),
        TrainingRun(rt, seed=0, progress=Progress("none"), name="generators"),
    )
    assert stats.loss_history[-1] < stats.loss_history[0]
    # eps * tanh passes a gradient everywhere; only pixels clipped to [0, 1] in every image
    # they were added to get none.
    assert 0.5 < stats.gradient["overall"] <= 1 and len(stats.gradient["per_cluster"]) == k
    shares = [h["gradient_share"] for h in stats.history]
    assert shares == sorted(shares) and shares[-1] == stats.gradient["overall"]


def _splits() -> ImageSplits:
    images = torch.arange(6 * 4, dtype=torch.uint8).view(6, 1, 2, 2)
    labels = torch.tensor([0, 1, 2, 3, 0, 3])
    return ImageSplits(
        name="toy",
        train_images=images,
        train_labels=labels,
        test_images=images[:4],
        test_labels=labels[:4],
        classes=("a", "b", "c", "d"),
        test_split="first four",
    )


def test_surrogate_fit_tasks_half_the_classes_or_rotations_without_labels():
    data = _splits()
    half = fit_task("half_classes", data)
    assert half.num_classes == fit_classes("half_classes", 4) == 2
    assert half.train_labels.tolist() == [0, 1, 0] and len(half.train_images) == 3
    assert half.test_labels.tolist() == [0, 1]
    rot = fit_task("rotation", data)
    assert rot.num_classes == 4 and len(rot.train_images) == 24
    assert rot.train_labels.tolist() == [r for r in range(4) for _ in range(6)]
    turned, _ = rotated(torch.tensor([[[[1, 2], [3, 4]]]]))
    assert turned[1].tolist() == [[[2, 4], [1, 3]]]  # 90 degrees counter-clockwise
    same = fit_task("labels", data)
    assert same.train_labels is data.train_labels and same.num_classes == 4


@pytest.mark.parametrize(
    "overrides",
    [
        ["generator=direct"],
        ["surrogate.fit_on=half_classes"],
        ["surrogate.fit_on=rotation", "clusters=3"],
        ["experiment=ue_hpc_code"],
    ],
)
def test_the_new_choices_compose(compose_cfg, overrides):
    cfg = to_root_config(compose_cfg(*overrides), on_this_host=False)
    if overrides == ["generator=direct"]:
        assert cfg.generator.kind == "direct" and cfg.generator.output == "tanh"
    if overrides == ["experiment=ue_hpc_code"]:
        assert cfg.generator.against == "random_train" and cfg.victim.batch_size == 24576
        assert cfg.surrogate.weights == "pretrained"


def test_new_settings_keep_default_keys_and_split_the_others(compose_cfg):
    from ue_sweep.store.keys import clusters_key, generators_key, surrogate_key

    def keys(*overrides: str) -> tuple[str, str]:
        cfg = to_root_config(compose_cfg(*overrides), on_this_host=False)
        surrogate = surrogate_key(cfg, {"sha256": "x"}, 1)
        return surrogate.digest, generators_key(cfg, clusters_key(cfg, surrogate), 1).digest

    default = keys()
    assert keys("surrogate.fit_on=labels") == default
    assert keys("surrogate.fit_on=rotation")[0] != default[0]
    assert keys("generator.temperature=0.5")[0] == default[0]
    assert keys("generator.temperature=0.5")[1] != default[1]
    assert keys("generator=direct")[1] != default[1]
    # The digest of a default key does not depend on the fields added for issue 25.
    cfg = to_root_config(compose_cfg(), on_this_host=False)
    key = generators_key(cfg, clusters_key(cfg, surrogate_key(cfg, {"sha256": "x"}, 1)), 1)
    assert not {"kind", "temperature", "against"} & key.inputs["generator"].keys()


@pytest.mark.parametrize(
    ("overrides", "key"),
    [
        (["generator=direct", "generator.output=reference"], "generator.output"),
        (["surrogate.weights=none", "surrogate.fit_on=rotation"], "surrogate.fit_on"),
        (["surrogate.fit_on=colour"], "surrogate.fit_on"),
        (["generator.kind=net"], "generator.kind"),
    ],
)
def test_bad_new_settings_fail_naming_the_key(compose_cfg, overrides, key):
    from ue_sweep.errors import ConfigError

    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        to_root_config(compose_cfg(*overrides), on_this_host=False)


@pytest.mark.parametrize(
    ("gaps", "protected", "expected"),
    [
        ([0.2, 0.2], [0.3, 0.3], "too few seeds"),
        ([0.20, 0.22, 0.18], [0.3, 0.4, 0.5], "supported"),
        ([0.20, 0.22, 0.18], [0.7, 0.7, 0.7], "inconclusive"),
        ([0.05, 0.06, 0.04], [0.3, 0.3, 0.3], "inconclusive"),
        ([0.1, -0.1, 0.0], [0.3, 0.3, 0.3], "not supported"),
        ([-0.2, -0.21, -0.19], [0.3, 0.3, 0.3], "controls protect better"),
    ],
)
def test_the_pre_registered_rule(gaps, protected, expected):
    from ue_sweep.uc.study import verdict

    assert verdict(gaps, protected) == expected


def test_study_table_pairs_each_seeds_strongest_control_with_its_protected(tmp_path):
    import json

    from ue_sweep.uc.study import read_jobs, study_table, t_interval

    for seed, (protected, sign, untrained) in enumerate([(0.3, 0.5, 0.6), (0.4, 0.8, 0.5)]):
        job = tmp_path / str(seed)
        job.mkdir()
        record = {
            "status": "completed",
            "seed": seed,
            "config": {"clusters": {"k": 3}, "surrogate": {}, "generator": {"kind": "direct"}},
            "metrics": {
                "accuracy": {
                    "clean": 0.99,
                    "protected": protected,
                    "sign": sign,
                    "untrained": untrained,
                }
            },
            "diagnostics": {"purity": 0.5},
        }
        (job / "result.json").write_text(json.dumps(record))
    cells = read_jobs([tmp_path])
    assert list(cells) == [(3, "labels", "direct")]
    row = study_table(cells).splitlines()[2]
    # strongest - protected per seed: 0.5 - 0.3 and 0.5 - 0.4, mean 0.15
    low, high = t_interval([0.2, 0.1])
    assert f"+15.0 [{100 * low:+.1f}, {100 * high:+.1f}]" in row
    assert "| 35.0 ± 7.1 |" in row and "| 0.50 |" in row and row.endswith("too few seeds |")


def test_the_report_shows_each_jobs_diagnostics(tmp_path):
    import json

    from ue_sweep.cli.report import eval_sections
    from ue_sweep.report.collect import collect
    from ue_sweep.report.tables import markdown_report

    record = {
        "status": "completed",
        "config": {"dataset": {"name": "digits"}, "batch_size": {"per_device": 64}},
        "overrides": ["seed=0"],
        "seed": 0,
        "world_size": 1,
        "dataset": {"name": "digits"},
        "batch": {"per_device": 64, "global": 64},
        "metrics": {"accuracy": {"clean": 0.99, "protected": 0.4}},
        "diagnostics": {"label_nmi": 0.96, "purity": 0.98, "gradient_share": 0.25},
    }
    (tmp_path / "0").mkdir()
    (tmp_path / "0" / "result.json").write_text(json.dumps(record))
    text = markdown_report(collect(tmp_path, sections=eval_sections), [])
    assert "## UC diagnostics" in text
    assert "| `0` | 0.960 | 0.980 |  |  |  |  | 0.250 |" in text
    # The same table as numbers, next to the evaluations' CSV files.
    from ue_sweep.cli.report import write_report

    write_report(tmp_path, tmp_path / "report", use_wandb=False)
    rows = (tmp_path / "report" / "diagnostics.csv").read_text().splitlines()
    assert rows[0].startswith("job,NMI,purity") and rows[1] == "0,0.960,0.980,,,,,0.250"
