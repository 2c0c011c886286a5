"""The SAL table of one victim as a picture: layers (rows, input first) x epochs (columns).

A diverging colour map centred on the clean victim's threshold beta, so that red cells are the
layers #LP counts (SAL > beta) and blue ones are not; one colour scale for every condition of a
job (``vmax``), so that pictures side by side compare. SAL is >= 0 by construction (the
unperturbed weight is in the ball), so a map centred at 0 would spend half its colours on
nothing.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

#: cells annotated with their value up to this many
ANNOTATE_CELLS = 400


def render(
    sal: Sequence[Sequence[float]],
    layers: Sequence[str],
    epochs: Sequence[int],
    beta: float,
    vmax: float,
    title: str,
) -> np.ndarray:
    """``sal[layer][epoch]`` -> uint8 ``[H, W, 3]``; ``epochs`` 0-based (shown 1-based)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.colors import Normalize, TwoSlopeNorm
    from matplotlib.figure import Figure

    values = np.asarray(sal, dtype=float).reshape(len(layers), len(epochs))
    vmin = min(0.0, float(values.min()))
    vmax = max(vmax, float(values.max()), vmin + 1e-12)
    norm = (
        TwoSlopeNorm(vcenter=beta, vmin=vmin, vmax=vmax)
        if vmin < beta < vmax
        else Normalize(vmin=vmin, vmax=vmax)
    )
    fig = Figure(figsize=(2.6 + 0.55 * len(epochs), 1.4 + 0.32 * len(layers)), layout="constrained")
    canvas = FigureCanvasAgg(fig)
    ax = fig.subplots()
    image = ax.imshow(values, cmap="RdBu_r", norm=norm, aspect="auto", interpolation="nearest")
    ax.set_xticks(range(len(epochs)), [str(e + 1) for e in epochs])
    ax.set_yticks(range(len(layers)), list(layers), fontsize="small")
    ax.set_xlabel("epoch")
    ax.set_title(title, fontsize="medium")
    if values.size <= ANNOTATE_CELLS:
        for (i, j), v in np.ndenumerate(values):
            light = abs(norm(v) - 0.5) > 0.35
            ax.text(
                j, i, f"{v:.2f}", ha="center", va="center", fontsize=7,
                color="white" if light else "black",
            )  # fmt: skip
    bar = fig.colorbar(image, ax=ax)
    bar.set_label(f"SAL (loss change); centre: beta = {beta:.3g}", fontsize="small")
    canvas.draw()
    return np.asarray(canvas.buffer_rgba())[..., :3].copy()
