"""Plain-PyTorch block-sparse attention: the readable reference beside the Triton kernel.

It walks the same tile lists, one query tile of one head at a time, gathering that tile's
key rows and running a masked softmax in float32. Memory stays bounded at any size (one
``tile x keys`` score block at a time), so it is also the CPU backend for real-size layouts.

Walking tiles in Python costs a dozen small ops per tile, which dominates at small sizes (the
reference pipelines: 40 tiles x 6 heads a call). When a head's whole ``N x N`` score block is
small (:data:`WHOLE_HEAD_SCORES`), the head is computed in one masked softmax instead, with a
token mask drawn from the same tile lists (cached per plan): the same keys per row, so the
same numbers up to float32 rounding (``tests/kernels`` compares the two).

With ``fp8=True`` it computes the FP8 kernel's arithmetic: the inputs carry its roundings
(:func:`.quantize.simulated_inputs`) and the probabilities are rounded as it rounds P
(:func:`.quantize.fp8_probs`).
"""

from __future__ import annotations

import torch

from ..modes import Mode
from .quantize import fp8_probs, simulated_inputs

__all__ = ["sparse_attention_torch", "WHOLE_HEAD_SCORES"]

#: batch x N x N float32 scores at or under which a head is computed whole (128 MiB)
WHOLE_HEAD_SCORES = 1 << 25


def sparse_attention_torch(q, k, v, plan, *, scale: float, out: torch.Tensor, text_lengths=None, fp8: bool = False):
    batch = q.shape[0]
    softmax = fp8_probs if fp8 else (lambda scores: torch.softmax(scores, dim=-1))
    if fp8:
        q, k, v = simulated_inputs(q, k, v, plan)
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
    if batch * plan.num_tokens**2 <= WHOLE_HEAD_SCORES:
        return _whole_heads(q, k, v, plan, scale, out, text_len, order_rows, lengths, softmax)
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
        probs = softmax(scores)
        out[:, h, q_rows] = torch.einsum("bqk,bkd->bqd", probs, v[:, h, k_rows].float()).to(out.dtype)
    return out


def _key_list_mask(plan, head: int, order_rows, lengths, device) -> tuple[torch.Tensor, torch.Tensor]:
    """From ``head``'s tile lists: the query rows it computes (caller order) and their ``(rows, N)`` key mask."""
    key = ("key_list_mask", head, device)
    if key not in plan._device:
        n = plan.num_tokens
        rows_of = order_rows[int(plan.head_order[head])]
        mask = torch.zeros(n, n, dtype=torch.bool, device=device)
        computed = torch.zeros(n, dtype=torch.bool, device=device)
        for h, t, _, _, _ in plan.work.tolist():
            if h == head:
                q_rows = rows_of[t, : lengths[t]]
                computed[q_rows] = True
                key_tiles = plan.key_tiles(h, t).long().tolist()
                if key_tiles:  # none: a SKIP tile, computed as zeros
                    k_rows = torch.cat([rows_of[kt, : lengths[kt]] for kt in key_tiles])
                    mask[q_rows[:, None], k_rows[None, :]] = True
        rows = computed.nonzero()[:, 0]
        plan._device[key] = (rows, mask[rows])
    return plan._device[key]


def _whole_heads(q, k, v, plan, scale, out, text_len, order_rows, lengths, softmax):
    layout, n = plan.layout, plan.num_tokens
    text_pos = torch.arange(n, device=q.device) - layout.text_start
    is_text = (text_pos >= 0) & (text_pos < layout.text_tokens)
    key_ok = ~is_text[None, :] | (text_pos[None, :] < text_len)  # (B, N): padded text keys masked
    for h in range(plan.num_heads):
        rows, visits = _key_list_mask(plan, h, order_rows, lengths, q.device)
        if len(rows) == 0:
            continue
        if plan.specs[h].mode is Mode.SKIP:
            out[:, h, rows] = 0
            continue
        scores = torch.einsum("bqd,bkd->bqk", q[:, h, rows].float(), k[:, h].float()) * scale
        scores = scores.masked_fill(~(visits[None] & key_ok[:, None, :]), float("-inf"))
        out[:, h, rows] = torch.einsum("bqk,bkd->bqd", softmax(scores), v[:, h].float()).to(out.dtype)
    return out
