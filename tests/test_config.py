"""Config composition, the sweep-axis groups, and validation errors (one line, before compute)."""

from __future__ import annotations

import math
import pickle
from pathlib import Path

import pytest
import torch

from tests.conftest import refusal
from ue_sweep.cli.compose import numeric_groups, quote_numeric_choices
from ue_sweep.cli.validation import to_root_config, validate
from ue_sweep.config import BatchSizeConfig, RootConfig
from ue_sweep.data.registry import load_dataset
from ue_sweep.errors import ConfigError, MissingFileError
from ue_sweep.job.pipeline import check_against_data
from ue_sweep.store.sweep import plain_override


def test_default_config_is_the_digits_demo(compose_cfg):
    cfg = to_root_config(compose_cfg())
    assert isinstance(cfg, RootConfig)
    assert cfg.dataset.name == "digits"
    assert cfg.batch_size.per_device == 64
    assert cfg.clusters.k == 10
    assert cfg.surrogate.weights == "fit"
    assert cfg.generator.eps == pytest.approx(20 / 255)


@pytest.mark.parametrize(
    ("overrides", "check"),
    [
        (["batch_size=256"], lambda c: c.batch_size.per_device == 256),
        (["clusters=5"], lambda c: c.clusters.k == 5),
        (["clusters.k=7"], lambda c: c.clusters.k == 7),
        (["generator=resnet"], lambda c: c.generator.ngf == 64 and c.generator.epochs == 50),
        (["generator.eps=${div:8,255}"], lambda c: math.isclose(c.generator.eps, 8 / 255)),
    ],
)
def test_groups_and_keys_compose(compose_cfg, overrides, check):
    assert check(to_root_config(compose_cfg(*overrides)))


def _preset_jobs(name: str) -> list[list[str]]:
    """The job overrides Hydra's basic sweeper makes of experiment preset ``name``."""
    from hydra import compose, initialize_config_module
    from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
    from hydra.core.override_parser.overrides_parser import OverridesParser

    with initialize_config_module("ue_sweep.conf", version_base="1.3"):
        cfg = compose("config", overrides=[f"experiment={name}"], return_hydra_config=True)
    params = [f"{k}={v}" for k, v in (cfg.hydra.sweeper.params or {}).items()]
    parsed = OverridesParser.create().parse_overrides(params)
    (batch,) = BasicSweeper.split_arguments(parsed, None)
    return [[f"experiment={name}", *job] for job in batch]


PRESETS = sorted(p.stem for p in (Path(__file__).parents[1] / "conf" / "experiment").glob("*.yaml"))


@pytest.mark.parametrize("preset", PRESETS)
def test_every_job_of_every_preset_passes_the_data_independent_checks(compose_cfg, preset):
    """What a grid would hit in its jobs: schema, ranges, cross-field rules and the dataset's
    channel rules; only the host's checks (devices, data and weight files) are left to the
    machine that runs the job."""
    jobs = _preset_jobs(preset)
    if preset == "hpc_grid":
        assert len(jobs) == 36
    for job in jobs:
        to_root_config(compose_cfg(*job), on_this_host=False)


def test_reference_experiment_selects_the_paper_setup(compose_cfg):
    # Validating it needs the ResNet-50 weights in the torch cache (see the pretrained tests).
    cfg = compose_cfg("experiment=reference")
    assert (cfg.surrogate.arch, cfg.surrogate.weights) == ("resnet50", "pretrained")
    assert (cfg.victim.arch, cfg.victim.epochs, cfg.victim.batch_size) == ("resnet18", 90, 512)
    assert cfg.generator.eps == pytest.approx(16 / 255)


@pytest.mark.parametrize(
    ("override", "key", "accepted"),
    [
        ("batch_size.per_device=-1", "batch_size.per_device=-1", "an integer >= 1"),
        ("batch_size.per_device=10**20", "per_device=100000000000000000000", "<= 2147483647"),
        ("surrogate.checkpoint=nope.pt", "surrogate.checkpoint='nope.pt'", "weights=path to load"),
        ("batch_size.per_device=0", "batch_size.per_device=0", "an integer >= 1"),
        ("generator.eps=0", "generator.eps=0.0", "a number > 0 and <= 1"),
        ("generator.eps=1.5", "generator.eps=1.5", "a number > 0 and <= 1"),
        ("dataset.name=imagenet", "dataset.name='imagenet'", "one of: cifar10, digits"),
        ("surrogate.arch=vgg16", "surrogate.arch='vgg16'", "one of: small_cnn, resnet18"),
        ("victim.arch=vit", "victim.arch='vit'", "one of: small_cnn, resnet18"),
        ("clusters.k=1", "clusters.k=1", "an integer >= 2"),
        ("clusters.offset=10", "clusters.offset=10", "1 <= offset < clusters.k=10"),
        ("clusters.target=random", "clusters.target='random'", "one of: cyclic, derangement"),
        ("generator.scope=some", "generator.scope='some'", "one of: all, cluster"),
        ("batch_size.lr_scaling=cubic", "batch_size.lr_scaling='cubic'", "none, linear, sqrt"),
        ("trainer.backend=nccl", "trainer.backend='nccl'", "auto or gloo"),
        ("victim.min_lr=1", "victim.min_lr=1.0", "<= victim.lr"),
        ("surrogate.weights=path", "surrogate.checkpoint=None", "a checkpoint file"),
        ("surrogate.weights=pretrained", "surrogate.weights='pretrained'", "ImageNet weights"),
        ("generator.n_downsampling=4", "generator.n_downsampling=4", "<= dataset.image_size/2"),
        ("generator.output=sigmoid", "generator.output='sigmoid'", "one of: reference, tanh, ste"),
        ("generator.noise_order=x", "generator.noise_order='x'", "after_augment, before_augment"),
        (
            "evals.victims.controls=[uniform,gauss]",
            "evals.victims.controls=['uniform', 'gauss']",
            "distinct",
        ),
        (
            "evals.victims.controls=[sign,sign]",
            "evals.victims.controls=['sign', 'sign']",
            "uniform, sign",
        ),
        ("+evals.victims.control=[sign]", "evals.victims.control", "did you mean controls?"),
        ("victim.average_last=0", "victim.average_last=0", "an integer >= 1"),
        ("victim.sync_batchnorm=true", "victim.sync_batchnorm=True", "on the CPU"),
    ],
)
def test_bad_values_fail_naming_key_value_and_accepted(compose_cfg, override, key, accepted):
    override = override.replace("10**20", str(10**20))
    if override in ("trainer.backend=nccl", "victim.sync_batchnorm=true") and (
        torch.cuda.is_available()
    ):
        pytest.skip("valid where a GPU is visible")
    with pytest.raises(ConfigError) as err:
        to_root_config(compose_cfg(override))
    message = str(err.value)
    assert "\n" not in message
    assert key in message
    assert accepted in message


