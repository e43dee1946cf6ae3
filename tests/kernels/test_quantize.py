"""FP8 quantization (kernels/quantize.py) and fp8 heads on the torch backend, against exact fp32 attention."""

import pytest
import torch
import torch.nn.functional as F

from diffusers_sparse_vdit import TokenLayout, build_plan, sparse_attention
from diffusers_sparse_vdit.kernels import attention, quantize

from .gpu_cases import MIXED, rel_err

LAYOUTS = [
    TokenLayout(3, 5, 7),  # 105 tokens: partial tiles at 16
    TokenLayout(2, 4, 5, text_tokens=19, text_position="before"),
    TokenLayout(3, 3, 6, text_tokens=11, text_position="after"),
]
TILE = 16


def inputs(layout, heads, dim=32, batch=2, seed=0, offset=0.0):
    g = torch.Generator().manual_seed(seed)
    q, k, v = (torch.randn(batch, heads, layout.num_tokens, dim, generator=g) for _ in range(3))
    return q, k + offset, v


def exact(q, k, v, plan, lengths=None):
    mask = plan.dense_mask(lengths) if lengths is not None else plan.dense_mask()
    return F.scaled_dot_product_attention(q.double(), k.double(), v.double(), attn_mask=mask)


@pytest.mark.parametrize("layout", LAYOUTS, ids=str)
def test_fp8_heads_are_close_to_exact_but_not_exact(layout):
    plan = build_plan(MIXED, layout, TILE, precision="fp8")
    q, k, v = inputs(layout, len(MIXED))
    lengths = torch.tensor([layout.text_tokens // 2, layout.text_tokens]) if layout.text_tokens else None
    out = torch.full_like(q, float("nan"))
    sparse_attention(q, k, v, plan, backend="torch", out=out, text_lengths=lengths)
    ref = exact(q, k, v, plan, lengths)
    assert not out.isnan().any()
    assert (out[:, plan.skip_heads] == 0).all()
    heads = plan.fp8_heads
    err = rel_err(out[:, heads], ref[:, heads])
    native = sparse_attention(q, k, v, plan.with_precision("native"), backend="torch", text_lengths=lengths)
    assert 1e-2 < err < 0.08, err  # e4m3 keeps 3 mantissa bits: a few percent on random inputs
    assert rel_err(native[:, heads], ref[:, heads]) < 1e-5


def test_mixed_precision_runs_each_head_in_its_own():
    layout = LAYOUTS[2]
    precision = ("fp8", "native", "native", "fp8", "native", "fp8")
    plan = build_plan(MIXED, layout, TILE, precision=precision)
    q, k, v = inputs(layout, len(MIXED))
    out = sparse_attention(q, k, v, plan, backend="torch")
    all_fp8 = sparse_attention(q, k, v, plan.with_precision("fp8"), backend="torch")
    all_native = sparse_attention(q, k, v, plan.with_precision("native"), backend="torch")
    for h, p in enumerate(precision):
        assert torch.equal(out[:, h], (all_fp8 if p == "fp8" else all_native)[:, h]), h


def test_smoothing_makes_a_shared_key_offset_free():
    # a large mean key sets the scale of every tile; subtracting it is exact for softmax
    layout = TokenLayout(4, 6, 8)
    q, k, v = inputs(layout, 2, dim=64)
    plan = build_plan(["full", "diagonal"], layout, TILE, precision="fp8")
    shifted = k + 40 * torch.randn(1, 2, 1, 64)
    a = sparse_attention(q, k, v, plan, backend="torch")
    b = sparse_attention(q, shifted, v, plan, backend="torch")
    ref = exact(q, k, v, plan)
    assert rel_err(b, ref) < 1.1 * rel_err(a, ref) + 1e-4
    errors = quantize.fp8_attention_error(q, shifted, v)
    # random scores are the hard case: e4m3's 3 mantissa bits in P and V give ~4% each
    assert errors.shape == (2,) and (errors > 1e-2).all() and (errors < 0.08).all()
    assert torch.allclose(errors, quantize.fp8_attention_error(q, k, v), rtol=0.02)
    # a sample of query rows against all keys: each row's error is the whole call's
    rows = quantize.fp8_attention_error(q[:, :, ::3], shifted, v)
    assert torch.allclose(rows, errors, rtol=0.3)


def test_probabilities_round_like_e4m3_and_keep_small_ones():
    scores = torch.tensor([[0.0, -1.0, -9.0, float("-inf")], [float("-inf")] * 4])
    p = quantize.fp8_probs(scores)
    e = torch.exp(torch.tensor([0.0, -1.0, -9.0]))
    assert torch.allclose(p[0, :3], e / e.sum(), rtol=0.07)
    assert p[0, 2] > 0  # e^-9 = 1.2e-4 is below e4m3's smallest normal (2^-6) unless P is scaled up
    assert p[0, 3] == 0 and (p[1] == 0).all()


def test_v_key_order_is_the_order_threads_hold_p_in():
    """PTX's fragment layouts: lane q of a quad holds float32 scores at columns 8j + 2q + b of each 16, and feeds
    e4m3 operand columns 4q + i; its i-th value (i = 2j + b) must meet the V row of the key it came from."""
    order = quantize.operand_key_order(128)
    assert torch.equal(order.sort().values, torch.arange(128))
    assert torch.equal(order // 16, torch.arange(128) // 16)  # a permutation inside each 16-key group
    for group in range(8):
        for q in range(4):
            for j in range(2):
                for b in range(2):
                    assert order[16 * group + 8 * j + 2 * q + b] == 16 * group + 4 * q + 2 * j + b


@pytest.mark.parametrize("layout", LAYOUTS, ids=str)
def test_kernel_layout_holds_the_simulated_values(layout):
    plan = build_plan(MIXED, layout, TILE)
    q, k, v = inputs(layout, len(MIXED), offset=3.0)
    got = quantize.kernel_kv(k, v, plan)
    _, kf, vf = quantize.simulated_inputs(q, k, v, plan)
    # row r of head h is caller token rows[order of h][r]; padding rows of partial tiles are zero
    rows = plan.row_maps().long()[plan.head_order.long()]
    valid = torch.cat([torch.arange(TILE) < n for n in plan.tile_lengths.tolist()])
    k_deq = got["k8"].float() * got["k_scale"].repeat_interleave(TILE, dim=2)[..., None]
    r = torch.arange(plan.num_tiles * TILE)
    at = r // TILE * TILE + quantize.operand_key_order(TILE)[r % TILE]  # V^T's column of kernel row r
    v_deq = got["vt8"].float()[..., at].transpose(-1, -2) * got["v_scale"][:, :, None, :]
    assert got["k8"].shape == (2, len(MIXED), plan.num_tiles * TILE, 32) and got["vt8"].stride(-1) == 1
    assert plan.computed_heads == [0, 2, 3, 4, 5]  # the SKIP head has nothing to quantize
    for h in plan.computed_heads:
        assert torch.equal(k_deq[:, h, valid], kf[:, h, rows[h, valid]]), h
        assert torch.equal(v_deq[:, h, valid], vf[:, h, rows[h, valid]]), h
    computed = plan.computed_heads
    assert (k_deq[:, computed][:, :, ~valid] == 0).all() and (v_deq[:, computed][:, :, ~valid] == 0).all()


def test_a_restricted_plan_quantizes_only_its_heads():
    """The FP8 launch of a mixed-precision plan quantizes its own heads, as the whole plan would, and no others."""
    layout = LAYOUTS[1]
    plan = build_plan(MIXED, layout, TILE)
    part = plan.restrict_heads([0, 3, 4])
    _, k, v = inputs(layout, len(MIXED), offset=3.0)
    whole, got = quantize.kernel_kv(k, v, plan), quantize.kernel_kv(k, v, part)
    for key in ("k8", "k_scale", "vt8", "v_scale"):
        assert torch.equal(got[key][:, [0, 3, 4]].float(), whole[key][:, [0, 3, 4]].float()), key
    for key in ("k_scale", "v_scale"):  # the other heads were not quantized
        assert (got[key][:, [1, 2, 5]] == 0).all(), key
    assert 1 not in plan.computed_heads  # the SKIP head is never quantized


def test_fp8_heads_where_they_cannot_run(caplog):
    layout = LAYOUTS[0]
    plan = build_plan(MIXED, layout, TILE, precision="fp8")
    q = torch.empty(1, len(MIXED), layout.num_tokens, 32, device="meta")  # neither CPU nor a Hopper GPU
    with pytest.raises(ValueError, match="fp8 heads.*backend='auto'.*precision='native'"):
        attention._route_fp8("triton", "triton", q, q, q, plan, None)
    routed = attention._route_fp8("auto", "triton", q, q, q, plan, None)
    assert routed.fp8_heads == [] and routed.work is plan.work
    cpu = torch.empty(1, len(MIXED), layout.num_tokens, 32)
    assert attention._route_fp8("triton", "triton", cpu, cpu, cpu, plan, None) is plan  # CPU: the simulation


@pytest.mark.skipif(torch.cuda.is_available(), reason="the GPU test compares the compiled kernel")
@pytest.mark.parametrize("heads", [None, [0, 3, 4]], ids=["whole-plan", "restricted"])
def test_the_triton_quantizer_in_the_interpreter(heads):
    """The Triton pass on the CPU interpreter against the PyTorch path. The interpreter rounds a few values
    that round up to a power of two one binade low (why CPU runs take the PyTorch path): every entry is
    equal or exactly half, and almost all are equal."""
    layout = LAYOUTS[1]
    plan = build_plan(MIXED, layout, TILE)
    plan = plan.restrict_heads(heads) if heads else plan
    _, k, v = inputs(layout, len(MIXED), offset=3.0)
    mean, v_scale = quantize.kv_stats(k, v)
    computed = plan.computed_heads
    got = quantize._kernel_kv_triton(k, v, plan, mean, v_scale)
    want = quantize._kernel_kv_torch(k, v, plan, mean, v_scale)
    assert torch.equal(got["k_scale"][:, computed], want["k_scale"][:, computed])
    for key in ("k8", "vt8"):
        a, b = got[key][:, computed].float(), want[key][:, computed].float()
        assert ((a == b) | (a == b / 2)).all(), key
        assert (a == b).float().mean() > 0.95, key
