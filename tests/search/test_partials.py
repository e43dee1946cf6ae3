"""Shared tile partials give each tile mask's attention, and the tile mass, exactly (against SDPA / softmax)."""

import math

import torch
import torch.nn.functional as F

from diffusers_sparse_vdit.search.partials import combine, tile_mass, tile_partials

BATCH, HEADS, ROWS, TILES, TILE, DIM = 2, 3, 5, 4, 8, 16


def inputs():
    g = torch.Generator().manual_seed(0)
    q = torch.randn(BATCH, HEADS, ROWS, DIM, generator=g)
    k, v = (torch.randn(BATCH, HEADS, TILES * TILE, DIM, generator=g) for _ in range(2))
    k[:, 1] *= 30  # head 1: logits spread far beyond float32's exp range, so a shared stabilizer would fail
    key_ok = torch.ones(BATCH, TILES * TILE, dtype=torch.bool)
    key_ok[:, -3:] = False  # padding rows of the last tile
    key_ok[1, 2 * TILE : 3 * TILE] = False  # a tile with no valid key at all (padded text)
    return q, k, v, key_ok, g


def test_combine_matches_masked_sdpa():
    q, k, v, key_ok, g = inputs()
    keep = torch.rand(2, HEADS, ROWS, TILES, generator=g) < 0.5  # two masks, per head
    keep[..., 0] = True  # every row keeps a tile with valid keys
    keep[1, :, :, 1:] = False  # a mask of one tile
    got = combine(tile_partials(q, k, v, key_ok, tile_size=TILE, scale=1 / math.sqrt(DIM)), keep)
    assert got.shape == (2, BATCH, HEADS, ROWS, DIM) and torch.isfinite(got).all()
    for c in range(2):
        token_keep = keep[c].repeat_interleave(TILE, dim=-1)[None] & key_ok[:, None, None, :]
        torch.testing.assert_close(got[c], F.scaled_dot_product_attention(q, k, v, attn_mask=token_keep),
                                   rtol=1e-5, atol=1e-5)


def test_tile_mass_is_the_softmax_summed_per_tile():
    q, k, v, key_ok, _ = inputs()
    mass = tile_mass(tile_partials(q, k, v, key_ok, tile_size=TILE, scale=0.25))
    logits = (q @ k.transpose(-1, -2) * 0.25).masked_fill(~key_ok[:, None, None, :], -math.inf)
    expected = logits.softmax(-1).view(BATCH, HEADS, ROWS, TILES, TILE).sum(-1)
    torch.testing.assert_close(mass, expected, rtol=1e-5, atol=1e-6)