def test_pretrained_weights_missing_from_cache_say_where_and_how(
    compose_cfg, tmp_path, monkeypatch
):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    with pytest.raises(MissingFileError) as err:
        to_root_config(compose_cfg("surrogate=resnet18", "dataset.channels=rgb"))
    message = str(err.value)
    assert "resnet18-f37072fd.pth" in message
    assert str(tmp_path / "hub" / "checkpoints") in message
    assert "ResNet18_Weights.IMAGENET1K_V1" in message


def test_checkpoint_path_must_exist(compose_cfg, tmp_path):
    missing = tmp_path / "nope.pt"
    with pytest.raises(MissingFileError, match=r"nope\.pt"):
        to_root_config(compose_cfg("surrogate.weights=path", f"surrogate.checkpoint={missing}"))


def test_more_clusters_than_images_is_rejected_before_compute(compose_cfg):
    cfg = to_root_config(compose_cfg("clusters.k=5000"))
    data = load_dataset(cfg.dataset, cfg.paths)
    with pytest.raises(ConfigError, match=r"clusters.k=5000 .* at most the 1347 training images"):
        check_against_data(cfg, data)


@pytest.mark.parametrize(
    "error",
    [ConfigError("clusters.k", 5000, "at most 10"), MissingFileError("x", Path("/d/f"), "fix")],
)
def test_user_errors_survive_pickling_back_from_a_cluster_job(error):
    # submitit returns a job's outcome pickled; an error that cannot be rebuilt loses the sweep.
    copy = pickle.loads(pickle.dumps(error))
    assert (type(copy), str(copy)) == (type(error), str(error))


def test_validate_checks_nested_dataclasses():
    cfg = RootConfig()
    cfg.dataset.augment.crop_padding = -2
    with pytest.raises(ConfigError, match=r"dataset.augment.crop_padding=-2"):
        validate(cfg)


@pytest.mark.parametrize(("rule", "factor"), [("none", 1.0), ("linear", 4.0), ("sqrt", 2.0)])
def test_lr_scaling_rules(rule, factor):
    assert BatchSizeConfig(lr_scaling=rule, reference=256).lr_factor(1024) == factor


def test_cli_reports_bad_value_in_one_line_before_writing_anything(tmp_path: Path, monkeypatch):
    assert refusal(["batch_size.per_device=-1", "hydra.run.dir=job"], tmp_path, monkeypatch) == (
        "config error: batch_size.per_device=-1 is not accepted; "
        "expected an integer >= 1 and <= 2147483647"
    )
    assert not (tmp_path / "job").exists(), "a rejected config creates no job directory"


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["batch_size=256"], ['batch_size="256"']),
        (
            ["-m", "batch_size=32,64", "clusters=5,10"],
            ["-m", 'batch_size="32","64"', 'clusters="5","10"'],
        ),
        (
            ["clusters.k=7", "seed=3", "generator.epochs=2"],
            ["clusters.k=7", "seed=3", "generator.epochs=2"],
        ),
        (['batch_size="128"'], ['batch_size="128"']),
    ],
)
def test_numeric_group_choices_are_quoted_for_hydra(args, expected):
    assert quote_numeric_choices(args) == expected


def test_numeric_groups_are_discovered_from_the_config_tree():
    assert numeric_groups() == {"batch_size", "clusters"}
    assert plain_override('batch_size="256"') == "batch_size=256"
    assert plain_override("dataset=digits") == "dataset=digits"


@pytest.mark.slow
def test_the_hpc_grid_shares_clusters_and_clean_victims_across_batch_sizes(compose_cfg):
    """The stage keys of the 36 jobs (world size 48, one data digest per dataset): a batch-size
    grid needs one k-means and one clean victim per dataset, and one generator bank per job."""
    from ue_sweep.store.keys import (
        clusters_key,
        data_identity,
        generators_key,
        surrogate_key,
        victim_key,
    )

    keys: dict[str, set[str]] = {"clusters": set(), "generators": set(), "clean": set()}
    for job in _preset_jobs("hpc_grid"):
        cfg = to_root_config(compose_cfg(*job), on_this_host=False)
        data = data_identity(cfg, content=f"sha-of-{cfg.dataset.name}")
        surrogate = surrogate_key(cfg, data, world_size=48)
        clusters = clusters_key(cfg, surrogate)
        keys["clusters"].add(clusters.digest)
        keys["generators"].add(generators_key(cfg, clusters, world_size=48).digest)
        keys["clean"].add(victim_key(cfg, data, data["sha256"], world_size=48).digest)
    assert {k: len(v) for k, v in keys.items()} == {"clusters": 6, "generators": 36, "clean": 6}
