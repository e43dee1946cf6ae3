"""Shared tile partials give each tile mask's attention exactly (against masked SDPA)."""

import math

import torch
import torch.nn.functional as F

from diffusers_sparse_vdit.search.partials import combine, tile_partials


def test_combine_matches_masked_sdpa():
    g = torch.Generator().manual_seed(0)
    batch, heads, rows, tiles, tile, dim = 2, 3, 5, 4, 8, 16
    q = torch.randn(batch, heads, rows, dim, generator=g)
    k, v = (torch.randn(batch, heads, tiles * tile, dim, generator=g) for _ in range(2))
    k[:, 1] *= 30  # head 1: logits spread far beyond float32's exp range, so a shared stabilizer would fail
    key_ok = torch.ones(batch, tiles * tile, dtype=torch.bool)
    key_ok[:, -3:] = False  # padding rows of the last tile
    key_ok[1, 2 * tile : 3 * tile] = False  # a tile with no valid key at all (padded text)
    keep = torch.rand(heads, rows, tiles, generator=g) < 0.5
    keep[..., 0] = True  # every row keeps a tile with valid keys
    partials = tile_partials(q, k, v, key_ok, tile_size=tile, scale=1 / math.sqrt(dim))
    got = combine(partials, keep)

    token_keep = keep.repeat_interleave(tile, dim=-1)[None] & key_ok[:, None, None, :]
    expected = F.scaled_dot_product_attention(q, k, v, attn_mask=token_keep)
    assert torch.isfinite(got).all()
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)
