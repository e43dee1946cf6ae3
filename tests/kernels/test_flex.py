"""backend="flex" compiles FlexAttention once and reuses the compiled call."""

import torch
from torch._dynamo.utils import counters

from diffusers_sparse_vdit import ModeSpec, TokenLayout, build_plan, sparse_attention
from diffusers_sparse_vdit.kernels.flex import compiled_flex_attention


def test_second_call_reuses_the_compiled_flex_attention():
    layout = TokenLayout(3, 4, 5, text_tokens=7, text_position="after")
    plan = build_plan([ModeSpec.full(), ModeSpec.diagonal(0.5), ModeSpec.multi_diagonal(0.5), ModeSpec.skip()], layout, 16)
    q, k, v = (torch.randn(2, layout.num_tokens, plan.num_heads, 16).transpose(1, 2) for _ in range(3))
    lengths = torch.tensor([3, 7])
    torch._dynamo.reset()
    compiled_flex_attention.cache_clear()
    counters.clear()
    ref = sparse_attention(q, k, v, plan, backend="torch", text_lengths=lengths)
    first = sparse_attention(q, k, v, plan, backend="flex", text_lengths=lengths)
    graphs = counters["stats"]["unique_graphs"]
    assert graphs > 0, "FlexAttention ran eagerly: it must be compiled"
    second = sparse_attention(q, k, v, plan, backend="flex", text_lengths=torch.tensor([7, 2]))
    assert counters["stats"]["unique_graphs"] == graphs, "the second call recompiled"
    assert compiled_flex_attention("cpu") is compiled_flex_attention("cpu")
    torch.testing.assert_close(first, ref, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(second, sparse_attention(q, k, v, plan, backend="torch", text_lengths=torch.tensor([7, 2])),
                               atol=1e-5, rtol=1e-5)
