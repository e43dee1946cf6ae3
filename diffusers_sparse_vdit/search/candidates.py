"""The candidate modes the search scores for every head.

A :class:`Candidate` is a mode with its density knob, not yet bound to a head:
VERTICAL_STRIPE candidates say only *how many* stripe tiles they keep; which tiles is chosen
per head from measured attention mass (:mod:`.stripes`).

:func:`default_candidates` sets the knobs relative to the layout, so the solver chooses among
several densities of every sparse mode (the paper's stated limitation is one fixed sparsity
per mode). Targets are fractions of the video-video tile pairs:

* DIAGONAL and MULTI_DIAGONAL at 0.1, 0.25 and 0.5. A band of ``w`` tiles on each side of
  ``n`` video tiles keeps ``(n (2w + 1) - w (w + 1)) / n^2`` of them; we take the ``w``
  closest to each target and express it in frames (the ModeSpec unit), just under ``w``
  tiles so no partial tile is added. Both modes get the same widths, hence equal costs.
  At 81 frames / 480p Wan (256 tiles of 128) that is about 1, 2.6 and 5.6 frames.
* VERTICAL_STRIPE at 0.1 and 0.25, with a one-frame sink: a query keeps
  ``sink + stripes + 1`` tiles, so ``stripes = round(target n) - sink - 1`` (at least 1).
  Stripes are meant for "a few global columns"; a head that needs half the keys is better
  served by a band or FULL.
* SKIP and FULL (FULL is always present: it is the fallback of every rule).

Knob values that give the same tiles are kept once. The densities the solver uses are
measured on the plans themselves (:func:`candidate_densities`), text rows and columns
included, so they are the attention FLOP fractions the kernel computes.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Sequence

import torch

from ..layout import TokenLayout
from ..modes import Mode, ModeSpec
from ..plan import build_plan
from .stripes import canonical_stripes, sink_tiles, stripe_capacity

__all__ = ["Candidate", "default_candidates", "candidate_densities", "band_density"]


@dataclass(frozen=True)
class Candidate:
    """A mode and its knob: band ``width`` in frames, or a ``stripes`` count chosen per head."""

    mode: Mode
    width: float = 0.0
    stripes: int = 0
    sink_frames: int = 1

    def __post_init__(self):
        object.__setattr__(self, "mode", Mode.parse(self.mode))
        object.__setattr__(self, "width", float(self.width))
        object.__setattr__(self, "stripes", int(self.stripes))
        object.__setattr__(self, "sink_frames", int(self.sink_frames))
        if self.mode is Mode.VERTICAL_STRIPE:
            if self.stripes < 1 or self.sink_frames < 0:
                raise ValueError(f"a VERTICAL_STRIPE candidate needs stripes >= 1 and sink_frames >= 0, got {self}")
        elif self.stripes or self.sink_frames != 1:
            raise ValueError(f"{self.mode.name} candidates take no stripes or sink frames")
        self.spec()  # let ModeSpec validate the width

    @classmethod
    def full(cls) -> "Candidate":
        return cls(Mode.FULL)

    @classmethod
    def skip(cls) -> "Candidate":
        return cls(Mode.SKIP)

    @classmethod
    def diagonal(cls, width: float) -> "Candidate":
        return cls(Mode.DIAGONAL, width=width)

    @classmethod
    def multi_diagonal(cls, width: float) -> "Candidate":
        return cls(Mode.MULTI_DIAGONAL, width=width)

    @classmethod
    def vertical_stripe(cls, stripes: int, sink_frames: int = 1) -> "Candidate":
        return cls(Mode.VERTICAL_STRIPE, stripes=stripes, sink_frames=sink_frames)

    def spec(self, stripes: Sequence[float] = ()) -> ModeSpec:
        """The head spec; VERTICAL_STRIPE takes the head's stripe positions (at most ``self.stripes``)."""
        if self.mode is Mode.VERTICAL_STRIPE:
            if len(stripes) > self.stripes:
                raise ValueError(f"{self} keeps {self.stripes} stripes, got {len(stripes)} positions")
            return ModeSpec.vertical_stripe(tuple(stripes), sink_frames=self.sink_frames)
        return ModeSpec(self.mode, width=self.width)

    def scoring_spec(self, layout: TokenLayout, tile_size: int) -> ModeSpec:
        """The spec shared by all heads when scoring: stripes at the canonical positions."""
        if self.mode is Mode.VERTICAL_STRIPE:
            return self.spec(canonical_stripes(layout, tile_size, self.stripes, self.sink_frames))
        return self.spec()

    def to_dict(self) -> dict[str, Any]:
        return {"mode": self.mode.name, "width": self.width, "stripes": self.stripes, "sink_frames": self.sink_frames}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "Candidate":
        if not isinstance(data, dict) or set(data) - {"mode", "width", "stripes", "sink_frames"} or "mode" not in data:
            raise ValueError(f"not a candidate definition: {data!r}")
        return cls(**data)

    def __str__(self) -> str:
        if self.mode in (Mode.DIAGONAL, Mode.MULTI_DIAGONAL):
            return f"{self.mode.name}(width={self.width:.3g})"
        if self.mode is Mode.VERTICAL_STRIPE:
            return f"VERTICAL_STRIPE(stripes={self.stripes}, sink_frames={self.sink_frames})"
        return self.mode.name


