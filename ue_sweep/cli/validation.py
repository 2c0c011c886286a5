"""A job's config checked before any compute: the schema's rules and what the registries know.

The layer between the schema and the stages. :mod:`ue_sweep.config` declares each field's rule
and names the choices a registry owns (``Registry("datasets")``); the registries (datasets,
MedMNIST flags and sizes, architectures, logger backends) import the schema for their types and
own their names and their checks (dataset files, surrogate weights, the 3-channel rule). This
module imports both and asks each registry, so the import graph points one way: the command
line and preflight call :func:`to_root_config`, which sits above everything it checks.

Config groups whose entries are per-name dataclasses found by a registry (``evals``: one
dataclass per ``ue_sweep/evals/<name>.py``) plug in through :data:`GROUPS`; see :class:`Group`.
"""

from __future__ import annotations

import difflib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import MISSING, dataclass, fields, is_dataclass
from types import ModuleType
from typing import Any

from hydra.core.config_store import ConfigStore
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

import ue_sweep.evals.registry as evals
from ue_sweep import config
from ue_sweep.config import RootConfig, TrainerConfig, TrainingConfig
from ue_sweep.data.registry import check_dataset, dataset_names
from ue_sweep.errors import ConfigError
from ue_sweep.models.archs import arch_names
from ue_sweep.runtime.loggers import backend_names

# ``config.Registry(name)`` -> the registry's accepted names, asked only for a field that is set
# (MedMNIST's flags import medmnist, which takes seconds).
REGISTRIES: dict[str, Callable[[], Sequence[str | int]]] = {
    "datasets": dataset_names,
    "medmnist_flags": lambda: _medmnist().flags(),
    "medmnist_sizes": lambda: _medmnist().sizes(),
    "archs": arch_names,
    "loggers": backend_names,
}


def _medmnist() -> ModuleType:
    from ue_sweep.data import medmnist2d  # imports medmnist (and torch): only when asked

    return medmnist2d


@dataclass(frozen=True)
class Group:
    """A config group of per-name dataclasses that a registry discovers (the ``evals`` hook).

    Register it under its ``RootConfig`` field, a ``dict[str, Any]`` of name -> entry, e.g. in
    this module: ``GROUPS["evals"] = Group(schemas=ue_sweep.evals.registry.schemas)``.
    Then :func:`to_root_config` turns each entry into its dataclass (types checked by OmegaConf),
    :func:`validate` checks each entry's declared rules under ``<field>.<name>.`` and then
    ``check``, and :func:`schema_keys` lists the entries' keys for preflight's typo hints.
    The registry must import only the schema (and registries below it), never this module.
    """

    # Entry name -> its dataclass, e.g. {"victims": VictimsEval, "defenses": DefensesEval}.
    schemas: Callable[[], Mapping[str, type]]
    # Rules an entry has with the rest of the job: (key of the entry, entry, job config).
    check: Callable[[str, Any, RootConfig], None] | None = None


# RootConfig field -> its Group.
GROUPS: dict[str, Group] = {"evals": Group(schemas=evals.schemas, check=evals.check)}


def register_schemas() -> None:
    """Put the root schema and each group's dataclasses (``schema/evals/<name>``) in Hydra's
    ConfigStore. A group option's YAML extends its dataclass (``conf/evals/defenses.yaml``), so
    the composed entries are typed and an override of one of their keys is checked while
    composing, like any other key of the schema."""
    config.register_schema()
    store = ConfigStore.instance()
    for field_name, group in GROUPS.items():
        for name, schema in group.schemas().items():
            store.store(group=f"schema/{field_name}", name=name, node=schema)


def registry_names(name: str) -> Sequence[str | int]:
    """The names the registry ``name`` accepts (``config.Registry(name)`` in the schema)."""
    return REGISTRIES[name]()


def schema_keys() -> dict[str, str]:
    """Every dotted key of the schema -> its annotated type, the plugged-in groups' included."""
    keys = dict(config.dataclass_keys())
    for field_name, group in GROUPS.items():
        keys[field_name] = "Group"  # not an open dict: only its entries' keys are known
        for name, schema in group.schemas().items():
            keys[f"{field_name}.{name}"] = schema.__name__
            keys |= config.dataclass_keys(schema, f"{field_name}.{name}.")
    return keys


