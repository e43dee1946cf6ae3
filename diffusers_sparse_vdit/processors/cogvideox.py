"""CogVideoX and CogVideoX1.5 (``CogVideoXTransformer3DModel``): sparse attention in ``transformer_blocks.*.attn1``.

Everything but the attention call is diffusers 0.42.1's ``CogVideoXAttnProcessor2_0``: text
tokens first, then video; LayerNorm on q and k; RoPE on the video part (CogVideoX-5b and
1.5). Like the stock processor, the dense path calls ``F.scaled_dot_product_attention``
directly, so ``set_attention_backend`` does not apply to it.

CogVideoX1.5 patchifies time as well (``patch_size_t``): its latent frames (padded by the
pipeline to a multiple of ``patch_size_t``) become ``frames // patch_size_t`` token frames.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from diffusers.models.attention_processor import (
    AttnProcessor2_0,
    CogVideoXAttnProcessor2_0,
    FusedCogVideoXAttnProcessor2_0,
)
from diffusers.models.embeddings import apply_rotary_emb

from .base import AttentionCall, Family, SparseAttnProcessor

__all__ = ["CogVideoXSparseAttnProcessor", "COGVIDEOX"]


class CogVideoXSparseAttnProcessor(SparseAttnProcessor):
    """``CogVideoXAttnProcessor2_0`` with per-head sparse attention."""

    text_position = "before"

    def __call__(self, attn, hidden_states, encoder_hidden_states, attention_mask=None, image_rotary_emb=None):
        return self.run(attn, hidden_states, encoder_hidden_states, attention_mask, image_rotary_emb)

    def prepare(self, attn, hidden_states, encoder_hidden_states, attention_mask, image_rotary_emb) -> AttentionCall:
        if attention_mask is not None:
            raise ValueError(
                "CogVideoX blocks pass no attention mask, and sparse attention cannot apply an arbitrary one; "
                f"got a mask of shape {tuple(attention_mask.shape)}"
            )
        text_seq_length = encoder_hidden_states.size(1)

        hidden_states = torch.cat([encoder_hidden_states, hidden_states], dim=1)

        batch_size, sequence_length, _ = hidden_states.shape

        if attn.fused_projections:  # as FusedCogVideoXAttnProcessor2_0 (see SparseVDiTHook.check_processors)
            qkv = attn.to_qkv(hidden_states)
            split_size = qkv.shape[-1] // 3
            query, key, value = torch.split(qkv, split_size, dim=-1)
        else:
            query = attn.to_q(hidden_states)
            key = attn.to_k(hidden_states)
            value = attn.to_v(hidden_states)

        inner_dim = key.shape[-1]
        head_dim = inner_dim // attn.heads

        query = query.view(batch_size, -1, attn.heads, head_dim).transpose(1, 2)
        key = key.view(batch_size, -1, attn.heads, head_dim).transpose(1, 2)
        value = value.view(batch_size, -1, attn.heads, head_dim).transpose(1, 2)

        if attn.norm_q is not None:
            query = attn.norm_q(query)
        if attn.norm_k is not None:
            key = attn.norm_k(key)

        # Apply RoPE if needed
        if image_rotary_emb is not None:
            query[:, :, text_seq_length:] = apply_rotary_emb(query[:, :, text_seq_length:], image_rotary_emb)
            if not attn.is_cross_attention:
                key[:, :, text_seq_length:] = apply_rotary_emb(key[:, :, text_seq_length:], image_rotary_emb)

        return AttentionCall(query, key, value, text_tokens=text_seq_length)

    def dense_attention(self, query, key, value, attention_mask):
        return F.scaled_dot_product_attention(
            query, key, value, attn_mask=attention_mask, dropout_p=0.0, is_causal=False
        )

    def finish(self, attn, out, call):
        batch_size, heads, _, head_dim = out.shape
        hidden_states = out.transpose(1, 2).reshape(batch_size, -1, heads * head_dim)

        # linear proj
        hidden_states = attn.to_out[0](hidden_states)
        # dropout
        hidden_states = attn.to_out[1](hidden_states)

        encoder_hidden_states, hidden_states = hidden_states.split(
            [call.text_tokens, hidden_states.size(1) - call.text_tokens], dim=1
        )
        return hidden_states, encoder_hidden_states


def _latent_grid(config, hidden_states: torch.Tensor) -> tuple[int, int, int]:
    # hidden_states: (B, F, C, H, W) latents (frames before channels in CogVideoX)
    _, frames, _, height, width = hidden_states.shape
    p, p_t = config.patch_size, config.patch_size_t
    return (frames if p_t is None else frames // p_t), height // p, width // p


COGVIDEOX = Family(
    name="cogvideox",
    processor_cls=CogVideoXSparseAttnProcessor,
    target_patterns=(r"transformer_blocks\.\d+\.attn1",),
    stock_target_processor=CogVideoXAttnProcessor2_0,
    # CogVideoX has no other attention modules; any added by a variant would get the default.
    stock_other_processor=AttnProcessor2_0,
    latent_grid=_latent_grid,
    fused_stock_processor=FusedCogVideoXAttnProcessor2_0,
    call_text=lambda arguments: (arguments["encoder_hidden_states"].shape[1], None),
)
