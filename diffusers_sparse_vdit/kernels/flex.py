"""FlexAttention on the plan's own tile lists: the peer our Triton kernel is measured against.

FlexAttention works on one token order per call, so the inputs are gathered into each
head's kernel order (padded to whole tiles), the plan's lists become a ``BlockMask`` whose
full tiles skip the mask function and whose partial tiles (the last video tile, text tiles)
mask padding keys, and the output is scattered back. :func:`flex_inputs` and
:func:`flex_block_mask` are separate so a benchmark can time the attention call alone.
"""

from __future__ import annotations

import functools

import torch

__all__ = ["sparse_attention_flex", "flex_block_mask", "flex_inputs", "compiled_flex_attention"]


def _row_index(plan, device) -> torch.Tensor:
    """(H, padded N): caller token of every kernel row, per head."""
    maps = plan.device_tensors(device)["row_maps"].long()
    return maps[plan.device_tensors(device)["head_order"].long()]


def flex_inputs(plan, *tensors):
    """Gather (B, H, N, D) tensors into each head's kernel order, padded to whole tiles."""
    index = _row_index(plan, tensors[0].device)
    out = []
    for x in tensors:
        b, h, _, d = x.shape
        out.append(torch.gather(x, 2, index[None, :, :, None].expand(b, h, -1, d)).contiguous())
    return out


@functools.lru_cache(maxsize=64)
def _flex_lists(plan):
    """The plan's lists as BlockMask tensors (CPU), built once per plan: a Python loop over query tiles."""
    heads, nt = plan.num_heads, plan.num_tiles
    work = plan.work.long()
    pool = plan.device_tensors("cpu")["kv_tiles"].long()
    full_num = torch.zeros(heads, nt, dtype=torch.int32)
    part_num = torch.zeros(heads, nt, dtype=torch.int32)
    full_idx = torch.zeros(heads, nt, nt, dtype=torch.int32)
    part_idx = torch.zeros(heads, nt, nt, dtype=torch.int32)
    table = torch.zeros(heads, nt, nt, dtype=torch.bool)
    for h, t, start, n_full, n_total in work.tolist():
        tiles = pool[start : start + n_total]
        full_num[h, t], part_num[h, t] = n_full, n_total - n_full
        full_idx[h, t, :n_full] = tiles[:n_full]
        part_idx[h, t, : n_total - n_full] = tiles[n_full:]
        table[h, t, tiles] = True
    return part_num, part_idx, full_num, full_idx, table


def flex_block_mask(plan, batch: int, device, text_lengths=None):
    from torch.nn.attention.flex_attention import BlockMask

    tile, nvt = plan.tile_size, plan.video_tiles
    part_num, part_idx, full_num, full_idx, table = _flex_lists(plan)
    nt = plan.num_tiles
    tile_lengths = plan.tile_lengths.to(device)
    text_len = (
        torch.as_tensor(text_lengths, device=device).reshape(-1)
        if text_lengths is not None
        else torch.full((batch,), plan.layout.text_tokens, device=device)
    )

    # The compiled kernel evaluates mask_mod on partial tiles only; eager FlexAttention
    # ignores the block lists and evaluates it everywhere, so it carries the tile table too.
    table = table.to(device)

    def key_valid(b, h, q_idx, kv_idx):
        t = kv_idx // tile
        within = kv_idx % tile
        text_ok = within + (t - nvt) * tile < text_len[b]
        return table[h, q_idx // tile, t] & (within < tile_lengths[t]) & ((t < nvt) | text_ok)

    def expand(x):
        return x[None].expand(batch, *x.shape).to(device)

    return BlockMask.from_kv_blocks(
        expand(part_num),
        expand(part_idx),
        expand(full_num),
        expand(full_idx),
        BLOCK_SIZE=tile,
        mask_mod=key_valid,
        seq_lengths=(nt * tile, nt * tile),
    )


@functools.cache
def compiled_flex_attention(device_type: str):
    """FlexAttention compiled once per device type and reused by every call.

    Eager FlexAttention materializes the whole score matrix (96 GiB at Wan 480p): on CUDA it is
    compiled with Inductor into its block-sparse kernel. On CPU, a reference path only, it goes
    through ``aot_eager``, which traces the same graph without Inductor's minutes-long CPU build.
    """
    from torch.nn.attention.flex_attention import flex_attention

    return torch.compile(flex_attention, dynamic=False, backend="inductor" if device_type == "cuda" else "aot_eager")


def sparse_attention_flex(q, k, v, plan, *, scale: float, out: torch.Tensor, text_lengths=None, compiled=None):
    fn = compiled or compiled_flex_attention(q.device.type)
    qp, kp, vp = flex_inputs(plan, q, k, v)
    mask = flex_block_mask(plan, q.shape[0], q.device, text_lengths)
    res = fn(qp, kp, vp, block_mask=mask, scale=scale)
    # scatter the valid kernel rows back to caller order
    index = _row_index(plan, q.device)
    valid = torch.cat([torch.arange(n, device=q.device) + i * plan.tile_size for i, n in enumerate(plan.tile_lengths.tolist())])
    b, h, _, d = q.shape
    out.scatter_(2, index[None, :, valid, None].expand(b, h, -1, d), res[:, :, valid].to(out.dtype))
    for head in plan.skip_heads:
        out[:, head] = 0
    return out
