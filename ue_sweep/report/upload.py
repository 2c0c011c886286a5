"""The sweep report as a W&B run in the jobs' group."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

from ue_sweep.report.collect import Report
from ue_sweep.report.tables import table_rows


def log_to_wandb(report: Report, out_dir: Path, figures: Mapping[str, Path]) -> str | None:
    """Log the table and figures as the sweep's ``report`` run, in the jobs' W&B group.

    Only when a job of the sweep logged to W&B; returns the run id, or None.
    """
    job = next((j for j in report.jobs if j.wandb and j.logger), None)
    if job is None or job.wandb is None or job.logger is None:
        return None
    import numpy as np
    from omegaconf import OmegaConf
    from PIL import Image

    from ue_sweep.config import LoggerConfig
    from ue_sweep.runtime.loggers import JobIdentity, WandbLogger

    cfg = OmegaConf.to_object(OmegaConf.merge(OmegaConf.structured(LoggerConfig), job.logger))
    assert isinstance(cfg, LoggerConfig)
    cfg.group, cfg.name = job.wandb["group"], "report"
    identity = JobIdentity(
        sweep_dir=str(report.sweep_dir.resolve()),
        job_num=None,
        overrides=(),
        config={"sweep_dir": str(report.sweep_dir), "jobs": len(report.jobs)},
        job_dir=str(out_dir),
    )
    tracker = WandbLogger(cfg, identity)
    tracker.start_stage("report")
    header, cells = table_rows(report)
    tracker.log_table("report/table", header, cells)
    tracker.log_table(
        "report/protected_accuracy",
        ["dataset", "setting", "global_batch", "mean", "std", "min", "max", "n"],
        [
            [r.dataset, r.setting, b, s.mean, s.std, min(s.values), max(s.values), s.n]
            for r in report.rows
            for b, s in r.protected.items()
        ],
    )
    tracker.log_images(
        {k: np.asarray(Image.open(p).convert("RGB")) for k, p in figures.items()}, captions={}
    )
    tracker.close()
    described = tracker.describe()
    return None if tracker.warning else described["runs"]["report"]["id"]
