"""Every candidate's output on sampled query rows from one pass over the keys (the CPU scoring path).

A block-sparse mode keeps, for each query row, a set of whole key tiles. Softmax attention
over a union of key tiles combines exactly from per-tile partial results, as flash attention
combines its blocks: for row ``r`` and key tile ``t`` keep the tile's largest logit ``m``, the
sum of ``exp(logit - m)`` and the ``exp``-weighted sum of its values. :func:`tile_partials`
computes these once per sampled row (``rows x N`` logits, never ``N x N``), and
:func:`combine` gives any tile mask's output from them in ``rows x tiles x D`` work, so all
candidates of a call share one ``Q K^T`` and one ``P V`` instead of one attention each.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

__all__ = ["TilePartials", "tile_partials", "combine"]


@dataclass
class TilePartials:
    """Per (batch, head, row, key tile) softmax partials, float32."""

    max: torch.Tensor  # (B, H, R, T): largest logit of the tile (-inf where every key is masked)
    sum: torch.Tensor  # (B, H, R, T): sum of exp(logit - max)
    out: torch.Tensor  # (B, H, T, R, D): sum of exp(logit - max) * value


def tile_partials(q_rows: torch.Tensor, k_tiles: torch.Tensor, v_tiles: torch.Tensor, key_ok: torch.Tensor, *,
                  tile_size: int, scale: float) -> TilePartials:
    """Partials of query rows ``q_rows`` ``(B, H, R, D)`` over keys given tile by tile.

    ``k_tiles``, ``v_tiles``: ``(B, H, T * tile_size, D)``, keys in kernel order, each tile padded
    to ``tile_size`` rows; ``key_ok``: bool ``(B or 1, T * tile_size)``, False for padding rows and
    masked keys.
    """
    batch, heads, rows, head_dim = q_rows.shape
    logits = torch.matmul(q_rows.float(), k_tiles.float().transpose(-1, -2)).mul_(scale)
    logits.masked_fill_(~key_ok[:, None, None, :], -math.inf)
    logits = logits.view(batch, heads, rows, -1, tile_size)
    peak = logits.amax(-1)
    probs = logits.sub_(torch.where(peak.isneginf(), 0.0, peak)[..., None]).exp_()  # in place: logits are spent
    values = v_tiles.float().view(batch, heads, -1, tile_size, head_dim)
    return TilePartials(peak, probs.sum(-1), torch.matmul(probs.transpose(2, 3), values))


def combine(partials: TilePartials, keep: torch.Tensor) -> torch.Tensor:
    """Attention output ``(B, H, R, D)`` over the key tiles ``keep`` marks: bool ``(H or 1, R, T)``.

    Every row must keep at least one tile holding an unmasked key (every non-SKIP mode keeps
    the query's own tile), so no row divides by zero.
    """
    peak = partials.max.masked_fill(~keep, -math.inf)
    weight = (peak - peak.amax(-1, keepdim=True)).exp_()  # 0 on dropped and fully masked tiles
    numerator = torch.einsum("bhrt,bhtrd->bhrd", weight, partials.out)
    return numerator / (weight * partials.sum).sum(-1, keepdim=True)
