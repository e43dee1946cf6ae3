"""Baselines: each mask against a naive one, densities on target, and clean install/removal per family."""

import itertools
import math

import pytest
import torch

from diffusers_sparse_vdit import remove_sparse_vdit
from diffusers_sparse_vdit.baselines import (
    BASELINES,
    SLIDING_TILE_CUBE,
    apply_baseline,
    band_width_for,
    in_map_density,
    mask_densities,
    solved_mask,
    svg_choice,
    total_density,
    uniform_map,
)
from diffusers_sparse_vdit.layout import FRAME_MAJOR, TokenLayout
from diffusers_sparse_vdit.modes import Mode, ModeSpec
from diffusers_sparse_vdit.plan import spec_density
from diffusers_sparse_vdit.processors import get_sparse_vdit_hook
from diffusers_sparse_vdit.testing import tiny_transformer, tiny_transformer_inputs

# odd sizes: partial tiles, text before and after
LAYOUTS = [
    TokenLayout(5, 3, 7),
    TokenLayout(4, 5, 3, text_tokens=7, text_position="before"),
    TokenLayout(3, 4, 5, text_tokens=9, text_position="after"),
]
TILE = 16


def naive_mask(layout: TokenLayout, allowed) -> torch.Tensor:
    """Caller-order mask, pair by pair: text rows and text keys always, video pairs by ``allowed``."""
    n, p = layout.num_tokens, layout.frame_tokens
    video = range(layout.video_start, layout.video_start + layout.video_tokens)
    mask = torch.ones(n, n, dtype=torch.bool)
    for qi, ki in itertools.product(video, video):
        q, k = qi - layout.video_start, ki - layout.video_start
        mask[qi, ki] = allowed(divmod(q, p)[0], *divmod(q % p, layout.width), divmod(k, p)[0], *divmod(k % p, layout.width))
    return mask


def radial_rule(window):
    def allowed(fq, rq, cq, fk, rk, ck):
        same = (fq, rq, cq) == (fk, rk, ck)
        return same or 2 * max(abs(rq - rk), abs(cq - ck)) + 1 <= window / 2 ** abs(fq - fk)
    return allowed


