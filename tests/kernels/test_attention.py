"""Every backend of sparse_attention against plain SDPA with the plan's dense boolean mask."""

import logging

import pytest
import torch
import torch.nn.functional as F

from diffusers_sparse_vdit import ModeSpec, TokenLayout, build_plan, sparse_attention
from diffusers_sparse_vdit.logs import log_once

LAYOUTS = [
    TokenLayout(3, 5, 7),  # Wan-like: no text, 105 tokens
    TokenLayout(3, 4, 6, text_tokens=19, text_position="before"),  # CogVideoX-like
    TokenLayout(4, 3, 5, text_tokens=13, text_position="after"),  # HunyuanVideo-like
    TokenLayout(1, 2, 3, text_tokens=5, text_position="before"),  # smaller than one tile
]
MIXED = [
    ModeSpec.full(),
    ModeSpec.skip(),
    ModeSpec.diagonal(0.5),
    ModeSpec.multi_diagonal(0.7),
    ModeSpec.vertical_stripe(2),
]
BACKENDS = ["triton", "torch", "flex"]
# CPU runs the Triton kernel under the interpreter (see conftest); a GPU machine runs it for real
DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
TOL = {torch.float32: dict(atol=2e-5, rtol=1e-4), torch.float16: dict(atol=3e-3, rtol=1e-2)}


def reference(q, k, v, plan, text_lengths=None):
    """fp32 SDPA with the expanded boolean mask; SKIP heads are zeros by definition."""
    mask = plan.dense_mask(text_lengths.cpu()) if text_lengths is not None else plan.dense_mask()
    mask = mask.to(q.device)
    out = F.scaled_dot_product_attention(q.float(), k.float(), v.float(), attn_mask=mask)
    out[:, plan.skip_heads] = 0
    return out


def run(q, k, v, plan, backend, **kwargs):
    out = torch.full_like(q, float("nan"))  # unwritten rows stay NaN and fail the comparison
    res = sparse_attention(q, k, v, plan, backend=backend, out=out, **kwargs)
    assert res is out
    return out


def randn(*shape, dtype=torch.float32):
    return torch.randn(*shape, dtype=dtype, device=DEVICE)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16], ids=str)
@pytest.mark.parametrize("head_dim", [64, 128, 40])
@pytest.mark.parametrize("layout", LAYOUTS, ids=str)
def test_mixed_modes_match_sdpa_with_dense_mask(layout, head_dim, dtype, backend):
    plan = build_plan(MIXED, layout, tile_size=16)
    q, k, v = (randn(2, len(MIXED), layout.num_tokens, head_dim, dtype=dtype) for _ in range(3))
    out = run(q, k, v, plan, backend)
    torch.testing.assert_close(out.float(), reference(q, k, v, plan), **TOL[dtype])


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("spec", MIXED, ids=str)
def test_each_mode_alone(spec, backend):
    layout = TokenLayout(4, 5, 6, text_tokens=11, text_position="before")
    plan = build_plan([spec] * 2, layout, tile_size=32)
    q, k, v = (randn(1, 2, layout.num_tokens, 32) for _ in range(3))
    out = run(q, k, v, plan, backend)
    torch.testing.assert_close(out, reference(q, k, v, plan), **TOL[torch.float32])


@pytest.mark.parametrize("backend", BACKENDS)
def test_all_full_equals_plain_sdpa(backend):
    layout = TokenLayout(3, 6, 5, text_tokens=9, text_position="after")
    plan = build_plan([ModeSpec.full()] * 3, layout, tile_size=16)
    q, k, v = (randn(2, 3, layout.num_tokens, 64) for _ in range(3))
    out = run(q, k, v, plan, backend)
    torch.testing.assert_close(out, F.scaled_dot_product_attention(q, k, v), **TOL[torch.float32])


@pytest.mark.parametrize("backend", BACKENDS)
def test_strided_inputs_are_read_in_place(backend):
    # diffusers' Wan and HunyuanVideo processors hold (B, N, H, D); a transposed view must work as is
    layout = TokenLayout(3, 4, 5, text_tokens=7, text_position="after")
    plan = build_plan(MIXED, layout, tile_size=16)
    q, k, v = (randn(2, layout.num_tokens, len(MIXED), 64).transpose(1, 2) for _ in range(3))
    assert not q.is_contiguous()
    out = sparse_attention(q, k, v, plan, backend=backend)
    assert out.stride() == q.stride()  # the output keeps the caller's memory layout
    torch.testing.assert_close(out, reference(q, k, v, plan), **TOL[torch.float32])


