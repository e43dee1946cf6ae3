import math
import random

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


def reference_key_lists(spec: ModeSpec, layout: TokenLayout, tile: int) -> list[list[int]]:
    """Each query tile's key tiles in visiting order, one Python loop per tile: the naive builder."""
    nvt, nt = math.ceil(layout.video_tokens / tile), layout.num_tiles(tile)
    text = list(range(nvt, nt))
    if spec.mode is Mode.SKIP:
        return [[] for _ in range(nt)]
    rows = []
    for q in range(nvt):
        if spec.mode is Mode.FULL:
            video = range(nvt)
        elif spec.mode in (Mode.DIAGONAL, Mode.MULTI_DIAGONAL):
            half = math.ceil(spec.width * layout.frame_tokens / tile - 1e-9)
            video = [k for k in range(nvt) if abs(q - k) <= half]
        else:
            sink = math.ceil(min(spec.sink_frames, layout.frames) * layout.frame_tokens / tile)
            video = sorted({*range(sink), *(min(int(x * nvt), nvt - 1) for x in spec.stripes), q})
        rows.append([*video, *text])
    return rows + [list(range(nt)) for _ in text]


def random_spec(rng: random.Random) -> ModeSpec:
    mode = rng.choice(list(Mode))
    if mode in (Mode.DIAGONAL, Mode.MULTI_DIAGONAL):
        return ModeSpec(mode, width=rng.choice([0.0, 0.1, 0.5, 1.0, 2.5, 100.0]))
    if mode is Mode.VERTICAL_STRIPE:
        stripes = tuple(rng.random() for _ in range(rng.randrange(0, 12)))
        return ModeSpec.vertical_stripe(stripes, sink_frames=rng.randrange(0, 3))
    return ModeSpec(mode)


@pytest.mark.parametrize("seed", range(6))
def test_key_lists_match_a_naive_builder_on_random_layouts(seed):
    rng = random.Random(seed)
    position = rng.choice(["none", "before", "after"])
    text = 0 if position == "none" else rng.randrange(1, 40)
    layout = TokenLayout(rng.randrange(1, 8), rng.randrange(1, 11), rng.randrange(1, 11), text, position)
    tile = rng.choice([16, 32])
    specs = [random_spec(rng) for _ in range(8)] + [ModeSpec.vertical_stripe((), sink_frames=0)]
    plan = build_plan(specs, layout, tile)
    lengths = layout.tile_lengths(tile).long()
    full_video = [k for k in range(plan.video_tiles) if lengths[k] == tile]
    assert plan.work.shape[0] == len(specs) * plan.num_tiles
    for head, q_tile, _, n_full, n_total in plan.work.tolist():
        expected = reference_key_lists(specs[head], layout, tile)[q_tile]
        assert plan.key_tiles(head, q_tile).tolist() == expected, (specs[head], q_tile)
        assert (n_full, n_total) == (len([k for k in expected if k in full_video]), len(expected))
    for head, spec in enumerate(specs):
        lists = reference_key_lists(spec, layout, tile)
        pairs = sum(int(lengths[q]) * int(lengths[keys].sum()) for q, keys in enumerate(lists) if keys)
        assert plan.head_density()[head].item() == pairs / layout.num_tokens**2, spec
        assert plan.head_tile_density()[head].item() == sum(map(len, lists)) / plan.num_tiles**2, spec
        assert torch.equal(plan.tile_mask(head).nonzero()[:, 1], torch.tensor([k for keys in lists for k in keys]))


def test_each_spec_is_built_once_per_layout_and_never_as_a_dense_tile_mask(monkeypatch):
    import diffusers_sparse_vdit.plan as plan_module

    plan_module._pool.cache_clear()
    plan_module._build_plan.cache_clear()
    layout = TokenLayout(6, 7, 9, text_tokens=5, text_position="after")
    nvt = layout.video_tiles(16)
    # more distinct specs than any small cache holds, shared across "layers" in another order
    specs = [ModeSpec.vertical_stripe(((i + 0.5) / 400,)) for i in range(300)]
    layers = [specs[i : i + 12] for i in range(0, 300, 12)] + [specs[::-1][i : i + 12] for i in range(0, 300, 12)]
    built = []
    real = plan_module.video_key_tiles
    monkeypatch.setattr(plan_module, "video_key_tiles", lambda spec, *a: built.append(spec) or real(spec, *a))
    monkeypatch.setattr(plan_module, "spec_tile_mask", lambda *a: pytest.fail("a dense tile mask was built"))
    plans = [build_plan(heads, layout, 16) for heads in layers]
    assert [p.density for p in plans] and plans[-1].key_tiles(0, nvt - 1).numel() > 0
    assert sorted(built, key=specs.index) == specs  # once each


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


# Precision -------------------------------------------------------------------------------
def test_precision_is_per_head_and_shares_the_tile_lists():
    layout = TokenLayout(frames=3, height=4, width=6, text_tokens=5, text_position="after")
    specs = [ModeSpec.full(), ModeSpec.diagonal(1.0), ModeSpec.skip()]
    native = build_plan(specs, layout, 16)
    mixed = build_plan(specs, layout, 16, precision=("fp8", "native", "fp8"))
    assert native.precision == ("native",) * 3
    assert mixed.precision == ("fp8", "native", "fp8")
    assert mixed.fp8_heads == [0]  # a SKIP head computes nothing, in any precision
    assert mixed.work is native.work and build_plan(specs, layout, 16, precision=("fp8", "native", "fp8")) is mixed
    assert build_plan(specs, layout, 16, precision="fp8").fp8_heads == [0, 1]
    assert "1 in fp8" in mixed.summary()
    with pytest.raises(ValueError, match="one entry per head"):
        build_plan(specs, layout, 16, precision=("fp8",))
    with pytest.raises(ValueError, match="unknown precision 'int4'"):
        build_plan(specs, layout, 16, precision="int4")


def test_restrict_heads_keeps_only_their_work_and_the_precision():
    layout = TokenLayout(frames=3, height=4, width=6, text_tokens=5, text_position="after")
    plan = build_plan([ModeSpec.full(), ModeSpec.diagonal(1.0), ModeSpec.multi_diagonal(1.0)], layout, 16,
                      precision=("fp8", "native", "fp8"))
    part = plan.restrict_heads([0, 2])
    assert set(part.work[:, 0].tolist()) == {0, 2}
    assert part.precision == plan.precision
    assert len(part.work) == int((plan.work[:, 0] != 1).sum())
    assert plan.computed_heads == [0, 1, 2] and part.computed_heads == [0, 2]


def test_skip_heads_compute_nothing():
    layout = TokenLayout(frames=2, height=4, width=4)
    plan = build_plan([ModeSpec.skip(), ModeSpec.full(), ModeSpec.skip()], layout, 16)
    assert plan.computed_heads == [1]
    assert plan.device_tensors("cpu")["computed_heads"].tolist() == [1]
