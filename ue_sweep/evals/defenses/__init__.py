"""Defenses against unlearnable examples (EPIC, image shortcut squeezing, adversarial training,
UEraser): each trained on protected and on clean data, next to the undefended victims."""

from ue_sweep.evals.defenses.config import DefensesConfig, victim_labels
from ue_sweep.evals.registry import Evaluation, lazy

EVALUATION = Evaluation(
    name="defenses",
    config=DefensesConfig,
    run=lazy("ue_sweep.evals.defenses.evaluation:run"),
    job_type="defenses",
    summary=lazy("ue_sweep.evals.defenses.evaluation:summary"),
    report=lazy("ue_sweep.evals.defenses.evaluation:report"),
    victim_labels=victim_labels,
)