# Finer steps than (0.1, 0.25, 0.5) give the budget solver choices between them: on the Wan
# reference pipeline they cut the final error by 4-25% at every density (docs/search.md).
DEFAULT_BAND_DENSITIES = (0.1, 0.175, 0.25, 0.35, 0.5, 0.7)


def band_density(half_width: int, video_tiles: int) -> float:
    """Fraction of video tile pairs a band of ``half_width`` tiles keeps."""
    n, w = video_tiles, min(half_width, video_tiles - 1)
    return (n * (2 * w + 1) - w * (w + 1)) / n**2


def _band_width(target: float, layout: TokenLayout, tile_size: int) -> float:
    n = layout.video_tiles(tile_size)
    w = min(range(n), key=lambda w: (abs(band_density(w, n) - target), w))
    # frames just under w tiles' worth of tokens: the mask rounds up to exactly w tiles
    return math.floor(w * tile_size / layout.frame_tokens * 1e6) / 1e6


def _stripe_count(target: float, layout: TokenLayout, tile_size: int, sink_frames: int) -> int:
    n = layout.video_tiles(tile_size)
    count = round(target * n) - sink_tiles(layout, tile_size, sink_frames) - 1
    return max(1, min(count, stripe_capacity(layout, tile_size, sink_frames)))


def default_candidates(
    layout: TokenLayout,
    tile_size: int = 128,
    *,
    band_densities: Sequence[float] = DEFAULT_BAND_DENSITIES,
    stripe_densities: Sequence[float] = (0.1, 0.25),
    sink_frames: int = 1,
    skip: bool = True,
) -> tuple[Candidate, ...]:
    """FULL, SKIP, then DIAGONAL, MULTI_DIAGONAL and VERTICAL_STRIPE at the target tile densities."""
    found = [Candidate.full()] + ([Candidate.skip()] if skip else [])
    widths = [_band_width(d, layout, tile_size) for d in band_densities]
    for mode in (Mode.DIAGONAL, Mode.MULTI_DIAGONAL):
        found += [Candidate(mode, width=w) for w in widths]
    if stripe_capacity(layout, tile_size, sink_frames) > 0:
        found += [Candidate.vertical_stripe(_stripe_count(d, layout, tile_size, sink_frames), sink_frames) for d in stripe_densities]
    unique: dict[ModeSpec, Candidate] = {}
    for c in found:  # identical tile masks (e.g. two targets rounding to one width) are kept once
        unique.setdefault(c.scoring_spec(layout, tile_size), c)
    return tuple(unique.values())


def candidate_densities(candidates: Sequence[Candidate], layout: TokenLayout, tile_size: int) -> torch.Tensor:
    """Per candidate, float64: the fraction of the dense attention pairs it computes.

    Exact for every head: a VERTICAL_STRIPE head costs the same wherever its stripes lie
    (the canonical positions are selectable tiles, like the chosen ones).
    """
    specs = [c.scoring_spec(layout, tile_size) for c in candidates]
    return build_plan(specs, layout, tile_size).head_density().clone()
