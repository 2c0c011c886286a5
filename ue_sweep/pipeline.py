"""The stages of one Unlearnable Clusters job, as run by every rank.

data -> surrogate -> features -> k-means -> fused generator training -> protected set and
control sets (uc/controls.py) -> victims trained from scratch on clean, protected and control
data -> clean-test accuracy of each. Rank 0 writes the artifacts; the caller writes the result
file.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch

from ue_sweep.checkpoint import NO_CHECKPOINTS, JobCheckpoints
from ue_sweep.config import RootConfig
from ue_sweep.data.placement import Placement, resolve_placement
from ue_sweep.data.registry import load_dataset
from ue_sweep.data.splits import ImageSplits
from ue_sweep.distributed import Runtime
from ue_sweep.errors import ConfigError
from ue_sweep.media import NOISE_PNG, SAMPLES_PNG, noise_grid, sample_grid, save_png
from ue_sweep.models.classifiers import FeatureClassifier, build_classifier
from ue_sweep.models.generators import GeneratorBank
from ue_sweep.progress import Progress
from ue_sweep.seeding import derive_seed
from ue_sweep.tracking import atomic_torch_save
from ue_sweep.train.classifier import train_classifier
from ue_sweep.uc.clustering import Clusters, cluster_features
from ue_sweep.uc.controls import control_noises, rms
from ue_sweep.uc.features import extract_features
from ue_sweep.uc.noise import apply_cluster_noise
from ue_sweep.uc.surrogate import build_surrogate
from ue_sweep.uc.train_generators import GeneratorStats, train_generators

NOISE_FILE = "noise.pt"
PROTECTED_FILE = "protected_train.pt"
SURROGATE_FILE = "surrogate.pt"
FEATURE_BATCH = 512


class StageTimer:
    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}

    @contextmanager
    def __call__(self, stage: str) -> Iterator[None]:
        start = time.perf_counter()
        try:
            yield
        finally:
            self.seconds[stage] = self.seconds.get(stage, 0.0) + time.perf_counter() - start


def check_against_data(cfg: RootConfig, data: ImageSplits) -> None:
    """Rules that need the loaded dataset; still before any compute."""
    n = len(data.train_images)
    if cfg.clusters.k > n:
        raise ConfigError(
            "clusters.k", cfg.clusters.k, f"at most the {n} training images of {data.name}"
        )


def _class_counts(labels: torch.Tensor, num_classes: int) -> list[int]:
    return torch.bincount(labels.cpu(), minlength=num_classes).tolist()


def _load_data(cfg: RootConfig, rt: Runtime) -> ImageSplits:
    """Rank 0 loads first (fetching with dataset.download, building the cache); then the others.

    Missing files already failed every rank in config validation, so none waits here for them.
    """
    if rt.is_main:
        data = load_dataset(cfg.dataset, cfg.paths)
        rt.barrier()
        return data
    rt.barrier()
    return load_dataset(replace(cfg.dataset, download=False), cfg.paths)


def _on_device(data: ImageSplits, device: torch.device, placement: Placement) -> ImageSplits:
    """Labels always go to the device; images only when placed there."""
    images = placement.where == "device"
    return replace(
        data,
        train_images=data.train_images.to(device) if images else data.train_images,
        train_labels=data.train_labels.to(device),
        test_images=data.test_images.to(device) if images else data.test_images,
        test_labels=data.test_labels.to(device),
    )


def _clusters(
    cfg: RootConfig,
    surrogate: FeatureClassifier,
    data: ImageSplits,
    rt: Runtime,
    progress: Progress,
    timer: StageTimer,
    checkpoints: JobCheckpoints,
) -> Clusters:
    done = checkpoints.done("clusters")
    if done is not None:
        return Clusters(
            **{k: v.to(rt.device) if torch.is_tensor(v) else v for k, v in done["clusters"].items()}
        )
    with timer("features"):
        features = extract_features(surrogate, data.train_images, FEATURE_BATCH, rt)
    with timer("kmeans"), progress.stage("k-means", total_steps=1) as kmeans:
        clusters = cluster_features(features, cfg.clusters, cfg.seed, rt)
        kmeans.advance()
    checkpoints.mark_done(
        "clusters",
        {
            "clusters": {
                "ids": clusters.ids.cpu(),
                "centers": clusters.centers.cpu(),
                "targets": clusters.targets.cpu(),
                "inertia": clusters.inertia,
            }
        },
    )
    return clusters


def _new_bank(cfg: RootConfig, k: int, data: ImageSplits, rt: Runtime) -> GeneratorBank:
    """The generator bank as UC's training starts from it: the same weights on every call."""
    torch.manual_seed(derive_seed(cfg.seed, "generator-init"))
    g = cfg.generator
    return GeneratorBank(
        k,
        data.channels,
        data.image_size,
        g.eps,
        ngf=g.ngf,
        n_blocks=g.n_blocks,
        n_downsampling=g.n_downsampling,
        output=g.output,
        seed=cfg.seed,
    ).to(rt.device)