def sliding_rule(reach, cube=SLIDING_TILE_CUBE):
    def allowed(fq, rq, cq, fk, rk, ck):
        return all(q // s * s - r <= k < q // s * s + s + r for q, k, s, r in zip((fq, rq, cq), (fk, rk, ck), cube, reach))
    return allowed


def naive_densities(mask: torch.Tensor, layout: TokenLayout, tile: int) -> tuple[float, float]:
    tiles = layout.tile_of_token(FRAME_MAJOR, tile)
    nt = layout.num_tiles(tile)
    kept = torch.zeros(nt, nt, dtype=torch.bool)
    for q, k in mask.nonzero().tolist():
        kept[tiles[q], tiles[k]] = True
    computed = kept[tiles[:, None], tiles[None, :]]  # every token pair of a kept tile pair
    return float(mask.double().mean()), float(computed.double().mean())


@pytest.mark.parametrize("layout", LAYOUTS, ids=str)
@pytest.mark.parametrize("density", [0.3, 0.6])
@pytest.mark.parametrize("name, rule", [("radial", radial_rule), ("sliding_tile", sliding_rule)])
def test_token_mask_matches_the_naive_rule(name, rule, layout, density):
    solved = solved_mask(name, layout, density, TILE)
    assert torch.equal(solved.mask, naive_mask(layout, rule(solved.knob)))
    assert (solved.token_density, solved.tile_density) == pytest.approx(naive_densities(solved.mask, layout, TILE))


def test_mask_densities_count_text_and_partial_tiles():
    layout = TokenLayout(2, 3, 3, text_tokens=4, text_position="before")  # 18 video tokens: tiles of 16 and 2
    video = torch.zeros(18, 18, dtype=torch.bool)
    video[17, 0] = True  # one pair: the partial query tile x the first key tile
    token, tile = mask_densities(video, layout, 16)
    text_pairs = 22**2 - 18**2
    assert token == pytest.approx((1 + text_pairs) / 22**2)
    assert tile == pytest.approx((2 * 16 + text_pairs) / 22**2)


# a layout where every method has room: 6 frames of 8 x 10, tile 16 (30 video tiles), text after
WIDE = TokenLayout(6, 8, 10, text_tokens=16, text_position="after")


@pytest.mark.parametrize("name", ["radial", "sliding_tile"])
@pytest.mark.parametrize("density", [0.25, 0.45, 0.6])
def test_token_masks_hit_their_tile_density(name, density):
    solved = solved_mask(name, WIDE, density, TILE)
    assert solved.tile_density == pytest.approx(density, abs=0.06)
    assert solved.token_density <= solved.tile_density


@pytest.mark.parametrize("mode", [Mode.DIAGONAL, Mode.MULTI_DIAGONAL])
@pytest.mark.parametrize("density", [0.25, 0.45, 0.6])
def test_band_width_hits_the_density(mode, density):
    width = band_width_for(mode, density, WIDE, TILE)
    assert spec_density(ModeSpec(mode, width=width), WIDE, TILE)[0] == pytest.approx(density, abs=0.04)


def test_warm_up_is_counted_in_the_total():
    assert in_map_density(0.4, 2, 10) == pytest.approx(0.25)
    assert total_density(0.25, 2, 10) == pytest.approx(0.4)
    with pytest.raises(ValueError, match="warm-up steps of 10 already cost density 0.300"):
        in_map_density(0.25, 3, 10)


def test_svg_picks_temporal_for_temporal_heads_and_spatial_for_spatial_ones():
    layout = TokenLayout(8, 2, 4)  # 8 tokens a frame, tiles of 16: two frames, or two positions in all frames
    f, s = torch.arange(64) // 8, torch.arange(64) % 8
    temporal = 10 * torch.nn.functional.one_hot(s, 8).float()  # attends the same position in every frame
    spatial = 10 * torch.nn.functional.one_hot(f, 8).float()  # attends its own frame
    qk = torch.stack([temporal, spatial, spatial])[None]  # (1, 3, 64, 8)
    specs = (ModeSpec.diagonal(0.0), ModeSpec.multi_diagonal(0.0))
    choice = svg_choice(qk, qk, torch.randn(1, 3, 64, 8), layout, specs, 16, 32, torch.Generator().manual_seed(0))
    assert choice.tolist() == [True, False, False]


FAMILIES = ["wan", "cogvideox", "hunyuan_video"]


def forward(transformer, inputs):
    with torch.no_grad():
        return transformer(**inputs)[0]


@pytest.mark.parametrize("variant", FAMILIES)
@pytest.mark.parametrize("method", BASELINES)
def test_installs_and_removes_cleanly(variant, method):
    transformer = tiny_transformer(variant)
    inputs = tiny_transformer_inputs(transformer, grid=(4, 4, 6), text_tokens=7)
    text = 7 if variant != "wan" else 0
    layout = TokenLayout(4, 4, 6, text, {"wan": "none", "cogvideox": "before", "hunyuan_video": "after"}[variant])
    before = transformer.attn_processors
    dense = forward(transformer, inputs)

    info = apply_baseline(transformer, method, 0.5, layout=layout, num_inference_steps=1, tile_size=TILE)
    assert get_sparse_vdit_hook(transformer) is not None
    assert 0 < info.attention_density < 1
    assert not torch.allclose(forward(transformer, inputs), dense)
    if method == "svg":
        assert info.stats["calls"] == 2 and info.stats["spatial"] + info.stats["temporal"] == 2 * 3
    remove_sparse_vdit(transformer)

    after = transformer.attn_processors
    assert after.keys() == before.keys() and all(after[k] is before[k] for k in before)
    assert torch.equal(forward(transformer, inputs), dense)


@pytest.mark.parametrize("method", BASELINES)
def test_dense_warm_up_steps_run_dense(method):
    transformer = tiny_transformer("wan")
    inputs = tiny_transformer_inputs(transformer, grid=(4, 4, 6))
    dense = forward(transformer, inputs)
    apply_baseline(transformer, method, 0.75, layout=TokenLayout(4, 4, 6), num_inference_steps=2,
                   dense_warmup_steps=1, tile_size=TILE)
    assert torch.equal(forward(transformer, inputs), dense)  # step 0: warm-up
    inputs["timestep"] = inputs["timestep"] - 100
    assert not torch.allclose(forward(transformer, inputs), dense)  # step 1: sparse


def test_masked_attention_is_sdpa_with_the_mask_and_the_padding():
    transformer = tiny_transformer("hunyuan_video")
    layout = TokenLayout(4, 4, 6, 7, "after")
    apply_baseline(transformer, "radial", 0.5, layout=layout, num_inference_steps=1, tile_size=TILE)
    processor = get_sparse_vdit_hook(transformer).processors[0]
    processor.state.phase = 0
    q, k, v = torch.randn(3, 2, 3, layout.num_tokens, 16).unbind(0)
    padding = torch.ones(2, 1, 1, layout.num_tokens, dtype=torch.bool)
    padding[1, ..., -3:] = False
    out = processor.attend(q, k, v, None, layout=layout, attention_mask=padding)
    mask = solved_mask("radial", layout, 0.5, TILE).mask & padding
    scores = (q @ k.transpose(-1, -2) / math.sqrt(16)).masked_fill(~mask, -math.inf)
    torch.testing.assert_close(out, torch.softmax(scores, -1) @ v)


def test_uniform_map_is_an_ordinary_map():
    transformer = tiny_transformer("cogvideox")
    config = uniform_map(transformer, "multi_diagonal", 0.45, WIDE, tile_size=TILE, dense_warmup_steps=2)
    assert config.mode_counts()["MULTI_DIAGONAL"] == config.num_layers * config.num_heads
    assert config.dense_warmup_steps == 2
    assert config.density(WIDE) == pytest.approx(0.45, abs=0.04)
