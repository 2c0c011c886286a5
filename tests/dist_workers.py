"""Rank bodies for the distributed tests: importable, so spawned ranks can unpickle them.

``python -m tests.dist_workers collective-loop`` also runs one rank of a process group started
from the torch.distributed environment variables, for the dead-rank test.
"""

from __future__ import annotations

import os
import sys
import time

import torch

from ue_sweep.config import (
    AugmentConfig,
    BatchSizeConfig,
    ClustersConfig,
    GeneratorConfig,
    ModelSpec,
    TrainerConfig,
)
from ue_sweep.models.classifiers import FeatureClassifier, build_classifier
from ue_sweep.models.direct import DirectNoise
from ue_sweep.models.generators import GeneratorBank
from ue_sweep.runtime.distributed import runtime
from ue_sweep.runtime.env import DistEnv, env_from_launcher
from ue_sweep.runtime.progress import Progress
from ue_sweep.train.evaluate import evaluate
from ue_sweep.train.run import LabelledData, TrainingRun
from ue_sweep.uc.clustering import cluster_features
from ue_sweep.uc.features import extract_features
from ue_sweep.uc.train_generators import ClusteredImages, train_generators

CPU = TrainerConfig(accelerator="cpu", timeout_s=60)


def separable_images(n: int, k: int) -> torch.Tensor:
    """``n`` uint8 8x8 images around ``k`` well-separated prototypes, so k-means is stable."""
    g = torch.Generator().manual_seed(1)
    prototypes = torch.rand(k, 1, 8, 8, generator=g)
    images = prototypes[torch.arange(n) % k] + 0.05 * torch.randn(n, 1, 8, 8, generator=g)
    return images.clamp(0, 1).mul(255).round().to(torch.uint8)


def calibrated_surrogate(images: torch.Tensor) -> FeatureClassifier:
    """A random small CNN whose BN statistics come from ``images``, so its features vary."""
    torch.manual_seed(0)
    model = build_classifier(ModelSpec(width=4), in_channels=1, num_classes=3, image_size=8)
    for module in model.modules():
        if isinstance(module, torch.nn.BatchNorm2d):
            module.momentum = None  # cumulative average over the calibration pass
    with torch.no_grad():
        model.train()(images.float() / 255)
    return model.eval().requires_grad_(False)


def train_bank(
    env: DistEnv, out: str, per_device: int, scope: str, output: str, kind: str = "bank"
) -> None:
    """Generator training in float64, where rounding-order differences (1 vs 2 ranks) stay at
    1e-16 and cannot flip a clamp or an Adam step: the two runs must agree to ~1e-9.
    ``kind=direct`` trains the patterns themselves (models/direct.py) the same way."""
    with runtime(env, CPU) as rt:
        images = separable_images(48, 3)
        surrogate = calibrated_surrogate(images)
        features = extract_features(surrogate, images, 5, rt)
        clusters = cluster_features(features, ClustersConfig(k=3, n_init=2), 0, rt)
        torch.manual_seed(2)
        bank = (
            DirectNoise(3, 1, 8, eps=0.3, seed=2)
            if kind == "direct"
            else GeneratorBank(3, 1, 8, eps=0.3, ngf=4, n_blocks=1, n_downsampling=1, output=output)
        )
        bank, surrogate = bank.double(), surrogate.double()
        initial = {name: t.clone() for name, t in bank.state_dict().items()}
        stats = train_generators(
            bank,
            surrogate,
            ClusteredImages(images, torch.zeros(len(images), dtype=torch.long), clusters),
            GeneratorConfig(
                epochs=2,
                lr=1e-2,
                eps=0.3,
                scope=scope,
                output=output,
                kind=kind,
                noise_order="before_augment",
                monitor_images=0,
            ),
            BatchSizeConfig(per_device=per_device),
            AugmentConfig(crop_padding=1, hflip=True),
            TrainingRun(rt, seed=3, progress=Progress("none"), name="generators"),
        )
        if rt.is_main:
            torch.save(
                {
                    "bank": bank.state_dict(),
                    "initial": initial,
                    "ids": clusters.ids.cpu(),
                    "loss": stats.loss_history,
                    "global_batch": stats.global_batch,
                    "gradient": stats.gradient,
                },
                out,
            )


def evaluate_and_gather(env: DistEnv, out: str) -> None:
    with runtime(env, CPU) as rt:
        torch.manual_seed(0)
        model = build_classifier(ModelSpec(width=4), in_channels=1, num_classes=3, image_size=8)
        g = torch.Generator().manual_seed(5)
        images = (torch.rand(101, 1, 8, 8, generator=g) * 255).to(torch.uint8)
        labels = torch.randint(0, 3, (101,), generator=g)
        result = evaluate(model, images, labels, 3, batch_size=8, rt=rt)
        gathered = rt.all_gather_rows(torch.full((rt.rank + 1, 2), float(rt.rank)))
        if rt.is_main:
            torch.save(
                {
                    "correct": result.per_class_correct,
                    "total": result.per_class_total,
                    "gathered": gathered.cpu(),
                },
                out,
            )


