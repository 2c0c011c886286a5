"""Check a command line before Hydra creates or writes anything, in one line per problem.

Hydra composes a job's config only after it has created the job directory and written
``.hydra/`` into it, and it reports its own errors over many lines with exit status 1. This
composes every job of the command line first, the way Hydra will, and raises one
:class:`UserError` (exit 2) for a problem: an override key outside the schema (``+`` or not, with
the nearest key), an unknown group option (with the options), a value of the wrong type or one
that does not resolve, any value :func:`to_root_config` refuses, a dataset or weights file that is
missing or unreadable, a job directory that cannot be created, or one that holds a completed job
of another configuration (never overwritten). In a multirun every job is checked and the error
holds one line per bad job, so a broken grid is refused whole before any job is queued.
"""

from __future__ import annotations

import copy
import difflib
import json
import os
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from hydra import initialize_config_module
from hydra._internal.config_loader_impl import ConfigLoaderImpl
from hydra._internal.utils import get_args_parser
from hydra.core.global_hydra import GlobalHydra
from hydra.core.hydra_config import HydraConfig
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.core.override_parser.types import Override, QuotedString
from hydra.errors import HydraException
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf, open_dict, read_write
from omegaconf.errors import OmegaConfBaseException

from ue_sweep.cli.validation import check_files, schema_keys, to_root_config
from ue_sweep.errors import ConfigError, UserError
from ue_sweep.runtime.env import env_from_launcher
from ue_sweep.runtime.tracking import RESULT_FILE
from ue_sweep.store.checkpoint import fingerprint
from ue_sweep.store.sweep import (
    SWEEP_NAME_ENV,
    artifact_dir,
    check_sweep_name,
    grid_overrides,
    plain_override,
)

# Hydra flags that print something instead of running a job.
_NOT_A_RUN = ("help", "hydra_help", "cfg", "info", "shell_completion")
# Launchers whose jobs run on this machine (the others submit them to a scheduler).
_IN_PROCESS = ("BasicLauncher", ".InlineLauncher")
# Launcher settings a single run (no launcher) would silently ignore.
_SWEEP_ONLY = ("hydra.launcher.check_only", "hydra.launcher.wait")
_RUN_HERE = (*_IN_PROCESS, ".LocalLauncher")
_TYPE_WORDS = {"int": "an integer", "float": "a number", "bool": "true or false", "str": "a string"}


def check_command_line(argv: Sequence[str]) -> None:
    """Raise :class:`UserError` if any job of ``ue-sweep ARGV`` would be refused or do harm."""
    args = get_args_parser().parse_args(list(argv))
    if any(getattr(args, flag) for flag in _NOT_A_RUN) or args.config_name or args.config_dir:
        return
    overrides = list(args.overrides)
    try:
        parsed = OverridesParser.create().parse_overrides(overrides)
    except HydraException as err:
        raise UserError(f"config error: {_one_line(err)}") from None
    with initialize_config_module("ue_sweep.conf", version_base="1.3"):
        loader = GlobalHydra.instance().config_loader()
        assert isinstance(loader, ConfigLoaderImpl)
        for override in parsed:
            _check_override(override, loader)
        sweep_only = [o.key_or_group for o in parsed if o.key_or_group in _SWEEP_ONLY]
        master, mode = _compose_as_hydra_runs(loader, overrides, args.multirun, sweep_only)
        if mode == RunMode.MULTIRUN and SWEEP_NAME_ENV in os.environ:
            check_sweep_name(os.environ[SWEEP_NAME_ENV])
        if mode == RunMode.RUN:
            _check_job(master, "run", tasks=1, here=True)
            return
        launcher = master.hydra.get("launcher") or {}
        tasks = int(launcher.get("nodes", 1)) * int(launcher.get("tasks_per_node", 1))
        target = str(launcher.get("_target_", ""))
        here = target.endswith(_RUN_HERE)
        if not launcher.get("wait", True) and target.endswith(_IN_PROCESS):
            raise UserError(
                "hydra.launcher.wait=false needs a launcher that submits the jobs (local, slurm, "
                "slurm_gpu, frontier, perlmutter, lsf, jsm, summit): the basic launcher runs them "
                "in this process"
            )
        refused: dict[str, list[tuple[int, Sequence[str]]]] = {}
        for num, job in enumerate(grid_overrides(master.hydra)):
            problem = _check_sweep_job(loader, master, num, job, tasks, here)
            if problem is not None:
                refused.setdefault(problem, []).append((num, job))
    if refused:
        raise UserError("\n".join(_refusal_lines(refused)))


