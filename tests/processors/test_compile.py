"""torch.compile and torch.export of a transformer with a sparse map: the same output as eager.

The step rule and plan selection run inside custom ops at run time, so one graph serves every
step (dense warm-up included), a fullgraph compile has no break, regional compilation compiles
a block once for all layers, and an exported program follows the steps too.
"""

import pytest
import torch

from diffusers_sparse_vdit import ModeSpec
from diffusers_sparse_vdit.processors import apply_sparse_vdit, get_sparse_vdit_hook, sparse_targets
from diffusers_sparse_vdit.testing import tiny_mode_map, tiny_transformer, tiny_transformer_inputs

SPECS = [ModeSpec.full(), ModeSpec.diagonal(0.5), ModeSpec.multi_diagonal(0.5)]
TIMESTEPS = (900.0, 800.0, 700.0)  # a dense warm-up step, then sparse steps


def _sparse_model(variant, **overrides):
    model = tiny_transformer(variant, **overrides)
    layers = [SPECS] * len(sparse_targets(model))
    apply_sparse_vdit(model, tiny_mode_map(model, layers, dense_warmup_steps=1), backend="torch")
    inputs = tiny_transformer_inputs(model, grid=(3, 4, 5), batch_size=2,
                                     text_lengths=[5, 7] if variant.startswith("hunyuan_video") else None)
    return model, inputs


def _generate(model, fn, inputs):
    outs = [fn(**{**inputs, "timestep": torch.full((2,), t)})[0] for t in TIMESTEPS]
    get_sparse_vdit_hook(model).state.reset()  # what a pipeline does after a generation
    return outs


def _assert_same(compiled, eager):
    assert not torch.equal(eager[0], eager[1])  # the steps really differ
    for a, b in zip(compiled, eager, strict=True):
        torch.testing.assert_close(a, b)


@pytest.mark.parametrize("variant", ["wan", "hunyuan_video", "cogvideox1.5"])
@torch.no_grad()
def test_fullgraph_compile_matches_eager(variant):
    torch._dynamo.reset()
    model, inputs = _sparse_model(variant)
    eager = _generate(model, model, inputs)
    compiled = torch.compile(model, backend="aot_eager", fullgraph=True)  # fullgraph: a graph break raises
    _assert_same(_generate(model, compiled, inputs), eager)


@torch.no_grad()
def test_compile_repeated_blocks_compiles_one_block_for_all_layers():
    torch._dynamo.reset()
    torch._dynamo.utils.counters.clear()
    model, inputs = _sparse_model("wan", num_layers=10)
    eager = _generate(model, model, inputs)
    model.compile_repeated_blocks(backend="eager", fullgraph=True)
    _assert_same(_generate(model, model, inputs), eager)
    assert torch._dynamo.utils.counters["stats"]["unique_graphs"] == 1


@torch.no_grad()
def test_torch_export_follows_the_steps():
    model, inputs = _sparse_model("wan")
    eager = _generate(model, model, inputs)
    exported = torch.export.export(model, (), {**inputs, "timestep": torch.full((2,), TIMESTEPS[0])}).module()
    get_sparse_vdit_hook(model).state.reset()
    _assert_same(_generate(model, exported, inputs), eager)


@torch.no_grad()
def test_hunyuan_video15_compiles_by_block():
    # its forward gathers the valid conditioning per item (data-dependent shapes), so the whole model
    # compiles with graph breaks; its blocks compile whole, the padding reaching the hook at run time
    torch._dynamo.reset()
    model, inputs = _sparse_model("hunyuan_video15")
    eager = _generate(model, model, inputs)
    _assert_same(_generate(model, torch.compile(model, backend="aot_eager"), inputs), eager)
    model.compile_repeated_blocks(backend="eager", fullgraph=True)
    _assert_same(_generate(model, model, inputs), eager)
