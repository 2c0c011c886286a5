"""The stages of one Unlearnable Clusters job, as run by every rank.

data -> surrogate -> features -> k-means -> fused generator training -> noise and protected set
-> the selected evaluations (``ue_sweep/evals``: victims, defenses, ...). Every finished stage is
an artifact (``artifacts.py``, keyed as ``keys.py`` says): a job reuses what another job with the
same inputs computed. Rank 0 writes the job's files; the caller writes the result file.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch

from ue_sweep.config import RootConfig
from ue_sweep.data.holdout import reserve_holdout
from ue_sweep.data.imbalance import apply_imbalance
from ue_sweep.data.placement import Placement, resolve_placement
from ue_sweep.data.registry import load_dataset
from ue_sweep.data.splits import ImageSplits
from ue_sweep.errors import ConfigError
from ue_sweep.evals.context import EvalContext
from ue_sweep.evals.registry import check_data as check_evaluations_data
from ue_sweep.evals.registry import evaluations, holdout_fraction
from ue_sweep.models.classifiers import FeatureClassifier
from ue_sweep.models.direct import DirectNoise
from ue_sweep.models.generators import GeneratorBank
from ue_sweep.report.media import NOISE_PNG, SAMPLES_PNG, noise_grid, sample_grid, save_png
from ue_sweep.runtime.distributed import Runtime
from ue_sweep.runtime.progress import Progress
from ue_sweep.runtime.seeding import derive_seed
from ue_sweep.runtime.tracking import atomic_torch_save
from ue_sweep.store.artifacts import ArtifactStore, StageKey, Stages
from ue_sweep.store.checkpoint import NO_CHECKPOINTS, JobCheckpoints
from ue_sweep.store.keys import (
    clusters_key,
    content_digest,
    data_identity,
    generators_key,
    surrogate_key,
)
from ue_sweep.uc.clustering import Clusters, cluster_features, nearest_centers, use_sharded
from ue_sweep.uc.diagnostics import job_diagnostics
from ue_sweep.uc.features import extract_features
from ue_sweep.uc.noise import apply_cluster_noise
from ue_sweep.uc.protection import Protection
from ue_sweep.uc.shards import write_shards
from ue_sweep.uc.source import load_source
from ue_sweep.uc.surrogate import build_surrogate, loss_model
from ue_sweep.uc.train_generators import GeneratorStats, train_generators

NOISE_FILE = "noise.pt"
PROTECTED_FILE = "protected_train.pt"
PROTECTED_SHARDS = "protected_train"
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
    if cfg.uc.source is None and cfg.clusters.k > n:
        raise ConfigError(
            "clusters.k", cfg.clusters.k, f"at most the {n} training images of {data.name}"
        )
    check_evaluations_data(cfg, data)


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


def _reserve_holdout(cfg: RootConfig, data: ImageSplits) -> ImageSplits:
    """The hold-out the selected evaluations need, out of the training split before any stage:
    seeded by the dataset's split seed, so it is a property of the data, not of the run."""
    return reserve_holdout(data, holdout_fraction(cfg.evals), cfg.dataset.split_seed)


def _on_device(data: ImageSplits, device: torch.device, placement: Placement) -> ImageSplits:
    """Labels always go to the device; images only when placed there."""
    images = placement.where == "device"

    def move(x: torch.Tensor | None, always: bool = False) -> torch.Tensor | None:
        return x.to(device) if x is not None and (images or always) else x

    return replace(
        data,
        train_images=move(data.train_images),
        train_labels=move(data.train_labels, always=True),
        test_images=move(data.test_images),
        test_labels=move(data.test_labels, always=True),
        holdout_images=move(data.holdout_images),
        holdout_labels=move(data.holdout_labels, always=True),
    )


def _clusters(
    cfg: RootConfig,
    surrogate: FeatureClassifier,
    data: ImageSplits,
    rt: Runtime,
    progress: Progress,
    timer: StageTimer,
    stages: Stages,
    key: StageKey,
) -> Clusters:
    def compute() -> dict[str, Any]:
        # Sharded k-means needs only this rank's rows: no rank gathers all features.
        sharded = use_sharded(cfg.clusters, len(data.train_images))
        with timer("features"):
            features = extract_features(
                surrogate, data.train_images, FEATURE_BATCH, rt, gather=not sharded
            )
        with timer("kmeans"), progress.stage("k-means", total_steps=1) as kmeans:
            clusters = cluster_features(features, cfg.clusters, cfg.seed, rt, local=sharded)
            kmeans.advance()
        return {
            "ids": clusters.ids.cpu(),
            "centers": clusters.centers.cpu(),
            "targets": clusters.targets.cpu(),
            "inertia": clusters.inertia,
        }

    found = stages.run("clusters", key, compute)
    return Clusters(**{k: v.to(rt.device) if torch.is_tensor(v) else v for k, v in found.items()})