def _check_sweep_job(
    loader: ConfigLoaderImpl,
    master: DictConfig,
    num: int,
    job: Sequence[str],
    tasks: int,
    here: bool,
) -> str | None:
    """Why job ``num`` of a multirun would be refused, or None."""
    try:
        cfg = compose_or_refuse(lambda: loader.load_sweep_config(master, list(job)))
        with open_dict(cfg):
            cfg.hydra.job.num = num
        _check_job(cfg, "sweep", tasks, here)
    except UserError as err:
        return str(err)
    return None


def _refusal_lines(refused: dict[str, list[tuple[int, Sequence[str]]]]) -> list[str]:
    """One line per cause: ``job #N (overrides): message`` for one job, or the numbers of the
    jobs that share it (a missing dataset blocks every job of the grid that uses it)."""
    lines = []
    for problem, jobs in refused.items():
        if len(jobs) == 1:
            num, job = jobs[0]
            lines.append(f"job #{num} ({' '.join(plain_override(o) for o in job)}): {problem}")
        else:
            nums = ", ".join(f"#{num}" for num, _ in jobs)
            lines.append(f"{len(jobs)} jobs ({nums}): {problem}")
    return lines


def _one_line(err: BaseException) -> str:
    """Hydra's and OmegaConf's messages without their hint and context lines."""
    noise = ("full_key:", "object_type=", "reference_type=", "Set the environment", "provider=")
    lines = [line.strip() for line in str(err).splitlines()]
    return "; ".join(line for line in lines if line and not line.startswith(noise))


def _expected(key: str) -> str:
    """What the schema accepts at ``key``, in words."""
    kind = schema_keys().get(key, "")
    word = next((part for part in kind.split(" | ") if part != "None"), kind)
    return _TYPE_WORDS.get(word, f"a value of type {word}" if word else "a value of the schema")


def _siblings(key: str) -> str:
    parent = key.rpartition(".")[0]
    depth = key.count(".")
    return ", ".join(
        k.rpartition(".")[2]
        for k in schema_keys()
        if k.count(".") == depth and k.rpartition(".")[0] == parent
    )


def unknown_key_error(key: str, value: Any) -> ConfigError:
    """A key outside the schema, with the nearest one and the keys next to it."""
    nearest = difflib.get_close_matches(key, list(schema_keys()), n=1, cutoff=0.6)
    hint = f"; did you mean {nearest[0]}?" if nearest else ""
    parent = key.rpartition(".")[0] or "the config"
    return ConfigError(key, value, f"a known key (keys of {parent}: {_siblings(key)}){hint}")


def _in_schema(key: str) -> bool:
    """Whether ``key`` is a schema key or lies inside one that holds a list or dict."""
    keys = schema_keys()
    parts = key.split(".")
    for end in range(1, len(parts) + 1):
        head = ".".join(parts[:end])
        if head not in keys:
            return False
        if keys[head].startswith(("list", "dict")):
            return True
    return True


def _values(override: Override) -> list[Any]:
    """The override's value, or each value of a sweep, with quotes removed."""
    if override.is_discrete_sweep():
        return [v.text if isinstance(v, QuotedString) else v for v in override.sweep_iterator()]
    return [override.value()]


