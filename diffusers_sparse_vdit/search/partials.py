"""Every candidate's output on sampled query rows from one pass over the keys (the CPU scoring path).

A block-sparse mode keeps, for each query row, a set of whole key tiles. Softmax attention
over a union of key tiles combines exactly from per-tile partial results, as flash attention
combines its blocks: for row ``r`` and key tile ``t`` keep the tile's largest logit ``m``, the
sum of ``exp(logit - m)`` and the ``exp``-weighted sum of its values. :func:`tile_partials`
computes these once per sampled row (``rows x N`` logits, never ``N x N``), and
:func:`combine` gives any number of tile masks' outputs from them in ``rows x tiles x D``
work each, so all candidates of a call share one ``Q K^T`` and one ``P V`` instead of one
attention each. :func:`tile_mass` gives the softmax mass each key tile receives from the same
partials (the stripe statistic).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

__all__ = ["TilePartials", "tile_partials", "combine", "tile_mass"]


@dataclass
class TilePartials:
    """Per (batch, head, row, key tile) softmax partials, float32."""

    max: torch.Tensor  # (B, H, R, T): largest logit of the tile (-inf where every key is masked)
    sum: torch.Tensor  # (B, H, R, T): sum of exp(logit - max)
    out: torch.Tensor  # (B, H, R, T, D), contiguous: sum of exp(logit - max) * value


def tile_partials(q_rows: torch.Tensor, k_tiles: torch.Tensor, v_tiles: torch.Tensor, key_ok: torch.Tensor | None, *,
                  tile_size: int, scale: float) -> TilePartials:
    """Partials of query rows ``q_rows`` ``(B, H, R, D)`` over keys given tile by tile.

    ``k_tiles``, ``v_tiles``: ``(B, H, T * tile_size, D)``, keys in kernel order, each tile padded
    to ``tile_size`` rows; ``key_ok``: bool ``(B or 1, T * tile_size)``, False for padding rows
    and masked keys (None: every key counts).
    """
    batch, heads, rows, head_dim = q_rows.shape
    logits = torch.matmul(q_rows.float() * scale, k_tiles.float().transpose(-1, -2))  # (B, H, R, T * tile)
    if key_ok is not None:
        logits.masked_fill_(~key_ok[:, None, None, :], -math.inf)
    logits = logits.view(batch, heads, rows, -1, tile_size)
    peak = logits.amax(-1)
    probs = logits.sub_(torch.where(peak.isneginf(), 0.0, peak)[..., None]).exp_()  # in place: logits are spent
    # P V tile by tile, one batched matmul per (batch item, head) on strided views: rows stay
    # outermost in the result (combine() reads it in order) and nothing is copied
    values = v_tiles.float().view(batch * heads, -1, tile_size, head_dim)
    out = probs.new_empty(batch, heads, rows, peak.shape[-1], head_dim)
    for p, v, o in zip(probs.flatten(0, 1), values, out.flatten(0, 1)):
        torch.bmm(p.transpose(0, 1), v, out=o.transpose(0, 1))
    return TilePartials(peak, probs.sum(-1), out)


def combine(partials: TilePartials, keep: torch.Tensor) -> torch.Tensor:
    """Attention outputs ``(C, B, H, R, D)`` over the key tiles of ``C`` masks ``keep``: bool ``(C, H or 1, R, T)``.

    Every row must keep at least one tile holding an unmasked key (every non-SKIP mode keeps
    the query's own tile), so no row divides by zero.
    """
    peak = partials.max.masked_fill(~keep[:, None], -math.inf)  # (C, B, H, R, T)
    weight = (peak - peak.amax(-1, keepdim=True)).exp_()  # 0 on dropped and fully masked tiles
    total = (weight * partials.sum).sum(-1)
    # one batched (C x T) @ (T x D) per row: the partial outputs are read once for all masks
    numerator = torch.matmul(weight.permute(1, 2, 3, 0, 4), partials.out)  # (B, H, R, C, D)
    return numerator.permute(3, 0, 1, 2, 4) / total[..., None]


def tile_mass(partials: TilePartials) -> torch.Tensor:
    """``(B, H, R, T)``: the softmax probability of each row summed over each key tile."""
    peak = partials.max.amax(-1, keepdim=True)
    scaled = (partials.max - peak).exp_() * partials.sum
    return scaled / scaled.sum(-1, keepdim=True)