@pytest.mark.parametrize("backend", BACKENDS)
def test_text_lengths_mask_padded_text_keys(backend):
    layout = TokenLayout(3, 4, 5, text_tokens=21, text_position="after")
    plan = build_plan(MIXED, layout, tile_size=16)
    q, k, v = (randn(2, len(MIXED), layout.num_tokens, 32) for _ in range(3))
    lengths = torch.tensor([5, 21], device=DEVICE)
    out = run(q, k, v, plan, backend, text_lengths=lengths)
    torch.testing.assert_close(out, reference(q, k, v, plan, lengths), **TOL[torch.float32])


def test_scale_is_honoured():
    layout = TokenLayout(2, 4, 4)
    plan = build_plan([ModeSpec.diagonal(0.5)] * 2, layout, tile_size=16)
    q, k, v = (randn(1, 2, layout.num_tokens, 16) for _ in range(3))
    for backend in BACKENDS:
        out = sparse_attention(q, k, v, plan, backend=backend, scale=0.3)
        mask = plan.dense_mask().to(DEVICE)
        torch.testing.assert_close(out, F.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=0.3), **TOL[torch.float32])


class TestBadInput:
    layout = TokenLayout(2, 3, 4)

    def setup_method(self):
        self.plan = build_plan(["full", "diagonal"], self.layout, 16)
        self.q = randn(1, 2, self.layout.num_tokens, 16)

    def test_plan_for_another_layout(self):
        q = randn(1, 2, 30, 16)
        with pytest.raises(ValueError, match="build the plan for this call's layout"):
            sparse_attention(q, q, q, self.plan)

    def test_head_count(self):
        q = randn(1, 3, self.layout.num_tokens, 16)
        with pytest.raises(ValueError, match="plan has 2 heads but q has 3"):
            sparse_attention(q, q, q, self.plan)

    def test_shapes_and_dtypes(self):
        with pytest.raises(ValueError, match="same shape"):
            sparse_attention(self.q, self.q[:, :, :-1], self.q, self.plan)
        with pytest.raises(TypeError, match="one dtype"):
            sparse_attention(self.q, self.q.half(), self.q, self.plan)
        with pytest.raises(TypeError, match="one dtype"):
            sparse_attention(*(self.q.to(torch.int32),) * 3, self.plan)
        with pytest.raises(ValueError, match="4-D"):
            sparse_attention(self.q[0], self.q[0], self.q[0], self.plan)
        with pytest.raises(TypeError, match="SparsePlan"):
            sparse_attention(self.q, self.q, self.q, "plan")
        with pytest.raises(ValueError, match="no text tokens"):
            sparse_attention(self.q, self.q, self.q, self.plan, text_lengths=torch.tensor([1], device=DEVICE))

    def test_head_dim_zero(self):
        q = randn(1, 2, self.layout.num_tokens, 0)
        with pytest.raises(ValueError, match="head_dim from 1 to 256 is supported, got 0"):
            sparse_attention(q, q, q, self.plan)

    def test_text_lengths_outside_the_text(self):
        layout = TokenLayout(2, 3, 4, text_tokens=5, text_position="after")
        plan = build_plan(["full", "diagonal"], layout, 16)
        q = randn(2, 2, layout.num_tokens, 16)
        for lengths in ([6, 5], [-1, 3]):
            with pytest.raises(ValueError, match=r"text_lengths must be in 0\.\.5"):
                sparse_attention(q, q, q, plan, text_lengths=torch.tensor(lengths, device=DEVICE))
        with pytest.raises(TypeError, match="whole numbers"):
            sparse_attention(q, q, q, plan, text_lengths=torch.tensor([2.5, 5.0]))
        sparse_attention(q, q, q, plan, text_lengths=[0, 5])  # the ends are valid

    def test_forward_only(self):
        q = self.q.clone().requires_grad_()
        with pytest.raises(RuntimeError, match="no_grad"):
            sparse_attention(q, q, q, self.plan)
        with torch.no_grad():
            sparse_attention(q, q, q, self.plan)

    def test_backend_and_device(self, monkeypatch):
        with pytest.raises(ValueError, match="unknown backend"):
            sparse_attention(self.q, self.q, self.q, self.plan, backend="cuda")
        if DEVICE == "cpu":
            with pytest.raises(TypeError, match="bfloat16"):
                q = self.q.bfloat16()
                sparse_attention(q, q, q, self.plan, backend="triton")
            monkeypatch.setenv("TRITON_INTERPRET", "0")
            with pytest.raises(RuntimeError, match="backend='torch'"):
                sparse_attention(self.q, self.q, self.q, self.plan, backend="triton")
            with pytest.raises(ValueError, match="Hopper GPUs"):
                sparse_attention(self.q, self.q, self.q, self.plan, backend="gluon")


