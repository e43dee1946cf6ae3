"""Tile-level rules of each mode: which video key tiles a video query tile attends to.

One small function per mode, all with the same signature, returning each video query tile's
video key tiles as a padded matrix in the head's kernel order (token-major for
MULTI_DIAGONAL, frame-major otherwise): ``(keys, valid)``, both ``(video_tiles, width)``,
where row ``i`` keeps ``keys[i][valid[i]]`` in ascending order. Lists rather than a dense
``(video_tiles, video_tiles)`` matrix, so a plan costs the tiles it keeps: a 720p
HunyuanVideo layout has 929 video tiles of 128. Text rows and columns are added by the
plan, the same way for every mode (DESIGN §2), so they are not repeated here.
"""

from __future__ import annotations

import math

import torch

from .layout import TokenLayout
from .modes import Mode, ModeSpec

__all__ = ["video_key_tiles", "video_tile_mask", "band_half_width"]


def band_half_width(width: float, layout: TokenLayout, tile_size: int) -> int:
    """Band half-width in tiles covering ``width`` frames' worth of tokens on each side."""
    return math.ceil(width * layout.frame_tokens / tile_size - 1e-9)


def _full(spec: ModeSpec, layout: TokenLayout, tile_size: int) -> tuple[torch.Tensor, torch.Tensor]:
    n = layout.video_tiles(tile_size)
    return torch.arange(n).expand(n, n), torch.ones(n, n, dtype=torch.bool)


def _skip(spec: ModeSpec, layout: TokenLayout, tile_size: int) -> tuple[torch.Tensor, torch.Tensor]:
    n = layout.video_tiles(tile_size)
    return torch.zeros(n, 0, dtype=torch.long), torch.zeros(n, 0, dtype=torch.bool)


def _band(spec: ModeSpec, layout: TokenLayout, tile_size: int) -> tuple[torch.Tensor, torch.Tensor]:
    # DIAGONAL and MULTI_DIAGONAL share the band; they differ only in the token order the
    # kernel runs the head in (frame-major vs token-major), which the layout supplies.
    n = layout.video_tiles(tile_size)
    half = min(band_half_width(spec.width, layout, tile_size), n - 1)
    keys = torch.arange(n)[:, None] + torch.arange(-half, half + 1)[None, :]
    valid = (keys >= 0) & (keys < n)
    return keys.clamp_(0, n - 1), valid


def _vertical_stripe(spec: ModeSpec, layout: TokenLayout, tile_size: int) -> tuple[torch.Tensor, torch.Tensor]:
    n = layout.video_tiles(tile_size)
    sink = -(-min(spec.sink_frames, layout.frames) * layout.frame_tokens // tile_size)
    stripes = torch.tensor([min(int(s * n), n - 1) for s in spec.stripes], dtype=torch.long)
    shared = torch.unique(torch.cat([torch.arange(sink), stripes]))  # sorted
    # Each row is the shared tiles with the query's own tile merged in (not sorted: rows are
    # long and every head has its own stripes).
    own = torch.arange(n)[:, None]
    at = torch.searchsorted(shared, own)  # where the own tile goes
    col = torch.arange(len(shared) + 1)[None, :]
    pad = shared.new_full((1,), -1)
    before, after = torch.cat([shared, pad]), torch.cat([pad, shared])  # shared[col], shared[col - 1]
    keys = torch.where(col < at, before, torch.where(col == at, own, after))
    valid = (col != at) | (torch.take(before, at) != own)  # the own tile once when it is also shared
    return keys, valid


_RULES = {
    Mode.FULL: _full,
    Mode.SKIP: _skip,
    Mode.DIAGONAL: _band,
    Mode.MULTI_DIAGONAL: _band,
    Mode.VERTICAL_STRIPE: _vertical_stripe,
}


def video_key_tiles(spec: ModeSpec, layout: TokenLayout, tile_size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``(keys, valid)``, int64 and bool ``(video_tiles, width)``: each video query tile's video key tiles."""
    return _RULES[spec.mode](spec, layout, tile_size)


def video_tile_mask(spec: ModeSpec, layout: TokenLayout, tile_size: int) -> torch.Tensor:
    """Boolean ``(video_tiles, video_tiles)``: video query tile -> video key tile, kernel order (small sizes)."""
    keys, valid = video_key_tiles(spec, layout, tile_size)
    n = layout.video_tiles(tile_size)
    mask = torch.zeros(n, n, dtype=torch.bool)
    rows = torch.arange(n)[:, None].expand_as(keys)
    mask[rows[valid], keys[valid]] = True
    return mask
