"""torch.compile(transformer) with a sparse map: one graph, no breaks, the same output as eager."""

import pytest
import torch

from diffusers_sparse_vdit import ModeSpec
from diffusers_sparse_vdit.processors import apply_sparse_vdit, get_sparse_vdit_hook
from diffusers_sparse_vdit.testing import tiny_mode_map, tiny_transformer, tiny_transformer_inputs

SPECS = [ModeSpec.full(), ModeSpec.diagonal(0.5), ModeSpec.multi_diagonal(0.5)]


@pytest.mark.parametrize("variant", ["wan", "hunyuan_video", "cogvideox1.5"])
@torch.no_grad()
def test_compiled_transformer_has_no_graph_break_and_matches_eager(variant):
    torch._dynamo.reset()
    model = tiny_transformer(variant)
    inputs = tiny_transformer_inputs(model, grid=(3, 4, 5), batch_size=2,
                                     text_lengths=[5, 7] if variant == "hunyuan_video" else None)
    # a dense warm-up step first, then sparse steps: the compiled graph must follow the switch
    apply_sparse_vdit(model, tiny_mode_map(model, [SPECS] * 2, dense_warmup_steps=1), backend="torch")

    explanation = torch._dynamo.explain(model)(**inputs)
    assert explanation.graph_break_count == 0, [r.reason for r in explanation.break_reasons]
    get_sparse_vdit_hook(model).state.reset()

    def generate(fn):
        outs = []
        for t in (900.0, 800.0, 700.0):
            outs.append(fn(**{**inputs, "timestep": torch.full((2,), t)})[0])
        get_sparse_vdit_hook(model).state.reset()
        return outs

    eager = generate(model)
    compiled = generate(torch.compile(model, backend="aot_eager"))
    assert not torch.equal(eager[0], eager[1])  # the steps really differ
    for a, b in zip(compiled, eager):
        torch.testing.assert_close(a, b)
