"""Item 8's projection: each stage of the reference UC setup at ImageNet-1k scale on 48 GPUs.

What is measured and what is assumed (docs/SCALE.md says it in words):

- GPU stages (features, generators, victims) cost their FLOPs, counted by torch's
  ``FlopCounterMode`` on the meta device at 224 px (the product's own ResNet-50 surrogate,
  ResNet-18 victim and reference generator bank, no compute), and run at the FLOP rate that
  ResNet-50 training reaches in a published figure (``PUBLISHED``): an assumed utilisation, the
  same for every stage.
- k-means, the noise and the writes run on the CPU or the file system: their cost per row
  (per row and Lloyd step for k-means) is measured by item 8 at the largest N and grown with
  the fitted exponent (``(N / n) ** p``, at least 1); pixels scale by bytes. k-means is taken
  at the preset's upper bound of n_init x max_iter Lloyd steps. Sharded k-means on the ranks'
  GPUs is also given at the published TF32 rate (float32 matrix products), a lower bound that
  ignores memory traffic and the per-step all-reduce.
- Memory per rank is counted from the arrays a rank holds at that stage (uint8 images, float32
  features); item 8's measured peaks at 16 px check the count.
"""

from __future__ import annotations

import torch

N = 1_281_167  # ImageNet-1k training images
SIZE = 224
CHANNELS = 3
GPUS = 48
K = 10
FEATURE_DIM = 2048  # ResNet-50 penultimate features
GENERATOR_EPOCHS = 50  # conf/generator/resnet.yaml
VICTIM_EPOCHS = 90  # conf/victim/resnet18.yaml
PER_DEVICE_BATCH = 64  # conf/batch_size/64.yaml (generator stage)
KMEANS_STEPS = 10 * 300  # n_init x max_iter of the preset: an upper bound on Lloyd steps
PUBLISHED = {
    "source": "NVIDIA DeepLearningExamples, PyTorch/Classification/ConvNets/resnet50v1.5/"
    "README.md, 'Training performance: NVIDIA DGX A100 (8x A100 80GB)', pytorch-21.03 NGC",
    "gpus": 8,
    "mixed_precision_img_s": 16621,
    "tf32_img_s": 7248,
}


def _flops() -> dict[str, float]:
    """FLOPs per image (per step for the generator bank) at 224 px, counted without compute."""
    from torch.utils.flop_counter import FlopCounterMode

    from ue_sweep.config import ModelSpec
    from ue_sweep.models.classifiers import build_classifier
    from ue_sweep.models.generators import GeneratorBank

    def count(fn) -> float:
        counter = FlopCounterMode(display=False)
        with counter:
            fn()
        return float(counter.get_total_flops())

    with torch.device("meta"):
        spec = {"stem": "imagenet"}
        shape = {"in_channels": CHANNELS, "num_classes": 1000, "image_size": SIZE}
        r50 = build_classifier(ModelSpec(arch="resnet50", **spec), **shape)
        r18 = build_classifier(ModelSpec(arch="resnet18", **spec), **shape)
        bank = GeneratorBank(K, CHANNELS, SIZE, 16 / 255, ngf=64, n_blocks=6, n_downsampling=2)
        x = torch.randn(1, CHANNELS, SIZE, SIZE)

    def train(model) -> None:
        model(x)[0].sum().backward()

    def surrogate_step() -> None:  # frozen surrogate, gradient to the protected image only
        frozen = r50.requires_grad_(False)
        image = x.clone().requires_grad_(True)
        frozen(image)[1].sum().backward()

    return {
        "resnet50_train": count(lambda: train(r50)),
        "resnet50_forward": count(lambda: r50(x)),
        "resnet18_train": count(lambda: train(r18)),
        "uc_surrogate_per_image": count(surrogate_step),
        "generator_bank_per_step": count(lambda: bank().sum().backward()),
    }


def _per_unit(stage: dict[str, float], clock: str) -> float:
    """Seconds per Lloyd step for k-means (one start, k-means++ included), else per run."""
    return stage[clock] / stage.get("lloyd_steps", 1)


def _grow(
    stage: dict[str, dict[str, float]], sizes: tuple[int, ...], clock: str = "cpu_s"
) -> float:
    """Seconds of ``stage`` (per Lloyd step for k-means) at ``N`` rows, from the largest measured
    size grown with the fitted exponent (at least 1: no stage gets cheaper per row).

    ``cpu_s`` for computing stages: on a shared machine wall time counts the other jobs too, and
    a rank has its core to itself; ``wall_s`` for writes, which wait on the disk.
    """
    from benchmarks.timing import loglog_slope

    # A clock's resolution can read 0 s at tiny N (--quick): floored at a microsecond.
    units = [max(_per_unit(stage[str(n)], clock), 1e-6) for n in sizes]
    exponent = max(1.0, loglog_slope([float(n) for n in sizes], units))
    return units[-1] * (N / sizes[-1]) ** exponent


