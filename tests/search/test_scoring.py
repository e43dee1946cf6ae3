"""HeadScorer against brute-force N x N oracles, planted structure, sampling, propagation."""

import pytest
import torch
import torch.nn.functional as F

from diffusers_sparse_vdit import ModeSpec, TokenLayout, build_plan
from diffusers_sparse_vdit.modes import Mode
from diffusers_sparse_vdit.search import Candidate, HeadScorer, default_candidates, solve_budget, solve_paper
from diffusers_sparse_vdit.search.stripes import tile_positions

from .planted import DIM, EXPECTED, HEADS, LAYOUTS, STRIPE_TILES, TILE, planted_call

META = {"family": "wan", "target_modules": ["blocks.0.attn1"]}


def oracle_outputs(scorer, q, k, v, specs, scale=None, text_lengths=None):
    plan = build_plan(specs, scorer.layout, scorer.tile_size)
    mask = plan.dense_mask(text_lengths) if text_lengths is not None else plan.dense_mask()
    out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=scale)
    out[:, plan.skip_heads] = 0
    return out


def oracle_errors(scorer, q, k, v, pairs, metric, text_lengths=None, layer=0):
    """Every candidate's error computed the obvious way, on all rows, with N x N masks.

    Padded text rows (past ``text_lengths``) count in neither the error nor the energy.
    """
    b, h, n, d = q.shape
    layout = scorer.layout
    counted = torch.ones(b, n, dtype=torch.bool)
    if text_lengths is not None:
        pos = torch.arange(n) - layout.text_start
        is_text = (pos >= 0) & (pos < layout.text_tokens)
        counted = ~is_text[None] | (pos[None] < torch.tensor(text_lengths)[:, None])
    dense = oracle_outputs(scorer, q, k, v, [ModeSpec.full()] * h, text_lengths=text_lengths) * counted[:, None, :, None]
    nvt = layout.video_tiles(scorer.tile_size)
    tiles = scorer._stripe_tiles(0, layer)  # the stripes this call was scored with
    errors = torch.zeros(b, h, len(scorer.candidates), dtype=torch.float64)
    for c, cand in enumerate(scorer.candidates):
        specs = [cand.spec(tile_positions(sorted(tiles[i, : cand.stripes].tolist()), nvt)) if cand.mode is Mode.VERTICAL_STRIPE
                 else cand.spec() for i in range(h)]
        out = oracle_outputs(scorer, q, k, v, specs, text_lengths=text_lengths) * counted[:, None, :, None]
        delta = out - dense
        if metric == "mse":
            errors[..., c] = delta.square().sum(dim=(2, 3)) / (counted.sum(1)[:, None] * d)
            continue
        energy = torch.zeros(b, dtype=torch.float64)
        for rows, w in pairs:
            y = dense[:, :, rows].transpose(1, 2).flatten(2) @ w.T
            energy += y.square().sum(dim=(1, 2)).double()
            for i in range(h):
                errors[:, i, c] += (delta[:, i, rows] @ w[:, i * d : (i + 1) * d].T).square().sum(dim=(1, 2)).double()
        errors[..., c] /= energy[:, None]
    return errors.mean(0)


CASES = [
    (TokenLayout(4, 4, 6, text_tokens=11, text_position="before"), None),  # CogVideoX-like
    (TokenLayout(3, 5, 6, text_tokens=13, text_position="after"), [13, 7]),  # HunyuanVideo-like, padded text
    (TokenLayout(5, 3, 5), None),  # Wan-like, partial last tile
]


