"""HunyuanVideo-1.5 (``HunyuanVideo15Transformer3DModel``): sparse joint attention in ``transformer_blocks.*.attn``.

Everything but the attention call is diffusers 0.42.1's ``HunyuanVideo15AttnProcessor2_0``: video
and conditioning projected separately (``add_*_proj``), RMS QK norms, RoPE on the video stream,
the conditioning appended after the video. All blocks are dual-stream; the token refiner
(``context_embedder``) is text-only and keeps its stock ``AttnProcessor2_0``.

Sequence. ``[video (f, h, w) | conditioning]``. The transformer builds the conditioning per item
as ``[valid image, valid ByT5, valid MLLM, then the padding of each]``: SigLIP image tokens (I2V;
masked out when ``image_embeds`` is all zero, i.e. text-to-video), ByT5 glyph tokens, Qwen2.5-VL
prompt tokens. So the valid conditioning tokens always come first, and per item their count is
all the masks summed: the kernel's ``text_lengths``. The image tokens are text-like rows for the
masks (they are no frame of the grid: they carry no position and no RoPE). The first-frame
latent of I2V is concatenated on channels and adds no tokens.

Padding. The stock processor masks padded conditioning tokens as keys *and* as queries (a padded
row attends to nothing). The sparse kernel masks them as keys; padded rows still compute, and
their outputs are never read: they only flow into later padded rows, which every video and
valid row masks out, and the transformer returns video tokens only.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from diffusers.models.attention_processor import AttnProcessor2_0
from diffusers.models.embeddings import apply_rotary_emb
from diffusers.models.transformers.transformer_hunyuan_video15 import HunyuanVideo15AttnProcessor2_0

from .base import AttentionCall, Family
from .hunyuan_video import HunyuanVideoSparseAttnProcessor, append_condition_qkv
from .hunyuan_video import _latent_grid as _hunyuan_latent_grid

__all__ = ["HunyuanVideo15SparseAttnProcessor", "HUNYUAN_VIDEO15", "call_text"]


class HunyuanVideo15SparseAttnProcessor(HunyuanVideoSparseAttnProcessor):
    """``HunyuanVideo15AttnProcessor2_0`` with per-head sparse attention (output path as HunyuanVideo's)."""

    def prepare(self, attn, hidden_states, encoder_hidden_states, attention_mask, image_rotary_emb) -> AttentionCall:
        # 1. QKV projections
        query = attn.to_q(hidden_states).unflatten(2, (attn.heads, -1))
        key = attn.to_k(hidden_states).unflatten(2, (attn.heads, -1))
        value = attn.to_v(hidden_states).unflatten(2, (attn.heads, -1))

        # 2. QK normalization
        query = attn.norm_q(query)
        key = attn.norm_k(key)

        # 3. Rotational positional embeddings applied to latent stream
        if image_rotary_emb is not None:
            query = apply_rotary_emb(query, image_rotary_emb, sequence_dim=1)
            key = apply_rotary_emb(key, image_rotary_emb, sequence_dim=1)

        # 4. Encoder condition QKV projection and normalization
        text_tokens = 0
        if encoder_hidden_states is not None:
            text_tokens = encoder_hidden_states.shape[1]
            query, key, value = append_condition_qkv(attn, query, key, value, encoder_hidden_states)

        _check_condition_mask(attention_mask, query.shape[0], text_tokens)
        return AttentionCall(
            query.transpose(1, 2),
            key.transpose(1, 2),
            value.transpose(1, 2),
            text_tokens=text_tokens,
            attention_mask=attention_mask,
        )

    def dense_attention(self, query, key, value, attention_mask):
        # the stock (B, 1, N, N) mask: video tokens valid, conditioning as its mask says, as keys and queries
        batch_size, _, seq_len, _ = query.shape
        valid = F.pad(attention_mask, (seq_len - attention_mask.shape[1], 0), value=True).bool()
        keys = valid.view(batch_size, 1, 1, seq_len).repeat(1, 1, seq_len, 1)
        return super().dense_attention(query, key, value, keys & keys.transpose(2, 3))


def _check_condition_mask(mask: torch.Tensor | None, batch_size: int, text_tokens: int) -> None:
    """Refuse anything but the ``(batch, conditioning tokens)`` mask the transformer passes its blocks."""
    if mask is None or mask.dim() != 2 or tuple(mask.shape) != (batch_size, text_tokens):
        got = "none" if mask is None else f"shape {tuple(mask.shape)}"
        raise ValueError(
            "HunyuanVideo-1.5 sparse attention takes the (batch, conditioning tokens) mask that "
            f"HunyuanVideo15Transformer3DModel.forward passes its blocks, here ({batch_size}, {text_tokens}); got {got}. "
            "Call the transformer, not its blocks, and pass padding through its encoder_attention_mask arguments."
        )


def call_text(arguments: dict) -> tuple[int, torch.Tensor | None]:
    """Conditioning tokens of a transformer call and, when some are padding, the valid ones per item (B,).

    As ``HunyuanVideo15Transformer3DModel.forward`` counts them: the valid MLLM and ByT5 tokens of
    each item, plus every image token unless ``image_embeds`` is all zero (text-to-video).
    """
    image = arguments.get("image_embeds")
    text_2 = arguments.get("encoder_hidden_states_2")
    if image is None or text_2 is None:
        raise ValueError(
            "HunyuanVideo15Transformer3DModel needs encoder_hidden_states_2, encoder_attention_mask_2 and image_embeds "
            "(all zero for text-to-video), as its pipelines pass them"
        )
    text_tokens = arguments["encoder_hidden_states"].shape[1] + text_2.shape[1] + image.shape[1]
    lengths = arguments["encoder_attention_mask"].sum(dim=1) + arguments["encoder_attention_mask_2"].sum(dim=1)
    if not bool((image == 0).all()):
        lengths = lengths + image.shape[1]
    lengths = lengths.to(torch.int32)
    return text_tokens, None if bool((lengths == text_tokens).all()) else lengths


HUNYUAN_VIDEO15 = Family(
    name="hunyuan_video15",
    processor_cls=HunyuanVideo15SparseAttnProcessor,
    target_patterns=(r"transformer_blocks\.\d+\.attn",),
    stock_target_processor=HunyuanVideo15AttnProcessor2_0,
    stock_other_processor=AttnProcessor2_0,
    latent_grid=_hunyuan_latent_grid,  # (B, C, F, H, W) latents, patch_size_t and patch_size as HunyuanVideo
    call_text=call_text,
    call_inputs=(
        "encoder_hidden_states", "encoder_attention_mask", "encoder_hidden_states_2", "encoder_attention_mask_2",
        "image_embeds",
    ),  # fmt: skip
)
