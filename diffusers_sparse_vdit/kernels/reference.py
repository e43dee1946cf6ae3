"""Plain-PyTorch block-sparse attention: the readable reference beside the Triton kernel.

It walks the same tile lists, one query tile of one head at a time, gathering that tile's
key rows and running a masked softmax in float32. Memory stays bounded at any size (one
``tile x keys`` score block at a time), so it is also the CPU backend for real-size layouts.
"""

from __future__ import annotations

import torch

from ..layout import TOKEN_MAJOR

__all__ = ["sparse_attention_torch"]


def sparse_attention_torch(q, k, v, plan, *, scale: float, out: torch.Tensor, text_lengths=None):
    batch = q.shape[0]
    layout, tile = plan.layout, plan.tile_size
    nvt = plan.video_tiles
    maps = plan.row_maps().to(q.device).long()
    lengths = plan.tile_lengths.tolist()
    text_len = (
        torch.as_tensor(text_lengths, device=q.device).reshape(batch, 1)
        if text_lengths is not None
        else torch.full((batch, 1), layout.text_tokens, device=q.device)
    )
    for h, spec in enumerate(plan.specs):
        if h in plan.skip_heads:
            out[:, h] = 0
            continue
        rows_of = maps[TOKEN_MAJOR if spec.reordered else 0].view(-1, tile)
        for t in range(plan.num_tiles):
            q_rows = rows_of[t, : lengths[t]]
            key_tiles = plan.key_tiles(h, t).long().tolist()
            k_rows = torch.cat([rows_of[kt, : lengths[kt]] for kt in key_tiles])
            # text keys past a batch item's valid text length are masked (HunyuanVideo padding)
            text_pos = torch.cat(
                [
                    torch.arange(lengths[kt], device=q.device) + (kt - nvt) * tile
                    if kt >= nvt
                    else torch.full((lengths[kt],), -1, device=q.device)
                    for kt in key_tiles
                ]
            )
            key_ok = text_pos[None, :] < text_len  # (B, keys)
            scores = torch.einsum("bqd,bkd->bqk", q[:, h, q_rows].float(), k[:, h, k_rows].float()) * scale
            scores = scores.masked_fill(~key_ok[:, None, :], float("-inf"))
            probs = torch.softmax(scores, dim=-1)
            out[:, h, q_rows] = torch.einsum("bqk,bkd->bqd", probs, v[:, h, k_rows].float()).to(out.dtype)
    return out