@pytest.mark.parametrize("metric", ["projected", "mse"])
@pytest.mark.parametrize("layout,text_lengths", CASES, ids=lambda x: str(x))
def test_all_rows_scoring_matches_the_oracle(layout, text_lengths, metric):
    heads, d = 3, 16
    q, k, v = (torch.randn(2, heads, layout.num_tokens, d) for _ in range(3))
    scorer = HeadScorer(layout, 1, heads, tile_size=16, sample_tiles=10_000, backend="torch", metric=metric)
    if layout.text_tokens:  # two projections, as in HunyuanVideo's dual-stream blocks
        text = torch.arange(layout.text_tokens) + layout.text_start
        video = torch.arange(layout.video_tokens) + layout.video_start
        pairs = [(video, torch.randn(24, heads * d)), (text, torch.randn(20, heads * d))]
    else:
        pairs = [(torch.arange(layout.num_tokens), torch.randn(24, heads * d))]
    out_proj = pairs if len(pairs) > 1 else pairs[0][1]
    got = scorer.score(0, q, k, v, out_proj=None if metric == "mse" else out_proj, text_lengths=text_lengths)
    assert any(c.mode is Mode.VERTICAL_STRIPE for c in scorer.candidates)
    expected = oracle_errors(scorer, q, k, v, pairs, metric, text_lengths)
    torch.testing.assert_close(got, expected, rtol=2e-4, atol=1e-7)


def test_triton_backend_scores_like_torch():
    layout, heads = TokenLayout(3, 4, 6, text_tokens=9, text_position="before"), 2
    q, k, v = (torch.randn(1, heads, layout.num_tokens, 16) for _ in range(3))
    w = torch.randn(32, heads * 16)
    got = {b: HeadScorer(layout, 1, heads, tile_size=16, backend=b, sample_tiles=3, seed=1).score(0, q, k, v, out_proj=w)
           for b in ("torch", "triton")}
    torch.testing.assert_close(got["triton"], got["torch"], rtol=1e-4, atol=1e-7)


@pytest.mark.parametrize("metric,chunk", [("projected", 1 << 28), ("mse", 1 << 28), ("projected", 4000)])
@pytest.mark.parametrize("layout,text_lengths", CASES[:2], ids=lambda x: str(x))
def test_shared_partials_give_the_kernel_path_scores(layout, text_lengths, metric, chunk, monkeypatch):
    """The torch backend's one-pass scoring and one reference-kernel call per candidate: the same
    ScoreSet over several calls (same seed: same samples, stripes chosen from the same mass),
    also when the sampled rows take several chunks (the stripe mass then has a pass of its own)."""
    heads, d = 2, 16
    candidates = default_candidates(layout, 16) + (Candidate.vertical_stripe(3),)  # two stripe counts
    shared, kernels = (HeadScorer(layout, 1, heads, candidates=candidates, tile_size=16, backend="torch", sample_tiles=3,
                                  seed=3, metric=metric, max_chunk_elements=chunk) for _ in range(2))
    monkeypatch.setattr(kernels, "_shared_partials", lambda device: False)
    assert {c.mode for c in shared.candidates} == set(Mode)
    g = torch.Generator().manual_seed(0)
    w = torch.randn(32, heads * d, generator=g)
    for _ in range(3):
        q, k, v = (torch.randn(2, heads, layout.num_tokens, d, generator=g) for _ in range(3))
        for scorer in (shared, kernels):
            scorer.score(0, q, k, v, out_proj=None if metric == "mse" else w, text_lengths=text_lengths)
    got, expected = shared.scores(), kernels.scores()
    torch.testing.assert_close(got.errors, expected.errors, rtol=1e-4, atol=1e-7)
    torch.testing.assert_close(got.stripe_mass, expected.stripe_mass)


