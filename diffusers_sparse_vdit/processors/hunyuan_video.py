"""HunyuanVideo (``HunyuanVideoTransformer3DModel``): sparse joint attention in every block.

Targets are the dual-stream ``transformer_blocks.*.attn`` (video and text projected
separately, text appended after video) and the single-stream ``single_transformer_blocks.*.attn``
(one sequence, text after video). Everything but the attention call is diffusers 0.42.1's
``HunyuanVideoAttnProcessor2_0``. The token refiner's attention (``context_embedder``) is
text-only and keeps its stock ``AttnProcessor2_0``.

Text padding. The transformer masks padded prompt tokens with a ``(B, 1, 1, N)`` boolean
key mask that is True up to ``video + valid text`` tokens. The sparse kernel takes the same
information as ``text_lengths`` (valid text tokens per batch item); a mask of any other form
is refused rather than silently dropped.
"""

from __future__ import annotations

import torch
from diffusers.models.attention_processor import AttnProcessor2_0
from diffusers.models.embeddings import apply_rotary_emb
from diffusers.models.transformers.transformer_hunyuan_video import HunyuanVideoAttnProcessor2_0

from .base import AttentionCall, Family, SparseAttnProcessor

__all__ = ["HunyuanVideoSparseAttnProcessor", "HUNYUAN_VIDEO", "call_text", "check_key_padding_mask"]


class HunyuanVideoSparseAttnProcessor(SparseAttnProcessor):
    """``HunyuanVideoAttnProcessor2_0`` with per-head sparse attention."""

    text_position = "after"

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, image_rotary_emb=None):
        return self.run(attn, hidden_states, encoder_hidden_states, attention_mask, image_rotary_emb)

    def prepare(self, attn, hidden_states, encoder_hidden_states, attention_mask, image_rotary_emb) -> AttentionCall:
        if attn.add_q_proj is None and encoder_hidden_states is not None:
            hidden_states = torch.cat([hidden_states, encoder_hidden_states], dim=1)

        # 1. QKV projections
        query = attn.to_q(hidden_states)
        key = attn.to_k(hidden_states)
        value = attn.to_v(hidden_states)

        query = query.unflatten(2, (attn.heads, -1))
        key = key.unflatten(2, (attn.heads, -1))
        value = value.unflatten(2, (attn.heads, -1))

        # 2. QK normalization
        if attn.norm_q is not None:
            query = attn.norm_q(query)
        if attn.norm_k is not None:
            key = attn.norm_k(key)

        # 3. Rotational positional embeddings applied to latent stream
        if image_rotary_emb is not None:
            if attn.add_q_proj is None and encoder_hidden_states is not None:
                text = encoder_hidden_states.shape[1]
                query = torch.cat(
                    [apply_rotary_emb(query[:, :-text], image_rotary_emb, sequence_dim=1), query[:, -text:]], dim=1
                )
                key = torch.cat(
                    [apply_rotary_emb(key[:, :-text], image_rotary_emb, sequence_dim=1), key[:, -text:]], dim=1
                )
            else:
                query = apply_rotary_emb(query, image_rotary_emb, sequence_dim=1)
                key = apply_rotary_emb(key, image_rotary_emb, sequence_dim=1)

        # 4. Encoder condition QKV projection and normalization
        if attn.add_q_proj is not None and encoder_hidden_states is not None:
            query, key, value = append_condition_qkv(attn, query, key, value, encoder_hidden_states)

        text_tokens = 0 if encoder_hidden_states is None else encoder_hidden_states.shape[1]
        if attention_mask is not None:
            # its text lengths come from the hook; under Ulysses it covers the whole sequence
            check_key_padding_mask(attention_mask, self.whole_sequence_tokens(query.shape[1], text_tokens))
        return AttentionCall(
            query.transpose(1, 2),
            key.transpose(1, 2),
            value.transpose(1, 2),
            text_tokens=text_tokens,
            attention_mask=attention_mask,
        )

    def finish(self, attn, out, call):
        hidden_states = out.transpose(1, 2).flatten(2, 3)
        hidden_states = hidden_states.to(call.query.dtype)

        # 6. Output projection
        encoder_hidden_states = None
        if call.text_tokens:
            text = call.text_tokens
            hidden_states, encoder_hidden_states = hidden_states[:, :-text], hidden_states[:, -text:]

            if getattr(attn, "to_out", None) is not None:
                hidden_states = attn.to_out[0](hidden_states)
                hidden_states = attn.to_out[1](hidden_states)

            if getattr(attn, "to_add_out", None) is not None:
                encoder_hidden_states = attn.to_add_out(encoder_hidden_states)

        return hidden_states, encoder_hidden_states


