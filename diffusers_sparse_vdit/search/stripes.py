"""Per-head stripe tiles for VERTICAL_STRIPE: measure, choose, and score them with shared plans.

Which key tiles a VERTICAL_STRIPE head keeps is not a knob of the candidate but a property
of the head: the tiles that receive the most attention from every query. The scorer measures,
on its sampled video query rows, the softmax mass each frame-major video key tile receives
(:func:`key_tile_mass`), accumulates it over calls, and ranks tiles by it
(:func:`top_stripe_tiles`). The mass a query puts on its own tile is left out, since the mode
keeps that tile anyway and it would otherwise favour whichever tiles happened to be sampled;
sink tiles (always kept) and the partly filled last video tile are never chosen.

Scoring every head with its own stripes would need one plan per distinct stripe set, and
plans keep their tile lists for good (the plan module's pool is append-only). Instead each
head's video tiles are permuted so that its chosen tiles sit at the same *canonical*
positions (the tiles right after the sink) for every head, and one shared plan
(:func:`canonical_stripes`) runs all heads (:class:`StripePermutation`). This is exact:
VERTICAL_STRIPE keeps "sink tiles, the stripe tiles, the query's own tile", a rule that
commutes with any relabelling of tiles that fixes the sink, so permuting queries, keys and
values alike and un-permuting the output gives the head's true output. Same-size tiles only
are moved (sink and the partial last tile stay put), so no tile changes length.
"""

from __future__ import annotations

import functools
import math

import torch

from ..layout import FRAME_MAJOR, TokenLayout

__all__ = [
    "sink_tiles",
    "selectable_tiles",
    "stripe_capacity",
    "tile_positions",
    "canonical_stripes",
    "top_stripe_tiles",
    "key_tile_mass",
    "weighted_row_mass",
    "StripePermutation",
]


