"""``evals.victims``: which control victims train next to the clean and protected ones."""

from __future__ import annotations

from dataclasses import dataclass

from ue_sweep.config import CONTROLS, setting


@dataclass
class VictimsConfig:
    # Victims on control noise with UC's cluster structure (uc/controls.py): `uniform` in
    # [-eps, eps]; `sign` (random +-1 per pixel) and `untrained` (the generator bank before
    # training) scaled to the UC noise's energy per cluster.
    controls: list[str] = setting(list(CONTROLS), one_of=CONTROLS)  # noqa: RUF009 (a factory)