@pytest.mark.parametrize("backend", ["triton", "torch"])
def test_restricted_plan_writes_only_its_query_tiles(backend):
    layout = TokenLayout(3, 5, 6, text_tokens=9, text_position="before")
    full = build_plan(MIXED, layout, tile_size=16)
    plan = full.restrict_queries([0, 3, full.num_tiles - 1])
    q, k, v = (randn(1, len(MIXED), layout.num_tokens, 32) for _ in range(3))
    out = run(q, k, v, plan, backend)
    expected = reference(q, k, v, full)
    written = ~out.isnan().all(dim=-1)  # (B, H, N)
    for h, spec in enumerate(MIXED):
        order = 1 if spec.reordered else 0
        tiles = layout.tile_of_token(order, 16)
        rows = torch.isin(tiles, torch.tensor([0, 3, full.num_tiles - 1])).to(DEVICE)
        assert torch.equal(written[0, h], rows), f"head {h}"
        torch.testing.assert_close(out[0, h, rows], expected[0, h, rows], **TOL[torch.float32])


@pytest.mark.parametrize("reordered", [False, True], ids=["frame-major", "mixed-orders"])
@pytest.mark.parametrize("layout", LAYOUTS[:3], ids=str)
def test_tma_descriptor_path(layout, reordered):
    # TMA loads whole contiguous tiles of frame-major heads (rows past the end read as zeros and are
    # masked); in a plan with token-major heads those heads take the gather loop in the same launch
    from diffusers_sparse_vdit.kernels.triton_sparse import sparse_attention_triton

    specs = MIXED if reordered else [s for s in MIXED if not s.reordered]
    plan = build_plan(specs, layout, tile_size=16)
    q, k, v = (randn(2, layout.num_tokens, len(specs), 32).transpose(1, 2) for _ in range(3))
    out = torch.full_like(q, float("nan"))
    config = {"BLOCK_N": 16, "num_warps": 4, "num_stages": 1, "USE_TMA": True}
    sparse_attention_triton(q, k, v, plan, scale=32**-0.5, out=out, config=config)
    torch.testing.assert_close(out, reference(q, k, v, plan), **TOL[torch.float32])


@pytest.mark.parametrize("block_m", [16, 32], ids=lambda b: f"BLOCK_M={b}")
def test_query_tile_split_across_programs(block_m):
    # programs of BLOCK_M < tile rows each take part of a query tile through the same key list
    from diffusers_sparse_vdit.kernels.triton_sparse import sparse_attention_triton

    layout = TokenLayout(3, 7, 9, text_tokens=21, text_position="after")
    plan = build_plan(MIXED, layout, tile_size=32)
    q, k, v = (randn(2, layout.num_tokens, len(MIXED), 32).transpose(1, 2) for _ in range(3))
    out = torch.full_like(q, float("nan"))
    config = {"BLOCK_M": block_m, "BLOCK_N": 16, "num_warps": 4, "num_stages": 1}
    sparse_attention_triton(q, k, v, plan, scale=32**-0.5, out=out, config=config)
    torch.testing.assert_close(out, reference(q, k, v, plan), **TOL[torch.float32])


def test_kernel_config_uses_packed_exponentials_on_long_head_dim_128_sequences():
    from diffusers_sparse_vdit.kernels.triton_sparse import LONG_SEQUENCE_TOKENS, kernel_config

    gpu = torch.device("cuda")  # only its type is read: no GPU needed
    assert kernel_config(128, 128, gpu, LONG_SEQUENCE_TOKENS)["EXP2"] == "bf16x2"
    assert kernel_config(128, 128, gpu, LONG_SEQUENCE_TOKENS - 1)["EXP2"] == "f32"
    assert kernel_config(64, 128, gpu, 10 * LONG_SEQUENCE_TOKENS).get("EXP2", "f32") == "f32"
    assert "EXP2" not in kernel_config(128, 128, torch.device("cpu"), LONG_SEQUENCE_TOKENS)


def test_unknown_exponential_form_is_refused():
    from diffusers_sparse_vdit.kernels.triton_sparse import sparse_attention_triton

    layout = TokenLayout(2, 4, 5)
    plan = build_plan([ModeSpec.full()], layout, tile_size=32)
    q = randn(1, 1, layout.num_tokens, 16)
    with pytest.raises(ValueError, match="EXP2='f16x2' must be 'f32' or 'bf16x2'"):
        sparse_attention_triton(q, q, q, plan, scale=0.25, out=torch.empty_like(q), config={"EXP2": "f16x2"})


