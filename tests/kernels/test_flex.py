"""backend="flex" compiles FlexAttention once and reuses the compiled call."""

import pytest
import torch
from torch._dynamo.utils import counters

from diffusers_sparse_vdit import ModeSpec, TokenLayout, build_plan, sparse_attention
from diffusers_sparse_vdit.kernels.flex import compiled_flex_attention


@pytest.mark.parametrize("device", ["cpu", pytest.param("cuda", marks=pytest.mark.gpu)])
def test_second_call_reuses_the_compiled_flex_attention(device):
    # Inductor's flex template on CUDA has no kernel for 16-token blocks (torch 2.11, H200): there the
    # test runs at the GPU kernels' tile, dtype and a real head_dim
    cuda = device == "cuda"
    layout = TokenLayout(3, 8, 16, text_tokens=7, text_position="after") if cuda else TokenLayout(3, 4, 5, text_tokens=7, text_position="after")
    specs = [ModeSpec.full(), ModeSpec.diagonal(0.5), ModeSpec.multi_diagonal(0.5), ModeSpec.skip()]
    plan = build_plan(specs, layout, 128 if cuda else 16)
    dtype, head_dim, tol = (torch.bfloat16, 64, 2e-2) if cuda else (torch.float32, 16, 1e-5)
    q, k, v = (torch.randn(2, layout.num_tokens, plan.num_heads, head_dim, device=device, dtype=dtype).transpose(1, 2)
               for _ in range(3))
    lengths = torch.tensor([3, 7], device=device)
    torch._dynamo.reset()
    compiled_flex_attention.cache_clear()  # a fresh compile in this test, counted below
    counters.clear()
    ref = sparse_attention(q, k, v, plan, backend="torch", text_lengths=lengths)
    first = sparse_attention(q, k, v, plan, backend="flex", text_lengths=lengths)
    graphs = counters["stats"]["unique_graphs"]
    assert graphs > 0, "FlexAttention ran eagerly: it must be compiled"
    second = sparse_attention(q, k, v, plan, backend="flex", text_lengths=torch.tensor([7, 2], device=device))
    assert counters["stats"]["unique_graphs"] == graphs, "the second call recompiled"
    assert compiled_flex_attention(device) is compiled_flex_attention(device)
    torch.testing.assert_close(first, ref, atol=tol, rtol=tol)
    torch.testing.assert_close(second, sparse_attention(q, k, v, plan, backend="torch", text_lengths=torch.tensor([7, 2], device=device)),
                               atol=tol, rtol=tol)
