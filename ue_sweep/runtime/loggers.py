"""Experiment trackers fed by rank 0: a no-op one (``logger=none``) and Weights & Biases.

A job becomes one W&B run per stage, all in the sweep's group: ``uc`` (surrogate fit, k-means,
generator training, the noise and its pictures) and ``victim`` (the victims trained on clean,
protected and control data, and the job's final metrics). Run ids are derived from the sweep
directory, the job number and the stage, and runs are opened with ``resume="allow"``, so a
requeued job continues its own runs instead of creating duplicates.

W&B must never fail or slow a job: ``wandb.init`` and each run's final upload are bounded by
timeouts, and the first exception from wandb disables W&B for the rest of the job with a single
warning. No credential is ever read into a config, log or record.
"""

from __future__ import annotations

import functools
import hashlib
import logging
import netrc
import os
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlparse

from ue_sweep.config import LoggerConfig

if TYPE_CHECKING:  # the command line imports this module; numpy is for the hints only
    import numpy as np

log = logging.getLogger(__name__)

# Override keys (and their sub-keys) that do not change results and stay out of run names.
_NAME_EXCLUDED = ("hydra", "logger", "trainer.progress")


@dataclass(frozen=True)
class JobIdentity:
    """Where a job sits in its sweep: what names its runs. Picklable for spawned ranks."""

    # The multirun directory, or the run directory of a single run.
    sweep_dir: str
    # None for a run of the whole sweep (the report).
    job_num: int | None
    overrides: tuple[str, ...]
    # The resolved Hydra config as plain containers.
    config: dict[str, Any]
    job_dir: str


def sweep_key(sweep_dir: str | Path) -> str:
    """Short stable digest of the sweep directory's resolved path."""
    return hashlib.sha1(str(Path(sweep_dir).resolve()).encode()).hexdigest()[:8]


def run_id(sweep_dir: str | Path, job_num: int | None, stage: str) -> str:
    """``3f2a9c1d-4-uc``: the same for every attempt of a job, distinct across sweeps."""
    job = "" if job_num is None else f"{job_num}-"
    return f"{sweep_key(sweep_dir)}-{job}{stage}"


def default_group(sweep_dir: str | Path) -> str:
    """The sweep directory's name: ``multirun/smoke-1a2b3c4d`` -> ``smoke-1a2b3c4d``.

    Hydra's dated layout keeps its date: ``2026-11-23/14-03-22`` -> ``2026-11-23_14-03-22``.
    """
    path = Path(sweep_dir)
    if re.fullmatch(r"\d\d-\d\d-\d\d", path.name):
        return "_".join(path.parts[-2:])
    return path.name


def run_name(overrides: Sequence[str]) -> str:
    """``dataset=pets,batch_size=256``: the job's overrides that change its results."""

    def shown(override: str) -> bool:
        key = override.split("=", 1)[0].lstrip("+~")
        return not any(key == k or key.startswith(f"{k}.") for k in _NAME_EXCLUDED)

    return ",".join(filter(shown, overrides)) or "defaults"


def metric_prefix(stage_name: str) -> str:
    """``victim (clean)`` -> ``victim_clean``."""
    return re.sub(r"[^0-9a-z]+", "_", stage_name.lower()).strip("_")


def scalars(payload: Mapping[str, Any]) -> dict[str, Any]:
    """The nested numbers, strings and booleans of a result payload; lists and nulls dropped."""
    out: dict[str, Any] = {}
    for key, value in payload.items():
        if isinstance(value, Mapping):
            if nested := scalars(value):
                out[key] = nested
        elif isinstance(value, int | float | str | bool):
            out[key] = value
    return out


def api_key_configured() -> bool:
    """A key in the environment or a ``wandb login`` entry in ~/.netrc (its value is not kept)."""
    if os.environ.get("WANDB_API_KEY") or os.environ.get("WANDB_IDENTITY_TOKEN_FILE"):
        return True
    import wandb

    base_url = os.environ.get("WANDB_BASE_URL") or wandb.Settings.model_fields["base_url"].default
    try:
        return netrc.netrc().authenticators(urlparse(base_url).hostname or "") is not None
    except (OSError, netrc.NetrcParseError):
        return False


def resolve_mode(requested: str) -> tuple[str, str]:
    """The W&B mode to use and why. Never online without a key: wandb would prompt for one."""
    if requested != "auto":
        mode, why = requested, f"logger.mode={requested}"
    elif env_mode := os.environ.get("WANDB_MODE"):
        mode, why = env_mode, f"WANDB_MODE={env_mode}"
    elif api_key_configured():
        return "online", "an API key is configured"
    else:
        return "offline", "no API key is configured; sync later with `wandb sync`"
    if mode in ("online", "run") and not api_key_configured():
        log.warning("W&B: %s but no API key is configured; logging offline instead", why)
        return "offline", f"{why} without an API key"
    return mode, why


def _one_line(err: BaseException) -> str:
    text = " ".join(f"{type(err).__name__}: {err}".split())
    if key := os.environ.get("WANDB_API_KEY"):
        text = text.replace(key, "***")
    return text[:400]


class RunLogger:
    """The no-op tracker: ``logger=none``, and every rank but 0."""

    def start_stage(self, stage: str) -> None:
        """Open the run of ``stage`` (its job_type); the previous stage's run is finished."""

    def log_epoch(self, name: str, epoch: int, metrics: Mapping[str, Any]) -> None:
        """One epoch of a progress stage (``generators``, ``victim (clean)``, ...)."""

    def log_images(self, images: Mapping[str, np.ndarray], captions: Mapping[str, str]) -> None:
        """uint8 ``[H, W, 3]`` pictures."""

    def log_table(self, key: str, columns: Sequence[str], rows: Sequence[Sequence[Any]]) -> None:
        pass

    def set_summary(self, payload: Mapping[str, Any]) -> None:
        """The final values of the open run: the scalars of a result payload."""

    def close(self, failed: bool = False) -> None:
        """Finish the open run; ``failed`` marks it failed."""

    def describe(self) -> dict[str, Any] | None:
        """What the result file records about the runs (None: nothing was logged)."""
        return None


