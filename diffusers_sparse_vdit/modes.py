"""The five per-head attention modes and their density knobs.

A :class:`ModeSpec` is one head's choice: a :class:`Mode` plus the knob that sets how
many key tiles it keeps. Specs are frozen and hashable so plans can be cached on them.

Knobs (DESIGN §2; the paper publishes none, these are ours):

* ``DIAGONAL(width)``: a band of ``width`` frames' worth of tokens on each side of the
  query's tile, in frame-major ``(f, h, w)`` order: spatial neighbours in the same and
  nearby frames.
* ``MULTI_DIAGONAL(width)``: the same band in token-major ``(h, w, f)`` order, where the
  frame-stride diagonals of temporal heads become one contiguous band; ``width`` frames'
  worth of tokens again, so DIAGONAL and MULTI_DIAGONAL of equal width cost the same.
* ``VERTICAL_STRIPE(stripes, sink_frames)``: key tiles shared by every query: the first
  ``sink_frames`` latent frames (attention sink), the tiles at the relative positions
  ``stripes`` (fractions of the video sequence, so a map made at one resolution applies at
  another), and the query's own tile.
"""

from __future__ import annotations

import enum
import math
from dataclasses import dataclass

__all__ = ["Mode", "ModeSpec"]


class Mode(enum.IntEnum):
    FULL = 0
    SKIP = 1
    DIAGONAL = 2
    MULTI_DIAGONAL = 3
    VERTICAL_STRIPE = 4

    @classmethod
    def parse(cls, value: "Mode | str | int") -> "Mode":
        if isinstance(value, Mode):
            return value
        if isinstance(value, str):
            try:
                return cls[value.strip().upper()]
            except KeyError:
                raise ValueError(f"unknown mode {value!r}; expected one of {[m.name for m in cls]}") from None
        try:
            return cls(int(value))
        except ValueError:
            raise ValueError(f"unknown mode id {value!r}; expected 0..{len(cls) - 1}") from None


@dataclass(frozen=True)
class ModeSpec:
    """One head's mode and density knob. Build with the class methods, e.g. ``ModeSpec.diagonal(1.0)``."""

    mode: Mode
    width: float = 0.0
    stripes: tuple[float, ...] = ()
    sink_frames: int = 1

    def __post_init__(self):
        object.__setattr__(self, "mode", Mode.parse(self.mode))
        width = float(self.width)
        if not math.isfinite(width) or width < 0:
            raise ValueError(f"band width must be a finite number of frames >= 0, got {self.width!r}")
        object.__setattr__(self, "width", width)
        stripes = tuple(sorted({round(float(s), 6) for s in self.stripes}))
        if any(not (0.0 <= s < 1.0) for s in stripes):
            raise ValueError(f"stripe positions are fractions of the video sequence in [0, 1), got {self.stripes!r}")
        object.__setattr__(self, "stripes", stripes)
        if int(self.sink_frames) < 0:
            raise ValueError(f"sink_frames must be >= 0, got {self.sink_frames!r}")
        object.__setattr__(self, "sink_frames", int(self.sink_frames))
        banded = self.mode in (Mode.DIAGONAL, Mode.MULTI_DIAGONAL)
        if not banded and self.width:
            raise ValueError(f"{self.mode.name} takes no band width")
        if self.mode is not Mode.VERTICAL_STRIPE and (self.stripes or self.sink_frames != 1):
            raise ValueError(f"{self.mode.name} takes no stripes or sink frames")

    # Constructors -------------------------------------------------------------------------
    @classmethod
    def full(cls) -> "ModeSpec":
        return cls(Mode.FULL)

    @classmethod
    def skip(cls) -> "ModeSpec":
        return cls(Mode.SKIP)

    @classmethod
    def diagonal(cls, width: float = 1.0) -> "ModeSpec":
        return cls(Mode.DIAGONAL, width=width)

    @classmethod
    def multi_diagonal(cls, width: float = 1.0) -> "ModeSpec":
        return cls(Mode.MULTI_DIAGONAL, width=width)

    @classmethod
    def vertical_stripe(cls, stripes: "int | tuple[float, ...]" = 4, sink_frames: int = 1) -> "ModeSpec":
        """``stripes`` is either explicit relative positions or a count of evenly spaced ones."""
        if isinstance(stripes, int):
            stripes = tuple((i + 0.5) / stripes for i in range(stripes))
        return cls(Mode.VERTICAL_STRIPE, stripes=tuple(stripes), sink_frames=sink_frames)

    @property
    def reordered(self) -> bool:
        """Whether this head runs in token-major order inside the kernel."""
        return self.mode is Mode.MULTI_DIAGONAL

    def __str__(self) -> str:
        if self.mode in (Mode.DIAGONAL, Mode.MULTI_DIAGONAL):
            return f"{self.mode.name}(width={self.width:g})"
        if self.mode is Mode.VERTICAL_STRIPE:
            return f"VERTICAL_STRIPE(stripes={len(self.stripes)}, sink_frames={self.sink_frames})"
        return self.mode.name