def check_key_padding_mask(mask: torch.Tensor, num_tokens: int) -> None:
    """Refuse anything but the ``(B, 1, 1, N)`` boolean key-padding mask the transformer builds.

    ``HunyuanVideoTransformer3DModel.forward`` keeps every video token and each item's first
    ``encoder_attention_mask.sum()`` text tokens; the hook derives the same per-item text lengths
    from ``encoder_attention_mask`` (:func:`call_text`), so only the mask's form is checked here
    (a shape and dtype check: nothing data-dependent runs per layer).
    """
    if mask.dtype != torch.bool or mask.dim() != 4 or tuple(mask.shape[1:]) != (1, 1, num_tokens):
        raise ValueError(
            "HunyuanVideo sparse attention takes the (batch, 1, 1, tokens) boolean key-padding mask that "
            f"HunyuanVideoTransformer3DModel.forward builds; got a {mask.dtype} mask of shape {tuple(mask.shape)} "
            f"for {num_tokens} tokens. Pass text padding through encoder_attention_mask instead of a custom attention mask."
        )


def call_text(arguments: dict) -> tuple[int, torch.Tensor | None]:
    """Text tokens of a transformer call and, when some are padding, the valid ones per item (B,).

    Like the transformer, an item keeps its first ``encoder_attention_mask.sum()`` text tokens
    (the token refiner keeps the prompt's length).
    """
    mask = arguments["encoder_attention_mask"]
    text_tokens = arguments["encoder_hidden_states"].shape[1]
    lengths = mask.sum(dim=1).to(torch.int32)
    return text_tokens, None if bool((lengths == text_tokens).all()) else lengths


def _latent_grid(config, hidden_states: torch.Tensor) -> tuple[int, int, int]:
    # hidden_states: (B, C, F, H, W) latents; a Conv3d patchifies them by (patch_size_t, patch_size, patch_size)
    _, _, frames, height, width = hidden_states.shape
    p, p_t = config.patch_size, config.patch_size_t
    return frames // p_t, height // p, width // p


HUNYUAN_VIDEO = Family(
    name="hunyuan_video",
    processor_cls=HunyuanVideoSparseAttnProcessor,
    target_patterns=(r"transformer_blocks\.\d+\.attn", r"single_transformer_blocks\.\d+\.attn"),
    stock_target_processor=HunyuanVideoAttnProcessor2_0,
    stock_other_processor=AttnProcessor2_0,
    latent_grid=_latent_grid,
    call_text=call_text,
)


def append_condition_qkv(attn, query, key, value, encoder_hidden_states):
    """The dual-stream blocks' text (condition) q, k, v, projected and normalized, after the video's."""
    encoder_query = attn.add_q_proj(encoder_hidden_states).unflatten(2, (attn.heads, -1))
    encoder_key = attn.add_k_proj(encoder_hidden_states).unflatten(2, (attn.heads, -1))
    encoder_value = attn.add_v_proj(encoder_hidden_states).unflatten(2, (attn.heads, -1))
    if attn.norm_added_q is not None:
        encoder_query = attn.norm_added_q(encoder_query)
    if attn.norm_added_k is not None:
        encoder_key = attn.norm_added_k(encoder_key)
    return (torch.cat([query, encoder_query], dim=1), torch.cat([key, encoder_key], dim=1),
            torch.cat([value, encoder_value], dim=1))
