"""Item 8: every stage's time and peak memory at growing N, and their growth exponents.

Synthetic data made on the fly (no dataset): uint8 RGB images of ``IMAGE`` px and, for the
clustering stage, ``FEATURE_DIM``-dim float32 features (ResNet-50's width). Each stage runs the
product's code once per N on one rank: surrogate features (``extract_features``), k-means (the
scikit-learn reference on rank 0 and the sharded one, both one start of ``KMEANS_STEPS`` Lloyd
steps, so they do equal work), one generator epoch (``train_generators``, the demo's generator),
export (the noise applied, then the set written as shards or, the baseline, one ``.pt``), and one
victim epoch (``train_classifier``). Peak memory is the rise of the process's resident set over
the stage (Linux: ``/proc/self/clear_refs`` resets the high-water mark before it).
"""

from __future__ import annotations

import tempfile
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import torch

from benchmarks import projection
from benchmarks.rows import Row
from benchmarks.timing import Timing, loglog_slope, timed
from ue_sweep.config import (
    AugmentConfig,
    BatchSizeConfig,
    GeneratorConfig,
    ModelSpec,
    TrainingConfig,
)
from ue_sweep.models.classifiers import build_classifier
from ue_sweep.models.generators import GeneratorBank
from ue_sweep.runtime.distributed import Runtime
from ue_sweep.runtime.progress import Progress
from ue_sweep.runtime.tracking import atomic_torch_save
from ue_sweep.train.classifier import train_classifier
from ue_sweep.train.run import LabelledData, TrainingRun
from ue_sweep.uc.clustering import Clusters
from ue_sweep.uc.features import extract_features
from ue_sweep.uc.kmeans import fit_sharded
from ue_sweep.uc.noise import apply_cluster_noise
from ue_sweep.uc.shards import write_shards
from ue_sweep.uc.train_generators import ClusteredImages, train_generators

IMAGE = 16
CHANNELS = 3
CLASSES = 10
K = 10
FEATURE_DIM = 2048
KMEANS_STEPS = 10
# The demo's generator (conf/generator/small.yaml) and augmentation, one epoch, no monitor.
GENERATOR = GeneratorConfig(
    eps=20 / 255,
    scope="cluster",
    noise_order="before_augment",
    epochs=1,
    lr=0.002,
    ngf=8,
    n_blocks=2,
    monitor_images=0,
)
AUGMENT = AugmentConfig(crop_padding=2, hflip=False)
VICTIM = TrainingConfig(epochs=1, batch_size=128, lr=0.05)
STAGES = (
    "features",
    "kmeans sklearn",
    "kmeans sharded",
    "generators",
    "noise",
    "write .pt",
    "write shards",
    "victim epoch",
)


