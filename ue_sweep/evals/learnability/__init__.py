"""Learnability metrics of a trained victim (Ye, Su, Qian, "How Far Are We from True
Unlearnability?", ICLR 2025): Sharpness-Aware Learnability (SAL) per layer and epoch, the
learnable threshold beta, the number of learnable parameters #LP and the Unlearnable Distance UD.

``search``: the projected SGD search of one layer's SAL; ``metrics``: beta, #LP, UD from SAL
tables; ``heatmap``: the layers x epochs picture of a table. ``evaluation`` runs them on a
job's victims.
"""

from ue_sweep.evals.learnability.config import LearnabilityConfig, snapshot_epochs
from ue_sweep.evals.registry import Evaluation, lazy

EVALUATION = Evaluation(
    name="learnability",
    config=LearnabilityConfig,
    run=lazy("ue_sweep.evals.learnability.evaluation:run"),
    job_type="learnability",
    summary=lazy("ue_sweep.evals.learnability.report:summary"),
    report=lazy("ue_sweep.evals.learnability.report:report"),
    snapshots=snapshot_epochs,
    check=lazy("ue_sweep.evals.learnability.evaluation:check"),
)
