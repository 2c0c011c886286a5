"""SISA training and machine unlearning (Bourtoule et al., "Machine Unlearning", IEEE S&P 2021).

``partition``: shards, slices, the epochs of each slice and unlearning requests; ``aggregate``:
the ensemble's label by majority vote and by mean posterior; ``ensemble``: constituent models
trained slice by slice, each slice's state an artifact named by the exact indices it has seen,
spread over the job's ranks. ``evaluation`` runs them as ``evals=[unlearning]``.
"""

from ue_sweep.evals.registry import Evaluation, lazy
from ue_sweep.evals.unlearning.config import UnlearningConfig

EVALUATION = Evaluation(
    name="unlearning",
    config=UnlearningConfig,
    run=lazy("ue_sweep.evals.unlearning.evaluation:run"),
    job_type="unlearning",
    summary=lazy("ue_sweep.evals.unlearning.report:summary"),
    report=lazy("ue_sweep.evals.unlearning.report:report"),
    holdout=lambda cfg: cfg.holdout_fraction,
    check=lazy("ue_sweep.evals.unlearning.evaluation:check"),
    check_data=lazy("ue_sweep.evals.unlearning.evaluation:check_data"),
)