def sink_tiles(layout: TokenLayout, tile_size: int, sink_frames: int) -> int:
    """Video tiles covered by the attention sink (the first ``sink_frames`` frames), as in the masks."""
    return -(-min(sink_frames, layout.frames) * layout.frame_tokens // tile_size)


def _partial_last(layout: TokenLayout, tile_size: int) -> bool:
    return layout.video_tokens % tile_size != 0


def selectable_tiles(layout: TokenLayout, tile_size: int, sink_frames: int) -> torch.Tensor:
    """Boolean ``(video_tiles,)``: tiles a stripe may be placed on (not sink, not the partial last tile)."""
    nvt = layout.video_tiles(tile_size)
    ok = torch.ones(nvt, dtype=torch.bool)
    ok[: sink_tiles(layout, tile_size, sink_frames)] = False
    if _partial_last(layout, tile_size):
        ok[-1] = False
    return ok


def stripe_capacity(layout: TokenLayout, tile_size: int, sink_frames: int) -> int:
    """How many stripes a head can have: the selectable tiles."""
    return int(selectable_tiles(layout, tile_size, sink_frames).sum())


def tile_positions(tiles, video_tiles: int) -> tuple[float, ...]:
    """Relative stripe positions (ModeSpec's unit) of frame-major video tiles: tile centres."""
    return tuple((int(t) + 0.5) / video_tiles for t in tiles)


def canonical_stripes(layout: TokenLayout, tile_size: int, count: int, sink_frames: int) -> tuple[float, ...]:
    """Positions of the ``count`` canonical stripe tiles: the selectable tiles right after the sink."""
    first = sink_tiles(layout, tile_size, sink_frames)
    if count > stripe_capacity(layout, tile_size, sink_frames):
        raise ValueError(f"{count} stripes do not fit in {layout} at tile {tile_size} beside a {sink_frames}-frame sink")
    return tile_positions(range(first, first + count), layout.video_tiles(tile_size))


def top_stripe_tiles(mass: torch.Tensor, count: int, selectable: torch.Tensor) -> torch.Tensor:
    """The ``count`` selectable tiles with the most mass, best first: ``(..., count)`` int64.

    Ties go to the lower tile index, so the choice is deterministic.
    """
    if count > int(selectable.sum()):
        raise ValueError(f"cannot choose {count} stripes among {int(selectable.sum())} selectable tiles")
    masked = mass.double().masked_fill(~selectable.to(mass.device), -math.inf)
    order = torch.sort(masked, dim=-1, descending=True, stable=True).indices
    return order[..., :count]


@functools.lru_cache(maxsize=16)
def frame_major_tile_of_token(layout: TokenLayout, tile_size: int) -> torch.Tensor:
    """Frame-major kernel tile of every caller token (cached: the scorer asks every call)."""
    return layout.tile_of_token(FRAME_MAJOR, tile_size)


def key_tile_mass(
    q: torch.Tensor,
    k: torch.Tensor,
    rows: torch.Tensor,
    row_weights: torch.Tensor,
    layout: TokenLayout,
    tile_size: int,
    *,
    scale: float,
    key_valid: torch.Tensor | None = None,
    max_elements: int = 1 << 28,
) -> torch.Tensor:
    """Attention mass per frame-major video key tile, averaged over sampled video query rows.

    ``rows`` are caller indices of video query rows and ``row_weights`` their sampling weights.
    Returns float64 ``(B, H, video_tiles)``: per batch item and head, the weighted mean over
    rows of the softmax probability summed over each key tile, with each row's own tile
    zeroed. ``key_valid`` (bool ``(B, N)``) masks padded text keys. Memory stays bounded:
    at most ``max_elements`` scores (batch x heads x rows x keys) exist at a time.
    """
    batch, heads, n, _ = q.shape
    nvt, start, count = layout.video_tiles(tile_size), layout.video_start, layout.video_tokens
    whole = count // tile_size  # frame-major video key tiles are contiguous runs of keys
    own = frame_major_tile_of_token(layout, tile_size).to(q.device)[rows]
    weights = row_weights.to(q.device, torch.float64)
    mass = torch.zeros(batch, heads, nvt, dtype=torch.float64, device=q.device)
    per_chunk = max(1, max_elements // (batch * n))  # rows x heads per chunk
    head_step = max(1, min(heads, per_chunk // max(1, len(rows))))
    row_step = max(1, per_chunk // head_step)
    for h0 in range(0, heads, head_step):
        hs = slice(h0, min(heads, h0 + head_step))
        kh = k[:, hs].float()
        for r0 in range(0, len(rows), row_step):
            idx = rows[r0 : r0 + row_step]
            logits = torch.matmul(q[:, hs, idx].float(), kh.transpose(-1, -2)).mul_(scale)  # (B, h, r, N)
            if key_valid is not None:
                logits.masked_fill_(~key_valid[:, None, None, :], -math.inf)
            lse = torch.logsumexp(logits, dim=-1, keepdim=True)
            probs = logits[..., start : start + count].sub_(lse).exp_()  # video keys only, in place
            per_tile = torch.zeros(*probs.shape[:3], nvt, device=q.device)
            per_tile[..., :whole] = probs[..., : whole * tile_size].reshape(*probs.shape[:3], whole, tile_size).sum(-1)
            if whole < nvt:
                per_tile[..., whole] = probs[..., whole * tile_size :].sum(-1)
            mass[:, hs] += weighted_row_mass(per_tile, own[r0 : r0 + row_step], weights[r0 : r0 + row_step])
    return mass / weights.sum()


def weighted_row_mass(per_tile: torch.Tensor, own: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """Per-row key-tile mass ``(B, H, R, T)`` summed over rows by ``weights``, each row's ``own`` tile
    left out: float64 ``(B, H, T)``. ``per_tile`` is overwritten."""
    per_tile.scatter_(3, own.view(1, 1, -1, 1).expand(*per_tile.shape[:3], 1), 0.0)
    return torch.einsum("bhrt,r->bht", per_tile.double(), weights.double())


class StripePermutation:
    """Per-head token permutation that moves each head's stripe tiles to the canonical positions.

    ``tiles`` is int64 ``(H, K)``: head ``h``'s chosen frame-major video tiles, best first
    (rows of -1 leave a head unpermuted). Tile ``tiles[h, i]`` goes to canonical position
    ``first + i``; every other tile keeps its relative order in the remaining positions, which
    leaves the sink tiles and the partial last tile where they are.

    ``perm[h, i]`` is the caller token placed at position ``i`` for head ``h``; ``inv`` is its
    inverse (where caller token ``j`` went).
    """

    def __init__(self, tiles: torch.Tensor, layout: TokenLayout, tile_size: int, sink_frames: int):
        heads, count = tiles.shape
        nvt, first = layout.video_tiles(tile_size), sink_tiles(layout, tile_size, sink_frames)
        selectable = selectable_tiles(layout, tile_size, sink_frames)
        canon = torch.arange(first, first + count)
        token = torch.arange(layout.video_tokens)
        perm = torch.arange(layout.num_tokens).repeat(heads, 1)
        for h in range(heads):
            chosen = tiles[h].cpu()
            if (chosen < 0).all():
                continue
            if not bool(selectable[chosen].all()) or len(set(chosen.tolist())) != count:
                raise ValueError(f"head {h}: stripe tiles {chosen.tolist()} must be distinct selectable tiles")
            sigma = torch.empty(nvt, dtype=torch.int64)  # position -> tile
            sigma[canon] = chosen
            free_pos = torch.ones(nvt, dtype=torch.bool)
            free_pos[canon] = False
            free_tile = torch.ones(nvt, dtype=torch.bool)
            free_tile[chosen] = False
            sigma[free_pos] = free_tile.nonzero().flatten()
            src = sigma[token // tile_size] * tile_size + token % tile_size
            perm[h, layout.video_start : layout.video_start + layout.video_tokens] = layout.video_start + src
        self.perm = perm
        self.inv = torch.empty_like(perm).scatter_(1, perm, torch.arange(layout.num_tokens).expand(heads, -1))
        self.layout, self.tile_size = layout, tile_size
        self._on: dict[torch.device, tuple[torch.Tensor, torch.Tensor]] = {}

    def _maps(self, device) -> tuple[torch.Tensor, torch.Tensor]:
        if device not in self._on:
            self._on[device] = (self.perm.to(device), self.inv.to(device))
        return self._on[device]

    def apply(self, x: torch.Tensor) -> torch.Tensor:
        """``(B, H, N, D)`` in caller order -> each head's permuted order (a copy)."""
        index = self._maps(x.device)[0][None, :, :, None].expand(x.shape[0], -1, -1, x.shape[-1])
        return torch.gather(x, 2, index)

    def gather_rows(self, x: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
        """Rows ``rows`` (caller indices) of a permuted-order ``(B, H, N, D)`` tensor: ``(B, H, R, D)``."""
        index = self._maps(x.device)[1][:, rows][None, :, :, None].expand(x.shape[0], -1, -1, x.shape[-1])
        return torch.gather(x, 2, index)

    def restore(self, x: torch.Tensor) -> torch.Tensor:
        """A permuted-order ``(B, H, N, D)`` tensor back in caller order."""
        return self.gather_rows(x, torch.arange(x.shape[2], device=x.device))

    def query_tiles(self, rows: torch.Tensor) -> torch.Tensor:
        """Frame-major tiles (any head) holding the permuted positions of the given caller rows."""
        tile_of = frame_major_tile_of_token(self.layout, self.tile_size)
        return torch.unique(tile_of[self.inv[:, rows.cpu()]])
