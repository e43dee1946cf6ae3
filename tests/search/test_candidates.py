"""Default candidates, stripe mass and the per-head stripe permutation."""

import pytest
import torch
import torch.nn.functional as F

from diffusers_sparse_vdit import ModeSpec, TokenLayout, build_plan, sparse_attention
from diffusers_sparse_vdit.modes import Mode
from diffusers_sparse_vdit.search import Candidate, candidate_densities, default_candidates
from diffusers_sparse_vdit.search.candidates import DEFAULT_BAND_DENSITIES
from diffusers_sparse_vdit.search.stripes import (
    StripePermutation,
    canonical_stripes,
    key_tile_mass,
    selectable_tiles,
    sink_tiles,
    tile_positions,
    top_stripe_tiles,
)

MODELS = [
    TokenLayout(21, 30, 52),  # Wan 1.3B 480p
    TokenLayout(11, 48, 85, text_tokens=226, text_position="before"),  # CogVideoX1.5 768p
    TokenLayout(33, 45, 80, text_tokens=256, text_position="after"),  # HunyuanVideo 720p
]


@pytest.mark.parametrize("layout", MODELS, ids=str)
def test_default_candidates_span_the_target_densities(layout):
    cands = default_candidates(layout, 128)
    dens = candidate_densities(cands, layout, 128)
    assert cands[0].mode is Mode.FULL and dens[0] == 1 and cands[1].mode is Mode.SKIP and dens[1] == 0
    for mode in (Mode.DIAGONAL, Mode.MULTI_DIAGONAL):
        got = sorted(d for c, d in zip(cands, dens.tolist()) if c.mode is mode)
        # text rows and columns are dense, so the densities sit a little above the video targets
        assert len(got) == len(DEFAULT_BAND_DENSITIES)
        assert all(abs(a - b) < 0.04 for a, b in zip(got, DEFAULT_BAND_DENSITIES)), got
    stripes = [c for c in cands if c.mode is Mode.VERTICAL_STRIPE]
    assert len(stripes) == 2 and all(c.stripes >= 1 for c in stripes)
    assert len({c.scoring_spec(layout, 128) for c in cands}) == len(cands)


def test_band_widths_land_on_whole_tiles():
    layout = TokenLayout(21, 30, 52)
    for c in default_candidates(layout, 128):
        if c.mode is Mode.DIAGONAL:
            tiles = c.width * layout.frame_tokens / 128
            assert tiles == pytest.approx(round(tiles), abs=1e-3) and tiles <= round(tiles)


def test_candidates_round_trip_and_validate():
    for c in default_candidates(TokenLayout(8, 8, 8), 16):
        assert Candidate.from_dict(c.to_dict()) == c
    with pytest.raises(ValueError):
        Candidate(Mode.DIAGONAL, stripes=2)
    with pytest.raises(ValueError):
        Candidate.vertical_stripe(0)
    with pytest.raises(ValueError):
        Candidate.diagonal(-1.0)
    with pytest.raises(ValueError, match="keeps 1 stripes"):
        Candidate.vertical_stripe(1).spec((0.2, 0.5))


def test_key_tile_mass_matches_the_softmax():
    layout, tile = TokenLayout(4, 4, 6, text_tokens=10, text_position="before"), 16
    q, k = torch.randn(2, 3, layout.num_tokens, 8), torch.randn(2, 3, layout.num_tokens, 8)
    rows = torch.tensor([10, 11, 30, 63, 100])
    weights = torch.tensor([1.0, 1.0, 2.0, 3.0, 1.0])
    valid = torch.ones(2, layout.num_tokens, dtype=torch.bool)
    valid[1, 5:10] = False  # the second item's last text keys are padding
    got = key_tile_mass(q, k, rows, weights, layout, tile, scale=0.5, key_valid=valid, max_elements=50)
    probs = torch.softmax((q @ k.transpose(-1, -2) * 0.5).masked_fill(~valid[:, None, None], -torch.inf), -1)[:, :, rows]
    key_tile = layout.tile_of_token(0, tile)
    nvt = layout.video_tiles(tile)
    expected = torch.zeros(2, 3, nvt, dtype=torch.float64)
    for t in range(nvt):
        per_row = probs[..., key_tile == t].sum(-1).double()  # (B, H, R)
        per_row[..., key_tile[rows] == t] = 0  # a row's own tile is not a stripe
        expected[..., t] = (per_row * weights.double()).sum(-1) / weights.sum()
    torch.testing.assert_close(got, expected)


def test_stripe_permutation_gives_each_head_its_own_stripes():
    layout, tile = TokenLayout(5, 4, 7, text_tokens=9, text_position="after"), 16  # 140 video tokens: partial tile
    nvt = layout.video_tiles(tile)
    selectable = selectable_tiles(layout, tile, 1)
    assert not selectable[: sink_tiles(layout, tile, 1)].any() and not selectable[-1]
    mass = torch.rand(3, nvt)
    tiles = top_stripe_tiles(mass, 2, selectable)
    tiles[1] = -1  # head 1 is not striped: left in place
    perm = StripePermutation(tiles, layout, tile, 1)
    assert torch.equal(perm.perm[1], torch.arange(layout.num_tokens))
    assert torch.equal(perm.perm.gather(1, perm.inv), torch.arange(layout.num_tokens).expand(3, -1))
    q, k, v = (torch.randn(2, 3, layout.num_tokens, 16) for _ in range(3))
    shared = build_plan([ModeSpec.vertical_stripe(canonical_stripes(layout, tile, 2, 1))] * 3, layout, tile)
    got = perm.restore(sparse_attention(*(perm.apply(x) for x in (q, k, v)), shared, backend="torch"))
    for h in (0, 2):
        own = ModeSpec.vertical_stripe(tile_positions(sorted(tiles[h].tolist()), nvt))
        mask = build_plan([own], layout, tile).dense_mask()[0]
        expected = F.scaled_dot_product_attention(q[:, h], k[:, h], v[:, h], attn_mask=mask)
        torch.testing.assert_close(got[:, h], expected, rtol=1e-4, atol=1e-5)
