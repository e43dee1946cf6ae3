"""Plain-PyTorch block-sparse attention: the readable reference beside the Triton kernel.

It walks the same tile lists, one query tile of one head at a time, gathering that tile's
key rows and running a masked softmax in float32. Memory stays bounded at any size (one
``tile x keys`` score block at a time), so it is also the CPU backend for real-size layouts.
"""

from __future__ import annotations

import torch

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
    order_rows = [maps[o].view(-1, tile) for o in range(maps.shape[0])]
    for h, t, _, _, n_total in plan.work.tolist():  # the plan's work list: every computed query tile
        rows_of = order_rows[int(plan.head_order[h])]
        if n_total == 0:  # SKIP head
            out[:, h, rows_of[t, : lengths[t]]] = 0
            continue
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
