"""Wan specifics: cross-attention and the I2V image context stay stock; fused projections."""

import torch
from diffusers.models.transformers.transformer_wan import WanAttnProcessor

from diffusers_sparse_vdit.processors import WanSparseAttnProcessor, apply_sparse_vdit
from diffusers_sparse_vdit.testing import tiny_transformer_inputs

from .common import ALL_FULL, forward, mode_map, twins


def _i2v_inputs(transformer):
    # Wan I2V: 512 text tokens (WanAttnProcessor hard-codes it) after the image context
    inputs = tiny_transformer_inputs(transformer, text_tokens=512)
    inputs["encoder_hidden_states_image"] = torch.randn(1, 5, 8)
    return inputs


def test_i2v_image_context_stays_dense():
    sparse, stock = twins("wan", image_dim=8, added_kv_proj_dim=48)
    inputs = _i2v_inputs(stock)
    expected = forward(stock, inputs)
    cross = [block.attn2.processor for block in sparse.blocks]
    apply_sparse_vdit(sparse, mode_map(sparse, ALL_FULL), backend="torch")
    assert [block.attn2.processor for block in sparse.blocks] == cross  # the same stock objects
    assert all(isinstance(block.attn1.processor, WanSparseAttnProcessor) for block in sparse.blocks)
    torch.testing.assert_close(forward(sparse, inputs), expected, atol=1e-5, rtol=1e-5)

    apply_sparse_vdit(sparse, mode_map(sparse), backend="torch")
    assert (forward(sparse, inputs) - expected).abs().max() > 1e-3


def test_fused_qkv_projections():
    sparse, stock = twins("wan")
    inputs = tiny_transformer_inputs(stock)
    expected = forward(stock, inputs)
    sparse.fuse_qkv_projections()
    apply_sparse_vdit(sparse, mode_map(sparse, ALL_FULL), backend="torch")
    assert all(hasattr(block.attn1, "to_qkv") for block in sparse.blocks)
    torch.testing.assert_close(forward(sparse, inputs), expected, atol=1e-5, rtol=1e-5)
    assert isinstance(sparse.blocks[0].attn2.processor, WanAttnProcessor)
