"""The literal ``transformer.set_attn_processor(SparseVDiTProcessor(...))`` route."""

import gc

import pytest
import torch
from diffusers.models.attention_processor import AttnProcessor2_0
from diffusers.models.transformers.transformer_hunyuan_video import HunyuanVideoAttnProcessor2_0
from diffusers.models.transformers.transformer_wan import WanAttnProcessor
from torch.nn.modules.module import _global_forward_pre_hooks

from diffusers_sparse_vdit.processors import (
    HunyuanVideoSparseAttnProcessor,
    SparseVDiTProcessor,
    WanSparseAttnProcessor,
    apply_sparse_vdit,
    get_sparse_vdit_hook,
    remove_sparse_vdit,
)
from diffusers_sparse_vdit.testing import VARIANTS, tiny_transformer, tiny_transformer_inputs

from .common import forward, mode_map


def test_set_attn_processor_changes_only_the_targets_like_apply():
    literal, explicit, stock = (tiny_transformer("wan") for _ in range(3))
    config = mode_map(stock)
    processor = SparseVDiTProcessor(config, backend="torch")
    literal.set_attn_processor(processor)
    apply_sparse_vdit(explicit, config, backend="torch")

    # step 0 (cond, uncond), then step 1: both routes agree from the call that binds on
    calls = [tiny_transformer_inputs(stock, timestep=t, seed=s) for t, s in [(900, 0), (900, 1), (800, 0)]]
    assert torch.equal(forward(literal, calls[0]), forward(explicit, calls[0]))
    assert processor._handle.id not in _global_forward_pre_hooks  # the global hook is gone
    assert get_sparse_vdit_hook(literal).state.step == 0  # the binding call was counted once
    for inputs in calls[1:]:
        assert torch.equal(forward(literal, inputs), forward(explicit, inputs))
        assert not torch.allclose(forward(literal, inputs), forward(stock, inputs))
    assert get_sparse_vdit_hook(literal).state.step == get_sparse_vdit_hook(explicit).state.step == 1

    # targets are sparse, cross-attention got fresh stock processors and computes what stock does
    for block, stock_block in zip(literal.blocks, stock.blocks, strict=True):
        assert isinstance(block.attn1.processor, WanSparseAttnProcessor)
        assert type(block.attn2.processor) is WanAttnProcessor
        hidden, text = torch.randn(1, 60, 48), torch.randn(1, 7, 16)
        text = stock.condition_embedder.text_embedder(text)
        with torch.no_grad():
            assert torch.equal(block.attn2(hidden, text), stock_block.attn2(hidden, text))

    remove_sparse_vdit(literal)
    assert all(type(p) is WanAttnProcessor for p in literal.attn_processors.values())
    assert torch.equal(forward(literal, calls[2]), forward(stock, calls[2]))


@pytest.mark.parametrize("variant", VARIANTS)
def test_the_first_call_is_sparse_and_exact(variant):
    literal, explicit, stock = (tiny_transformer(variant) for _ in range(3))
    config = mode_map(stock)
    literal.set_attn_processor(SparseVDiTProcessor(config, backend="torch"))
    apply_sparse_vdit(explicit, config, backend="torch")
    inputs = tiny_transformer_inputs(stock, batch_size=2, text_lengths=[7, 4] if variant == "hunyuan_video" else None)
    first, second = forward(literal, inputs), forward(literal, inputs)
    assert torch.equal(first, second) and torch.equal(first, forward(explicit, inputs))
    assert not torch.allclose(first, forward(stock, inputs))


def test_hunyuan_refiner_gets_its_stock_processor():
    transformer = tiny_transformer("hunyuan_video")
    transformer.set_attn_processor(SparseVDiTProcessor(mode_map(transformer), backend="torch"))
    forward(transformer, tiny_transformer_inputs(transformer))
    kinds = {name: type(p) for name, p in transformer.attn_processors.items()}
    assert kinds == {
        "context_embedder.token_refiner.refiner_blocks.0.attn.processor": AttnProcessor2_0,
        "transformer_blocks.0.attn.processor": HunyuanVideoSparseAttnProcessor,
        "single_transformer_blocks.0.attn.processor": HunyuanVideoSparseAttnProcessor,
    }
    remove_sparse_vdit(transformer)
    kinds = [type(p) for p in transformer.attn_processors.values()]
    assert kinds == [AttnProcessor2_0, HunyuanVideoAttnProcessor2_0, HunyuanVideoAttnProcessor2_0]


def test_warmup_makes_the_first_call_match_apply_too():
    literal, explicit = tiny_transformer("cogvideox"), tiny_transformer("cogvideox")
    config = mode_map(literal, dense_warmup_steps=1)
    literal.set_attn_processor(SparseVDiTProcessor(config, backend="torch"))
    apply_sparse_vdit(explicit, config, backend="torch")
    for t in (900, 800):
        inputs = tiny_transformer_inputs(literal, timestep=t, batch_size=2)
        assert torch.equal(forward(literal, inputs), forward(explicit, inputs))


def test_a_mismatched_map_fails_at_every_forward():
    transformer = tiny_transformer("cogvideox")
    transformer.set_attn_processor(SparseVDiTProcessor(mode_map(tiny_transformer("wan"))))
    inputs = tiny_transformer_inputs(transformer)
    for _ in range(2):
        with pytest.raises(ValueError, match="made for WanTransformer3DModel"):
            forward(transformer, inputs)


def test_calling_the_placeholder_directly_explains():
    transformer = tiny_transformer("wan")
    transformer.set_attn_processor(SparseVDiTProcessor(mode_map(transformer)))
    with pytest.raises(RuntimeError, match="call the transformer rather than its blocks"):
        transformer.blocks[0].attn1(torch.randn(1, 60, 48))


def test_apply_with_a_processor_binds_at_once():
    transformer = tiny_transformer("wan")
    processor = SparseVDiTProcessor(mode_map(transformer), backend="torch")
    transformer.set_attn_processor(processor)
    apply_sparse_vdit(transformer, processor)
    assert processor._handle.id not in _global_forward_pre_hooks
    assert [type(p) for p in transformer.attn_processors.values()] == [WanSparseAttnProcessor, WanAttnProcessor] * 2
    assert transformer.blocks[0].attn1.processor.backend == "torch"


def test_the_global_hook_goes_with_the_processor():
    processor = SparseVDiTProcessor(mode_map(tiny_transformer("wan")))
    handle = processor._handle.id
    assert handle in _global_forward_pre_hooks
    del processor
    gc.collect()
    assert handle not in _global_forward_pre_hooks
