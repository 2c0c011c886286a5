"""``evals=unlearning``: the console summary of a job and the sweep report's section."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from ue_sweep.report.section import EvalOutcome, ReportSection
from ue_sweep.report.stats import Stat

TARGETS = ("ensemble", "shard")


def _auc(outcome: Mapping[str, Any], target: str, attack: str, when: str) -> float:
    return float(outcome["attacks"][when][target][attack]["auc"])


def summary(record: Mapping[str, Any], m: Mapping[str, Any]) -> Sequence[str]:
    lines = [
        f"unlearning (SISA, {m['shards']} shards x {m['slices']} slices, epochs per slice "
        f"{m['epochs_per_slice']}; {m['requests']} requests vs as many hold-out images), "
        "before -> after:",
        f"  {'trained on':<12}{'accuracy %':<16}{'vote %':<16}{'cost':<7}"
        f"{'AUC ensemble':<16}AUC shard",
    ]
    for condition, c in m["conditions"].items():
        acc, cost = c["accuracy"], c["cost"]
        mean, vote = (
            f"{100 * acc['before'][a]:.1f} -> {100 * acc['after'][a]:.1f}"
            for a in ("mean_posterior", "majority_vote")
        )
        ensemble, shard = (
            f"{_auc(c, t, 'loss', 'before'):.2f} -> {_auc(c, t, 'loss', 'after'):.2f}"
            for t in TARGETS
        )
        lines.append(
            f"  {condition:<12}{mean:<16}{vote:<16}{cost['ratio']:<7.2f}{ensemble:<16}{shard}"
        )
        lines.append(
            f"  {'':<12}retrained {cost['unlearning_steps']} of {cost['full_retrain_steps']} "
            f"steps in {cost['unlearning_seconds']:.1f} s (full retrain "
            f"~{cost['full_retrain_seconds_estimated']:.1f} s, estimated); removed points in "
            f"training {c['removed_in_training']['before']} -> "
            f"{c['removed_in_training']['after']}"
        )
        if single := c.get("single_model"):
            auc = [single[w]["attacks"]["loss"]["auc"] for w in ("before", "after")]
            lines.append(
                f"  {'':<12}single model on the pool, full retrain: accuracy "
                f"{100 * single['before']['accuracy']:.1f} -> "
                f"{100 * single['after']['accuracy']:.1f}, AUC {auc[0]:.2f} -> {auc[1]:.2f}"
            )
    return lines


def _ratio_text(stat: Stat, full_n: int) -> str:
    out = f"{stat.mean:.2f}"
    if stat.std is not None:
        out += f" ± {stat.std:.2f}"
    return out if stat.n >= full_n else f"{out} (n={stat.n})"


#: report columns: (header, value of one condition's outcome, shown as a percentage)
_COLUMNS = (
    ("accuracy before", lambda c: c["accuracy"]["before"]["mean_posterior"], True),
    ("accuracy after", lambda c: c["accuracy"]["after"]["mean_posterior"], True),
    ("vote before", lambda c: c["accuracy"]["before"]["majority_vote"], True),
    ("vote after", lambda c: c["accuracy"]["after"]["majority_vote"], True),
    ("cost ratio", lambda c: c["cost"]["ratio"], False),
    ("AUC ensemble before", lambda c: _auc(c, "ensemble", "loss", "before"), False),
    ("AUC ensemble after", lambda c: _auc(c, "ensemble", "loss", "after"), False),
    ("AUC shard before", lambda c: _auc(c, "shard", "loss", "before"), False),
    ("AUC shard after", lambda c: _auc(c, "shard", "loss", "after"), False),
)


def report(groups: Mapping[str, Sequence[EvalOutcome]]) -> ReportSection | None:
    cells: dict[tuple[str, str], list[Stat]] = {}
    for label, jobs in groups.items():
        conditions = list(dict.fromkeys(c for j in jobs for c in j.outcome["conditions"]))
        for condition in conditions:
            runs = [j.outcome["conditions"].get(condition) for j in jobs]
            runs = [r for r in runs if r is not None]
            cells[(label, condition)] = [
                Stat(tuple(float(value(r)) for r in runs)) for _, value, _ in _COLUMNS
            ]
    if not cells:
        return None
    full_n = max(s.n for row in cells.values() for s in row)
    rows = [
        [
            label,
            condition,
            *(
                stat.text(full_n) if pct else _ratio_text(stat, full_n)
                for stat, (_, _, pct) in zip(row, _COLUMNS, strict=True)
            ),
        ]
        for (label, condition), row in cells.items()
    ]
    return ReportSection(
        title="Machine unlearning (SISA)",
        caption=(
            "SISA ensembles on clean and on UC-protected training data, before and after "
            "serving the unlearning requests (mean ± std over seeds). Accuracy (%): clean test "
            "set, mean-posterior aggregation; vote: majority vote. Cost ratio: optimizer steps "
            "of the retraining over those of retraining every constituent from scratch on the "
            "remaining data. AUC: loss-threshold membership attack on the removed points "
            "against as many never-seen hold-out images, scored by the ensemble's mean "
            "posterior or by the removed point's own constituent (shard); 0.5 is chance, and "
            "the true-class posterior attack has the same ROC (a monotone transform)."
        ),
        header=["dataset", "condition", *(h for h, _, _ in _COLUMNS)],
        rows=rows,
        figures={},
        csv_name="unlearning.csv",
        label_columns=2,
    )
