"""bfloat16 on the GPU (the CPU interpreter breaks bf16): the Triton kernel against an fp32 reference."""

import pytest
import torch
import torch.nn.functional as F

from diffusers_sparse_vdit import ModeSpec, TokenLayout, build_plan, sparse_attention

from .gpu_cases import LAYOUTS, MIXED, rel_err

pytestmark = pytest.mark.gpu


@pytest.mark.parametrize("head_dim", [64, 128, 96])
@pytest.mark.parametrize("layout", LAYOUTS, ids=str)
def test_bf16_mixed_plan_matches_fp32_reference(layout, head_dim):
    plan = build_plan(MIXED, layout)  # 128-token tiles, as in production
    shape = (2, layout.num_tokens, len(MIXED), head_dim)
    q, k, v = (torch.randn(shape, device="cuda", dtype=torch.bfloat16).transpose(1, 2) for _ in range(3))
    lengths = torch.tensor([layout.text_tokens // 3, layout.text_tokens], device="cuda") if layout.text_tokens else None
    out = torch.full_like(q, float("nan"))
    sparse_attention(q, k, v, plan, backend="triton", out=out, text_lengths=lengths)
    mask = plan.dense_mask(lengths.cpu()) if lengths is not None else plan.dense_mask()
    ref = F.scaled_dot_product_attention(q.float(), k.float(), v.float(), attn_mask=mask.cuda())
    ref[:, plan.skip_heads] = 0
    assert not out.isnan().any()
    assert (out[:, plan.skip_heads] == 0).all()
    keep = [h for h in range(len(MIXED)) if h not in plan.skip_heads]
    assert rel_err(out[:, keep], ref[:, keep]) < 1e-2


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=str)
def test_all_full_matches_sdpa(dtype):
    layout = TokenLayout(7, 17, 23, text_tokens=100, text_position="before")
    plan = build_plan([ModeSpec.full()] * 4, layout)
    q, k, v = (torch.randn(1, 4, layout.num_tokens, 128, device="cuda", dtype=dtype) for _ in range(3))
    out = sparse_attention(q, k, v, plan, backend="triton")
    assert rel_err(out, F.scaled_dot_product_attention(q.float(), k.float(), v.float())) < 1e-2


def test_backends_agree_on_gpu():
    layout = TokenLayout(3, 16, 20, text_tokens=40, text_position="after")
    plan = build_plan(MIXED, layout)
    q, k, v = (torch.randn(1, len(MIXED), layout.num_tokens, 64, device="cuda", dtype=torch.float16) for _ in range(3))
    outs = {b: sparse_attention(q, k, v, plan, backend=b).float() for b in ("triton", "torch", "flex")}
    assert rel_err(outs["triton"], outs["torch"]) < 5e-3
    assert rel_err(outs["flex"], outs["torch"]) < 5e-3


@pytest.mark.parametrize("head_dim", [64, 128])
def test_large_plan_tiles_split_over_programs(head_dim):
    # 256-token tiles run as two programs of 128 rows each (kernel_config caps BLOCK_M)
    layout = TokenLayout(4, 12, 21, text_tokens=77, text_position="after")
    plan = build_plan(MIXED, layout, tile_size=256)
    q, k, v = (torch.randn(1, len(MIXED), layout.num_tokens, head_dim, device="cuda", dtype=torch.bfloat16)
               for _ in range(3))
    out = torch.full_like(q, float("nan"))
    sparse_attention(q, k, v, plan, backend="triton", out=out)
    ref = F.scaled_dot_product_attention(q.float(), k.float(), v.float(), attn_mask=plan.dense_mask().cuda())
    ref[:, plan.skip_heads] = 0
    assert not out.isnan().any()
    assert rel_err(out, ref) < 1e-2


@pytest.mark.parametrize("exp2", ["f32", "bf16x2"])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=str)
@pytest.mark.parametrize("head_dim", [64, 128])
def test_exp2_variants_match_fp32_reference(exp2, dtype, head_dim):
    # packed bf16 exponentials round the exponent before exp2: the error must stay at bf16's level
    # (float16 inputs too, whose P is converted from bf16)
    from diffusers_sparse_vdit.kernels.triton_sparse import kernel_config, sparse_attention_triton

    layout = LAYOUTS[2]
    plan = build_plan(MIXED, layout)
    q, k, v = (torch.randn(1, len(MIXED), layout.num_tokens, head_dim, device="cuda", dtype=dtype) * 2
               for _ in range(3))
    lengths = torch.tensor([50], device="cuda")
    out = torch.full_like(q, float("nan"))
    config = {**kernel_config(head_dim, plan.tile_size, q.device), "EXP2": exp2}
    sparse_attention_triton(q, k, v, plan, scale=head_dim ** -0.5, out=out, text_lengths=lengths, config=config)
    ref = F.scaled_dot_product_attention(q.float(), k.float(), v.float(), attn_mask=plan.dense_mask(lengths.cpu()).cuda())
    ref[:, plan.skip_heads] = 0
    assert not out.isnan().any()
    assert rel_err(out, ref) < 1e-2
