"""DP-SGD victims (Opacus) on possibly imbalanced data: the private training
loop, and the evaluation (``evaluation.py``)."""

from ue_sweep.evals.privacy.config import PrivacyConfig, check
from ue_sweep.evals.registry import Evaluation, lazy

EVALUATION = Evaluation(
    name="privacy",
    config=PrivacyConfig,
    run=lazy("ue_sweep.evals.privacy.evaluation:run"),
    job_type="privacy",
    summary=lazy("ue_sweep.evals.privacy.report:summary"),
    report=lazy("ue_sweep.evals.privacy.report:report"),
    check=check,
)