def group_entries(field_name: str, entries: Mapping[str, Any]) -> dict[str, Any]:
    """The entries of the group at ``field_name`` as their registered dataclasses."""
    schemas = GROUPS[field_name].schemas()
    built = {}
    for name, entry in entries.items():
        if name not in schemas:
            raise ConfigError(field_name, name, "one of: " + ", ".join(sorted(schemas)))
        if isinstance(entry, schemas[name]):
            built[name] = entry
            continue
        # OmegaConf merges a node typed with the same dataclass key by key, extra keys included
        # (`+evals.victims.control=...` adds one at compose time): look for them first.
        unknown = _unknown_key(schemas[name], entry or {})
        if unknown is not None:
            schema, key, value = unknown
            raise _entry_error(f"{field_name}.{name}", schema, key, value=value)
        try:
            merged = OmegaConf.merge(OmegaConf.structured(schemas[name]), entry or {})
        except OmegaConfBaseException as err:
            key = str(getattr(err, "full_key", "") or getattr(err, "key", "") or "")
            raise _entry_error(f"{field_name}.{name}", schemas[name], key, err) from None
        built[name] = OmegaConf.to_object(merged)
    return built


def _unknown_key(
    schema: type, node: Mapping[str, Any], prefix: str = ""
) -> tuple[type, str] | None:
    """The first key of ``node`` (nested ones included) that ``schema`` lacks, with the
    dataclass it is missing from."""
    known = {f.name: f for f in fields(schema)}
    for key, value in node.items():
        if key not in known:
            return schema, f"{prefix}{key}", value
        factory = known[key].default_factory
        child = factory() if factory is not MISSING else None
        if isinstance(value, Mapping) and is_dataclass(child):
            found = _unknown_key(type(child), value, f"{prefix}{key}.")
            if found is not None:
                return found
    return None


def _entry_error(
    prefix: str,
    schema: type,
    key: str,
    err: OmegaConfBaseException | None = None,
    value: Any = None,
) -> ConfigError:
    """An entry's unknown key or wrong type, named as a command-line key, with the nearest."""
    known = [f.name for f in fields(schema)]
    parent, _, last = f"{prefix}.{key}".rpartition(".")
    nearest = difflib.get_close_matches(last, known, n=1, cutoff=0.6)
    hint = f"; did you mean {nearest[0]}?" if nearest else ""
    if last not in known:
        return ConfigError(
            f"{prefix}.{key}", value, f"a known key (keys of {parent}: {', '.join(known)}){hint}"
        )
    return ConfigError(
        f"{prefix}.{key}", getattr(err, "value", None), f"a value of its type {hint}"
    )


def _check_groups(cfg: RootConfig) -> None:
    for field_name, group in GROUPS.items():
        for name, entry in getattr(cfg, field_name).items():
            config.check_fields(entry, registry_names, f"{field_name}.{name}.")
            if group.check is not None:
                group.check(f"{field_name}.{name}", entry, cfg)


def check_host(cfg: RootConfig) -> None:
    """Rules about the machine that runs the job: its devices, the data and weight files."""
    _check_accelerator(cfg.trainer, (("victim", cfg.victim), ("surrogate.fit", cfg.surrogate.fit)))
    check_files(cfg)


def check_files(cfg: RootConfig) -> None:
    """The job's dataset files and surrogate weights (or UC source) are there and readable.

    Separate from the device checks: a login node sees the shared file system the compute nodes
    read, so a sweep is checked here before any job is queued.
    """
    # Both read files with torch: imported here, not on the command line's way to a refusal.
    from ue_sweep.models.weights import check_surrogate_weights
    from ue_sweep.uc.source import check_source

    check_dataset(cfg.dataset, cfg.paths, cfg.surrogate)
    if cfg.uc.source is None:
        check_surrogate_weights(cfg.surrogate)
    else:
        check_source(cfg.uc.source)


