"""Structured-config schema of a ue-sweep job, and the rules it declares.

Hydra composes the YAML files in ``conf/`` on top of :class:`RootConfig` (registered in the
ConfigStore as ``ue_sweep_schema``), so types are checked while composing. Ranges, choices and
cross-field rules are declared next to each field with :func:`setting` and checked by
:func:`ue_sweep.cli.validation.validate` before any compute, each failure as one line naming
the key, the value and what is accepted.

This module is the bottom of the layout: it imports nothing of ue_sweep but its errors. Choices
that a registry owns (dataset names, architectures, logger backends) are named here by
:class:`Registry` and resolved by :mod:`ue_sweep.cli.validation`, which asks the registry; the
registries import this schema for their types.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Sequence
from dataclasses import MISSING, dataclass, field, fields, is_dataclass
from functools import cache
from typing import Any

from hydra.core.config_store import ConfigStore

from ue_sweep.errors import ConfigError

SCHEMA_NAME = "ue_sweep_schema"
# Largest batch a job accepts: batches index 64-bit tensors and Python slices, and no dataset
# comes near it.
MAX_BATCH = 2**31 - 1
# Control noises of UC's cluster structure and energy (ue_sweep/uc/controls.py).
CONTROLS = ("uniform", "sign", "untrained")


@dataclass(frozen=True)
class Registry:
    """Choices owned by the registry ``name`` (a key of ``ue_sweep.cli.validation.REGISTRIES``).

    The schema names them instead of importing the registry, which imports the schema.
    """

    name: str


Choices = Sequence[str | int] | Registry
# Registry name -> the names it accepts; given by the validation layer to :func:`check_fields`.
Names = Callable[[str], Sequence[str | int]]


def setting(
    default: Any,
    *,
    ge: float | None = None,
    gt: float | None = None,
    le: float | None = None,
    lt: float | None = None,
    one_of: Choices | None = None,
) -> Any:
    """A dataclass field whose bounds or choices :func:`validate` enforces (a list field: on each
    element)."""
    rules = {"ge": ge, "gt": gt, "le": le, "lt": lt, "one_of": one_of}
    metadata = {k: v for k, v in rules.items() if v is not None}
    if isinstance(default, list):  # a list default is built afresh for every instance
        return field(default_factory=lambda: list(default), metadata=metadata)
    return field(default=default, metadata=metadata)


# --------------------------------------------------------------------------------------------
# Config groups
# --------------------------------------------------------------------------------------------


@dataclass
class AugmentConfig:
    """Tensor-side augmentation used whenever a model trains on the images."""

    crop_padding: int = setting(4, ge=0)
    hflip: bool = True


@dataclass
class ImbalanceConfig:
    """A seeded long-tailed subset of the training split (data/imbalance.py); test set as released.

    ``exponential``: class c keeps int(n_max * ratio^(-c/(C-1))) images (LDAM-DRW's profile);
    ``step``: the first C//2 classes keep n_max, the others int(n_max / ratio). n_max is the
    largest count every class can supply under the profile (the class size on a balanced set).
    """

    profile: str = setting("none", one_of=("none", "exponential", "step"))
    # rho: largest / smallest class size.
    ratio: float = setting(10.0, ge=1.0)


@dataclass
class DatasetConfig:
    name: str = setting("digits", one_of=Registry("datasets"))
    # Directory of the dataset's files and preprocessed cache; unset: <paths.data_dir>/<name>.
    root: str | None = None
    # Fetch missing files with the dataset's own reader: only where there is internet access.
    download: bool = False
    # MedMNIST only: the 2D flag and which released image size (npz file) to read.
    flag: str | None = setting(None, one_of=Registry("medmnist_flags"))
    size: int | None = setting(None, one_of=Registry("medmnist_sizes"))
    # Training resolution; images are resized (shorter side, then centre crop) once and cached.
    image_size: int = setting(32, ge=8, le=1024)
    # `rgb` repeats a gray channel three times, for surrogates with ImageNet weights.
    channels: str = setting("native", one_of=("native", "rgb"))
    # The official split that serves as the test set (`val`: as the public HPC code on MedMNIST).
    eval_split: str = setting("test", one_of=("test", "val"))
    # Where the images live during training: on the training device (batches gathered there) or
    # in host memory (streamed by DataLoader workers); `auto` keeps them on a GPU when the images
    # and the job's two extra training-set copies take at most `device_fraction` of its memory.
    placement: str = setting("auto", one_of=("auto", "device", "host"))
    device_fraction: float = setting(0.25, gt=0.0, le=1.0)
    # DataLoader workers per rank: decoding images into the cache, and streaming host-placed data.
    workers: int = setting(4, ge=0)
    # Hold-out fraction for datasets without an official test split (digits, flowers).
    test_fraction: float = setting(0.25, gt=0.0, lt=1.0)
    split_seed: int = 0
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    # Long-tailed training subset, drawn with `split_seed` (a property of the dataset).
    imbalance: ImbalanceConfig = field(default_factory=ImbalanceConfig)


@dataclass
class BatchSizeConfig:
    """The sweep axis: per-device batch of the generator stage and how its learning rate scales."""

    per_device: int = setting(64, ge=1, le=MAX_BATCH)
    lr_scaling: str = setting("none", one_of=("none", "linear", "sqrt"))
    # Global batch at which `generator.lr` applies unscaled.
    reference: int = setting(256, ge=1, le=MAX_BATCH)

    def lr_factor(self, global_batch: int) -> float:
        ratio = global_batch / self.reference
        return {"none": 1.0, "linear": ratio, "sqrt": math.sqrt(ratio)}[self.lr_scaling]


@dataclass
class TrainingConfig:
    """SGD + per-step cosine schedule for a classifier (victims, fitted surrogates)."""

    epochs: int = setting(10, ge=1)
    # Global batch, split evenly over ranks, so a victim recipe does not change with the GPU count.
    batch_size: int = setting(128, ge=1, le=MAX_BATCH)
    lr: float = setting(0.05, gt=0.0)
    momentum: float = setting(0.9, ge=0.0, lt=1.0)
    weight_decay: float = setting(5e-4, ge=0.0)
    min_lr: float = setting(1e-6, ge=0.0)
    # Epochs between clean-test evaluations; the last `average_last` epochs are always evaluated.
    eval_every: int = setting(1, ge=1)
    # The headline accuracy is the mean over the last n epochs' test accuracies (one epoch's
    # number swings by many points on protected data); the final epoch's is recorded too.
    average_last: int = setting(3, ge=1)
    # Batch norm with statistics over all ranks (CUDA only). null: on when the per-device batch
    # is below 32 on more than one GPU, where per-device statistics of a few images are noise.
    sync_batchnorm: bool | None = None


@dataclass
class ModelSpec:
    arch: str = setting("small_cnn", one_of=Registry("archs"))
    # Channel width of `small_cnn` (ignored by the ResNets).
    width: int = setting(32, ge=4)
    # ResNet stem: `cifar` (3x3 conv, no max-pool) for small images, `imagenet` for large ones.
    stem: str = setting("auto", one_of=("auto", "cifar", "imagenet"))


@dataclass
class SurrogateConfig(ModelSpec):
    weights: str = setting("fit", one_of=("pretrained", "none", "fit", "path"))
    # What `weights: fit` fits on (uc/surrogate_fit.py): `labels`, the victim's own labels;
    # `half_classes`, only the images and labels of the first half of the classes; `rotation`,
    # no labels at all (self-supervised: which of 4 rotations an image was turned by).
    fit_on: str = setting("labels", one_of=("labels", "half_classes", "rotation"))
    checkpoint: str | None = None
    normalize: str = setting("none", one_of=("none", "imagenet"))
    # Resize images to this size inside the surrogate (e.g. 224 for ImageNet weights).
    input_size: int | None = setting(None, ge=8)
    fit: TrainingConfig = field(default_factory=lambda: TrainingConfig(epochs=3))


@dataclass
class ClustersConfig:
    k: int = setting(10, ge=2)
    n_init: int = setting(10, ge=1)
    max_iter: int = setting(300, ge=1)
    # `sklearn`: scikit-learn's KMeans on rank 0 over the gathered features (the reference);
    # `sharded`: k-means over the ranks (uc/kmeans.py), no rank holds all features; `auto`:
    # sharded above `sharded_above` training images, scikit-learn up to it.
    backend: str = setting("auto", one_of=("auto", "sklearn", "sharded"))
    sharded_above: int = setting(20_000, ge=0)
    target: str = setting("cyclic", one_of=("cyclic", "derangement"))
    # Cyclic shift: cluster i is pushed toward the center of cluster (i + offset) mod k.
    offset: int = setting(1, ge=1)


@dataclass
class GeneratorConfig:
    # `bank`: UC's generator networks (models/generators.py); `direct`: the k noise patterns
    # themselves are the parameters, eps * tanh of a free tensor (models/direct.py).
    kind: str = setting("bank", one_of=("bank", "direct"))
    eps: float = setting(16 / 255, gt=0.0, le=1.0)
    # Softmax temperature T of UC's loss, KL(softmax(c / T) || softmax(f / T)); 1 is UC's.
    temperature: float = setting(1.0, gt=0.0)
    # The network UC's loss is computed with: `surrogate`, the frozen surrogate whose features
    # the clusters live in (UC's method); `random_train`, a randomly initialised network of the
    # surrogate's architecture in train mode (batch statistics), as the public HPC code ran
    # because its checkpoint never loaded (experiment=ue_hpc_code).
    against: str = setting("surrogate", one_of=("surrogate", "random_train"))
    scope: str = setting("all", one_of=("all", "cluster"))
    epochs: int = setting(50, ge=1)
    lr: float = setting(1e-4, gt=0.0)
    weight_decay: float = setting(5e-4, ge=0.0)
    min_lr: float = setting(1e-6, ge=0.0)
    ngf: int = setting(64, ge=1)
    n_blocks: int = setting(6, ge=0)
    n_downsampling: int = setting(2, ge=0, le=4)
    # Most protected images per surrogate forward pass; bounds memory, not the batch semantics.
    chunk_size: int = setting(4096, ge=1)
    # How the generator's tanh output is bounded by eps (models/generators.py): `reference`
    # clamps tanh as the UC code (saturated pixels pass no gradient), `tanh` is eps * tanh,
    # `ste` clamps with a straight-through gradient.
    output: str = setting("reference", one_of=("reference", "tanh", "ste"))
    # `after_augment`: noise added to augmented images (the UC code); `before_augment`: to the
    # images before the augmentation, as a victim meets the published protected images.
    noise_order: str = setting("after_augment", one_of=("after_augment", "before_augment"))
    # Training images (a fixed, seeded subset) on which every epoch measures the target hit rate
    # of the protected images as published; 0 measures none.
    monitor_images: int = setting(4096, ge=0)


@dataclass
class VictimConfig(ModelSpec, TrainingConfig):
    """The model and recipe of every victim an evaluation trains from scratch."""


@dataclass
class UCConfig:
    # Evaluate an existing protection instead of computing one: a job directory (its
    # noise.pt), a noise.pt, or a protected_train.pt (uc/source.py).
    source: str | None = None


@dataclass
class TrainerConfig:
    # Local processes to spawn when no launcher (torchrun, SLURM, LSF) has started the ranks.
    devices: int = setting(1, ge=1)
    accelerator: str = setting("auto", one_of=("auto", "cpu", "cuda"))
    backend: str = setting("auto", one_of=("auto", "gloo", "nccl"))
    # Process-group rendezvous and collective timeout: a dead rank fails the job after this.
    timeout_s: float = setting(600.0, gt=0.0)
    precision: str = setting("fp32", one_of=("fp32", "bf16"))
    # CPU threads per process; 0 splits the machine's cores evenly over local ranks.
    threads: int = setting(0, ge=0)
    progress: str = setting("auto", one_of=("auto", "bar", "log", "none"))


@dataclass
class LoggerConfig:
    """Experiment tracking of rank 0 (`logger=none | wandb`); never holds credentials."""

    backend: str = setting("none", one_of=Registry("loggers"))
    project: str = "ue-sweep"
    entity: str | None = None
    # W&B run group; null: named after the sweep directory (the run directory of a single run).
    group: str | None = None
    # Run name; null: the job's overrides (`dataset=digits,batch_size=256`).
    name: str | None = None
    tags: list[str] = field(default_factory=list)
    # auto: $WANDB_MODE if set, else online when an API key is configured, else offline.
    mode: str = setting("auto", one_of=("auto", "online", "offline", "disabled"))
    # W&B files; null: $WANDB_DIR if set, else the job directory.
    dir: str | None = None
    # Bounds on what W&B may cost a job: wandb.init, and uploads at the end of each run.
    init_timeout_s: float = setting(30.0, gt=0.0)
    finish_timeout_s: float = setting(60.0, gt=0.0)


@dataclass
class PathsConfig:
    data_dir: str = "data"
    # Finished stages shared by jobs (artifacts.py); null: `artifacts/` next to the job's
    # directory, so the jobs of a sweep share one store.
    artifact_dir: str | None = None


@dataclass
class RootConfig:
    seed: int = 0
    # Also write the protected training set (uint8, as it would be published) next to the noise.
    save_protected: bool = True
    # Above this many training images the protected set is written in shards, one per rank
    # (protected_train/: uint8 .npy files and a manifest, uc/shards.py), not as one .pt file.
    protected_shards_above: int = setting(50_000, ge=0)
    dataset: DatasetConfig = field(default_factory=DatasetConfig)
    batch_size: BatchSizeConfig = field(default_factory=BatchSizeConfig)
    surrogate: SurrogateConfig = field(default_factory=SurrogateConfig)
    clusters: ClustersConfig = field(default_factory=ClustersConfig)
    generator: GeneratorConfig = field(default_factory=GeneratorConfig)
    victim: VictimConfig = field(default_factory=VictimConfig)
    uc: UCConfig = field(default_factory=UCConfig)
    # The evaluations to run, in order: `evals.<name>` is the structured config of
    # ue_sweep/evals/<name>.py (typed and checked by `validate`).
    evals: dict[str, Any] = field(default_factory=dict)
    trainer: TrainerConfig = field(default_factory=TrainerConfig)
    logger: LoggerConfig = field(default_factory=LoggerConfig)
    paths: PathsConfig = field(default_factory=PathsConfig)


def register_schema() -> None:
    ConfigStore.instance().store(name=SCHEMA_NAME, node=RootConfig)


# --------------------------------------------------------------------------------------------
# Rule checks (the registries' names and checks are asked by ue_sweep.cli.validation)
# --------------------------------------------------------------------------------------------


def _fmt(x: float) -> str:
    return str(x) if isinstance(x, int) else f"{x:g}"


def _check_field(key: str, value: Any, rules: dict[str, Any]) -> None:
    if value is None:
        return
    if "one_of" in rules:
        choices = rules["one_of"]
        choices = tuple(choices)
        if isinstance(value, list):
            if len(set(value)) != len(value) or not set(value) <= set(choices):
                accepted = ", ".join(str(c) for c in choices)
                raise ConfigError(key, value, f"a list of distinct values of: {accepted}")
            return
        if value not in choices:
            raise ConfigError(key, value, "one of: " + ", ".join(str(c) for c in choices))
    if isinstance(value, list):  # bounds hold for each element
        for element in value:
            _check_field(key, element, rules)
        return
    bounds = []
    if "gt" in rules:
        bounds.append((value > rules["gt"], f"> {_fmt(rules['gt'])}"))
    if "ge" in rules:
        bounds.append((value >= rules["ge"], f">= {_fmt(rules['ge'])}"))
    if "lt" in rules:
        bounds.append((value < rules["lt"], f"< {_fmt(rules['lt'])}"))
    if "le" in rules:
        bounds.append((value <= rules["le"], f"<= {_fmt(rules['le'])}"))
    if bounds and not all(ok for ok, _ in bounds):
        kind = "an integer" if isinstance(value, int) else "a number"
        raise ConfigError(key, value, f"{kind} " + " and ".join(text for _, text in bounds))


def _walk(node: Any, prefix: str = "") -> Iterator[tuple[str, Any, dict[str, Any]]]:
    for f in fields(node):
        value = getattr(node, f.name)
        key = f"{prefix}{f.name}"
        if is_dataclass(value):
            yield from _walk(value, key + ".")
        else:
            yield key, value, dict(f.metadata)


@cache
def dataclass_keys(node: type = RootConfig, prefix: str = "") -> dict[str, str]:
    """Every dotted key of the schema -> its annotated type (``"int"``, ``"ClustersConfig"``)."""
    keys = {}
    for f in fields(node):
        key = f"{prefix}{f.name}"
        keys[key] = f.type if isinstance(f.type, str) else getattr(f.type, "__name__", str(f.type))
        if f.default_factory is not MISSING and is_dataclass(child := f.default_factory()):
            keys |= dataclass_keys(type(child), key + ".")
    return keys


def check_fields(node: Any, names: Names, prefix: str = "") -> None:
    """Check every field's declared rule in ``node`` (a dataclass), nested ones included.

    A choice list named by :class:`Registry` is asked of ``names``, so the schema needs no
    registry.
    """
    for key, value, rules in _walk(node, prefix):
        if value is not None and isinstance(rules.get("one_of"), Registry):
            rules["one_of"] = names(rules["one_of"].name)
        _check_field(key, value, rules)
