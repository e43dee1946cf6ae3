import math

import pytest
import torch

from diffusers_sparse_vdit import Mode, ModeSpec, TokenLayout, build_plan

LAYOUTS = [
    TokenLayout(3, 5, 7),  # 105 tokens: not a multiple of any tile
    TokenLayout(4, 6, 5, text_tokens=17, text_position="before"),  # CogVideoX-like
    TokenLayout(5, 4, 4, text_tokens=21, text_position="after"),  # HunyuanVideo-like
]
SPECS = [
    ModeSpec.full(),
    ModeSpec.skip(),
    ModeSpec.diagonal(0.0),
    ModeSpec.diagonal(0.6),
    ModeSpec.multi_diagonal(0.5),
    ModeSpec.multi_diagonal(1.5),
    ModeSpec.vertical_stripe(2),
    ModeSpec.vertical_stripe((0.9,), sink_frames=0),
]


def expected_mask(spec: ModeSpec, layout: TokenLayout, tile: int) -> torch.Tensor:
    """The DESIGN §2 rules written directly on token coordinates, independent of the plan's lists."""
    n, p, frames = layout.num_tokens, layout.frame_tokens, layout.frames
    idx = torch.arange(n)
    video = (idx >= layout.video_start) & (idx < layout.video_start + layout.video_tokens)
    v = (idx - layout.video_start).clamp(0, layout.video_tokens - 1)
    f, s = v // p, v % p
    pos = s * frames + f if spec.mode is Mode.MULTI_DIAGONAL else v  # token-major for temporal heads
    t = pos // tile
    nvt = math.ceil(layout.video_tokens / tile)
    ti, tj = t[:, None], t[None, :]
    if spec.mode is Mode.SKIP:
        return torch.zeros(n, n, dtype=torch.bool)
    if spec.mode is Mode.FULL:
        vv = torch.ones(n, n, dtype=torch.bool)
    elif spec.mode in (Mode.DIAGONAL, Mode.MULTI_DIAGONAL):
        vv = (ti - tj).abs() <= math.ceil(spec.width * p / tile - 1e-9)
    else:
        sink_tiles = math.ceil(min(spec.sink_frames, frames) * p / tile)
        stripe_tiles = torch.tensor([min(int(x * nvt), nvt - 1) for x in spec.stripes], dtype=torch.long)
        vv = (ti == tj) | (tj < sink_tiles) | torch.isin(tj, stripe_tiles)
    text = ~video
    return text[:, None] | text[None, :] | (video[:, None] & video[None, :] & vv)


@pytest.mark.parametrize("layout", LAYOUTS, ids=str)
@pytest.mark.parametrize("tile", [16, 32])
def test_dense_mask_follows_the_mode_rules(layout, tile):
    plan = build_plan(SPECS, layout, tile)
    mask = plan.dense_mask()
    for h, spec in enumerate(SPECS):
        assert torch.equal(mask[h], expected_mask(spec, layout, tile)), f"head {h}: {spec}"


@pytest.mark.parametrize("layout", LAYOUTS, ids=str)
def test_every_computed_row_has_a_key_and_text_is_dense(layout):
    plan = build_plan(SPECS, layout, 16)
    mask = plan.dense_mask()
    for h, spec in enumerate(SPECS):
        rows = mask[h].any(dim=1)
        assert rows.all() != (spec.mode is Mode.SKIP)
        if layout.text_tokens and spec.mode is not Mode.SKIP:
            text = slice(layout.text_start, layout.text_start + layout.text_tokens)
            assert mask[h, text, :].all() and mask[h, :, text].all()


@pytest.mark.parametrize("layout", LAYOUTS, ids=str)
def test_key_lists_put_masked_tiles_last(layout):
    tile = 16
    plan = build_plan(SPECS, layout, tile)
    lengths = plan.tile_lengths
    for head, q_tile, start, n_full, n_total in plan.work.tolist():
        keys = plan.key_tiles(head, q_tile)
        assert keys.numel() == n_total and len(set(keys.tolist())) == n_total
        full = keys[:n_full].long()
        assert (full < plan.video_tiles).all() and (lengths[full] == tile).all()
        rest = keys[n_full:].long()
        assert ((rest >= plan.video_tiles) | (lengths[rest] < tile)).all()
    # heavy work first by coarse class; head-major order inside a class (L2 locality)
    cls = plan.work[:, 4].long() * 4 // (int(plan.work[:, 4].max()) + 1)
    assert torch.equal(cls, cls.sort(descending=True).values)
    for c in cls.unique():
        heads = plan.work[cls == c, 0]
        assert torch.equal(heads, heads.sort(stable=True).values)


@pytest.mark.parametrize("layout", LAYOUTS, ids=str)
def test_density_and_flops_match_the_mask(layout):
    plan = build_plan(SPECS, layout, 16)
    mask = plan.dense_mask().double()
    torch.testing.assert_close(plan.head_density(), mask.mean(dim=(1, 2)))
    tile_masks = torch.stack([plan.tile_mask(h) for h in range(plan.num_heads)]).double()
    torch.testing.assert_close(plan.head_tile_density(), tile_masks.mean(dim=(1, 2)))
    assert plan.flops(64, batch=2) == int(mask.sum()) * 4 * 64 * 2
    assert plan.dense_flops(64) == len(SPECS) * layout.num_tokens**2 * 4 * 64
    assert 0 < plan.density < 1


def test_text_lengths_mask_padded_text_keys():
    layout = TokenLayout(2, 3, 4, text_tokens=10, text_position="after")
    plan = build_plan([ModeSpec.full(), ModeSpec.diagonal(0.0)], layout, 16)
    mask = plan.dense_mask(text_lengths=[4, 10])
    assert mask.shape == (2, 2, 34, 34)
    assert not mask[0, :, :, 24 + 4 :].any() and mask[0, 0, :, 24:28].all()
    assert torch.equal(mask[1], plan.dense_mask())


def test_plans_are_cached_and_pooled():
    layout = TokenLayout(4, 6, 6, text_tokens=8, text_position="before")
    a = build_plan([ModeSpec.diagonal(1), "full", "skip"], layout, 16)
    b = build_plan([ModeSpec.diagonal(1), ModeSpec.full(), ModeSpec.skip()], layout, 16)
    assert a is b
    c = build_plan([ModeSpec.full(), ModeSpec.diagonal(1)], layout, 16)
    # the second plan reuses the pooled lists of the first
    assert c.key_tiles(1, 0).tolist() == a.key_tiles(0, 0).tolist()
    assert int(c.work[c.work[:, 0] == 1][:, 2].min()) == int(a.work[a.work[:, 0] == 0][:, 2].min())


def test_bad_plan_arguments():
    layout = TokenLayout(2, 2, 2)
    with pytest.raises(ValueError, match="power of two"):
        build_plan(["full"], layout, 24)
    with pytest.raises(ValueError, match="power of two"):
        build_plan(["full"], layout, 8)
    with pytest.raises(ValueError, match="at least one head"):
        build_plan([], layout)
    with pytest.raises(TypeError, match="TokenLayout"):
        build_plan(["full"], (2, 2, 2))
    with pytest.raises(ValueError, match="refusing"):
        build_plan(["full"], TokenLayout(20, 30, 30), 128).dense_mask()
