"""UC's stages in a job: surrogate, features and k-means, the generators, and the noise they
make, each an artifact of the job's store."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from ue_sweep.config import RootConfig
from ue_sweep.data.splits import ImageSplits
from ue_sweep.job.stage import StageRun
from ue_sweep.models.classifiers import FeatureClassifier
from ue_sweep.models.direct import DirectNoise
from ue_sweep.models.generators import GeneratorBank
from ue_sweep.runtime.distributed import Runtime
from ue_sweep.runtime.seeding import derive_seed
from ue_sweep.runtime.tracking import atomic_torch_save
from ue_sweep.store.artifacts import StageKey
from ue_sweep.store.keys import clusters_key, generators_key, surrogate_key
from ue_sweep.train.run import TrainingRun
from ue_sweep.uc.clustering import Clusters, cluster_features, nearest_centers, use_sharded
from ue_sweep.uc.diagnostics import job_diagnostics
from ue_sweep.uc.features import extract_features
from ue_sweep.uc.noise import apply_cluster_noise
from ue_sweep.uc.protection import Protection
from ue_sweep.uc.surrogate import build_surrogate, loss_model
from ue_sweep.uc.train_generators import ClusteredImages, GeneratorStats, train_generators

SURROGATE_FILE = "surrogate.pt"
FEATURE_BATCH = 512


def _clusters(
    cfg: RootConfig, surrogate: FeatureClassifier, data: ImageSplits, run: StageRun, key: StageKey
) -> Clusters:
    rt, progress, timer = run.rt, run.progress, run.timer

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

    found = run.stages.run("clusters", key, compute)
    return Clusters(**{k: v.to(rt.device) if torch.is_tensor(v) else v for k, v in found.items()})


def new_bank(
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
    run: StageRun,
    key: StageKey,
) -> tuple[GeneratorBank | DirectNoise, GeneratorStats]:
    rt = run.rt
    bank = new_bank(cfg, clusters.k, data, rt)

    def compute() -> dict[str, Any]:
        stats = train_generators(
            bank,
            surrogate,
            ClusteredImages(data.train_images, data.train_labels, clusters),
            cfg.generator,
            cfg.batch_size,
            cfg.dataset.augment,
            TrainingRun(
                rt,
                seed=derive_seed(cfg.seed, "generator-data"),
                progress=run.progress,
                name="generators",
                placement=run.placement,
                checkpoint=run.checkpoints.stage("generators"),
            ),
            loss_model=loss_model(cfg, data, rt),
        )
        return {"bank": bank.state_dict(), "stats": stats.as_dict()}

    found = run.stages.run("generators", key, compute)
    bank.load_state_dict(found["bank"])
    return bank, GeneratorStats(**found["stats"])


def protect(
    cfg: RootConfig, data: ImageSplits, identity: dict[str, Any], job_dir: Path, run: StageRun
) -> tuple[Protection, dict[str, Any]]:
    """UC itself: surrogate, clusters, generators, and the noise they make."""
    rt, progress, timer = run.rt, run.progress, run.timer
    key = surrogate_key(cfg, identity, rt.world_size)
    with timer("surrogate"):
        surrogate, surrogate_info = build_surrogate(
            cfg, data, rt, progress, run.placement, run.stages, key, run.checkpoints
        )
    if rt.is_main and cfg.surrogate.weights == "fit":
        atomic_torch_save(job_dir / SURROGATE_FILE, surrogate.state_dict())
    key = clusters_key(cfg, key)
    clusters = _clusters(cfg, surrogate, data, run, key)
    progress.info(
        "k-means: %d clusters of sizes %s, NMI with the classes %.2f",
        clusters.k,
        clusters.sizes,
        clusters.label_agreement(data.train_labels),
    )
    with timer("generators"):
        key = generators_key(cfg, key, rt.world_size)
        bank, stats = _generators(cfg, surrogate, data, clusters, run, key)
    with timer("noise"), torch.no_grad():
        noise = bank().float()
        protected = apply_cluster_noise(data.train_images, clusters.ids, noise)
    with timer("diagnostics"):
        untrained = new_bank(cfg, clusters.k, data, rt)
        diagnostics = job_diagnostics(
            cfg, surrogate, data, clusters, noise, untrained, stats.gradient, rt
        )
    protection = Protection(
        noise=noise,
        cluster_ids=clusters.ids,
        eps=cfg.generator.eps,
        images=protected,
        untrained=lambda: new_bank(cfg, clusters.k, data, rt)().float(),
        source="computed",
        extra={"centers": clusters.centers.cpu(), "targets": clusters.targets.cpu()},
        assign=lambda images: nearest_centers(
            extract_features(surrogate, images, FEATURE_BATCH, rt), clusters.centers
        ),
    )
    return protection, _outcome(cfg, data, stats, surrogate_info, clusters, diagnostics)


def _outcome(
    cfg: RootConfig,
    data: ImageSplits,
    stats: GeneratorStats,
    surrogate_info: dict[str, Any],
    clusters: Clusters,
    diagnostics: dict[str, Any],
) -> dict[str, Any]:
    return {
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