def project(raw: dict[str, dict[str, dict[str, float]]], sizes: tuple[int, ...]) -> dict:
    from ue_sweep.data.placement import TRAIN_COPIES

    flops = _flops()
    per_gpu_img_s = PUBLISHED["mixed_precision_img_s"] / PUBLISHED["gpus"]
    rate = per_gpu_img_s * flops["resnet50_train"]  # FLOP/s one GPU reaches in that figure
    cluster = GPUS * rate
    steps = N / (GPUS * PER_DEVICE_BATCH)
    generator_epoch = (
        K * N * flops["uc_surrogate_per_image"] + steps * flops["generator_bank_per_step"]
    ) / cluster
    image_bytes = CHANNELS * SIZE * SIZE
    measured_bytes = CHANNELS * 16 * 16  # item 8's images: grown by bytes, not by image count
    bytes_ratio = image_bytes / measured_bytes
    tf32_rate = PUBLISHED["tf32_img_s"] / PUBLISHED["gpus"] * flops["resnet50_train"]
    # Distances (one matrix product) and centre sums, per row and Lloyd step.
    kmeans_row_flops = 2 * K * FEATURE_DIM + 2 * FEATURE_DIM
    gib = 2.0**30
    stages = {
        "features": {
            "seconds": N * flops["resnet50_forward"] / cluster,
            "memory_per_rank_gib": {
                "gathered (sklearn path)": N * FEATURE_DIM * 4 / gib,
                "own rows (sharded path)": N / GPUS * FEATURE_DIM * 4 / gib,
            },
        },
        "kmeans sklearn (rank 0, 1 CPU core)": {
            "seconds": _grow(raw["kmeans sklearn"], sizes) * KMEANS_STEPS,
            "memory_per_rank_gib": {"features on rank 0": N * FEATURE_DIM * 4 / gib},
        },
        "kmeans sharded (48 ranks, 1 CPU core each)": {
            "seconds": _grow(raw["kmeans sharded"], sizes) / GPUS * KMEANS_STEPS,
            "memory_per_rank_gib": {"own rows": N / GPUS * FEATURE_DIM * 4 / gib},
        },
        "kmeans sharded (48 GPUs)": {
            "seconds": N / GPUS * kmeans_row_flops * KMEANS_STEPS / tf32_rate,
            "memory_per_rank_gib": {"own rows": N / GPUS * FEATURE_DIM * 4 / gib},
        },
        "generators (50 epochs)": {
            "seconds": GENERATOR_EPOCHS * generator_epoch,
            "one_epoch_seconds": generator_epoch,
        },
        # Every rank applies the noise to the whole set (uc/noise.py, on the host for such sizes).
        "noise (every rank, all images, 1 CPU core)": {
            "seconds": _grow(raw["noise"], sizes) * bytes_ratio,
        },
        "write .pt (rank 0)": {
            "seconds": _grow(raw["write .pt"], sizes, "wall_s") * bytes_ratio,
            "memory_per_rank_gib": {"the whole set": N * image_bytes / gib},
        },
        "write shards (48 ranks)": {
            "seconds": _grow(raw["write shards"], sizes, "wall_s") * bytes_ratio / GPUS,
            "memory_per_rank_gib": {"shard": N / GPUS * image_bytes / gib},
        },
        "victims (90 epochs)": {
            "seconds": VICTIM_EPOCHS * N * flops["resnet18_train"] / cluster,
            "one_epoch_seconds": N * flops["resnet18_train"] / cluster,
        },
    }
    # Every rank holds the whole uint8 training set: the clean one (memory-mapped from the
    # dataset cache) and two perturbed copies (protected, random control), data/placement.py.
    dataset_gib = N * image_bytes / gib
    held = {"uint8 training set": dataset_gib, "copies held per rank": TRAIN_COPIES}
    # The sharded path on the ranks' devices: what a 48-GPU job runs.
    chosen = ("features", "kmeans sharded (48 GPUs)", "generators (50 epochs)",
              "noise (every rank, all images, 1 CPU core)", "write shards (48 ranks)",
              "victims (90 epochs)")  # fmt: skip
    compute = {k: stages[k]["seconds"] for k in chosen}
    return {
        "target": {"images": N, "size": SIZE, "gpus": GPUS, "k": K, "feature_dim": FEATURE_DIM},
        "published": PUBLISHED | {"per_gpu_img_s": per_gpu_img_s},
        "flops": flops,
        "flop_rate_per_gpu": rate,
        "stages": stages,
        "held_by_every_rank_gib": held,
        "bottleneck": max(compute, key=compute.__getitem__),
    }


def main() -> None:
    """``python -m benchmarks.projection RESULT.json``: the projection again from the raw
    measurements of a run (item 8), written next to it as ``RESULT-projection.json``."""
    import json
    import sys
    from pathlib import Path

    path = Path(sys.argv[1])
    measured = json.loads(path.read_text())["raw"]["8"]
    out = project(measured["stages"], tuple(measured["sizes"]))
    target = path.with_name(path.stem + "-projection.json")
    target.write_text(json.dumps(out, indent=2))
    for stage, figures in out["stages"].items():
        print(f"{stage}: {figures['seconds'] / 3600:.2f} h")
    print(f"bottleneck: {out['bottleneck']}; written to {target}")


if __name__ == "__main__":
    main()