def _new_bank(
    cfg: RootConfig, k: int, data: ImageSplits, rt: Runtime
) -> GeneratorBank | DirectNoise:
    """The generator bank (or the direct patterns) as UC's training starts from it: the same
    weights on every call."""
    torch.manual_seed(derive_seed(cfg.seed, "generator-init"))
    g = cfg.generator
    if g.kind == "direct":
        return DirectNoise(k, data.channels, data.image_size, g.eps, seed=cfg.seed).to(rt.device)
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
    stages: Stages,
    key: StageKey,
) -> tuple[GeneratorBank | DirectNoise, GeneratorStats]:
    bank = _new_bank(cfg, clusters.k, data, rt)

    def compute() -> dict[str, Any]:
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
            loss_model=loss_model(cfg, data, rt),
        )
        return {"bank": bank.state_dict(), "stats": stats.as_dict()}

    found = stages.run("generators", key, compute)
    bank.load_state_dict(found["bank"])
    return bank, GeneratorStats(**found["stats"])


def _protect(
    cfg: RootConfig,
    data: ImageSplits,
    identity: dict[str, Any],
    rt: Runtime,
    job_dir: Path,
    progress: Progress,
    placement: Placement,
    checkpoints: JobCheckpoints,
    stages: Stages,
    timer: StageTimer,
) -> tuple[Protection, dict[str, Any]]:
    """UC itself: surrogate, clusters, generators, and the noise they make."""
    key = surrogate_key(cfg, identity, rt.world_size)
    with timer("surrogate"):
        surrogate, surrogate_info = build_surrogate(
            cfg, data, rt, progress, placement, stages, key, checkpoints
        )
    if rt.is_main and cfg.surrogate.weights == "fit":
        atomic_torch_save(job_dir / SURROGATE_FILE, surrogate.state_dict())
    key = clusters_key(cfg, key)
    clusters = _clusters(cfg, surrogate, data, rt, progress, timer, stages, key)
    progress.info(
        "k-means: %d clusters of sizes %s, NMI with the classes %.2f",
        clusters.k,
        clusters.sizes,
        clusters.label_agreement(data.train_labels),
    )
    with timer("generators"):
        bank, stats = _generators(
            cfg,
            surrogate,
            data,
            clusters,
            rt,
            progress,
            placement,
            checkpoints,
            stages,
            generators_key(cfg, key, rt.world_size),
        )
    with timer("noise"), torch.no_grad():
        noise = bank().float()
        protected = apply_cluster_noise(data.train_images, clusters.ids, noise)
    with timer("diagnostics"):
        diagnostics = job_diagnostics(
            cfg,
            surrogate,
            data,
            clusters,
            noise,
            _new_bank(cfg, clusters.k, data, rt),
            stats.gradient,
            rt,
        )
    protection = Protection(
        noise=noise,
        cluster_ids=clusters.ids,
        eps=cfg.generator.eps,
        images=protected,
        untrained=lambda: _new_bank(cfg, clusters.k, data, rt)().float(),
        source="computed",
        extra={"centers": clusters.centers.cpu(), "targets": clusters.targets.cpu()},
        assign=lambda images: nearest_centers(
            extract_features(surrogate, images, FEATURE_BATCH, rt), clusters.centers
        ),
    )
    outcome = {
        "batch": {
            "per_device": stats.per_device_batch,
            "global": stats.global_batch,
            "lr_scaling": cfg.batch_size.lr_scaling,
            "lr_factor": stats.lr_factor,
        },
        "surrogate": surrogate_info,
        "clusters": clusters.summary(data.train_labels),
        "diagnostics": diagnostics,
        "generator": stats.as_dict(),
        "throughput": {
            "generator_images_per_s": stats.images_per_s,
            "generator_samples_per_s": stats.samples_per_s,
        },
    }
    return protection, outcome


def _protected_name(cfg: RootConfig, n: int) -> str | None:
    """Where the protected set goes: one file for small sets, one shard per rank above
    ``protected_shards_above`` images (written by every rank), or nowhere."""
    if not cfg.save_protected:
        return None
    return PROTECTED_SHARDS if n > cfg.protected_shards_above else PROTECTED_FILE