def _option_order(option: str) -> tuple[bool, int, str]:
    """Numeric options (batch sizes, k) in numeric order, then the named ones."""
    return not option.isdigit(), int(option) if option.isdigit() else 0, option


def _check_override(override: Override, loader: ConfigLoaderImpl) -> None:
    key = override.key_or_group
    if loader.repository.group_exists(key):
        options = loader.get_group_options(key)
        for value in _values(override):
            # A multi-select group (`evals=[victims,defenses]`) takes a list of options.
            chosen = value if isinstance(value, list) else [value]
            unknown = [v for v in chosen if v is not None and str(v) not in options]
            if unknown and not override.is_delete():
                ordered = sorted(options, key=_option_order)
                raise ConfigError(key, value, "one of: " + ", ".join(ordered))
            twice = sorted({str(v) for v in chosen if chosen.count(v) > 1})
            if twice:
                raise ConfigError(key, value, f"distinct options ({', '.join(twice)} listed twice)")
    elif not override.is_hydra_override() and not _in_schema(key):
        raise unknown_key_error(key, _values(override)[0] if override.value_type else None)


def _compose_as_hydra_runs(
    loader: ConfigLoaderImpl, overrides: list[str], multirun_flag: bool, sweep_only: list[str]
) -> tuple[DictConfig, RunMode]:
    """The config and mode Hydra will run (``hydra.get_mode``): ``-m`` is a multirun; otherwise
    the composed ``hydra.mode`` decides (``hydra.mode=MULTIRUN`` or a preset that sets it asks for
    a multirun without ``-m``), and unset is a single run. The single-run compose comes first: it
    is the common case, and it already says the mode."""

    def load(mode: RunMode) -> DictConfig:
        return compose_or_refuse(lambda: loader.load_configuration("config", overrides, mode))

    if multirun_flag:
        return load(RunMode.MULTIRUN), RunMode.MULTIRUN
    try:
        single = load(RunMode.RUN)
    except UserError:  # sweep values (a,b) or a launcher key: fine only if it is a multirun
        if _composed_mode(loader, overrides) != RunMode.MULTIRUN:
            _refuse_sweep_only(sweep_only)
            raise
        return load(RunMode.MULTIRUN), RunMode.MULTIRUN
    if single.hydra.mode == RunMode.MULTIRUN:
        return load(RunMode.MULTIRUN), RunMode.MULTIRUN
    _refuse_sweep_only(sweep_only)
    return single, RunMode.RUN


def _composed_mode(loader: ConfigLoaderImpl, overrides: list[str]) -> RunMode | None:
    """``hydra.mode`` as Hydra reads it before it runs anything; None when unset or unreadable."""
    try:
        cfg = loader.load_configuration(
            "config", overrides, RunMode.MULTIRUN, validate_sweep_overrides=False
        )
    except (HydraException, OmegaConfBaseException):
        return None
    return cfg.hydra.mode


def _refuse_sweep_only(sweep_only: list[str]) -> None:
    if sweep_only:
        raise UserError(
            f"{sweep_only[0]} applies to a multirun (ue-sweep -m ...): a single run does not "
            "go through the launcher"
        )


def compose_or_refuse(load: Callable[[], DictConfig]) -> DictConfig:
    """``load()``, with Hydra's and OmegaConf's errors turned into one-line refusals."""
    try:
        return load()
    except (HydraException, OmegaConfBaseException) as err:
        cause = err if isinstance(err, OmegaConfBaseException) else err.__cause__
        key = getattr(cause, "full_key", None)
        if isinstance(cause, OmegaConfBaseException) and key in schema_keys():
            raise ConfigError(key, getattr(cause, "value", None), _expected(key)) from None
        raise UserError(f"config error: {_one_line(err)}") from None


def _job_part(cfg: DictConfig) -> DictConfig:
    job = copy.deepcopy(cfg)
    with read_write(job), open_dict(job):
        del job["hydra"]
    return job