def test_block_sizes_must_divide_the_tile():
    from diffusers_sparse_vdit.kernels.triton_sparse import sparse_attention_triton

    layout = TokenLayout(2, 4, 5)
    plan = build_plan([ModeSpec.full()], layout, tile_size=32)
    q = randn(1, 1, layout.num_tokens, 16)
    with pytest.raises(ValueError, match="BLOCK_M=24 must be at least 16 and divide"):
        sparse_attention_triton(q, q, q, plan, scale=0.25, out=torch.empty_like(q), config={"BLOCK_M": 24})


def test_reordered_kv_copy_is_in_kernel_order():
    from diffusers_sparse_vdit.kernels.triton_sparse import gather_reordered_kv

    layout = TokenLayout(3, 5, 6, text_tokens=9, text_position="before")
    plan = build_plan(MIXED, layout, tile_size=16)
    k, v = (randn(2, layout.num_tokens, len(MIXED), 32).transpose(1, 2) for _ in range(2))
    kp, vp = gather_reordered_kv(k, v, plan)
    heads = [h for h, s in enumerate(MIXED) if s.reordered]
    assert heads and kp.shape == (2, len(heads), plan.num_tiles * 16, 32)
    rows = plan.row_maps()[1].long().to(DEVICE)
    for slot, h in enumerate(heads):
        assert torch.equal(kp[:, slot], k[:, h, rows])
        assert torch.equal(vp[:, slot], v[:, h, rows])


def test_sampled_error_catches_a_wrong_output():
    from diffusers_sparse_vdit.kernels.check import sampled_error

    layout = TokenLayout(4, 6, 7, text_tokens=9, text_position="before")
    plan = build_plan(MIXED, layout, tile_size=16)
    q, k, v = (randn(1, len(MIXED), layout.num_tokens, 32) for _ in range(3))
    out = sparse_attention(q, k, v, plan, backend="torch")
    assert sampled_error(q, k, v, plan, out) < 1e-5
    wrong = out.clone()
    wrong[:, 2, layout.video_start] += 1.0  # the first video row is always sampled
    assert sampled_error(q, k, v, plan, wrong) > 1e-3
    wrong[:, 0, -1] = float("nan")
    with pytest.raises(AssertionError, match="NaN"):
        sampled_error(q, k, v, plan, wrong)


def test_sampled_error_masks_padded_text_keys_given_text_lengths():
    from diffusers_sparse_vdit.kernels.check import sampled_error

    layout = TokenLayout(3, 4, 5, text_tokens=21, text_position="after")
    plan = build_plan(MIXED, layout, tile_size=16)
    q, k, v = (randn(2, len(MIXED), layout.num_tokens, 32) for _ in range(3))
    lengths = torch.tensor([5, 21], device=DEVICE)
    out = sparse_attention(q, k, v, plan, backend="torch", text_lengths=lengths)
    assert sampled_error(q, k, v, plan, out, text_lengths=lengths) < 1e-5
    assert sampled_error(q, k, v, plan, out) > 1e-3  # without the lengths, padded keys count in the oracle


def test_batches_past_int32_offsets_run_as_several_launches(monkeypatch):
    import diffusers_sparse_vdit.kernels.attention as attention
    import diffusers_sparse_vdit.kernels.triton_sparse as triton_sparse

    layout = TokenLayout(3, 4, 5, text_tokens=21, text_position="after")
    plan = build_plan(MIXED, layout, tile_size=16)
    q, k, v = (randn(3, layout.num_tokens, len(MIXED), 32).transpose(1, 2) for _ in range(3))
    lengths = torch.tensor([5, 21, 9], device=DEVICE)
    whole = sparse_attention(q, k, v, plan, backend="triton", text_lengths=lengths)
    # pretend int32 ends just past one batch item: each item gets a launch of its own
    monkeypatch.setattr(attention, "_INT32_LIMIT", q.stride(0) + 1)
    launches = []
    original = triton_sparse.sparse_attention_triton
    monkeypatch.setattr(triton_sparse, "sparse_attention_triton", lambda q, *a, **kw: launches.append(q.shape[0]) or original(q, *a, **kw))
    out = torch.full_like(q, float("nan"))
    sparse_attention(q, k, v, plan, backend="triton", text_lengths=lengths, out=out)
    assert launches == [1, 1, 1]
    torch.testing.assert_close(out, whole)
    torch.testing.assert_close(out, reference(q, k, v, plan, lengths), **TOL[torch.float32])
    monkeypatch.setattr(attention, "_INT32_LIMIT", 100)  # not even one item fits
    with pytest.raises(ValueError, match="backend='torch'"):
        sparse_attention(q, k, v, plan, backend="triton")


