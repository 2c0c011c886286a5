"""Victims trained from scratch on clean, protected and equal-strength control data: the job's
headline evaluation, whose outcome is also the job's ``metrics``."""

from ue_sweep.evals.registry import Evaluation, lazy
from ue_sweep.evals.victims.config import VictimsConfig

EVALUATION = Evaluation(
    name="victims",
    config=VictimsConfig,
    run=lazy("ue_sweep.evals.victims.evaluation:run"),
    job_type="victim",
    summary=lazy("ue_sweep.evals.victims.evaluation:summary"),
    victim_labels=lambda cfg: ["clean", "protected", *cfg.controls],
)
