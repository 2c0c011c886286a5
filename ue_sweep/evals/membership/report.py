"""``evals=membership``: the console summary of a job and the sweep report's section."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ue_sweep.evals.membership.attacks import SHADOW_ATTACKS
from ue_sweep.evals.membership.figures import plot_rocs
from ue_sweep.report.section import EvalOutcome, ReportSection
from ue_sweep.report.stats import Stat

REPORT_ROC_PNG = "membership_roc.png"


def job_panels(outcome: Mapping[str, Any]) -> dict[str, dict[tuple[str, str], Any]]:
    panels: dict[str, dict[tuple[str, str], Any]] = defaultdict(dict)
    for label, record in outcome["victims"].items():
        for query, found in record["queries"].items():
            for attack, m in found.get("attacks", {}).items():
                panels[f"query: {query}"][(label, attack)] = (m["roc"]["fpr"], m["roc"]["tpr"])
    return dict(panels)


# --------------------------------------------------------------------------------------------
# Summary and report
# --------------------------------------------------------------------------------------------


def summary(record: Mapping[str, Any], m: Mapping[str, Any]) -> Sequence[str]:
    if m.get("role") == "shadow":
        info = m["shadow"]
        return [
            f"membership: shadow {m['shadow_index']} of {m['shadows']} on {info['train_size']} "
            f"images, clean-test accuracy {100 * info['accuracy']:.1f}%, scores stored for "
            f"{', '.join(m['queries'])}"
        ]
    lira = f", {m['shadows']} shadows" + (" (fixed variance)" if m["fixed_variance"] else "")
    lines = [
        f"membership inference: {m['members']} members vs {m['nonmembers']} hold-out "
        f"non-members, {len(m['views'])} views{lira if m['shadows'] else ''}; "
        "AUC / TPR at 1% FPR (%):"
    ]
    for query in m["query"]:
        attacks = list(
            dict.fromkeys(
                a
                for r in m["victims"].values()
                for a in r["queries"].get(query, {}).get("attacks", {})
            )
        )
        lines.append(
            f"  query {query:<11}" + "".join(f"{a:>16}" for a in attacks) + f"{'acc in/out':>14}"
        )
        for label, r in m["victims"].items():
            found = r["queries"].get(query, {})
            if "attacks" not in found:
                lines.append(f"  {label:<17}  skipped")
                continue
            metrics = [found["attacks"][a] for a in attacks]
            cells = "".join(
                f"{100 * x['auc']:>9.1f} / {100 * x['tpr_at_fpr']['0.01']:>4.1f}" for x in metrics
            )
            acc = found["accuracy"]
            lines.append(
                f"  {label:<17}{cells}{100 * acc['members']:>8.1f}/{100 * acc['nonmembers']:.1f}"
            )
    for label, r in m["victims"].items():
        if r.get("shadows", {}).get("matched") is False:
            lines.append(f"  {label}: LiRA is a lower bound ({r['shadows']['reason']})")
    for label, why in m.get("skipped", {}).items():
        lines.append(f"  {label}: not attacked ({why})")
    return lines


def _lower_bound(record: Mapping[str, Any], attack: str) -> bool:
    """Whether ``attack`` on this target compared it with shadows not trained like it."""
    return attack in SHADOW_ATTACKS and record.get("shadows", {}).get("matched") is False


def _cells(
    groups: Mapping[str, Sequence[EvalOutcome]],
) -> tuple[list[str], dict[tuple[str, str, str], dict[tuple[str, str], list[float]]]]:
    """(row label, victim, attack) -> {(query, metric): values over jobs}."""
    queries: list[str] = []
    cells: dict[tuple[str, str, str], dict[tuple[str, str], list[float]]] = {}
    for row, jobs in groups.items():
        for job in jobs:
            if job.outcome.get("role") != "attack":
                continue
            for label, record in job.outcome["victims"].items():
                for query, found in record["queries"].items():
                    if query not in queries:
                        queries.append(query)
                    for attack, m in found.get("attacks", {}).items():
                        bound = _lower_bound(record, attack)
                        shown = f"{attack} (lower bound)" if bound else attack
                        cell = cells.setdefault((row, label, shown), defaultdict(list))
                        cell[(query, "auc")].append(m["auc"])
                        cell[(query, "tpr")].append(m["tpr_at_fpr"]["0.01"])
    return queries, cells


def report(groups: Mapping[str, Sequence[EvalOutcome]]) -> ReportSection | None:
    queries, cells = _cells(groups)
    if not cells:
        return None
    full_n = max(len(v) for c in cells.values() for v in c.values())
    header = ["dataset", "victim", "attack"]
    for q in queries:
        header += [f"AUC ({q})", f"TPR@1%FPR ({q})"]
    rows = []
    for (row, label, attack), cell in cells.items():
        line = [row, label, attack]
        for q in queries:
            for metric in ("auc", "tpr"):
                values = cell.get((q, metric))
                line.append(Stat(tuple(values)).text(full_n) if values else "–")
        rows.append(line)

    def draw(path: Path) -> None:
        plot_rocs(_report_panels(groups), path)

    return ReportSection(
        title="Membership inference",
        caption=(
            "Membership inference on each victim (%), mean ± std over seeds: ROC AUC and TPR at "
            "1% FPR, members vs as many hold-out non-members (balanced per class). Query `clean`: "
            "the members' clean originals vs clean hold-out images; `published`: members as the "
            "victim saw them vs hold-out images with the noise of their nearest cluster. LiRA's "
            "shadows train like each target (its data condition and recipe); `(lower bound)`: "
            "they could not (a DP-SGD target, or `shadow_match=false`). With a few hundred "
            "non-members, TPR at low FPR moves in steps of several points."
        ),
        header=header,
        rows=rows,
        figures={REPORT_ROC_PNG: draw},
        csv_name="membership.csv",
        label_columns=3,
    )


def _report_panels(
    groups: Mapping[str, Sequence[EvalOutcome]],
) -> dict[str, dict[tuple[str, str], Any]]:
    """Per (row, query): each (victim, attack)'s TPR averaged over the jobs at common FPRs."""
    panels: dict[str, dict[tuple[str, str], Any]] = {}
    for row, jobs in groups.items():
        curves: dict[tuple[str, tuple[str, str]], list[tuple[list[float], list[float]]]] = (
            defaultdict(list)
        )
        for job in jobs:
            if job.outcome.get("role") != "attack":
                continue
            for label, record in job.outcome["victims"].items():
                for query, found in record["queries"].items():
                    for attack, m in found.get("attacks", {}).items():
                        curves[(query, (label, attack))].append((m["roc"]["fpr"], m["roc"]["tpr"]))
        for (query, curve), runs in curves.items():
            grid = np.unique(np.concatenate([r[0] for r in runs]))
            tprs = [_steps(np.asarray(f), np.asarray(t), grid) for f, t in runs]
            panels.setdefault(f"{row} · query {query}", {})[curve] = (
                grid.tolist(),
                np.mean(tprs, 0).tolist(),
            )
    return panels


def _steps(fpr: np.ndarray, tpr: np.ndarray, grid: np.ndarray) -> np.ndarray:
    """The step curve (TPR at FPR <= f) read at ``grid``."""
    at = np.searchsorted(fpr, grid, side="right") - 1
    return np.where(at >= 0, tpr[np.clip(at, 0, None)], 0.0)