def _check_accelerator(
    trainer: TrainerConfig, recipes: Sequence[tuple[str, TrainingConfig]]
) -> None:
    import torch

    has_cuda = torch.cuda.is_available()
    if trainer.accelerator == "cuda" and not has_cuda:
        raise ConfigError("trainer.accelerator", "cuda", "auto or cpu: no CUDA device is visible")
    uses_cuda = trainer.accelerator == "cuda" or (trainer.accelerator == "auto" and has_cuda)
    if trainer.backend == "nccl" and not uses_cuda:
        raise ConfigError("trainer.backend", "nccl", "auto or gloo when training on the CPU")
    for key, recipe in recipes:
        if recipe.sync_batchnorm and not uses_cuda:
            raise ConfigError(
                f"{key}.sync_batchnorm", True, "null or false when training on the CPU"
            )


def check_cross_fields(cfg: RootConfig) -> None:
    """The rules between fields that the schema alone decides (no registry, no host)."""
    k = cfg.clusters.k
    if cfg.clusters.target == "cyclic" and not cfg.clusters.offset < k:
        raise ConfigError("clusters.offset", cfg.clusters.offset, f"1 <= offset < clusters.k={k}")
    for name, stage in (("generator", cfg.generator), ("victim", cfg.victim)):
        if stage.min_lr > stage.lr:
            raise ConfigError(f"{name}.min_lr", stage.min_lr, f"<= {name}.lr={stage.lr:g}")
    factor = 2**cfg.generator.n_downsampling
    if cfg.dataset.image_size < 2 * factor:
        raise ConfigError(
            "generator.n_downsampling",
            cfg.generator.n_downsampling,
            f"2**n_downsampling <= dataset.image_size/2 = {cfg.dataset.image_size // 2}",
        )
    if cfg.generator.kind == "direct" and cfg.generator.output != "tanh":
        raise ConfigError(
            "generator.output",
            cfg.generator.output,
            "tanh with generator.kind=direct (its patterns are eps * tanh of free parameters)",
        )
    if cfg.surrogate.fit_on != "labels" and cfg.surrogate.weights != "fit":
        raise ConfigError(
            "surrogate.fit_on",
            cfg.surrogate.fit_on,
            f"labels (the default) with surrogate.weights={cfg.surrogate.weights}: "
            "it chooses what a fitted surrogate is fitted on",
        )
    if cfg.surrogate.weights == "path" and not cfg.surrogate.checkpoint:
        raise ConfigError(
            "surrogate.checkpoint", None, "a checkpoint file when surrogate.weights=path"
        )
    if cfg.surrogate.weights != "path" and cfg.surrogate.checkpoint:
        # It would be silently unused: the user meant to load it, or it is a leftover.
        raise ConfigError(
            "surrogate.checkpoint",
            cfg.surrogate.checkpoint,
            f"unset with surrogate.weights={cfg.surrogate.weights} "
            "(add surrogate.weights=path to load a checkpoint)",
        )


def validate(cfg: RootConfig, on_this_host: bool = True) -> RootConfig:
    """Check every field's declared rule, then the rules that span fields. Raises ConfigError.

    ``on_this_host=False`` leaves out :func:`check_host`, for a job that a scheduler will run
    on another machine (a login node has no GPU and may not see the compute nodes' files).
    """
    config.check_fields(cfg, registry_names)
    check_cross_fields(cfg)
    check_dataset(cfg.dataset, cfg.paths, cfg.surrogate, files=False)
    _check_groups(cfg)
    if on_this_host:
        check_host(cfg)
    return cfg


def to_root_config(cfg: DictConfig | RootConfig, on_this_host: bool = True) -> RootConfig:
    """Turn a composed Hydra config into a validated :class:`RootConfig` instance."""
    if isinstance(cfg, RootConfig):
        return validate(cfg, on_this_host)
    # A config Hydra composed from `ue_sweep_schema` is typed already; merging the schema again
    # would cost a tenth of a second on every command line.
    typed = OmegaConf.get_type(cfg) is RootConfig
    merged = cfg if typed else OmegaConf.merge(OmegaConf.structured(RootConfig), cfg)
    # Typed from the composed nodes: converting the root first would drop unknown keys silently.
    groups = {name: group_entries(name, dict(merged[name].items())) for name in GROUPS}
    root = OmegaConf.to_object(merged)
    for field_name, entries in groups.items():
        setattr(root, field_name, entries)
    return validate(root, on_this_host)