def _generators(
    cfg: RootConfig,
    surrogate: FeatureClassifier,
    data: ImageSplits,
    clusters: Clusters,
    rt: Runtime,
    progress: Progress,
    placement: Placement,
    checkpoints: JobCheckpoints,
) -> tuple[GeneratorBank, GeneratorStats]:
    bank = _new_bank(cfg, clusters.k, data, rt)
    done = checkpoints.done("generators")
    if done is not None:
        bank.load_state_dict(done["bank"])
        return bank, GeneratorStats(**done["stats"])
    stats = train_generators(
        bank,
        surrogate,
        data.train_images,
        data.train_labels,
        clusters,
        cfg.generator,
        cfg.batch_size,
        cfg.dataset.augment,
        rt,
        seed=derive_seed(cfg.seed, "generator-data"),
        progress=progress,
        placement=placement,
        checkpoint=checkpoints.stage("generators"),
    )
    checkpoints.mark_done("generators", {"bank": bank.state_dict(), "stats": stats.as_dict()})
    return bank, stats


def _victim(
    cfg: RootConfig,
    condition: str,
    train_images: torch.Tensor,
    data: ImageSplits,
    rt: Runtime,
    progress: Progress,
    placement: Placement,
    checkpoints: JobCheckpoints,
) -> dict[str, Any]:
    stage = f"victim-{condition}"
    done = checkpoints.done(stage)
    if done is not None:
        return done["result"]
    # Same initial weights and data order for every condition: only the images differ.
    torch.manual_seed(derive_seed(cfg.seed, "victim-init"))
    model = build_classifier(
        cfg.victim,
        in_channels=data.channels,
        num_classes=data.num_classes,
        image_size=data.image_size,
    ).to(rt.device)
    outcome = train_classifier(
        model,
        train_images,
        data.train_labels,
        data.test_images,
        data.test_labels,
        data.num_classes,
        cfg.victim,
        cfg.dataset.augment,
        rt,
        seed=derive_seed(cfg.seed, "victim-data"),
        progress=progress,
        name=f"victim ({condition})",
        placement=placement,
        checkpoint=checkpoints.stage(stage),
    ).as_dict()
    checkpoints.mark_done(stage, {"result": outcome})
    return outcome


def _energy(
    train_sets: dict[str, torch.Tensor],
    noise: torch.Tensor,
    controls: dict[str, torch.Tensor],
    eps: float,
) -> dict[str, dict[str, float]]:
    """Mean per-cluster RMS of each condition's noise, and the RMS of the change it makes to the
    published uint8 images (after clamping to [0, 1] and rounding): equal-strength controls
    show equal numbers here."""
    clean = train_sets["clean"]
    out = {}
    for name, n in {"protected": noise, **controls}.items():
        published = 0.0
        for start in range(0, len(clean), FEATURE_BATCH):
            sl = slice(start, start + FEATURE_BATCH)
            diff = train_sets[name][sl].float() - clean[sl].float()
            published += float(diff.pow_(2).sum(dtype=torch.float64)) / 255**2
        noise_rms = float(rms(n).mean())
        out[name] = {
            "noise_rms": noise_rms,
            "published_rms": (published / clean.numel()) ** 0.5,
            "noise_rms_over_eps": noise_rms / eps,
        }
    return out


def victim_metrics(
    victims: dict[str, dict[str, Any]],
    controls: list[str],
    energy: dict[str, dict[str, float]],
) -> dict[str, Any]:
    """The job's headline numbers: each condition's accuracy averaged over the victims' last
    epochs, and how far protected data falls below clean data and below the strongest control
    (the control whose victim scores lowest)."""
    accuracy = {c: v["mean_last"]["accuracy"] for c, v in victims.items()}
    strongest = min(controls, key=accuracy.__getitem__) if controls else None
    return {
        "accuracy": accuracy,
        "final_accuracy": {c: v["accuracy"] for c, v in victims.items()},
        "balanced_accuracy": {c: v["mean_last"]["balanced_accuracy"] for c, v in victims.items()},
        "averaged_epochs": next(iter(victims.values()))["mean_last"]["epochs"],
        "accuracy_drop": accuracy["clean"] - accuracy["protected"],
        "strongest_control": strongest,
        "control_gap": None if strongest is None else accuracy[strongest] - accuracy["protected"],
        "energy": energy,
        "victims": victims,
    }


