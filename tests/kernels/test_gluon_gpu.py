"""The warp-specialized Hopper kernel (Gluon) on the GPU, against an fp32 dense-mask reference."""

import pytest
import torch
import torch.nn.functional as F

from diffusers_sparse_vdit import TokenLayout, build_plan, sparse_attention
from diffusers_sparse_vdit.kernels.attention import gluon_supported
from diffusers_sparse_vdit.kernels.gluon_sparse import sparse_attention_gluon

from .gpu_cases import LAYOUTS, MIXED, rel_err

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available() or torch.cuda.get_device_capability()[0] != 9,
                       reason="the Gluon kernel runs on Hopper GPUs"),
]

CONFIGS = [None, {"BLOCK_N": 64, "STAGES": 2, "CONSUMER_REGS": 240, "maxnreg": 168}]


@pytest.mark.parametrize("config", CONFIGS, ids=["default", "64-key-2-stage"])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=str)
@pytest.mark.parametrize("head_dim", [64, 128])
@pytest.mark.parametrize("layout", LAYOUTS, ids=str)
def test_mixed_plan_matches_fp32_reference(layout, head_dim, dtype, config):
    plan = build_plan(MIXED, layout)
    shape = (2, layout.num_tokens, len(MIXED), head_dim)  # diffusers' memory layout, read as (B, H, N, D) views
    q, k, v = (torch.randn(shape, device="cuda", dtype=dtype).transpose(1, 2) for _ in range(3))
    lengths = torch.tensor([layout.text_tokens // 3, layout.text_tokens], device="cuda", dtype=torch.int32) \
        if layout.text_tokens else None
    assert gluon_supported(q, k, v, plan)
    out = torch.full_like(q, float("nan"))  # unwritten rows show
    sparse_attention_gluon(q, k, v, plan, scale=head_dim ** -0.5, out=out, text_lengths=lengths, config=config)
    mask = plan.dense_mask(lengths.cpu()) if lengths is not None else plan.dense_mask()
    ref = F.scaled_dot_product_attention(q.float(), k.float(), v.float(), attn_mask=mask.cuda())
    assert not out.isnan().any()
    assert (out[:, plan.skip_heads] == 0).all()
    keep = [h for h in range(len(MIXED)) if h not in plan.skip_heads]
    assert rel_err(out[:, keep], ref[:, keep]) < 1e-2


def test_auto_takes_the_gluon_kernel_and_agrees_with_triton(monkeypatch):
    import diffusers_sparse_vdit.kernels.gluon_sparse as gluon_sparse

    layout = TokenLayout(3, 16, 20, text_tokens=40, text_position="after")
    plan = build_plan(MIXED, layout)
    q, k, v = (torch.randn(1, len(MIXED), layout.num_tokens, 128, device="cuda", dtype=torch.bfloat16)
               for _ in range(3))
    calls = []
    original = gluon_sparse.sparse_attention_gluon
    monkeypatch.setattr(gluon_sparse, "sparse_attention_gluon", lambda *a, **kw: calls.append(1) or original(*a, **kw))
    out = sparse_attention(q, k, v, plan)  # the custom op, as the processors call it
    assert calls, "backend='auto' did not take the Gluon kernel on a Hopper GPU"
    assert rel_err(out, sparse_attention(q, k, v, plan, backend="triton").float()) < 1e-2


def test_unsupported_calls_fall_back_or_say_why():
    layout = TokenLayout(3, 16, 20)
    plan = build_plan(MIXED, layout)
    q, k, v = (torch.randn(1, len(MIXED), layout.num_tokens, 96, device="cuda", dtype=torch.bfloat16)
               for _ in range(3))
    assert not gluon_supported(q, k, v, plan)  # head_dim 96: auto runs the Triton kernel
    ref = F.scaled_dot_product_attention(q.float(), k.float(), v.float(), attn_mask=plan.dense_mask().cuda())
    ref[:, plan.skip_heads] = 0
    assert rel_err(sparse_attention(q, k, v, plan), ref) < 1e-2
    with pytest.raises(ValueError, match="head_dim 64 or 128"):
        sparse_attention(q, k, v, plan, backend="gluon")