def _guarded(method: Callable[..., None]) -> Callable[..., None]:
    """Any exception from wandb turns W&B off for the job, with one warning."""

    @functools.wraps(method)
    def call(self: WandbLogger, *args: Any, **kwargs: Any) -> None:
        if self.warning is not None:
            return
        try:
            method(self, *args, **kwargs)
        except Exception as err:
            self._give_up(err)

    return call


class WandbLogger(RunLogger):
    """Weights & Biases, one run per stage; see the module docstring for the conventions."""

    def __init__(self, cfg: LoggerConfig, job: JobIdentity) -> None:
        self.cfg, self.job = cfg, job
        self.group = cfg.group or default_group(job.sweep_dir)
        self.name = cfg.name or run_name(job.overrides)
        # wandb.init(dir=...) wins over $WANDB_DIR, so it is only passed when no env var is set.
        self.dir = cfg.dir or (None if os.environ.get("WANDB_DIR") else job.job_dir)
        self.mode: str | None = None
        self.runs: dict[str, dict[str, str]] = {}
        self.warning: str | None = None
        self._run: Any = None
        self._step_metrics: set[str] = set()

    def _give_up(self, err: Exception) -> None:
        self.warning = _one_line(err)
        log.warning("W&B disabled for the rest of this job (training continues): %s", self.warning)
        run, self._run = self._run, None
        if run is not None:
            try:
                run.finish(exit_code=1)
            except Exception:  # already warned; W&B stays off
                log.debug("finishing the W&B run after a failure also failed", exc_info=True)

    def _finish_open_run(self, exit_code: int = 0) -> None:
        run, self._run = self._run, None
        if run is not None:
            run.finish(exit_code=exit_code)

    @_guarded
    def start_stage(self, stage: str) -> None:
        self._finish_open_run()
        import wandb

        if self.mode is None:
            self.mode, why = resolve_mode(self.cfg.mode)
            log.info(
                "W&B %s (%s): project %s, group %s", self.mode, why, self.cfg.project, self.group
            )
        self._run = wandb.init(
            project=self.cfg.project,
            entity=self.cfg.entity,
            group=self.group,
            job_type=stage,
            name=self.name,
            id=run_id(self.job.sweep_dir, self.job.job_num, stage),
            resume="allow",
            config=self.job.config,
            tags=list(self.cfg.tags),
            dir=self.dir,
            mode=self.mode,
            reinit="create_new",
            settings=wandb.Settings(
                init_timeout=self.cfg.init_timeout_s,
                finish_timeout=self.cfg.finish_timeout_s,
                # The job log already holds the console; wrapping stdout would fight tqdm.
                console="off",
            ),
        )
        self.runs[stage] = {"id": self._run.id, "dir": str(Path(self._run.dir).parent.absolute())}
        self._step_metrics.clear()

    @_guarded
    def log_epoch(self, name: str, epoch: int, metrics: Mapping[str, Any]) -> None:
        if self._run is None:
            return
        prefix = metric_prefix(name)
        step = f"{prefix}/epoch"
        if prefix not in self._step_metrics:
            # Each stage gets its own x-axis: stages run one after another within a run.
            self._run.define_metric(step)
            self._run.define_metric(f"{prefix}/*", step_metric=step)
            self._step_metrics.add(prefix)
        numbers = {
            f"{prefix}/{key}": value
            for key, value in metrics.items()
            if isinstance(value, int | float) and not isinstance(value, bool)
        }
        self._run.log({step: epoch + 1, **numbers})

    @_guarded
    def log_images(self, images: Mapping[str, np.ndarray], captions: Mapping[str, str]) -> None:
        if self._run is None:
            return
        import wandb

        self._run.log(
            {f"media/{k}": wandb.Image(v, caption=captions.get(k)) for k, v in images.items()}
        )

    @_guarded
    def log_table(self, key: str, columns: Sequence[str], rows: Sequence[Sequence[Any]]) -> None:
        if self._run is None:
            return
        import wandb

        self._run.log({key: wandb.Table(columns=list(columns), data=[list(r) for r in rows])})

    @_guarded
    def set_summary(self, payload: Mapping[str, Any]) -> None:
        if self._run is not None:
            self._run.summary.update(scalars(payload))

    @_guarded
    def close(self, failed: bool = False) -> None:
        self._finish_open_run(exit_code=1 if failed else 0)

    def describe(self) -> dict[str, Any]:
        return {
            "project": self.cfg.project,
            "entity": self.cfg.entity,
            "group": self.group,
            "name": self.name,
            "mode": self.mode,
            "sweep_key": sweep_key(self.job.sweep_dir),
            "runs": self.runs,
            "warning": self.warning,
        }


BACKENDS: dict[str, Callable[[LoggerConfig, JobIdentity], RunLogger]] = {
    "none": lambda cfg, job: RunLogger(),
    "wandb": WandbLogger,
}


def backend_names() -> tuple[str, ...]:
    """The ``logger.backend`` choices, asked by ue_sweep.cli.validation."""
    return tuple(BACKENDS)


def build_logger(cfg: LoggerConfig, job: JobIdentity) -> RunLogger:
    """The tracker selected by the ``logger`` config group."""
    return BACKENDS[cfg.backend](cfg, job)
