"""sparse_attention is a registered custom op: torch.compile keeps it in the graph."""

import pytest
import torch

from diffusers_sparse_vdit import ModeSpec, TokenLayout, build_plan, sparse_attention

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"


def inputs(layout, heads, head_dim=32):
    return [torch.randn(2, layout.num_tokens, heads, head_dim, device=DEVICE).transpose(1, 2) for _ in range(3)]


@pytest.mark.parametrize("backend", ["torch", "triton"])
def test_fullgraph_compile_has_no_graph_break(backend):
    layout = TokenLayout(3, 4, 5, text_tokens=7, text_position="after")
    plan = build_plan([ModeSpec.full(), ModeSpec.diagonal(0.5), ModeSpec.multi_diagonal(0.5), ModeSpec.skip()], layout, 16)
    q, k, v = inputs(layout, plan.num_heads)
    lengths = torch.tensor([3, 7], device=DEVICE)

    def attention(q, k, v):
        return sparse_attention(q, k, v, plan, backend=backend, text_lengths=lengths) * 2

    expected = attention(q, k, v)
    compiled = torch.compile(attention, backend="aot_eager", fullgraph=True)  # fullgraph: a break raises
    out = compiled(q, k, v)
    torch.testing.assert_close(out, expected)
    assert out.stride() == q.stride()


def test_opcheck():
    layout = TokenLayout(2, 4, 4, text_tokens=5, text_position="before")
    plan = build_plan([ModeSpec.diagonal(0.5), ModeSpec.vertical_stripe(1)], layout, 16)
    q, k, v = inputs(layout, 2)
    torch.library.opcheck(torch.ops.diffusers_sparse_vdit.sparse_attention.default, (q, k, v, None, plan.uid, 0.2, "torch"))