def _resolved(job: DictConfig) -> dict[str, Any]:
    try:
        return OmegaConf.to_container(job, resolve=True)  # type: ignore[return-value]
    except OmegaConfBaseException as err:
        key = str(getattr(err, "full_key", "") or "?")
        raw = _raw_value(job, key)
        reason = str(err.__cause__ or err).splitlines()[0]
        raise ConfigError(key, raw, f"a value that resolves ({reason})") from None


def _raw_value(job: DictConfig, key: str) -> Any:
    node: Any = OmegaConf.to_container(job, resolve=False)
    for part in key.split("."):
        node = node.get(part) if isinstance(node, dict) else None
    return node


def _check_keys(config: dict[str, Any], prefix: str = "") -> None:
    """Keys the composition let in (``+key=...``, an experiment file) that the schema lacks."""
    for name, value in config.items():
        key = f"{prefix}{name}"
        if not _in_schema(key):
            raise unknown_key_error(key, value)
        if isinstance(value, dict) and not schema_keys()[key].startswith("dict"):
            _check_keys(value, key + ".")


def _check_job(cfg: DictConfig, mode: str, tasks: int, here: bool) -> None:
    """Check one composed job (``mode``: ``run`` or ``sweep``), its directories included.

    ``here``: the job runs on this machine, so its devices and files are checked too.
    """
    HydraConfig.instance().set_config(cfg)
    hydra_cfg = cfg.hydra
    try:
        job_dir = (
            Path(str(hydra_cfg.run.dir))
            if mode == "run"
            else Path(str(hydra_cfg.sweep.dir)) / str(hydra_cfg.sweep.subdir)
        )
    except OmegaConfBaseException as err:
        raise UserError(f"config error: hydra.{mode}.dir: {_one_line(err)}") from None
    job = _job_part(cfg)
    config = _resolved(job)
    _check_keys(config)
    guard_completed(job_dir, config, _world_size(config, tasks))
    root = to_root_config(job, on_this_host=here)
    if not here:
        # A scheduler runs the job elsewhere: its devices are checked there, its files (on the
        # file system the login node shares with the compute nodes) here, before it is queued.
        check_files(root)
    _check_creatable(job_dir, "the job directory")
    store = "the artifact store" + (" (paths.artifact_dir)" if root.paths.artifact_dir else "")
    _check_creatable(artifact_dir(root, job_dir), store)


def _check_creatable(directory: Path, what: str) -> None:
    """Fail as a mkdir and a write into ``directory`` would, without creating anything (a run
    dir may name the time)."""
    target = directory.absolute()
    existing = next(p for p in (target, *target.parents) if p.exists())
    problem = None
    if not existing.is_dir():
        problem = f"{existing} is not a directory"
    else:
        try:
            Path(tempfile.mkdtemp(prefix=".ue-sweep-check-", dir=existing)).rmdir()
        except OSError as err:
            problem = f"{existing}: {err.strerror}"
    if problem is not None:
        verb = "write to" if existing == target else "create"
        raise UserError(f"cannot {verb} {what} {directory}: {problem}")


def _world_size(config: dict[str, Any], tasks: int) -> int:
    env = env_from_launcher()
    if env is not None:
        return env.world_size
    return tasks if tasks > 1 else int(config["trainer"]["devices"])


def guard_completed(job_dir: Path, config: dict[str, Any], world_size: int) -> None:
    """Refuse a job aimed at a directory holding a completed job of another configuration."""
    try:
        record = json.loads((job_dir / RESULT_FILE).read_text())
    except (OSError, ValueError):
        return
    if not isinstance(record, dict) or record.get("status") != "completed":
        return
    if record.get("fingerprint") != fingerprint(config, world_size):
        raise UserError(
            f"refusing to overwrite {job_dir}: it holds a completed job of another "
            "configuration; choose another hydra.run.dir (or hydra.sweep.dir / UE_SWEEP_NAME)"
        )
