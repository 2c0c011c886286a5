"""Every dataset through its real reader, on small files in the real on-disk formats.

The official files cannot be downloaded in tests (no network), so ``tests/data_fixtures.py``
writes a few images in each exact release layout. The only test double: torchvision's CIFAR-10
and Flowers102 readers verify the MD5 of the official files, so they are told the fixtures' MD5s.
"""

from __future__ import annotations

import importlib.util
import json
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from importlib import metadata
from pathlib import Path

import numpy as np
import pytest
import torch
from torchvision.datasets import CIFAR10, Flowers102, OxfordIIITPet

from tests import data_fixtures as fx
from tests.conftest import SMOKE, run_cli
from ue_sweep.cli import data as data_cli
from ue_sweep.cli.validation import to_root_config
from ue_sweep.config import ModelSpec, RootConfig
from ue_sweep.data.cache import CACHE_DIR
from ue_sweep.data.flowers import FlowerColorImages
from ue_sweep.data.registry import check_dataset, load_dataset
from ue_sweep.errors import ConfigError, MissingFileError
from ue_sweep.job.pipeline import run_pipeline
from ue_sweep.models.classifiers import build_classifier
from ue_sweep.runtime.progress import Progress

MEDMNIST = {  # config option -> (flag, gray, classes)
    "pathmnist": ("pathmnist", False, 9),
    "bloodmnist": ("bloodmnist", False, 8),
    "organamnist": ("organamnist", True, 11),
}
OPTIONS = ("digits", "cifar10", "pets", "flowers102", "flowers", *MEDMNIST, "medmnist")
FILE_BACKED = tuple(o for o in OPTIONS if o != "digits")


def trust_cifar10(monkeypatch: pytest.MonkeyPatch, sums: dict[str, str]) -> None:
    monkeypatch.setattr(
        CIFAR10, "train_list", [[f"data_batch_{i}", sums[f"data_batch_{i}"]] for i in range(1, 6)]
    )
    monkeypatch.setattr(CIFAR10, "test_list", [["test_batch", sums["test_batch"]]])
    monkeypatch.setattr(CIFAR10, "meta", {**CIFAR10.meta, "md5": sums["batches.meta"]})


def trust_flowers102(monkeypatch: pytest.MonkeyPatch, sums: dict[str, str]) -> None:
    table = {**Flowers102._file_dict}
    table["label"] = ("imagelabels.mat", sums["imagelabels.mat"])
    table["setid"] = ("setid.mat", sums["setid.mat"])
    monkeypatch.setattr(Flowers102, "_file_dict", table)