def _status_kib(field: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise RuntimeError(f"no {field} in /proc/self/status")


def measured(fn: Callable[[], object]) -> tuple[Timing, float, object]:
    """Wall and CPU seconds of ``fn``, the rise of resident memory (MiB) at its peak, and what
    ``fn`` returned."""
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")  # reset the peak resident set (VmHWM) to the current one
    before = _status_kib("VmRSS")
    out: list[object] = []
    timing = timed(lambda: out.append(fn()))
    return timing, (_status_kib("VmHWM") - before) / 1024, out[0]


def _data(n: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(n)
    images = torch.randint(0, 256, (n, CHANNELS, IMAGE, IMAGE), generator=g, dtype=torch.uint8)
    labels = torch.randint(0, CLASSES, (n,), generator=g)
    features = torch.randn(n, FEATURE_DIM, generator=g)
    return images, labels, features


def _classifier(width: int):
    torch.manual_seed(0)
    spec = ModelSpec(width=width)
    return build_classifier(spec, in_channels=CHANNELS, num_classes=CLASSES, image_size=IMAGE)


def _stages(rt: Runtime, n: int, out: Path) -> dict[str, Callable[[], object]]:
    images, labels, features = _data(n)
    ids = torch.randperm(n, generator=torch.Generator().manual_seed(1)) % K
    clusters = Clusters(
        ids=ids, centers=torch.randn(K, 16), targets=torch.roll(torch.arange(K), -1), inertia=0.0
    )
    noise = torch.rand(K, CHANNELS, IMAGE, IMAGE) * 0.1 - 0.05
    test_images, test_labels = images[:256], labels[:256]

    def kmeans_sklearn() -> dict[str, int]:
        """What ``cluster_features`` runs on rank 0, with tol 0 for a fixed count of steps."""
        from sklearn.cluster import KMeans
        from threadpoolctl import threadpool_limits

        with threadpool_limits(1):
            km = KMeans(K, n_init=1, max_iter=KMEANS_STEPS, tol=0.0, random_state=0)
            km.fit(features.numpy())
        return {"lloyd_steps": int(km.n_iter_)}

    def kmeans_sharded() -> dict[str, int]:
        fit = fit_sharded(features, K, 1, KMEANS_STEPS, 0, rt, tol=0.0)
        return {"lloyd_steps": fit.iterations}

    def generators() -> None:
        torch.manual_seed(0)
        bank = GeneratorBank(
            K, CHANNELS, IMAGE, GENERATOR.eps, ngf=GENERATOR.ngf, n_blocks=GENERATOR.n_blocks
        )
        surrogate = _classifier(16).eval().requires_grad_(False)
        # The surrogate's feature width, not FEATURE_DIM: its centres are what the loss targets.
        c = replace(clusters, centers=torch.randn(K, surrogate.feature_dim))
        train_generators(
            bank,
            surrogate,
            ClusteredImages(images, labels, c),
            GENERATOR,
            BatchSizeConfig(per_device=64),
            AUGMENT,
            TrainingRun(rt, seed=0, progress=Progress("none"), name="generators"),
        )

    protected: dict[str, torch.Tensor] = {}

    def apply_noise() -> None:
        protected["images"] = apply_cluster_noise(images, ids, noise)

    return {
        "features": lambda: extract_features(_classifier(16).eval(), images, 512, rt),
        "kmeans sklearn": kmeans_sklearn,
        "kmeans sharded": kmeans_sharded,
        "generators": generators,
        "noise": apply_noise,
        "write .pt": lambda: atomic_torch_save(
            out / "protected_train.pt", {"images": protected["images"], "labels": labels}
        ),
        "write shards": lambda: write_shards(out / "shards", protected["images"], labels, [], rt),
        "victim epoch": lambda: train_classifier(
            _classifier(32),
            LabelledData(images, labels, test_images, test_labels, CLASSES),
            VICTIM,
            AUGMENT,
            TrainingRun(rt, seed=0, progress=Progress("none"), name="victim"),
        ),
    }


def run(rt: Runtime, sizes: tuple[int, ...]) -> tuple[list[Row], dict]:
    raw: dict[str, dict[str, dict[str, float]]] = {stage: {} for stage in STAGES}
    for n in sizes:
        with tempfile.TemporaryDirectory(prefix="ue-sweep-scale-") as tmp:
            stages = _stages(rt, n, Path(tmp))
            for stage, fn in stages.items():
                timing, peak_mib, out = measured(fn)
                extra = out if isinstance(out, dict) and stage.startswith("kmeans") else {}
                raw[stage][str(n)] = {**timing.as_dict(), "peak_mib": peak_mib, **extra}
                print(f"  {stage} N={n}: {timing.wall:.1f} s, +{peak_mib:.0f} MiB", flush=True)
            stages.clear()
    rows = []
    xs = [float(n) for n in sizes]
    exponents = {}
    for stage in STAGES:
        figs = [raw[stage][str(n)] for n in sizes]
        exponents[stage] = {
            "wall": loglog_slope(xs, [f["wall_s"] for f in figs]),
            "cpu": loglog_slope(xs, [f["cpu_s"] for f in figs]),
        }
        e = exponents[stage]
        rows.append(
            Row(
                "8 scale",
                f"{stage}, N={','.join(map(str, sizes))}",
                "",
                "",
                None,
                None,
                "exponent ~1",
                value=f"N^{e['wall']:.2f} wall, N^{e['cpu']:.2f} cpu",
            )
        )
    largest = str(sizes[-1])

    def best(stage: str) -> Timing:
        return Timing(raw[stage][largest]["wall_s"], raw[stage][largest]["cpu_s"])

    for base, cand, goal in (
        ("kmeans sklearn", "kmeans sharded", ">= 1x on one rank; / world size on many"),
        ("write .pt", "write shards", "~1x on one rank; / world size on many"),
    ):
        rows.append(Row("8 scale", f"N={largest}", base, cand, best(base), best(cand), goal))
    proj = projection.project(raw, sizes)
    rows.append(
        Row(
            "8 scale",
            "projection: 1.28M images, 224 px, 48 GPUs",
            "",
            "",
            None,
            None,
            "",
            value=f"bottleneck: {proj['bottleneck']}",
        )
    )
    return rows, {"sizes": list(sizes), "stages": raw, "exponents": exponents, "projection": proj}
