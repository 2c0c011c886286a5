"""The registry of evaluations: what one is (:class:`Evaluation`) and where they are found.

Each evaluation is one sub-package of ``ue_sweep.evals`` whose ``__init__`` defines
``EVALUATION`` from its ``config`` module (torch-free) and :func:`lazy` references to its
compute, plus one config ``conf/evals/<name>.yaml``; a job runs the
ones selected in the ``evals`` group (``evals=[victims,defenses]``) in that order, and writes
each one's outcome under ``result.json`` ``evals.<name>``. See docs/EVALUATIONS.md for how to add
one.
"""

from __future__ import annotations

import importlib
import pkgutil
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from functools import cache
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ue_sweep.config import RootConfig
    from ue_sweep.data.splits import ImageSplits
    from ue_sweep.evals.context import EvalContext
    from ue_sweep.report.section import EvalOutcome, ReportSection


@dataclass(frozen=True)
class Evaluation:
    """One evaluation: its structured config, what it runs, and what it adds to the job's end."""

    name: str
    #: structured-config dataclass of ``evals.<name>``
    config: type
    #: runs on every rank; returns the JSON-able outcome that rank 0 records
    run: Callable[[EvalContext, Any], dict[str, Any]]
    #: W&B job type of its tracker run
    job_type: str
    #: lines for the summary a job prints when it ends, from its outcome
    summary: Callable[[Mapping[str, Any], Mapping[str, Any]], Sequence[str]] | None = None
    #: its section of ``ue-sweep report``, from the outcomes of each row's jobs (row label ->)
    report: Callable[[Mapping[str, Sequence[EvalOutcome]]], ReportSection | None] | None = None
    #: the fraction of the training split it needs held out from every stage (membership
    #: inference's non-members), from its config; the job reserves the largest one asked for
    holdout: Callable[[Any], float] | None = None
    #: rules its config has with the rest of the job, checked before any compute
    #: (``check(key, its config, job config)``, raising ConfigError)
    check: Callable[[str, Any, RootConfig], None] | None = None
    #: the labels of the victims it trains (``EvalContext.victims``), from its config: lets a
    #: later evaluation that picks victims by label check its choice before any compute
    victim_labels: Callable[[Any], Sequence[str]] | None = None
    #: epochs (0-based) whose weights it needs from every victim of the job, from the job's
    #: config and its own; the victims' training keeps them (``TrainedVictim.snapshots``)
    snapshots: Callable[[RootConfig, Any], Sequence[int]] | None = None
    #: rules that need the loaded data (the training split after the hold-out), checked before
    #: any stage runs: ``(key, its config, the job's config, the data)``, raising ConfigError
    check_data: Callable[[str, Any, RootConfig, ImageSplits], None] | None = None


def lazy(target: str) -> Callable[..., Any]:
    """The function ``"module:name"``, imported at its first call.

    An evaluation's compute and plots import torch and matplotlib; its package's ``__init__``
    names them this way, so that the command line's checks load configs only.
    """
    module_name, _, name = target.partition(":")

    def call(*args: Any, **kwargs: Any) -> Any:
        return getattr(importlib.import_module(module_name), name)(*args, **kwargs)

    call.__name__ = call.__qualname__ = name
    call.__doc__ = f"{target}, imported when first called."
    return call


_PACKAGE = __name__.rpartition(".")[0]
_INTERNAL = ("context", "registry")


@cache
def evaluations() -> dict[str, Evaluation]:
    """Every evaluation of ``ue_sweep.evals``, by name (modules are found, not listed)."""
    found = {}
    package_path = importlib.import_module(_PACKAGE).__path__
    for module in pkgutil.iter_modules(package_path):
        if module.name in _INTERNAL:
            continue
        evaluation = importlib.import_module(f"{_PACKAGE}.{module.name}").EVALUATION
        found[evaluation.name] = evaluation
    return found


def check(key: str, entry: Any, cfg: RootConfig) -> None:
    """The ``evals`` group's cross-field rules: each evaluation's own ``check``."""
    evaluation = evaluations()[key.rpartition(".")[2]]
    if evaluation.check is not None:
        evaluation.check(key, entry, cfg)


def evaluation_names() -> tuple[str, ...]:
    return tuple(evaluations())


def holdout_fraction(selected: Mapping[str, Any]) -> float:
    """The hold-out the selected evaluations (name -> config) need: the largest they ask for."""
    found = evaluations()
    return max(
        (found[name].holdout(cfg) for name, cfg in selected.items() if found[name].holdout),
        default=0.0,
    )


def check_data(cfg: RootConfig, data: ImageSplits) -> None:
    """Every selected evaluation's rules on the loaded data."""
    for name, entry in cfg.evals.items():
        evaluation = evaluations()[name]
        if evaluation.check_data is not None:
            evaluation.check_data(f"evals.{name}", entry, cfg, data)


def schemas() -> dict[str, type]:
    """Each evaluation's structured-config dataclass, by name: the ``evals`` group's schema."""
    return {name: evaluation.config for name, evaluation in evaluations().items()}
