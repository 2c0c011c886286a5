"""The few lines a job prints when it ends."""

from __future__ import annotations

from typing import Any

from ue_sweep.evals.registry import evaluations
from ue_sweep.report.stats import percent


def _uc_lines(record: dict[str, Any]) -> list[str]:
    cfg, data, batch = record["config"], record["dataset"], record.get("batch")
    eps = record["protection"]["eps"]
    if "generator" not in record:  # uc.source: evaluating a protection made elsewhere
        return [
            f"protection of {data['name']} read from {record['protection']['source']}: "
            f"{record['protection']['k']} patterns, eps={eps * 255:.3g}/255"
        ]
    surrogate, gen = record["surrogate"], record["generator"]
    fitted = surrogate.get("fit")
    first, last = gen["history"][0], gen["history"][-1]
    return [
        f"Unlearnable Clusters on {data['name']}: k={record['clusters']['k']}, "
        f"eps={eps * 255:.3g}/255, scope {cfg['generator']['scope']}, output "
        f"{cfg['generator']['output']}, batch {batch['per_device']} per device x "
        f"{record['world_size']} = {batch['global']}",
        f"surrogate {surrogate['arch']} ({surrogate['weights']}"
        + (f", test accuracy {percent(fitted['test_accuracy']).strip()}" if fitted else "")
        + f"); clusters vs classes NMI {record['clusters']['label_nmi']:.2f}",
        f"generators {gen['epochs']} epochs at {record['throughput']['generator_images_per_s']:.0f}"
        f" images/s: KL {first['loss']:.3f} -> {last['loss']:.3f}, target hit rate "
        f"{percent(gen['initial']['target_hit_rate']).strip()} -> "
        f"{percent(last['target_hit_rate']).strip()}, saturated pixels "
        f"{percent(last['saturated_fraction']).strip()}"
        if "target_hit_rate" in last
        else f"generators {gen['epochs']} epochs: KL {first['loss']:.3f} -> {last['loss']:.3f}",
        *_diagnostics_lines(record.get("diagnostics")),
    ]


def _diagnostics_lines(d: dict[str, Any] | None) -> list[str]:
    if not d:
        return []
    corr = "n/a" if d["correlation"] is None else f"{d['correlation']:.2f}"
    grad = "n/a" if d["gradient_share"] is None else percent(d["gradient_share"]).strip()
    return [
        f"cluster purity {percent(d['purity']).strip()} (NMI {d['label_nmi']:.2f}); noise vs its "
        f"untrained start: sign agreement {percent(d['sign_agreement']).strip()}, correlation "
        f"{corr}; pixels that ever got a gradient {grad}"
    ]


def format_job_summary(record: dict[str, Any], result_path: str) -> str:
    """The UC stages' lines, then each evaluation's, then where the result is."""
    lines = _uc_lines(record)
    for name, outcome in record.get("evals", {}).items():
        evaluation = evaluations().get(name)
        if evaluation is not None and evaluation.summary is not None:
            lines += evaluation.summary(record, outcome)
    reused = [s for s, p in record.get("stages", {}).items() if p["status"] == "reused"]
    if reused:
        lines.append(f"reused from the artifact store: {', '.join(reused)}")
    lines.append(f"result: {result_path}")
    return "\n".join(lines)
