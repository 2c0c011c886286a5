"""A ready W&B workspace for a sweep's group, built by ``ue-sweep report`` (``wandb-workspaces``).

Users look at W&B, so the report also lays out the sweep's workspace: the study's Figures 3-4
(protected accuracy against the global batch size, a line per dataset from the report run's
table, every job's point, and the report's own figures), the per-epoch curves of each stage in a
section per job type (``uc``: surrogate fit and generators; ``victim``: a victim per condition),
and the report's tables. The runs shown are the sweep's group, grouped by job type.

With an API key the workspace is saved to W&B (and updated in place by the next report); without
one its definition is written to ``REPORT_DIR/wandb_workspace.json`` and the report says how to
publish it. Building it never fails the report.
"""

from __future__ import annotations

import dataclasses
import json
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ue_sweep.runtime.loggers import metric_prefix, resolve_mode
from ue_sweep.runtime.tracking import atomic_write_json

log = logging.getLogger(__name__)

WORKSPACE_FILE = "wandb_workspace.json"
# What report.log_to_wandb logs in the report run: its tables and figures.
TABLES = ("report/table", "report/protected_accuracy")
ACCURACY_TABLE = "report/protected_accuracy"
FIGURES = ("media/boxplot", "media/curves")
# Per-epoch metrics of each stage, as the training loops report them (progress.epoch_done).
CLASSIFIER_METRICS = ("test_acc", "train_acc", "loss")
GENERATOR_METRICS = ("kl", "hit", "saturated", "surrogate_acc")


@dataclass(frozen=True)
class Target:
    """Where the sweep's runs are: the W&B project, entity (None: the key's default) and group."""

    project: str
    entity: str | None
    group: str
    mode: str


def target(jobs: Sequence[Any]) -> Target | None:
    """The W&B place of a report's jobs (``report.Job``), from the first that logged to W&B."""
    for job in jobs:
        tracked, logger = job.wandb, job.logger or {}
        if isinstance(tracked, Mapping) and tracked.get("group"):
            project = tracked.get("project") or logger.get("project") or "ue-sweep"
            entity = tracked.get("entity") or logger.get("entity")
            mode, _ = resolve_mode(str(logger.get("mode") or "auto"))
            return Target(str(project), entity, str(tracked["group"]), mode)
    return None


def _line(title: str, stage: str, metrics: Sequence[str]) -> Any:
    import wandb_workspaces.reports.v2 as wr

    prefix = metric_prefix(stage)
    return wr.LinePlot(
        title=title, x=f"{prefix}/epoch", y=[f"{prefix}/{m}" for m in metrics], title_x="epoch"
    )


def build_workspace(where: Target, entity: str, conditions: Sequence[str]) -> Any:
    """The workspace (``wandb_workspaces.workspaces.Workspace``) of the sweep's group."""
    import wandb_workspaces.reports.v2 as wr
    import wandb_workspaces.workspaces as ws

    figures = ws.Section(
        name="Protected accuracy vs global batch size (Figures 3-4)",
        is_open=True,
        panels=[
            wr.CustomChart(
                query={"summaryTable": {"tableKey": ACCURACY_TABLE}},
                chart_name="wandb/line/v0",
                chart_fields={"x": "global_batch", "y": "mean", "stroke": "dataset"},
                chart_strings={"title": "protected accuracy (mean over seeds) per dataset"},
            ),
            wr.ScatterPlot(
                title="every job: protected accuracy vs global batch size",
                x=wr.SummaryMetric("batch.global"),
                y=wr.SummaryMetric("metrics.accuracy.protected"),
                log_x=True,
            ),
            wr.MediaBrowser(title="the report's figures", media_keys=list(FIGURES)),
        ],
    )
    uc = ws.Section(
        name="uc runs: per-epoch curves",
        is_open=True,
        panels=[
            _line("surrogate fit", "surrogate fit", CLASSIFIER_METRICS),
            _line("generators", "generators", GENERATOR_METRICS),
        ],
    )
    victims = ws.Section(
        name="victim runs: per-epoch curves",
        is_open=True,
        panels=[_line(f"victim ({c})", f"victim ({c})", CLASSIFIER_METRICS) for c in conditions],
    )
    tables = ws.Section(
        name="Evaluation tables",
        is_open=True,
        panels=[wr.WeavePanelSummaryTable(table_name=key) for key in TABLES],
    )
    return ws.Workspace(
        entity=entity,
        project=where.project,
        name=f"ue-sweep {where.group}",
        sections=[figures, uc, victims, tables],
        runset_settings=ws.RunsetSettings(
            filters=ws.And(ws.Metric("Group") == where.group), groupby=[ws.Metric("JobType")]
        ),
    )


