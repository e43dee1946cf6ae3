"""CogVideoX specifics: text first, with and without RoPE; masks are refused."""

import pytest
import torch

from diffusers_sparse_vdit.processors import CogVideoXSparseAttnProcessor, apply_sparse_vdit
from diffusers_sparse_vdit.testing import tiny_transformer_inputs

from .common import ALL_FULL, forward, mode_map, twins


def test_without_rotary_embeddings():
    # CogVideoX-2b: sin-cos positional embeddings (for exactly max_text_seq_length text tokens) instead of RoPE
    sparse, stock = twins("cogvideox", use_rotary_positional_embeddings=False)
    inputs = tiny_transformer_inputs(stock, text_tokens=16)
    expected = forward(stock, inputs)
    apply_sparse_vdit(sparse, mode_map(sparse, ALL_FULL), backend="torch")
    torch.testing.assert_close(forward(sparse, inputs), expected, atol=1e-5, rtol=1e-5)


def test_attention_mask_is_refused():
    sparse, _ = twins("cogvideox")
    apply_sparse_vdit(sparse, mode_map(sparse), backend="torch")
    attn = sparse.transformer_blocks[0].attn1
    video, text = torch.randn(1, 20, 48), torch.randn(1, 7, 48)
    with pytest.raises(ValueError, match="no attention mask"):
        attn(video, encoder_hidden_states=text, attention_mask=torch.ones(1, 27, 27, dtype=torch.bool))


def test_fused_qkv_projections_keep_the_map():
    fused, unfused = twins("cogvideox")
    inputs = tiny_transformer_inputs(unfused)
    for transformer in (fused, unfused):
        apply_sparse_vdit(transformer, mode_map(transformer), backend="torch")
    expected = forward(unfused, inputs)
    fused.fuse_qkv_projections()  # sets FusedCogVideoXAttnProcessor2_0 on every attention module
    torch.testing.assert_close(forward(fused, inputs), expected, atol=1e-5, rtol=1e-5)
    assert all(isinstance(b.attn1.processor, CogVideoXSparseAttnProcessor) for b in fused.transformer_blocks)
    fused.unfuse_qkv_projections()
    torch.testing.assert_close(forward(fused, inputs), expected, atol=1e-5, rtol=1e-5)
