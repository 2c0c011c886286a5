"""Membership inference: per-example scores of a model, LiRA from shadow models, and the metrics
that say how well a score tells members from non-members.

One job per module: :mod:`~ue_sweep.evals.membership.scores` (loss, true-class and max posterior,
LiRA's logit-scaled confidence over query views, exact over all ranks),
:mod:`~ue_sweep.evals.membership.lira` (online and offline Gaussians from shadows),
:mod:`~ue_sweep.evals.membership.metrics` (ROC, AUC, advantage, balanced accuracy, TPR at low
FPR). The evaluations (``evals=[membership]``, the unlearning evaluation's attacks on forgotten
points) build on them.
"""

from ue_sweep.evals.membership.config import MembershipConfig, holdout
from ue_sweep.evals.registry import Evaluation, lazy

EVALUATION = Evaluation(
    name="membership",
    config=MembershipConfig,
    run=lazy("ue_sweep.evals.membership.evaluation:run"),
    job_type="membership",
    summary=lazy("ue_sweep.evals.membership.report:summary"),
    report=lazy("ue_sweep.evals.membership.report:report"),
    holdout=holdout,
    check=lazy("ue_sweep.evals.membership.evaluation:check"),
)
