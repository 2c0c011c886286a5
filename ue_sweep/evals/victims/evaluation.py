"""Victims trained from scratch on clean, protected and equal-strength control data.

The job's headline evaluation (``evals=[victims]``, the default): how low a victim trained on the
protected set goes on the clean test set, against a victim on clean data and victims on control
noise with UC's cluster structure and energy (``uc/controls.py``). Its outcome is also the job's
``metrics``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch

from ue_sweep.evals.context import EvalContext
from ue_sweep.evals.victims.config import VictimsConfig
from ue_sweep.report.stats import percent
from ue_sweep.runtime.tracking import atomic_torch_save
from ue_sweep.uc.controls import control_noises, rms
from ue_sweep.uc.noise import apply_cluster_noise

_ROWS = 512
CONTROLS_FILE = "controls.pt"
LABELS = {
    "clean": "clean data",
    "protected": "UC-protected",
    "uniform": "uniform-noise control",
    "sign": "sign-noise control",
    "untrained": "untrained-generator ctl",
}


def _energy(
    clean: torch.Tensor,
    published: Mapping[str, torch.Tensor],
    noises: Mapping[str, torch.Tensor],
    eps: float,
) -> dict[str, dict[str, float]]:
    """Mean per-cluster RMS of each condition's noise, and the RMS of the change it makes to the
    published uint8 images (after clamping to [0, 1] and rounding): equal-strength controls
    show equal numbers here."""
    out = {}
    for name, noise in noises.items():
        change = 0.0
        for start in range(0, len(clean), _ROWS):
            rows = slice(start, start + _ROWS)
            diff = published[name][rows].float() - clean[rows].float()
            change += float(diff.pow_(2).sum(dtype=torch.float64)) / 255**2
        noise_rms = float(rms(noise).mean())
        out[name] = {
            "noise_rms": noise_rms,
            "published_rms": (change / clean.numel()) ** 0.5,
            "noise_rms_over_eps": noise_rms / eps,
        }
    return out


def victim_metrics(
    victims: dict[str, dict[str, Any]],
    controls: list[str],
    energy: dict[str, dict[str, float]],
) -> dict[str, Any]:
    """The headline numbers: each condition's accuracy averaged over the victims' last epochs,
    and how far protected data falls below clean data and below the strongest control (the
    control whose victim scores lowest)."""
    accuracy = {c: v["mean_last"]["accuracy"] for c, v in victims.items()}
    strongest = min(controls, key=accuracy.__getitem__) if controls else None
    return {
        "accuracy": accuracy,
        "final_accuracy": {c: v["accuracy"] for c, v in victims.items()},
        "balanced_accuracy": {c: v["mean_last"]["balanced_accuracy"] for c, v in victims.items()},
        # None for a victim reused from a store written before the record existed
        "worst_class_accuracy": {
            c: v["mean_last"].get("worst_class_accuracy") for c, v in victims.items()
        },
        "averaged_epochs": next(iter(victims.values()))["mean_last"]["epochs"],
        "accuracy_drop": accuracy["clean"] - accuracy["protected"],
        "strongest_control": strongest,
        "control_gap": None if strongest is None else accuracy[strongest] - accuracy["protected"],
        "energy": energy,
        "victims": victims,
    }


def run(ctx: EvalContext, cfg: VictimsConfig) -> dict[str, Any]:
    p, data = ctx.protection, ctx.data
    with torch.no_grad():
        controls = control_noises(cfg.controls, p.noise, p.eps, ctx.cfg.seed, p.untrained)
        published = {"protected": p.images} | {
            name: apply_cluster_noise(data.train_images, p.cluster_ids, noise)
            for name, noise in controls.items()
        }
        energy = _energy(data.train_images, published, {"protected": p.noise, **controls}, p.eps)
    if ctx.rt.is_main:
        atomic_torch_save(ctx.job_dir / CONTROLS_FILE, {n: c.cpu() for n, c in controls.items()})
    ctx.progress.info(
        "noise RMS / eps as published: %s",
        ", ".join(f"{c} {e['published_rms'] / p.eps:.3f}" for c, e in energy.items()),
    )
    victims = {
        condition: ctx.train_victim(condition, images)
        for condition, images in {"clean": data.train_images, **published}.items()
    }
    return victim_metrics(victims, list(controls), energy)


def summary(record: Mapping[str, Any], m: Mapping[str, Any]) -> Sequence[str]:
    cfg, data = record["config"], record["dataset"]
    eps = record["protection"]["eps"]
    lines = [
        f"victim {cfg['victim']['arch']}, {cfg['victim']['epochs']} epochs, accuracy on the "
        f"clean test set ({data['test_size']} images), mean of the last "
        f"{m['averaged_epochs']} epochs:",
        f"  {'trained on':<26}{'accuracy':>9}{'balanced':>10}{'worst':>8}{'final':>8}"
        f"{'noise RMS':>11}",
    ]
    worst = m.get("worst_class_accuracy", {})
    for condition, acc in m["accuracy"].items():
        energy = m["energy"].get(condition, {}).get("published_rms")
        worst_text = "–" if worst.get(condition) is None else percent(worst[condition])
        lines.append(
            f"  {LABELS.get(condition, condition):<26}{percent(acc):>9}"
            f"{percent(m['balanced_accuracy'][condition]):>10}"
            f"{worst_text:>8}"
            f"{percent(m['final_accuracy'][condition]):>8}"
            + (f"{energy / eps:>8.2f}eps" if energy is not None else "")
        )
    gap = (
        f"; strongest control ({m['strongest_control']}) - protected: "
        f"{100 * m['control_gap']:.1f} points ("
        + (
            "protected lowest on this seed; a claim needs several seeds"
            if m["control_gap"] > 0
            else "a control does as well on this seed"
        )
        + ")"
        if m["strongest_control"]
        else ""
    )
    lines.append(f"  drop (clean - protected): {100 * m['accuracy_drop']:.1f} points{gap}")
    return lines
