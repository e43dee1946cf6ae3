"""``plot_mode_map``: a picture of a mode map, layers down and heads across, one colour per mode.

The shade of a cell shows its knob (lighter = fewer keys: a narrower band, fewer stripes),
and small maps print the knob in the cell. matplotlib is an optional dependency
(``pip install 'diffusers-sparse-vdit[plot]'``); we draw on a bare ``Figure``, which renders
with Agg and leaves pyplot's global backend and figure list alone.
"""

from __future__ import annotations

import io
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from .card import knob_text
from .modes import Mode

if TYPE_CHECKING:
    from .config import SparseVDiTConfig

__all__ = ["plot_mode_map", "MODE_COLORS", "matplotlib_available"]

INSTALL_HINT = "it needs matplotlib: pip install matplotlib (or pip install 'diffusers-sparse-vdit[plot]')"

# Okabe-Ito colours (colour-blind safe); SKIP light grey so that it still reads as a cell.
MODE_COLORS = {
    Mode.FULL: "#333333",
    Mode.SKIP: "#e4e4e4",
    Mode.DIAGONAL: "#0072b2",
    Mode.MULTI_DIAGONAL: "#e69f00",
    Mode.VERTICAL_STRIPE: "#009e73",
}
_LIGHTEST = 0.6  # how far towards white the smallest knob of a mode is shaded


def matplotlib_available() -> bool:
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        return False
    return True


def plot_mode_map(config: "SparseVDiTConfig", path: str | Path | None = None, step_range: int = 0) -> bytes:
    """Draw the mode of every (layer, head) of one step range as a PNG; write it to ``path`` if given.

    Returns the PNG bytes (``IPython.display.Image(data=...)`` shows them in a notebook).
    """
    try:
        from matplotlib.figure import Figure
        from matplotlib.patches import Patch
    except ImportError:
        raise ImportError(f"plot_mode_map: {INSTALL_HINT}") from None
    from matplotlib.colors import to_rgb

    if not 0 <= step_range < config.num_ranges:
        raise ValueError(f"step_range must be in 0..{config.num_ranges - 1}, got {step_range}")
    modes = config.modes[step_range].numpy()
    knobs = _knobs(config, step_range)
    layers, heads = modes.shape

    # Cell colour: the mode's colour, blended towards white for the smaller knobs of that mode.
    rgb = np.ones((layers, heads, 3))
    for mode in Mode:
        sel = modes == mode
        if not sel.any():
            continue
        k = knobs[sel]
        top = k.max()
        lightness = _LIGHTEST * (1 - k / top) if top > 0 and k.min() < top else np.zeros_like(k)
        rgb[sel] = np.asarray(to_rgb(MODE_COLORS[mode])) * (1 - lightness[:, None]) + lightness[:, None]

    cell_w, cell_h = (0.32, 0.24) if heads * layers <= 4096 else (0.16, 0.12)
    fig = Figure(figsize=(max(4.0, heads * cell_w + 2.5), max(3.0, layers * cell_h + 1.2)), dpi=100)
    ax = fig.add_subplot()
    ax.imshow(rgb, aspect="auto", interpolation="nearest")
    ax.set_xticks(np.arange(-0.5, heads), minor=True)
    ax.set_yticks(np.arange(-0.5, layers), minor=True)
    ax.grid(which="minor", color="white", linewidth=0.6)
    ax.tick_params(which="minor", length=0)
    ax.set_xticks(range(0, heads, _stride(heads, 32)))
    ax.set_xlabel("head")
    y_ticks = range(0, layers, _stride(layers, 40))
    ax.set_yticks(y_ticks, [config.target_modules[i] for i in y_ticks], fontsize=7)
    for layers_of_group in list(config.layer_groups().values())[1:]:  # a line where a block type starts
        ax.axhline(layers_of_group[0] - 0.5, color="black", linewidth=1.5)

    if heads * layers <= 4096:  # print the knob in the cells while they are big enough to read
        for (i, j), mode in np.ndenumerate(modes):
            if Mode(mode) in (Mode.FULL, Mode.SKIP):
                continue
            dark = (rgb[i, j] @ [0.299, 0.587, 0.114]) < 0.55
            ax.text(j, i, f"{knobs[i, j]:g}", ha="center", va="center", fontsize=6, color="white" if dark else "black")

    start, end = config.step_ranges[step_range]
    steps = "" if config.num_ranges == 1 else f", steps {start} to {'the end' if end < 0 else end - 1}"
    ax.set_title(f"Sparse-vDiT mode map: {config.base_model or config.transformer_class}{steps}", fontsize=10)
    counts = config.mode_counts(step_range)
    handles = []
    for mode in Mode:
        knob = knob_text(config, mode, step_range)
        label = f"{mode.name}: {counts[mode.name]}" + (f" ({knob})" if knob else "")
        handles.append(Patch(facecolor=MODE_COLORS[mode], edgecolor="#999999", label=label))
    ax.legend(
        handles=handles,
        loc="upper left",
        bbox_to_anchor=(1.01, 1.0),
        frameon=False,
        fontsize=8,
        title="mode: heads (knob range)\nshade and number: band width in\nframes or stripe count (lighter = sparser)",
        title_fontsize=8,
    )

    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", bbox_inches="tight")
    png = buffer.getvalue()
    if path is not None:
        Path(path).write_bytes(png)
    return png


def _knobs(config: "SparseVDiTConfig", r: int) -> np.ndarray:
    """Per (layer, head): band width for banded heads, stripe count for stripe heads, else 0."""
    modes = config.modes[r].numpy()
    stripes = (config.stripes[r] >= 0).sum(-1).numpy().astype(np.float64)
    banded = (modes == Mode.DIAGONAL) | (modes == Mode.MULTI_DIAGONAL)
    return np.where(banded, config.widths[r].numpy(), np.where(modes == Mode.VERTICAL_STRIPE, stripes, 0.0))


def _stride(n: int, most: int) -> int:
    """Tick stride so that at most ``most`` ticks are labelled."""
    return max(1, -(-n // most))