def leave_late(env: DistEnv, out: str) -> None:
    """Rank 0 works on for a second after the last collective; each rank writes when its work
    ended and when it had left the process group to ``out.<rank>``."""
    with runtime(env, CPU) as rt:
        rt.barrier()
        if rt.rank == 0:
            time.sleep(1.0)
        worked = time.time()
    left = time.time()
    torch.save({"worked": worked, "left": left}, f"{out}.{env.rank}")


def collective_loop() -> None:
    env = env_from_launcher()
    assert env is not None
    trainer = TrainerConfig(accelerator="cpu", timeout_s=float(os.environ["UE_TEST_TIMEOUT"]))
    with runtime(env, trainer) as rt:
        print("ready", flush=True)
        while True:
            rt.all_reduce_sum(torch.ones(1))
            time.sleep(0.01)


if __name__ == "__main__":
    if sys.argv[1:] == ["collective-loop"]:
        collective_loop()


def epic_selection(env: DistEnv, out: str) -> None:
    """Two EPIC selections by a random CNN on 3 imbalanced classes, its proxies in chunks spread
    over the ranks: the medoid weights (cluster sizes) must not depend on the world size."""
    from ue_sweep.evals.defenses.epic import Epic, EpicConfig

    with runtime(env, TrainerConfig(accelerator="cpu", timeout_s=60, threads=1)) as rt:
        g = torch.Generator().manual_seed(4)
        images = (torch.rand(70, 1, 8, 8, generator=g) * 255).to(torch.uint8)
        labels = torch.cat([torch.zeros(40), torch.ones(22), torch.full((8,), 2)]).long()
        torch.manual_seed(0)
        model = build_classifier(ModelSpec(width=4), in_channels=1, num_classes=3, image_size=8)
        epic = Epic(EpicConfig(subset_fraction=0.3, start_epoch=0, interval=1, train_on="medoids"))
        epic.proxy_batch = 16  # several chunks, spread over the ranks
        masks = []
        for epoch in range(2):
            epic.begin_epoch(epoch, model, images, labels, rt, select=True)
            masks.append(epic.weights.cpu())
            with torch.no_grad():  # a different model for the second selection
                for p in model.parameters():
                    p.mul_(1.5)
        if rt.is_main:
            torch.save({"weights": masks, "summary": epic.summary()}, out)


def sal_tables(env: DistEnv, out: str) -> None:
    """SAL of every layer of a tiny float64 CNN after two "epochs" (its initial weights and a
    perturbed copy), the pairs dealt over the ranks; one thread per rank, as on one rank."""
    from ue_sweep.evals.learnability.search import SearchSettings
    from ue_sweep.evals.learnability.table import SalRun, layer_names, sal_table

    with runtime(env, TrainerConfig(accelerator="cpu", timeout_s=60, threads=1)) as rt:
        torch.manual_seed(0)
        model = build_classifier(ModelSpec(width=4), in_channels=1, num_classes=3, image_size=8)
        model = model.double()
        first = {k: v.clone() for k, v in model.state_dict().items()}
        second = {
            k: v + 0.1 * torch.randn_like(v) if v.is_floating_point() else v.clone()
            for k, v in first.items()
        }
        images = separable_images(24, 3).double() / 255
        labels = torch.arange(24) % 3
        table = sal_table(
            rt,
            model,
            {0: first, 3: second},
            images,
            labels,
            layer_names(model),
            SearchSettings(eps=0.05, lr=0.1, steps=2, batch_size=8),
            SalRun(seed=7),
        )
        if rt.is_main:
            torch.save(table, out)


def train_private(env: DistEnv, out: str, epsilon: float) -> None:
    """A DP-SGD victim in float64 on 2 classes: Poisson batches drawn over the whole set and
    rank 0's noise make 1 and 2 ranks train the same model, to rounding."""
    from ue_sweep.config import TrainingConfig
    from ue_sweep.evals.privacy.training import PrivacySpec, train_private_classifier

    with runtime(env, TrainerConfig(accelerator="cpu", timeout_s=60, threads=1)) as rt:
        images = separable_images(40, 2)
        labels = torch.arange(40) % 2
        torch.manual_seed(0)
        model = build_classifier(
            ModelSpec(width=4), in_channels=1, num_classes=2, image_size=8, dp_safe=True
        ).double()
        result, privacy = train_private_classifier(
            model,
            LabelledData(images, labels, images, labels, 2),
            TrainingConfig(epochs=2, batch_size=10, lr=0.1, weight_decay=0.0, average_last=1),
            PrivacySpec(epsilon, delta=1e-3, max_grad_norm=0.5, physical_batch=4),
            AugmentConfig(crop_padding=1, hflip=True),
            TrainingRun(rt, seed=3, progress=Progress("none"), name="dp"),
        )
        if rt.is_main:
            torch.save(
                {"state": model.state_dict(), "privacy": privacy, "result": result.as_dict()},
                out,
            )