@pytest.mark.parametrize("layout", LAYOUTS, ids=str)
def test_planted_structure_is_found(layout):
    """Scorer + the paper's rule recover the planted mode of every head, and the stripes."""
    text_lengths = [20, 13] if layout.text_tokens else None
    scorer = HeadScorer(layout, 1, HEADS, tile_size=TILE, sample_tiles=8, backend="torch", metadata=META)
    for seed in range(3):
        q, k, v, w = planted_call(layout, batch=2, generator=torch.Generator().manual_seed(seed))
        if layout.text_tokens:  # text rows projected by another matrix
            text = torch.arange(layout.text_tokens) + layout.text_start
            w = [(slice(0, layout.video_tokens), w), (text, torch.randn(64, HEADS * DIM) / (HEADS * DIM) ** 0.5)]
        scorer.score(0, q, k, v, out_proj=w, scale=1.0, text_lengths=text_lengths)
    scores = scorer.scores()
    result = solve_paper(scores)
    specs = result.config.head_specs(0)
    assert [s.mode.name for s in specs] == EXPECTED
    nvt = layout.video_tiles(TILE)
    assert set(tile_positions(STRIPE_TILES, nvt)) <= set(specs[2].stripes)
    # the cheapest exact candidates: the narrowest band, and three stripes rather than one
    assert specs[0].width == min(c.width for c in scorer.candidates if c.mode is Mode.DIAGONAL)
    # a budget equal to the rule's cost buys the same map
    budget = solve_budget(scores, target_density=result.attention_density)
    assert [s.mode.name for s in budget.config.head_specs(0)] == EXPECTED


def test_sampled_error_estimates_the_all_rows_error():
    """8 of 32 tiles per call: unbiased, a few percent off per call, and the mean converges.

    VERTICAL_STRIPE columns are left out: a sampled scorer chooses its stripes from sampled
    mass, so on heads without real stripes it legitimately scores other tiles.
    """
    layout = TokenLayout(8, 8, 8)
    gen = torch.Generator().manual_seed(0)
    q, k, v, w = planted_call(layout, batch=1, generator=gen)
    q = q + 0.3 * torch.randn(q.shape, generator=gen)  # blur the planted patterns: errors vary from tile to tile
    exact_scorer = HeadScorer(layout, 1, HEADS, tile_size=TILE, sample_tiles=32, backend="torch")
    exact = exact_scorer.score(0, q, k, v, out_proj=w, scale=1.0)
    sampled = HeadScorer(layout, 1, HEADS, tile_size=TILE, sample_tiles=8, backend="torch", seed=24)
    calls = torch.stack([sampled.score(0, q, k, v, out_proj=w, scale=1.0) for _ in range(24)])
    banded = torch.tensor([c.mode is not Mode.VERTICAL_STRIPE for c in sampled.candidates])
    big = (exact > 0.05 * exact.max()) & banded  # relative error is meaningless on ~0 entries
    single = ((calls - exact).abs() / exact)[:, big]
    mean = ((calls.mean(0) - exact).abs() / exact)[big]
    assert single.median() < 0.08, single.median()  # measured 0.036
    assert mean.max() < 0.12, mean.max()  # measured 0.087 (0.14 over 12 calls, 0.059 over 48)
    torch.testing.assert_close(sampled.scores().errors[0, 0], calls.mean(0))


def test_greedy_propagation_carries_the_chosen_modes():
    layout = LAYOUTS[0]
    q, k, v, w = planted_call(layout, batch=1, generator=torch.Generator().manual_seed(0))
    scorer = HeadScorer(layout, 1, HEADS, tile_size=TILE, sample_tiles=8, backend="torch", propagate="greedy")
    out = scorer.attend(0, q, k, v, out_proj=w, scale=1.0)
    # the rule on this call's errors picks the planted modes; the carried output is theirs
    nvt = layout.video_tiles(TILE)
    stripes = tile_positions(sorted(scorer._stripe_tiles(0, 0)[2, :3].tolist()), nvt)
    bands = [c for c in scorer.candidates if c.mode is Mode.DIAGONAL]
    specs = [ModeSpec.diagonal(bands[0].width), ModeSpec.multi_diagonal(bands[0].width),
             ModeSpec.vertical_stripe(stripes), ModeSpec.full(), ModeSpec.skip()]
    expected = oracle_outputs(scorer, q, k, v, specs, scale=1.0)
    torch.testing.assert_close(out, expected, rtol=1e-4, atol=1e-5)
    assert out[:, 4].abs().max() == 0
    dense = HeadScorer(layout, 1, HEADS, tile_size=TILE, backend="torch").attend(0, q, k, v, out_proj=w, scale=1.0)
    torch.testing.assert_close(dense, F.scaled_dot_product_attention(q, k, v, scale=1.0), rtol=1e-4, atol=1e-5)


