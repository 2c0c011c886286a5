"""The few lines a job prints when it ends."""

from __future__ import annotations

from typing import Any

LABELS = {
    "clean": "clean data",
    "protected": "UC-protected",
    "random_noise": "random-noise control",
}


def _pct(x: float) -> str:
    return f"{100 * x:5.1f}%"


def format_summary(record: dict[str, Any], result_path: str) -> str:
    cfg = record["config"]
    eps = cfg["generator"]["eps"]
    batch = record["batch"]
    victims = record["metrics"]["victims"]
    data = record["dataset"]
    surrogate = record["surrogate"]
    fitted = surrogate.get("fit")
    lines = [
        f"Unlearnable Clusters on {data['name']}: k={record['clusters']['k']}, "
        f"eps={eps * 255:.3g}/255, scope {cfg['generator']['scope']}, batch "
        f"{batch['per_device']} per device x {record['world_size']} = {batch['global']}",
        f"surrogate {surrogate['arch']} ({surrogate['weights']}"
        + (f", test accuracy {_pct(fitted['test_accuracy']).strip()}" if fitted else "")
        + f"); generators {record['generator']['epochs']} epochs at "
        f"{record['throughput']['generator_images_per_s']:.0f} images/s",
        f"victim {cfg['victim']['arch']}, {cfg['victim']['epochs']} epochs, accuracy on the "
        f"clean test set ({data['test_size']} images):",
        f"  {'trained on':<22}{'accuracy':>9}{'balanced':>10}",
    ]
    for condition, label in LABELS.items():
        v = victims[condition]
        lines.append(f"  {label:<22}{_pct(v['accuracy']):>9}{_pct(v['balanced_accuracy']):>10}")
    m = record["metrics"]
    lines += [
        f"  drop (clean - protected): {100 * m['accuracy_drop']:.1f} points; "
        f"control - protected: {100 * m['control_gap']:.1f} points",
        f"result: {result_path}",
    ]
    return "\n".join(lines)
