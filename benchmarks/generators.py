"""Items 1 and 3: the fused generator bank against the reference loop, and its cost growth.

The product's ``train_generators`` (DDP on a one-rank gloo group, the preemption check, no
monitor passes, no progress output) against :func:`~benchmarks.reference.train_sequential`,
k generators one after another, and against the stripped fused loop, which says what the
product's machinery around the maths costs.
"""

from __future__ import annotations

import torch

from benchmarks import workload
from benchmarks.reference import split_bank, train_fused, train_sequential
from benchmarks.rows import Row
from benchmarks.timing import best, interleaved, loglog_slope
from ue_sweep.config import BatchSizeConfig
from ue_sweep.runtime.distributed import Runtime
from ue_sweep.runtime.progress import Progress
from ue_sweep.train.run import TrainingRun
from ue_sweep.uc.train_generators import ClusteredImages, train_generators

SEED = 0


def _product(rt: Runtime, images: torch.Tensor, k: int, scope: str) -> None:
    cfg = workload.generator_config(scope)
    sur = workload.surrogate()
    clusters = workload.clusters(len(images), k, sur.feature_dim)
    train_generators(
        workload.bank(k, cfg),
        sur,
        ClusteredImages(images, torch.zeros(len(images), dtype=torch.long), clusters),
        cfg,
        BatchSizeConfig(per_device=workload.BATCH),
        workload.AUGMENT,
        TrainingRun(rt, seed=SEED, progress=Progress("none"), name="generators"),
    )


def _sequential(images: torch.Tensor, k: int) -> None:
    cfg = workload.generator_config("all")
    sur = workload.surrogate()
    clusters = workload.clusters(len(images), k, sur.feature_dim)
    generators = split_bank(workload.bank(k, cfg), cfg)
    train_sequential(generators, sur, images, clusters, cfg, workload.BATCH, workload.AUGMENT, SEED)


def _fused(images: torch.Tensor, k: int, scope: str) -> None:
    cfg = workload.generator_config(scope)
    sur = workload.surrogate()
    clusters = workload.clusters(len(images), k, sur.feature_dim)
    train_fused(
        workload.bank(k, cfg), sur, images, clusters, cfg, workload.BATCH, workload.AUGMENT, SEED
    )


def fused_vs_reference(
    rt: Runtime, n: int, ks: tuple[int, ...], reps: int
) -> tuple[list[Row], dict]:
    """One epoch of each on the first ``n`` digits (k passes over them for the reference)."""
    images = workload.digits_images(n)
    rows, raw = [], {}
    for k in ks:
        variants = {
            "reference": lambda k=k: _sequential(images, k),
            "fused all": lambda k=k: _product(rt, images, k, "all"),
            "fused cluster": lambda k=k: _product(rt, images, k, "cluster"),
        }
        if k == 10:
            variants["plain all"] = lambda: _fused(images, 10, "all")
            variants["plain cluster"] = lambda: _fused(images, 10, "cluster")
        runs = interleaved(variants, reps)
        raw[f"k={k}"] = {name: [t.as_dict() for t in ts] for name, ts in runs.items()}
        fig = {name: best(ts) for name, ts in runs.items()}
        case = f"k={k}, N={n}, 1 epoch"
        rows.append(
            Row(
                "1 fused",
                f"{case}, scope all",
                "reference",
                "fused",
                fig["reference"],
                fig["fused all"],
                ">= 2x",
            )
        )
        rows.append(
            Row(
                "1 fused",
                f"{case}, scope cluster",
                "reference",
                "fused",
                fig["reference"],
                fig["fused cluster"],
                f">= {0.8 * k:g}x",
            )
        )
        for scope in ("all", "cluster") if k == 10 else ():
            rows.append(
                Row(
                    "1 overhead",
                    f"{case}, scope {scope}",
                    "plain fused loop",
                    "product",
                    fig[f"plain {scope}"],
                    fig[f"fused {scope}"],
                    "~1x",
                )
            )
    return rows, raw


def growth(
    rt: Runtime, fractions: tuple[float, ...], ks: tuple[int, ...], reps: int
) -> tuple[list[Row], dict]:
    """Generator-stage seconds per epoch (scope cluster) vs N at k=10, and vs k on all of N."""
    full = workload.digits_images()
    sizes = [round(f * len(full)) for f in fractions]
    by_n = interleaved({n: lambda n=n: _product(rt, full[:n], 10, "cluster") for n in sizes}, reps)
    by_k = interleaved({k: lambda k=k: _product(rt, full, k, "cluster") for k in ks}, reps)
    raw = {
        "by_n": {str(n): [t.as_dict() for t in ts] for n, ts in by_n.items()},
        "by_k": {str(k): [t.as_dict() for t in ts] for k, ts in by_k.items()},
    }
    rows = []
    for label, runs, goal in (("N", by_n, "exponent ~1"), ("k", by_k, "exponent ~0")):
        xs = [float(x) for x in runs]
        figs = [best(ts) for ts in runs.values()]
        wall = loglog_slope(xs, [f.wall for f in figs])
        cpu = loglog_slope(xs, [f.cpu for f in figs])
        swept = ",".join(str(x) for x in runs)
        fixed = "k=10" if label == "N" else f"N={len(full)}"
        rows.append(
            Row(
                "3 growth",
                f"scope cluster, {fixed}, {label}={swept}",
                "",
                "",
                None,
                None,
                goal,
                value=f"{label}^{wall:.2f} wall, {label}^{cpu:.2f} cpu",
            )
        )
        raw[f"exponent_{label}"] = {"wall": wall, "cpu": cpu}
    return rows, raw