def test_step_ranges_keep_separate_scores():
    layout = TokenLayout(3, 4, 4)
    scorer = HeadScorer(layout, 2, 2, tile_size=16, backend="torch", metric="mse", step_ranges=[[0, 5], [5, -1]])
    q, k, v = (torch.randn(1, 2, layout.num_tokens, 8) for _ in range(3))
    scorer.score(1, q, k, v, step=7)
    scores = scorer.scores()
    assert scores.counts.tolist() == [[0, 0], [0, 1]]
    assert scores.errors[0].abs().sum() == 0 and scores.errors[1, 1].abs().sum() > 0
    with pytest.raises(ValueError, match="pass the denoising step"):
        scorer.score(0, q, k, v)


def test_inputs_are_checked():
    layout = TokenLayout(3, 4, 4)
    scorer = HeadScorer(layout, 1, 2, tile_size=16, backend="torch")
    q = torch.randn(1, 2, layout.num_tokens, 8)
    with pytest.raises(ValueError, match="output projection"):
        scorer.score(0, q, q, q)
    with pytest.raises(ValueError, match=r"\(C, H\*D\)"):
        scorer.score(0, q, q, q, out_proj=torch.randn(8, 8))
    with pytest.raises(ValueError, match="overlap"):
        scorer.score(0, q, q, q, out_proj=[(slice(0, 30), torch.randn(8, 16)), (slice(20, 48), torch.randn(8, 16))])
    with pytest.raises(ValueError, match="heads over"):
        scorer.score(0, torch.randn(1, 3, layout.num_tokens, 8), *(torch.randn(1, 3, layout.num_tokens, 8),) * 2)
    with pytest.raises(ValueError, match="layer 1"):
        scorer.score(1, q, q, q, out_proj=torch.randn(8, 16))
    with pytest.raises(ValueError, match="FULL"):
        HeadScorer(layout, 1, 2, candidates=[c for c in default_candidates(layout, 16) if c.mode is not Mode.FULL])


def test_fp8_errors_are_measured_on_the_first_calls_of_each_range_and_layer():
    from diffusers_sparse_vdit.kernels.quantize import fp8_attention_error

    layout = LAYOUTS[0]
    scorer = HeadScorer(layout, 2, HEADS, tile_size=TILE, metric="mse", sample_tiles=4,
                        step_ranges=[[0, 2], [2, -1]], backend="torch", metadata=META)
    calls = [planted_call(layout, batch=2, generator=torch.Generator().manual_seed(s)) for s in range(3)]
    for step, (q, k, v, _) in zip((0, 1, 2), calls):
        scorer.score(0, q, k, v, step=step)
    fp8 = scorer.scores().fp8_errors
    assert fp8.shape == (2, 2, HEADS) and fp8.dtype == torch.float64
    q, k, v, _ = calls[0]  # range 0: its first call only (the second, step 1, is not measured)
    torch.testing.assert_close(fp8[0, 0], fp8_attention_error(q[:1], k[:1], v[:1], tile_size=TILE).double())
    q, k, v, _ = calls[2]
    torch.testing.assert_close(fp8[1, 0], fp8_attention_error(q[:1], k[:1], v[:1], tile_size=TILE).double())
    assert (fp8[0, 0] > 0).any() and not fp8[:, 1].any()  # layer 1 was never called

    off = HeadScorer(layout, 1, HEADS, tile_size=TILE, metric="mse", sample_tiles=4, backend="torch", fp8_calls=0)
    off.score(0, *calls[0][:3])
    assert off.scores().fp8_errors is None
    with pytest.raises(ValueError, match="fp8_calls must be an integer >= 0"):
        HeadScorer(layout, 1, HEADS, tile_size=TILE, fp8_calls=-1)