def _publish(
    cfg: RootConfig,
    data: ImageSplits,
    p: Protection,
    job_dir: Path,
    tracker: Any,
    single_file: bool,
) -> None:
    """Rank 0: the noise, the protected set as it would be published (``single_file``; else
    every rank wrote its shard), and their pictures."""
    atomic_torch_save(
        job_dir / NOISE_FILE,
        {
            "noise": p.noise.cpu(),
            "cluster_ids": p.cluster_ids.cpu(),
            "eps": p.eps,
            **p.extra,
        },
    )
    if single_file:
        atomic_torch_save(
            job_dir / PROTECTED_FILE,
            {
                "images": p.images.cpu(),
                "labels": data.train_labels.cpu(),
                "classes": list(data.classes),
            },
        )
    pictures = {
        "noise": noise_grid(p.noise, p.eps),
        "samples": sample_grid(data.train_images, p.images, p.cluster_ids, p.noise, p.eps),
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


def run_pipeline(
    cfg: RootConfig,
    rt: Runtime,
    job_dir: Path,
    progress: Progress,
    checkpoints: JobCheckpoints = NO_CHECKPOINTS,
    store: ArtifactStore | None = None,
) -> dict[str, Any]:
    """Run every stage on this rank; returns the outcome that goes into ``result.json``.

    A stage that a job with the same inputs finished before (this one, in an earlier attempt,
    or another job of the sweep) is loaded from ``store``; the interrupted one resumes from its
    checkpoint in ``checkpoints``. ``timings_s`` are this attempt's wall times; the training
    stages report their seconds over all attempts. ``stages`` says which were reused.

    ``progress.run_logger`` gets one run per stage: ``uc`` up to the noise, then one per
    evaluation.
    """
    timer = StageTimer()
    started = time.perf_counter()
    stages = Stages(rt, store)
    tracker = progress.run_logger
    tracker.start_stage("uc")
    with timer("data"):
        data = _load_data(cfg, rt)
        data = apply_imbalance(data, cfg.dataset.imbalance, cfg.dataset.split_seed)
        data = _reserve_holdout(cfg, data)
        check_against_data(cfg, data)
        held = () if data.holdout_images is None else (data.holdout_images, data.holdout_labels)
        identity = data_identity(
            cfg,
            content_digest(
                rt, data.train_images, data.train_labels, data.test_images, data.test_labels, *held
            ),
        )
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
    if cfg.uc.source is None:
        protection, uc_outcome = _protect(
            cfg, data, identity, rt, job_dir, progress, placement, checkpoints, stages, timer
        )
    else:
        with timer("noise"):
            protection, uc_outcome = load_source(cfg, data, rt, _new_bank)
    protected = _protected_name(cfg, len(data.train_images))
    if protected == PROTECTED_SHARDS:
        write_shards(job_dir / protected, protection.images, data.train_labels, data.classes, rt)
    if rt.is_main:
        _publish(cfg, data, protection, job_dir, tracker, single_file=protected == PROTECTED_FILE)

    uc_outcome = {
        "world_size": rt.world_size,
        "launcher": rt.env.launcher,
        "device": str(rt.device),
        "backend": rt.backend,
        "dataset": {
            "name": data.name,
            "train_size": len(data.train_images),
            "test_size": len(data.test_images),
            "holdout_size": data.holdout_size,
            "num_classes": data.num_classes,
            "channels": data.channels,
            "image_size": data.image_size,
            "test_split": data.test_split,
            "classes": list(data.classes),
            "train_class_counts": _class_counts(data.train_labels, data.num_classes),
            "test_class_counts": _class_counts(data.test_labels, data.num_classes),
            "placement": placement.where,
            "sha256": identity["sha256"],
        },
        "protection": {
            "source": protection.source,
            "eps": protection.eps,
            "k": int(protection.noise.shape[0]),
        },
        **uc_outcome,
    }
    tracker.set_summary({**uc_outcome, "timings_s": timer.seconds})

    ctx = EvalContext(
        cfg, rt, data, placement, progress, stages, checkpoints, job_dir, identity, protection
    )
    results: dict[str, Any] = {}
    for name, eval_cfg in cfg.evals.items():
        evaluation = evaluations()[name]
        tracker.start_stage(evaluation.job_type)
        with timer(f"evals.{name}"):
            results[name] = evaluation.run(ctx, eval_cfg)
        tracker.set_summary({"evals": {name: results[name]}})
    timer.seconds["total"] = time.perf_counter() - started

    outcome = {
        **uc_outcome,
        "timings_s": timer.seconds,
        "stages": stages.provenance,
        "evals": results,
        "artifacts": {
            "noise": NOISE_FILE,
            "protected_train": protected,
            "surrogate": SURROGATE_FILE
            if cfg.uc.source is None and cfg.surrogate.weights == "fit"
            else None,
            "noise_image": NOISE_PNG,
            "samples_image": SAMPLES_PNG,
        },
    }
    if "victims" in results:  # the headline numbers, where reports have always read them
        outcome["metrics"] = results["victims"]
    tracker.set_summary(outcome)
    return outcome
