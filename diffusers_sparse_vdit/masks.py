"""Tile-level masks of each mode: which video key tiles a video query tile attends to.

One small function per mode, all with the same signature, returning a boolean
``(video_tiles, video_tiles)`` matrix in the head's kernel order (token-major for
MULTI_DIAGONAL, frame-major otherwise). Text rows and columns are added by the plan, the
same way for every mode (DESIGN §2), so they are not repeated here.
"""

from __future__ import annotations

import math

import torch

from .layout import TokenLayout
from .modes import Mode, ModeSpec

__all__ = ["video_tile_mask", "band_half_width"]


def band_half_width(width: float, layout: TokenLayout, tile_size: int) -> int:
    """Band half-width in tiles covering ``width`` frames' worth of tokens on each side."""
    return math.ceil(width * layout.frame_tokens / tile_size - 1e-9)


def _full(spec: ModeSpec, layout: TokenLayout, tile_size: int) -> torch.Tensor:
    n = layout.video_tiles(tile_size)
    return torch.ones(n, n, dtype=torch.bool)


def _skip(spec: ModeSpec, layout: TokenLayout, tile_size: int) -> torch.Tensor:
    n = layout.video_tiles(tile_size)
    return torch.zeros(n, n, dtype=torch.bool)


def _band(spec: ModeSpec, layout: TokenLayout, tile_size: int) -> torch.Tensor:
    # DIAGONAL and MULTI_DIAGONAL share the band; they differ only in the token order the
    # kernel runs the head in (frame-major vs token-major), which the layout supplies.
    n = layout.video_tiles(tile_size)
    i = torch.arange(n)
    return (i[:, None] - i[None, :]).abs() <= band_half_width(spec.width, layout, tile_size)


def _vertical_stripe(spec: ModeSpec, layout: TokenLayout, tile_size: int) -> torch.Tensor:
    n = layout.video_tiles(tile_size)
    mask = torch.eye(n, dtype=torch.bool)  # the query's own tile
    sink = -(-min(spec.sink_frames, layout.frames) * layout.frame_tokens // tile_size)
    mask[:, :sink] = True
    for s in spec.stripes:
        mask[:, min(int(s * n), n - 1)] = True
    return mask


_MASKS = {
    Mode.FULL: _full,
    Mode.SKIP: _skip,
    Mode.DIAGONAL: _band,
    Mode.MULTI_DIAGONAL: _band,
    Mode.VERTICAL_STRIPE: _vertical_stripe,
}


def video_tile_mask(spec: ModeSpec, layout: TokenLayout, tile_size: int) -> torch.Tensor:
    """Boolean ``(video_tiles, video_tiles)``: video query tile -> video key tile, kernel order."""
    return _MASKS[spec.mode](spec, layout, tile_size)
