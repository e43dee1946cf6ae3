"""Wan2.1 (``WanTransformer3DModel``): sparse self-attention in ``blocks.*.attn1``.

Everything but the attention call is diffusers 0.42.1's ``WanAttnProcessor``: separate or
fused QKV projections, RMS norm across heads, RoPE, output projection. Video tokens only, no
text (Wan's text, and the image context of I2V models, go through the cross-attention
``blocks.*.attn2``, which keeps the stock processor).
"""

from __future__ import annotations

import torch
from diffusers.models.transformers.transformer_wan import WanAttnProcessor, _get_qkv_projections

from .base import AttentionCall, Family, SparseAttnProcessor

__all__ = ["WanSparseAttnProcessor", "WAN"]


def _apply_rotary_emb(hidden_states: torch.Tensor, freqs_cos: torch.Tensor, freqs_sin: torch.Tensor) -> torch.Tensor:
    # WanAttnProcessor's RoPE (a nested function there, so it cannot be imported)
    x1, x2 = hidden_states.unflatten(-1, (-1, 2)).unbind(-1)
    cos = freqs_cos[..., 0::2]
    sin = freqs_sin[..., 1::2]
    out = torch.empty_like(hidden_states)
    out[..., 0::2] = x1 * cos - x2 * sin
    out[..., 1::2] = x1 * sin + x2 * cos
    return out.type_as(hidden_states)


class WanSparseAttnProcessor(SparseAttnProcessor):
    """``WanAttnProcessor`` for self-attention, with per-head sparse attention."""

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, rotary_emb=None):
        return self.run(attn, hidden_states, encoder_hidden_states, attention_mask, rotary_emb)

    def prepare(self, attn, hidden_states, encoder_hidden_states, attention_mask, rotary_emb) -> AttentionCall:
        if encoder_hidden_states is not None or attention_mask is not None:
            raise ValueError(
                f"{type(self).__name__} serves Wan self-attention (blocks.*.attn1), which gets no encoder states "
                "and no mask; cross-attention keeps the stock WanAttnProcessor"
            )
        query, key, value = _get_qkv_projections(attn, hidden_states, None)

        query = attn.norm_q(query)
        key = attn.norm_k(key)

        query = query.unflatten(2, (attn.heads, -1))
        key = key.unflatten(2, (attn.heads, -1))
        value = value.unflatten(2, (attn.heads, -1))

        if rotary_emb is not None:
            query = _apply_rotary_emb(query, *rotary_emb)
            key = _apply_rotary_emb(key, *rotary_emb)

        return AttentionCall(
            query.transpose(1, 2),
            key.transpose(1, 2),
            value.transpose(1, 2),
            text_tokens=0,
        )

    def finish(self, attn, out, call):
        hidden_states = out.transpose(1, 2).flatten(2, 3)
        hidden_states = hidden_states.type_as(call.query)
        hidden_states = attn.to_out[0](hidden_states)
        hidden_states = attn.to_out[1](hidden_states)
        return hidden_states


def _latent_grid(config, hidden_states: torch.Tensor) -> tuple[int, int, int]:
    # hidden_states: (B, C, F, H, W) latents; a Conv3d patchifies them by patch_size (t, h, w)
    _, _, frames, height, width = hidden_states.shape
    p_t, p_h, p_w = config.patch_size
    return frames // p_t, height // p_h, width // p_w


WAN = Family(
    name="wan",
    processor_cls=WanSparseAttnProcessor,
    target_patterns=(r"blocks\.\d+\.attn1",),
    stock_target_processor=WanAttnProcessor,
    stock_other_processor=WanAttnProcessor,
    latent_grid=_latent_grid,
)