def run_pipeline(
    cfg: RootConfig,
    rt: Runtime,
    job_dir: Path,
    progress: Progress,
    checkpoints: JobCheckpoints = NO_CHECKPOINTS,
) -> dict[str, Any]:
    """Run every stage on this rank; returns the outcome that goes into ``result.json``.

    Stages finished by an earlier attempt of the job are restored from ``checkpoints``, and the
    interrupted one resumes from its last checkpoint. ``timings_s`` are this attempt's wall times;
    the training stages report their seconds over all attempts.

    ``progress.run_logger`` gets one run per stage: ``uc`` up to the noise, then ``victim``.
    """
    timer = StageTimer()
    started = time.perf_counter()
    tracker = progress.run_logger
    tracker.start_stage("uc")
    with timer("data"):
        data = _load_data(cfg, rt)
        check_against_data(cfg, data)
        placement = resolve_placement(cfg.dataset, data, rt.device)
        data = _on_device(data, rt.device, placement)
    progress.info(
        "%s: %d train / %d test images, %d classes, %dx%dx%d on the %s; world size %d on %s",
        data.name,
        len(data.train_images),
        len(data.test_images),
        data.num_classes,
        data.channels,
        data.image_size,
        data.image_size,
        placement.where,
        rt.world_size,
        rt.device,
    )

    with timer("surrogate"):
        surrogate, surrogate_info = build_surrogate(cfg, data, rt, progress, placement, checkpoints)
    if rt.is_main and cfg.surrogate.weights == "fit":
        atomic_torch_save(job_dir / SURROGATE_FILE, surrogate.state_dict())

    clusters = _clusters(cfg, surrogate, data, rt, progress, timer, checkpoints)
    progress.info(
        "k-means: %d clusters of sizes %s, NMI with the classes %.2f",
        clusters.k,
        clusters.sizes,
        clusters.label_agreement(data.train_labels),
    )

    with timer("generators"):
        bank, generator_stats = _generators(
            cfg, surrogate, data, clusters, rt, progress, placement, checkpoints
        )

    g = cfg.generator
    with timer("noise"), torch.no_grad():
        noise = bank().float()
        controls = control_noises(
            cfg.victim.controls,
            noise,
            g.eps,
            cfg.seed,
            untrained=lambda: _new_bank(cfg, clusters.k, data, rt)().float(),
        )
        train_sets = {"clean": data.train_images} | {
            name: apply_cluster_noise(data.train_images, clusters.ids, n)
            for name, n in {"protected": noise, **controls}.items()
        }
        energy = _energy(train_sets, noise, controls, g.eps)
    progress.info(
        "noise RMS / eps as published: %s",
        ", ".join(f"{c} {e['published_rms'] / g.eps:.3f}" for c, e in energy.items()),
    )
    if rt.is_main:
        atomic_torch_save(
            job_dir / NOISE_FILE,
            {
                "noise": noise.cpu(),
                "controls": {name: n.cpu() for name, n in controls.items()},
                "cluster_ids": clusters.ids.cpu(),
                "centers": clusters.centers.cpu(),
                "targets": clusters.targets.cpu(),
                "eps": g.eps,
            },
        )
        if cfg.save_protected:
            atomic_torch_save(
                job_dir / PROTECTED_FILE,
                {
                    "images": train_sets["protected"].cpu(),
                    "labels": data.train_labels.cpu(),
                    "classes": list(data.classes),
                },
            )
        pictures = {
            "noise": noise_grid(noise, g.eps),
            "samples": sample_grid(
                data.train_images, train_sets["protected"], clusters.ids, noise, g.eps
            ),
        }
        save_png(job_dir / NOISE_PNG, pictures["noise"])
        save_png(job_dir / SAMPLES_PNG, pictures["samples"])
        tracker.log_images(
            pictures,
            captions={
                "noise": "UC noise of each cluster, [-eps, eps] shown as [0, 1]",
                "samples": "per cluster: noise, a clean training image, its protected version",
            },
        )

    uc_outcome = {
        "world_size": rt.world_size,
        "launcher": rt.env.launcher,
        "device": str(rt.device),
        "backend": rt.backend,
        "dataset": {
            "name": data.name,
            "train_size": len(data.train_images),
            "test_size": len(data.test_images),
            "num_classes": data.num_classes,
            "channels": data.channels,
            "image_size": data.image_size,
            "test_split": data.test_split,
            "classes": list(data.classes),
            "train_class_counts": _class_counts(data.train_labels, data.num_classes),
            "test_class_counts": _class_counts(data.test_labels, data.num_classes),
            "placement": placement.where,
        },
        "batch": {
            "per_device": generator_stats.per_device_batch,
            "global": generator_stats.global_batch,
            "lr_scaling": cfg.batch_size.lr_scaling,
            "lr_factor": generator_stats.lr_factor,
        },
        "surrogate": surrogate_info,
        "clusters": clusters.summary(data.train_labels),
        "generator": generator_stats.as_dict(),
        "throughput": {
            "generator_images_per_s": generator_stats.images_per_s,
            "generator_samples_per_s": generator_stats.samples_per_s,
        },
    }
    tracker.set_summary({**uc_outcome, "timings_s": timer.seconds})
    tracker.start_stage("victim")

    with timer("victims"):
        victims = {
            condition: _victim(cfg, condition, images, data, rt, progress, placement, checkpoints)
            for condition, images in train_sets.items()
        }
    timer.seconds["total"] = time.perf_counter() - started

    outcome = {
        **uc_outcome,
        "timings_s": timer.seconds,
        "metrics": victim_metrics(victims, list(controls), energy),
        "artifacts": {
            "noise": NOISE_FILE,
            "protected_train": PROTECTED_FILE if cfg.save_protected else None,
            "surrogate": SURROGATE_FILE if cfg.surrogate.weights == "fit" else None,
            "noise_image": NOISE_PNG,
            "samples_image": SAMPLES_PNG,
        },
    }
    tracker.set_summary(outcome)
    return outcome