@pytest.mark.parametrize("restricted", [False, True], ids=["whole", "restricted"])
@pytest.mark.parametrize("layout", LAYOUTS, ids=str)
def test_whole_head_reference_matches_the_tile_walk(layout, restricted, monkeypatch):
    """Small calls take one masked softmax per head; it must visit exactly the tile walk's keys."""
    from diffusers_sparse_vdit.kernels import reference

    plan = build_plan(MIXED, layout, tile_size=16)
    if restricted:
        plan = plan.restrict_queries([0, plan.video_tiles - 1])
    q, k, v = (randn(2, len(MIXED), layout.num_tokens, 40) for _ in range(3))
    lengths = torch.tensor([layout.text_tokens, max(1, layout.text_tokens // 2)]) if layout.text_tokens else None
    outs = []
    for limit in (reference.WHOLE_HEAD_SCORES, 0):  # whole heads, then the tile walk
        monkeypatch.setattr(reference, "WHOLE_HEAD_SCORES", limit)
        out = torch.full_like(q, float("nan"))
        outs.append(reference.sparse_attention_torch(q, k, v, plan, scale=40**-0.5, out=out, text_lengths=lengths))
    torch.testing.assert_close(outs[0], outs[1], equal_nan=True, atol=2e-6, rtol=2e-5)
    assert outs[0].isnan().any() == restricted  # rows outside the restriction stay untouched


WAN_480P = TokenLayout(21, 30, 52)  # 32,760 tokens: FA4's kernel alone leads here, its whole call does not


@pytest.mark.parametrize(
    "gluon, capability, fa4, head_dim, layout, expected",
    [
        (True, (9, 0), True, 128, WAN_480P, "gluon"),  # Hopper: ours, faster than FA4 as whole calls
        (True, (9, 0), False, 128, WAN_480P, "gluon"),
        (True, (9, 0), True, 64, WAN_480P, "gluon"),
        (False, (9, 0), True, 128, WAN_480P, "triton"),  # Hopper call Gluon cannot take (e.g. strided last dim)
        (False, (10, 0), True, 64, WAN_480P, "fa4"),  # Blackwell: FA4's block-sparse kernel where installed
        (False, (10, 0), False, 64, WAN_480P, "triton"),
        (False, (8, 0), False, 64, WAN_480P, "triton"),
    ],
)
def test_auto_kernel_on_cuda(monkeypatch, caplog, gluon, capability, fa4, head_dim, layout, expected):
    from diffusers_sparse_vdit.kernels import attention

    monkeypatch.setattr(attention, "gluon_supported", lambda *args: gluon)
    monkeypatch.setattr(attention, "fa4_supported", lambda q, plan: fa4)
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: capability)
    log_once.cache_clear()
    plan = build_plan([ModeSpec.full()], layout)
    q = torch.empty(1, 1, plan.num_tokens, head_dim, dtype=torch.bfloat16)
    with caplog.at_level(logging.INFO, logger="diffusers.sparse_vdit"):
        assert attention.auto_cuda_kernel(q, q, q, plan, None) == expected
        assert attention.auto_cuda_kernel(q, q, q, plan, None) == expected
    chosen = [r.getMessage() for r in caplog.records if "sparse attention:" in r.getMessage()]
    assert len(chosen) == 1 and f": {expected} (" in chosen[0]  # logged once per kernel and reason
    log_once.cache_clear()


def test_gluon_backend_is_not_rerouted_by_auto(monkeypatch):
    """backend="gluon" runs ours even where FA4 is installed."""
    from diffusers_sparse_vdit.kernels import attention

    ran = []
    monkeypatch.setattr(attention, "gluon_supported", lambda *args: True)
    monkeypatch.setattr(attention, "fa4_supported", lambda q, plan: True)
    monkeypatch.setattr(attention, "_run", lambda backend, *args: ran.append(backend) or args[-2])
    plan = build_plan([ModeSpec.full()], TokenLayout(2, 4, 8))
    q = torch.zeros(1, 1, plan.num_tokens, 128)
    sparse_attention(q, q, q, plan, backend="gluon", out=torch.empty_like(q))
    assert ran == ["gluon"]
