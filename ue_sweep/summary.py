"""The few lines a job prints when it ends."""

from __future__ import annotations

from typing import Any

LABELS = {
    "clean": "clean data",
    "protected": "UC-protected",
    "uniform": "uniform-noise control",
    "sign": "sign-noise control",
    "untrained": "untrained-generator ctl",
}


def _pct(x: float) -> str:
    return f"{100 * x:5.1f}%"


def format_summary(record: dict[str, Any], result_path: str) -> str:
    cfg = record["config"]
    eps = cfg["generator"]["eps"]
    batch = record["batch"]
    m = record["metrics"]
    data = record["dataset"]
    surrogate = record["surrogate"]
    fitted = surrogate.get("fit")
    gen = record["generator"]
    first, last = gen["history"][0], gen["history"][-1]
    lines = [
        f"Unlearnable Clusters on {data['name']}: k={record['clusters']['k']}, "
        f"eps={eps * 255:.3g}/255, scope {cfg['generator']['scope']}, output "
        f"{cfg['generator']['output']}, batch {batch['per_device']} per device x "
        f"{record['world_size']} = {batch['global']}",
        f"surrogate {surrogate['arch']} ({surrogate['weights']}"
        + (f", test accuracy {_pct(fitted['test_accuracy']).strip()}" if fitted else "")
        + f"); clusters vs classes NMI {record['clusters']['label_nmi']:.2f}",
        f"generators {gen['epochs']} epochs at {record['throughput']['generator_images_per_s']:.0f}"
        f" images/s: KL {first['loss']:.3f} -> {last['loss']:.3f}, target hit rate "
        f"{_pct(gen['initial']['target_hit_rate']).strip()} -> "
        f"{_pct(last['target_hit_rate']).strip()}, saturated pixels "
        f"{_pct(last['saturated_fraction']).strip()}"
        if "target_hit_rate" in last
        else f"generators {gen['epochs']} epochs: KL {first['loss']:.3f} -> {last['loss']:.3f}",
        f"victim {cfg['victim']['arch']}, {cfg['victim']['epochs']} epochs, accuracy on the "
        f"clean test set ({data['test_size']} images), mean of the last "
        f"{m['averaged_epochs']} epochs:",
        f"  {'trained on':<26}{'accuracy':>9}{'balanced':>10}{'final':>8}{'noise RMS':>11}",
    ]
    for condition, acc in m["accuracy"].items():
        rms = m["energy"].get(condition, {}).get("published_rms")
        lines.append(
            f"  {LABELS.get(condition, condition):<26}{_pct(acc):>9}"
            f"{_pct(m['balanced_accuracy'][condition]):>10}"
            f"{_pct(m['final_accuracy'][condition]):>8}"
            + (f"{rms / eps:>8.2f}eps" if rms is not None else "")
        )
    gap = (
        f"; strongest control ({m['strongest_control']}) - protected: "
        f"{100 * m['control_gap']:.1f} points"
        if m["strongest_control"]
        else ""
    )
    lines += [
        f"  drop (clean - protected): {100 * m['accuracy_drop']:.1f} points{gap}",
        f"result: {result_path}",
    ]
    return "\n".join(lines)
