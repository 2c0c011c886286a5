"""The stages of one Unlearnable Clusters job, as run by every rank.

data -> surrogate -> features -> k-means -> fused generator training -> noise and protected set
-> the selected evaluations (``ue_sweep/evals``: victims, defenses, ...). Every finished stage is
an artifact (``artifacts.py``, keyed as ``keys.py`` says): a job reuses what another job with the
same inputs computed. Rank 0 writes the job's files; the caller writes the result file.
"""

from __future__ import annotations

import time
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
from ue_sweep.job.protect import SURROGATE_FILE, new_bank, protect
from ue_sweep.job.publish import (
    NOISE_FILE,
    PROTECTED_FILE,
    PROTECTED_SHARDS,
    protected_name,
    publish,
)
from ue_sweep.job.stage import StageRun, StageTimer
from ue_sweep.report.media import NOISE_PNG, SAMPLES_PNG
from ue_sweep.runtime.distributed import Runtime
from ue_sweep.runtime.progress import Progress
from ue_sweep.store.artifacts import ArtifactStore, Stages
from ue_sweep.store.checkpoint import NO_CHECKPOINTS, JobCheckpoints
from ue_sweep.store.keys import (
    content_digest,
    data_identity,
)
from ue_sweep.uc.protection import Protection
from ue_sweep.uc.shards import write_shards
from ue_sweep.uc.source import load_source


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
    tracker = progress.run_logger
    tracker.start_stage("uc")
    with timer("data"):
        data, identity, placement = _prepare_data(cfg, rt)
    _log_data(progress, data, placement, rt)
    run = StageRun(rt, progress, placement, checkpoints, Stages(rt, store), timer)
    if cfg.uc.source is None:
        protection, uc_outcome = protect(cfg, data, identity, job_dir, run)
    else:
        with timer("noise"):
            protection, uc_outcome = load_source(cfg, data, rt, new_bank)
    protected = protected_name(cfg, len(data.train_images))
    if protected == PROTECTED_SHARDS:
        write_shards(job_dir / protected, protection.images, data.train_labels, data.classes, rt)
    if rt.is_main:
        publish(cfg, data, protection, job_dir, tracker, single_file=protected == PROTECTED_FILE)
    uc_outcome = {**_uc_record(data, identity, placement, protection, rt), **uc_outcome}
    tracker.set_summary({**uc_outcome, "timings_s": timer.seconds})

    ctx = EvalContext(
        cfg, rt, data, placement, progress, run.stages, checkpoints, job_dir, identity, protection
    )
    results = _run_evaluations(cfg, ctx, timer)
    timer.seconds["total"] = time.perf_counter() - started
    outcome = {
        **uc_outcome,
        "timings_s": timer.seconds,
        "stages": run.stages.provenance,
        "evals": results,
        "artifacts": _artifacts(cfg, protected),
    }
    if "victims" in results:  # the headline numbers, where reports have always read them
        outcome["metrics"] = results["victims"]
    tracker.set_summary(outcome)
    return outcome


def _prepare_data(cfg: RootConfig, rt: Runtime) -> tuple[ImageSplits, dict[str, Any], Placement]:
    """The job's splits (imbalance, then hold-out), checked; their identity; where they live."""
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
    return _on_device(data, rt.device, placement), identity, placement


def _log_data(progress: Progress, data: ImageSplits, placement: Placement, rt: Runtime) -> None:
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


def _uc_record(
    data: ImageSplits,
    identity: dict[str, Any],
    placement: Placement,
    protection: Protection,
    rt: Runtime,
) -> dict[str, Any]:
    """The job's machine, dataset and protection, as ``result.json`` records them."""
    return {
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
    }


def _run_evaluations(cfg: RootConfig, ctx: EvalContext, timer: StageTimer) -> dict[str, Any]:
    """The ``evals`` group in order, each its own tracker run."""
    tracker = ctx.progress.run_logger
    results: dict[str, Any] = {}
    for name, eval_cfg in cfg.evals.items():
        evaluation = evaluations()[name]
        tracker.start_stage(evaluation.job_type)
        with timer(f"evals.{name}"):
            results[name] = evaluation.run(ctx, eval_cfg)
        tracker.set_summary({"evals": {name: results[name]}})
    return results


def _artifacts(cfg: RootConfig, protected: str | None) -> dict[str, str | None]:
    fitted = cfg.uc.source is None and cfg.surrogate.weights == "fit"
    return {
        "noise": NOISE_FILE,
        "protected_train": protected,
        "surrogate": SURROGATE_FILE if fitted else None,
        "noise_image": NOISE_PNG,
        "samples_image": SAMPLES_PNG,
    }