def definition(value: Any) -> Any:
    """The workspace as plain data: each object's type and its public fields that differ from
    their defaults, as ``wandb_workspaces`` names them (what one would write to build it)."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        out: dict[str, Any] = {"type": type(value).__name__}
        for f in dataclasses.fields(value):
            if f.name.startswith("_"):
                continue
            item = definition(getattr(value, f.name))
            if item != definition(_default(f)):
                out[f.name] = item
        return out
    if isinstance(value, list | tuple):
        return [definition(v) for v in value]
    if isinstance(value, dict):
        return {str(k): definition(v) for k, v in value.items()}
    return value if isinstance(value, str | int | float | bool | None) else str(value)


def _default(f: dataclasses.Field[Any]) -> Any:
    from pydantic.fields import FieldInfo

    if isinstance(f.default, FieldInfo):  # pydantic dataclasses keep Field(...) here
        return f.default.get_default(call_default_factory=True)
    if f.default is not dataclasses.MISSING:
        return f.default
    if f.default_factory is not dataclasses.MISSING:
        return f.default_factory()
    return dataclasses.MISSING


def _publish(workspace: Any, previous_url: str | None) -> str:
    """Save the workspace; one this report saved before is updated, not duplicated."""
    import wandb_workspaces.workspaces as ws

    if previous_url:
        saved = ws.Workspace.from_url(previous_url)
        saved.sections, saved.runset_settings = workspace.sections, workspace.runset_settings
        workspace = saved
    return str(workspace.save().url)


def write_dashboard(jobs: Sequence[Any], conditions: Sequence[str], out_dir: Path) -> Path | None:
    """Build the sweep's workspace; save it when online, and write its definition in any case.

    None when no job of the sweep logged to W&B.
    """
    where = target(jobs)
    if where is None:
        return None
    path = out_dir / WORKSPACE_FILE
    try:
        previous = _previous_url(path)
        online = where.mode == "online"
        entity = where.entity or (_default_entity() if online else None) or "default-entity"
        workspace = build_workspace(where, entity, conditions)
        url = _publish(workspace, previous) if online else None
    except Exception as err:  # W&B (or its server) must never fail the report
        log.warning("W&B workspace not built: %s: %s", type(err).__name__, err)
        return None
    how = (
        f"saved: {url}"
        if url
        else "not published (no W&B API key): on a machine with one, `wandb sync` the jobs' "
        "runs, then run `ue-sweep report` on this sweep again; it saves the workspace"
    )
    # null: the default entity of the API key it is published with.
    plain = definition(workspace) | {"entity": where.entity}
    atomic_write_json(path, {"published": url, "how_to_publish": how, "workspace": plain})
    log.info("W&B workspace %s", how if url else f"definition written to {path}; {how}")
    return path


def _previous_url(path: Path) -> str | None:
    try:
        url = json.loads(path.read_text()).get("published")
    except (OSError, ValueError, AttributeError):
        return None
    return url if isinstance(url, str) else None


def _default_entity() -> str | None:
    import wandb

    return wandb.Api().default_entity