def install(option: str, data_dir: Path, monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Write ``option``'s fixture files under ``data_dir``; return the overrides that select it."""
    if option == "cifar10":
        trust_cifar10(monkeypatch, fx.write_cifar10(data_dir / "cifar10"))
    elif option == "pets":
        fx.write_pets(data_dir / "pets")
    elif option == "flowers102":
        trust_flowers102(monkeypatch, fx.write_flowers102(data_dir / "flowers102"))
    elif option == "flowers":
        fx.write_flowers(data_dir / "flowers")
    elif option in MEDMNIST:
        flag, gray, classes = MEDMNIST[option]
        fx.write_medmnist(data_dir / "medmnist", flag, gray=gray, num_classes=classes)
    elif option == "medmnist":
        fx.write_medmnist(data_dir / "medmnist", "dermamnist", size=64, num_classes=7)
        return ["dataset=medmnist", "dataset.flag=dermamnist", "dataset.size=64"]
    return [f"dataset={option}"]


@pytest.fixture
def data_dir(tmp_path: Path) -> Path:
    return tmp_path / "data"


@pytest.fixture
def setup(
    data_dir: Path, compose_cfg: Callable, monkeypatch: pytest.MonkeyPatch
) -> Callable[..., RootConfig]:
    """Fixture files for a dataset option, and the validated job config that reads them."""

    def _setup(option: str, *overrides: str) -> RootConfig:
        chosen = install(option, data_dir, monkeypatch)
        return to_root_config(
            compose_cfg(*chosen, f"paths.data_dir={data_dir}", "dataset.workers=0", *overrides)
        )

    return _setup


def _cache_files(data_dir: Path) -> list[Path]:
    return sorted(data_dir.rglob(f"{CACHE_DIR}/*.pt"))


# ----------------------------------------------------------------------------------------------
# Every dataset config composes, validates, loads, and runs the whole job
# ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("option", OPTIONS)
def test_every_dataset_config_composes_validates_and_loads(setup, data_dir, option):
    cfg = setup(option)
    data = load_dataset(cfg.dataset, cfg.paths)
    for images, labels in (
        (data.train_images, data.train_labels),
        (data.test_images, data.test_labels),
    ):
        assert images.dtype == torch.uint8 and images.dim() == 4
        assert images.shape[-2:] == (cfg.dataset.image_size, cfg.dataset.image_size)
        assert labels.dtype == torch.long and labels.min() >= 0 and labels.max() < data.num_classes
        assert images.float().std() > 5  # decoded pixels, not a blank canvas
    assert len(data.classes) == data.num_classes and all(data.classes)
    assert "official" in data.test_split or "hold-out" in data.test_split
    if option in FILE_BACKED:
        assert _cache_files(data_dir), "preprocessed once, into the cache next to the data"


# digits runs end to end in test_end_to_end.py (the demo).
@pytest.mark.parametrize("option", FILE_BACKED)
def test_every_dataset_runs_the_whole_job_on_its_real_format(setup, rt, tmp_path, option):
    cfg = setup(option, *SMOKE, "trainer.accelerator=cpu", "clusters.k=3", "victim.batch_size=32")
    outcome = run_pipeline(cfg, rt, tmp_path, Progress("none"))
    dataset = outcome["dataset"]
    assert dataset["image_size"] == 16
    assert len(dataset["classes"]) == dataset["num_classes"]
    assert sum(dataset["test_class_counts"]) == dataset["test_size"]
    for victim in outcome["metrics"]["victims"].values():
        assert victim["total"] == dataset["test_size"]
        assert len(victim["per_class_accuracy"]) == dataset["num_classes"]
        assert 0 <= victim["balanced_accuracy"] <= 1
    assert (tmp_path / "noise.pt").is_file()


def test_placement_changes_where_images_live_not_the_results(setup, rt, tmp_path):
    outcomes = {}
    for where in ("device", "host"):
        cfg = setup("organamnist", *SMOKE, "trainer.accelerator=cpu", f"dataset.placement={where}")
        outcomes[where] = run_pipeline(cfg, rt, tmp_path / where, Progress("none"))
    device, host = outcomes["device"], outcomes["host"]
    assert (device["dataset"]["placement"], host["dataset"]["placement"]) == ("device", "host")
    for condition, victim in device["metrics"]["victims"].items():
        other = host["metrics"]["victims"][condition]
        assert victim["per_class_accuracy"] == other["per_class_accuracy"]
        losses = [[r["train_loss"] for r in v["history"]] for v in (victim, other)]
        assert losses[0] == losses[1]
    assert device["generator"]["loss_history"] == host["generator"]["loss_history"]
    noise = [torch.load(tmp_path / w / "noise.pt")["noise"] for w in ("device", "host")]
    assert torch.equal(*noise)


@pytest.mark.slow
def test_cli_runs_a_medmnist_job_streaming_from_host_memory(data_dir, tmp_path):
    flag, gray, classes = MEDMNIST["pathmnist"]
    fx.write_medmnist(data_dir / "medmnist", flag, gray=gray, num_classes=classes)
    args = [
        *SMOKE,
        "dataset=pathmnist",
        f"paths.data_dir={data_dir}",
        "dataset.placement=host",
        "dataset.workers=1",
        "hydra.run.dir=job",
    ]
    proc = run_cli(args, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    record = json.loads((tmp_path / "job" / "result.json").read_text())
    assert record["status"] == "completed"
    dataset = record["dataset"]
    assert dataset["name"] == "pathmnist" and dataset["placement"] == "host"
    assert dataset["test_split"].startswith("official test split")
    assert dataset["classes"][0] == "adipose" and len(dataset["classes"]) == 9
    assert dataset["train_class_counts"] == [5, 5, 5, 5, 4, 4, 4, 4, 4]
    clean = record["metrics"]["victims"]["clean"]
    assert clean["total"] == 16 and len(clean["per_class_accuracy"]) == 9
    assert "balanced_accuracy" in clean
    assert [p.name for p in _cache_files(data_dir)] == [
        "pathmnist-test-16px.pt",
        "pathmnist-train-16px.pt",
    ]


@pytest.mark.slow
def test_cli_reports_missing_data_in_one_line_before_any_compute(data_dir, tmp_path):
    proc = run_cli(
        ["dataset=bloodmnist", f"paths.data_dir={data_dir}", "hydra.run.dir=job"], cwd=tmp_path
    )
    assert proc.returncode == 2
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    root = data_dir / "medmnist"
    assert lines == [
        f"MedMNIST bloodmnist (28 px) file not found: expected bloodmnist.npz in {root}; on a "
        f"machine with internet access, run: ue-sweep-data fetch bloodmnist --size 28 --root {root}"
    ]
    assert not (tmp_path / "job").exists(), "the job is refused before Hydra creates its dir"
    assert "surrogate" not in proc.stdout


# ----------------------------------------------------------------------------------------------
# Preprocessing cache
# ----------------------------------------------------------------------------------------------


def _refuse(*args, **kwargs):
    raise AssertionError("the source files were read again")


@pytest.mark.parametrize("option", FILE_BACKED)
def test_second_load_reads_the_cache_and_decodes_nothing(setup, monkeypatch, option):
    cfg = setup(option)
    first = load_dataset(cfg.dataset, cfg.paths)
    import medmnist
    import PIL.Image

    for reader in (
        CIFAR10,
        OxfordIIITPet,
        Flowers102,
        FlowerColorImages,
        medmnist.dataset.MedMNIST,
    ):
        monkeypatch.setattr(reader, "__init__", _refuse)
    monkeypatch.setattr(PIL.Image, "open", _refuse)
    again = load_dataset(cfg.dataset, cfg.paths)
    assert torch.equal(first.train_images, again.train_images)
    assert torch.equal(first.test_labels, again.test_labels)
    assert first.classes == again.classes


def test_pets_jpegs_are_resized_on_the_shorter_side_and_centre_cropped(setup, data_dir):
    from PIL import Image

    cfg = setup("pets", "dataset.image_size=20")
    data = load_dataset(cfg.dataset, cfg.paths)
    annotations = data_dir / "pets" / "oxford-iiit-pet" / "annotations" / "trainval.txt"
    first_id = annotations.read_text().split()[0]
    image = Image.open(data_dir / "pets" / "oxford-iiit-pet" / "images" / f"{first_id}.jpg")
    # torchvision's rules: the longer side becomes int(20 * long / short); the crop is centred
    # with rounded offsets.
    w, h = image.size
    size = (20, int(20 * h / w)) if w <= h else (int(20 * w / h), 20)
    resized = image.convert("RGB").resize(size, Image.Resampling.BILINEAR)
    left, top = round((resized.width - 20) / 2), round((resized.height - 20) / 2)
    expected = torch.tensor(np.array(resized.crop((left, top, left + 20, top + 20))))
    assert torch.allclose(data.train_images[0].permute(1, 2, 0).float(), expected.float(), atol=2)


def test_cache_is_keyed_by_resolution_and_rebuilt_when_the_source_changes(setup, data_dir):
    cfg = setup("pathmnist")
    base = load_dataset(cfg.dataset, cfg.paths)
    cfg.dataset.image_size = 16
    small = load_dataset(cfg.dataset, cfg.paths)
    assert small.image_size == 16 and base.image_size == 28
    assert len(_cache_files(data_dir)) == 4  # train and test at 28 and 16 px
    fx.write_medmnist(data_dir / "medmnist", "pathmnist", seed=5)  # new data, new fingerprint
    fresh = load_dataset(cfg.dataset, cfg.paths)
    assert not torch.equal(fresh.train_images, small.train_images)


def test_unreadable_cache_is_rebuilt_with_a_warning(setup, data_dir, caplog):
    cfg = setup("flowers")
    first = load_dataset(cfg.dataset, cfg.paths)
    (cache,) = _cache_files(data_dir)
    cache.write_bytes(cache.read_bytes()[:100])
    again = load_dataset(cfg.dataset, cfg.paths)
    assert torch.equal(first.train_images, again.train_images)
    assert "unreadable" in caplog.text
    assert torch.load(cache, weights_only=True)["images"].shape[0] == 40


def _load_sum(cfg: RootConfig) -> int:
    return int(load_dataset(cfg.dataset, cfg.paths).train_images.sum())


def test_jobs_racing_to_build_one_cache_all_get_complete_data(setup, data_dir):
    cfg = setup("pets")
    # Threads stand in for jobs: each builds and renames its own temporary file, as a process would.
    with ThreadPoolExecutor(3) as pool:
        sums = list(pool.map(_load_sum, [cfg] * 3))
    assert len(set(sums)) == 1
    assert _load_sum(cfg) == sums[0]  # the file that won the race holds the same images
    cache_dir = data_dir / "pets" / CACHE_DIR
    assert sorted(p.name for p in cache_dir.iterdir()) == [
        "pets-test-224px.pt",
        "pets-trainval-224px.pt",
    ]


# ----------------------------------------------------------------------------------------------
# Gray images, 1-channel models and RGB surrogates
# ----------------------------------------------------------------------------------------------


def test_gray_organamnist_serves_one_channel_models_and_rgb_surrogates(setup):
    native = setup("organamnist")
    data = load_dataset(native.dataset, native.paths)
    assert data.channels == 1
    native.surrogate.weights = "pretrained"
    # Refused in validation, before any file is read.
    with pytest.raises(ConfigError, match=r"has 1; dataset.channels=rgb repeats the gray channel"):
        check_dataset(native.dataset, native.paths, native.surrogate)
    gray_model = build_classifier(native.victim, in_channels=1, num_classes=11, image_size=28)
    assert gray_model(data.train_images[:2].float() / 255)[0].shape == (2, 11)

    rgb = setup("organamnist", "dataset.channels=rgb")
    coloured = load_dataset(rgb.dataset, rgb.paths)
    assert coloured.channels == 3
    assert torch.equal(coloured.train_images[:, 0], data.train_images[:, 0])
    assert torch.equal(coloured.train_images[:, 1], coloured.train_images[:, 2])
    rgb.surrogate.weights = "pretrained"
    check_dataset(rgb.dataset, rgb.paths, rgb.surrogate)  # accepted
    # an ImageNet-shaped surrogate (3-channel stem); its weights are not needed to check the shapes
    resnet = build_classifier(
        ModelSpec(arch="resnet18"), in_channels=3, num_classes=11, image_size=28
    )
    assert resnet(coloured.train_images[:2].float() / 255)[0].shape == (2, 11)


# ----------------------------------------------------------------------------------------------
# Missing and damaged files: one line naming the file, the directory and the fetch command
# ----------------------------------------------------------------------------------------------


def _message(err: pytest.ExceptionInfo) -> str:
    message = str(err.value)
    assert "\n" not in message
    return message


def test_missing_npz_fails_config_validation_naming_file_directory_and_command(
    compose_cfg, data_dir
):
    with pytest.raises(MissingFileError) as err:
        to_root_config(compose_cfg("dataset=pathmnist", f"paths.data_dir={data_dir}"))
    root = data_dir / "medmnist"
    assert _message(err) == (
        f"MedMNIST pathmnist (28 px) file not found: expected pathmnist.npz in {root}; on a "
        f"machine with internet access, run: ue-sweep-data fetch pathmnist --size 28 --root {root}"
    )


def test_generic_medmnist_names_its_sized_file(compose_cfg, tmp_path):
    root = tmp_path / "elsewhere"
    overrides = ("dataset=medmnist", "dataset.flag=dermamnist", "dataset.size=64")
    with pytest.raises(MissingFileError) as err:
        to_root_config(compose_cfg(*overrides, f"dataset.root={root}"))
    assert f"expected dermamnist_64.npz in {root};" in _message(err)
    assert f"ue-sweep-data fetch dermamnist --size 64 --root {root}" in _message(err)


def _damage_npz(path: Path, **arrays: np.ndarray) -> None:
    with np.load(path) as npz:
        content = dict(npz)
    np.savez_compressed(path, **(content | arrays))


@pytest.mark.parametrize(
    ("damage", "problem"),
    [
        (
            lambda p: p.write_bytes(p.read_bytes()[: p.stat().st_size // 2]),
            "is damaged (BadZipFile",
        ),
        (
            lambda p: _damage_npz(p, train_images=np.zeros((40, 30, 30, 3), np.uint8)),
            "holds train_images uint8 [40, 30, 30, 3], not uint8 [N, 28, 28, 3]",
        ),
        (
            lambda p: _damage_npz(p, train_labels=np.zeros((40,), np.uint8)),
            "holds train_labels [40], not [40, 1]",
        ),
        (
            lambda p: _damage_npz(p, train_labels=np.full((40, 1), 9, np.uint8)),
            "has label 9 outside 0..8",
        ),
    ],
    ids=["truncated", "wrong-shape", "wrong-label-shape", "label-out-of-range"],
)
def test_damaged_npz_is_named_with_the_problem(setup, data_dir, damage, problem):
    cfg = setup("pathmnist")
    path = data_dir / "medmnist" / "pathmnist.npz"
    damage(path)
    with pytest.raises(MissingFileError) as err:
        load_dataset(cfg.dataset, cfg.paths)
    message = _message(err)
    assert f"MedMNIST pathmnist (28 px) file {problem}" in message
    assert f": {path}; delete {path} and," in message
    assert "ue-sweep-data fetch pathmnist --size 28" in message
    assert not _cache_files(data_dir), "nothing is cached from a damaged file"


def test_pets_errors_name_the_annotation_or_image_file(setup, data_dir):
    cfg = setup("pets")
    base = data_dir / "pets" / "oxford-iiit-pet"
    listing = base / "annotations" / "test.txt"
    saved = listing.read_text()
    listing.unlink()
    with pytest.raises(MissingFileError) as err:
        load_dataset(cfg.dataset, cfg.paths)
    assert _message(err).startswith(
        f"Oxford-IIIT Pet split list not found: expected test.txt in {base / 'annotations'}; "
        f"delete {base / 'annotations'} and, on a machine with internet access, run: "
        "ue-sweep-data fetch pets --root "
    )
    listing.write_text(saved)

    image = base / "images" / f"{saved.split()[0]}.jpg"
    image.write_bytes(image.read_bytes()[:200])  # truncated JPEG
    with pytest.raises(MissingFileError) as err:
        load_dataset(cfg.dataset, cfg.paths)
    assert "Oxford-IIIT Pet image cannot be decoded (OSError" in _message(err)
    assert f": {image}; delete {base / 'images'} and," in _message(err)

    image.unlink()
    with pytest.raises(MissingFileError) as err:
        load_dataset(cfg.dataset, cfg.paths)
    assert _message(err).startswith(
        f"Oxford-IIIT Pet image not found: expected {image.name} in {image.parent}"
    )


def test_cifar10_file_failing_its_md5_is_named(setup, data_dir):
    cfg = setup("cifar10")
    batch = data_dir / "cifar10" / "cifar-10-batches-py" / "data_batch_3"
    batch.write_bytes(batch.read_bytes()[:-10])
    with pytest.raises(MissingFileError) as err:
        load_dataset(cfg.dataset, cfg.paths)
    assert _message(err).startswith(
        f"CIFAR-10 file fails its MD5 check: {batch}; "
        f"delete {batch} and, on a machine with internet access, run: ue-sweep-data fetch cifar10"
    )


def test_flowers102_missing_setid_is_named(setup, data_dir):
    cfg = setup("flowers102")
    setid = data_dir / "flowers102" / "flowers-102" / "setid.mat"
    setid.unlink()
    with pytest.raises(MissingFileError) as err:
        load_dataset(cfg.dataset, cfg.paths)
    assert _message(err).startswith(
        f"Flowers102 file not found: expected setid.mat in {setid.parent}"
    )


@pytest.mark.parametrize(
    ("csv", "problem"),
    [
        ("image,species\n0001.png,0\n", "labels file is malformed (columns ['image', 'species']"),
        ("file,label\n0001.png,12\n0002.png,1\n", "labels file has label 12 outside 0..9"),
    ],
)
def test_flowers_labels_csv_is_checked(setup, data_dir, csv, problem):
    cfg = setup("flowers")
    labels = data_dir / "flowers" / "flower_images" / "flower_images" / "flower_labels.csv"
    labels.write_text(csv)
    with pytest.raises(MissingFileError) as err:
        load_dataset(cfg.dataset, cfg.paths)
    assert _message(err).startswith(f"Flower Color Images {problem}")
    assert f": {labels}; " in _message(err)


# ----------------------------------------------------------------------------------------------
# Dataset config validation
# ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (
            ["dataset=medmnist", "dataset.flag=fakemnist"],
            "dataset.flag='fakemnist' is not accepted; expected one of: bloodmnist, breastmnist",
        ),
        (
            ["dataset=medmnist", "dataset.flag=chestmnist"],  # multi-label
            "dataset.flag='chestmnist' is not accepted",
        ),
        (
            ["dataset=pathmnist", "dataset.size=32"],
            "dataset.size=32 is not accepted; expected one of: 28, 64, 128, 224",
        ),
        (["dataset=medmnist"], "dataset.flag=None is not accepted; expected one of: bloodmnist"),
        (
            ["dataset=pets", "dataset.size=64"],
            "dataset.size=64 is not accepted; expected unset for pets",
        ),
        (
            ["dataset=cifar10", "dataset.eval_split=val"],
            "dataset.eval_split='val' is not accepted; expected test: cifar10 has no official val",
        ),
        (
            ["dataset.placement=gpu"],
            "dataset.placement='gpu' is not accepted; expected one of: auto",
        ),
        (["dataset.channels=bgr"], "expected one of: native, rgb"),
        (["dataset.workers=-1"], "dataset.workers=-1 is not accepted; expected an integer >= 0"),
    ],
)
def test_bad_dataset_values_fail_in_one_line(compose_cfg, overrides, message):
    with pytest.raises(ConfigError) as err:
        to_root_config(compose_cfg(*overrides))
    assert message in _message(err)


def test_val_split_is_offered_where_it_is_official(setup):
    cfg = setup("bloodmnist", "dataset.eval_split=val")
    data = load_dataset(cfg.dataset, cfg.paths)
    assert len(data.test_images) == 12  # the fixture's val split
    assert data.test_split.startswith("official val split, as the public HPC code")


# ----------------------------------------------------------------------------------------------
# ue-sweep-data
# ----------------------------------------------------------------------------------------------


def test_fetch_command_is_installed():
    scripts = {e.name: e.value for e in metadata.entry_points(group="console_scripts")}
    assert scripts["ue-sweep-data"] == "ue_sweep.cli.data:main"


def test_fetch_with_files_present_checks_them_and_builds_the_cache(data_dir, capsys):
    # torchvision's reader skips the download when the folders exist: no network needed.
    root = data_dir / "pets"
    fx.write_pets(root)
    args = ["fetch", "pets", "--root", str(root), "dataset.image_size=24", "dataset.workers=1"]
    assert data_cli.main(args) == 0
    out = capsys.readouterr().out
    assert "pets: 20 train / 12 test images, 4 classes, 3x24x24" in out
    assert sorted(p.name for p in (root / CACHE_DIR).iterdir()) == [
        "pets-test-24px.pt",
        "pets-trainval-24px.pt",
    ]


@pytest.mark.parametrize(
    ("args", "error"),
    [
        (
            ["fetch", "imagenet"],
            "config error: dataset='imagenet' is not accepted; expected one of: bloodmnist",
        ),
        (["fetch", "pathmnist", "--size", "32"], "expected one of: 28, 64, 128, 224"),
        (["fetch", "flowers"], "fetching flowers needs the Kaggle API: pip install kaggle"),
    ],
)
def test_fetch_errors_are_one_line(args, error, tmp_path, capsys):
    if args[1] == "flowers" and importlib.util.find_spec("kaggle"):
        pytest.skip("the kaggle package is installed: fetching would go to the network")
    assert data_cli.main([*args, "--root", str(tmp_path / "empty")]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and error in err
