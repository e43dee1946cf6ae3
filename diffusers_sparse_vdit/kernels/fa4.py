"""Our plans on FlashAttention-4's block-sparse kernel (``backend="fa4"``, extra ``[fa4]``).

FA4 (``flash-attn-4``, CuTe DSL, SM90 and SM100) takes, per (batch, head, query block), two
lists of key blocks: *full* blocks computed without a mask and *mask* blocks where a
``mask_mod`` says which keys count. A plan maps onto that directly:

* q, k, v are gathered into each head's kernel order, padded to whole tiles (the index maps
  our kernels and :mod:`.flex` use, so MULTI_DIAGONAL heads get the token-major copy);
* a key tile whose keys are all real goes to the full list; the partly filled last video
  tile, a partly filled text tile and, with ``text_lengths``, every text tile go to the mask
  list, where the mask_mod reads one int32 per (batch item, kernel key): 1 for a real key;
* SKIP heads get empty lists and are written as zeros, as our kernels write them.

:func:`fa4_dense_mask` expands those tensors back into a token mask in the caller's order,
so CPU tests compare the conversion with the plan's own oracle (:meth:`SparsePlan.dense_mask`).
"""

from __future__ import annotations

import functools
from typing import NamedTuple

import torch

from ..plan import SparsePlan

__all__ = ["FA4Tensors", "fa4_tensors", "fa4_inputs", "fa4_dense_mask", "fa4_kernel_mask", "fa4_outputs", "fa4_unavailable_reason", "sparse_attention_fa4"]


class FA4Tensors(NamedTuple):
    """FA4's block-sparse arguments for one plan, in kernel order (batch dims of 1 broadcast)."""

    full_block_cnt: torch.Tensor  # int32 (B | 1, H, M)
    full_block_idx: torch.Tensor  # int32 (B | 1, H, M, M): each row's full key tiles, packed left
    mask_block_cnt: torch.Tensor  # int32 (B | 1, H, M)
    mask_block_idx: torch.Tensor  # int32 (B | 1, H, M, M)
    key_ok: torch.Tensor  # int32 (B, M * tile): 1 where the kernel-order key is a real token for item b
    tile_size: int


def fa4_unavailable_reason(device: torch.device) -> str | None:
    """Why the FA4 backend cannot run on ``device``, or None when it can."""
    device = torch.device(device)
    if device.type != "cuda":
        return f"FA4 runs on CUDA GPUs, got {device}"
    major, minor = torch.cuda.get_device_capability(device)
    if major not in (9, 10):
        return f"FA4's block-sparse kernel runs on SM90 (H100/H200) and SM100 (B200) GPUs; this GPU is SM{major}{minor}"
    try:
        import flash_attn.cute.interface  # noqa: F401
    except ImportError as e:
        return f"flash_attn.cute (flash-attn-4) is not importable ({e}); pip install 'diffusers-sparse-vdit[fa4]'"
    return None


# Conversion ---------------------------------------------------------------------------------
def _pack_left(idx: torch.Tensor, keep: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Each row's kept entries moved to the front in their order, and their count."""
    order = torch.argsort((~keep).to(torch.int8), dim=-1, stable=True)
    return keep.sum(-1, dtype=torch.int32), idx.gather(-1, order).to(torch.int32)


def _plan_lists(plan: SparsePlan, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """``(tiles, listed)``, ``(H, M, M)``: each query tile's key tiles in visiting order."""
    tensors = plan.device_tensors(device)
    pool, work = tensors["kv_tiles"].long(), tensors["work"].long()
    m = plan.num_tiles
    heads, rows, starts, totals = work[:, 0], work[:, 1], work[:, 2], work[:, 4]
    col = torch.arange(m, device=device)
    listed = torch.zeros(plan.num_heads, m, m, dtype=torch.bool, device=device)
    tiles = torch.zeros(plan.num_heads, m, m, dtype=torch.long, device=device)
    listed[heads, rows] = col[None] < totals[:, None]
    tiles[heads, rows] = pool[(starts[:, None] + col[None]).clamp_(max=pool.numel() - 1)]
    return tiles, listed


@functools.lru_cache(maxsize=64)
def _block_lists(plan: SparsePlan, text_padded: bool, device: torch.device):
    """The plan's lists split into FA4's full and mask lists (batch dim 1), built once per plan on the call's device."""
    tiles, listed = _plan_lists(plan, device)
    tile, nvt = plan.tile_size, plan.video_tiles
    whole = plan.tile_lengths.to(device) == tile  # tiles with no padding rows
    if text_padded:  # text tiles may be cut short per batch item: the mask_mod decides
        whole[nvt:] = False
    full = listed & whole[tiles]
    full_cnt, full_idx = _pack_left(tiles, full)
    mask_cnt, mask_idx = _pack_left(tiles, listed & ~full)
    return full_cnt[None], full_idx[None], mask_cnt[None], mask_idx[None]


def _real_keys(plan: SparsePlan, device) -> torch.Tensor:
    """``(M * tile,)`` bool: kernel-order positions that hold a token (not tile padding)."""
    lengths = plan.tile_lengths.to(device)
    return (torch.arange(plan.tile_size, device=device)[None] < lengths[:, None]).flatten()


def fa4_tensors(plan: SparsePlan, batch: int, device, text_lengths: torch.Tensor | None = None) -> FA4Tensors:
    """FA4's block-sparse tensors for ``plan``; the lists are cached per plan and device, no host sync."""
    device = torch.device(device)
    if device.type == "cuda" and device.index is None:
        device = torch.device("cuda", torch.cuda.current_device())  # one cache entry per GPU
    lists = _block_lists(plan, text_lengths is not None, device)
    key_ok = _real_keys(plan, device)[None].expand(batch, -1)
    if text_lengths is not None:  # text keys past each item's length are padding too
        text_pos = torch.arange(plan.num_tiles * plan.tile_size, device=device) - plan.video_tiles * plan.tile_size
        text_len = torch.as_tensor(text_lengths, device=device).reshape(-1, 1)
        key_ok = key_ok & ((text_pos[None] < 0) | (text_pos[None] < text_len))  # text_pos < 0: video keys
    return FA4Tensors(*lists, key_ok=key_ok.to(torch.int32).contiguous(), tile_size=plan.tile_size)


def _row_index(plan: SparsePlan, device) -> torch.Tensor:
    """``(H, M * tile)``: caller token of every kernel row, per head (padding rows read token 0)."""
    tensors = plan.device_tensors(device)
    return tensors["row_maps"].long()[tensors["head_order"].long()]


def _flat_rows(rows: torch.Tensor) -> torch.Tensor:
    """``(H, S)`` row numbers per head as rows of a ``(B, S', H, D)`` tensor read as ``(B, S' * H, D)``, ``(S * H,)``
    in ``(S, H)`` order."""
    heads = rows.shape[0]
    return (rows.t() * heads + torch.arange(heads, device=rows.device)).flatten()


@functools.lru_cache(maxsize=64)
def _gather_rows(plan: SparsePlan, device: torch.device) -> torch.Tensor:
    """``(M * tile * H,)``: for kernel row ``r`` of head ``h`` (row ``r * H + h`` of FA4's ``(B, M * tile, H, D)``),
    the row ``token * H + h`` of the caller's ``(B, N, H, D)`` that it reads."""
    return _flat_rows(_row_index(plan, device))


@functools.lru_cache(maxsize=64)
def _scatter_rows(plan: SparsePlan, device: torch.device) -> torch.Tensor:
    """``(N * H,)``: for caller token ``n`` of head ``h``, the row of FA4's output that holds it (each real
    token has exactly one kernel row per head; padding rows are never read)."""
    heads, tile = plan.num_heads, plan.tile_size
    rows = _row_index(plan, "cpu")
    real = _real_keys(plan, "cpu")
    inverse = torch.empty(heads, plan.num_tokens, dtype=torch.long)
    kernel_rows = torch.arange(plan.num_tiles * tile)[real]
    inverse.scatter_(1, rows[:, real], kernel_rows.expand(heads, -1))
    return _flat_rows(inverse).to(device)


def _rows_view(x: torch.Tensor) -> torch.Tensor:
    """``(B, H, S, D)`` as ``(B, S * H, D)`` rows of its ``(B, S, H, D)`` order (a view when that order is contiguous,
    as for diffusers' attention inputs)."""
    b, h, n, d = x.shape
    return x.transpose(1, 2).reshape(b, n * h, d)


def fa4_inputs(plan: SparsePlan, *tensors: torch.Tensor) -> list[torch.Tensor]:
    """``(B, H, N, D)`` tensors gathered into each head's kernel order as FA4's ``(B, M * tile, H, D)``: one row gather
    of whole head vectors per tensor."""
    index = _gather_rows(plan, tensors[0].device)
    b, h, _, d = tensors[0].shape
    return [_rows_view(x).index_select(1, index).view(b, -1, h, d) for x in tensors]


def fa4_kernel_mask(tensors: FA4Tensors, num_tiles: int) -> torch.Tensor:
    """The keys FA4 lets each kernel row see: ``(B, H, M * tile, M * tile)`` bool, kernel order (pure torch).

    Raises if a tile is in both lists: FA4 would compute it twice.
    """
    tile, m = tensors.tile_size, num_tiles

    def blocks(cnt, idx):
        dense = torch.zeros(*idx.shape[:-1], m + 1, dtype=torch.bool)
        listed = torch.arange(m)[None, None, None] < cnt[..., None].cpu()
        dense.scatter_(-1, torch.where(listed, idx.cpu().long(), m), True)
        return dense[..., :m]

    full = blocks(tensors.full_block_cnt, tensors.full_block_idx)
    masked = blocks(tensors.mask_block_cnt, tensors.mask_block_idx)
    if (full & masked).any():
        raise ValueError("a key tile is in both FA4 lists (full and mask): it would be computed twice")
    key_ok = tensors.key_ok.cpu().bool()
    tokens = lambda b: b.repeat_interleave(tile, -1).repeat_interleave(tile, -2)  # noqa: E731
    return tokens(full).expand(key_ok.shape[0], -1, -1, -1) | (tokens(masked) & key_ok[:, None, None, :])


def fa4_dense_mask(plan: SparsePlan, tensors: FA4Tensors) -> torch.Tensor:
    """What FA4 computes with these tensors, as a ``(B, H, N, N)`` bool token mask in caller order.

    The test oracle of the conversion (small sizes only). Raises where FA4 would compute a
    wrong result: a tile in both lists, or a full tile that lets padding keys in.
    """
    allowed = fa4_kernel_mask(tensors, plan.num_tiles)
    real = _real_keys(plan, "cpu")
    if allowed[:, :, real][..., ~real].any():
        raise ValueError("an FA4 full tile covers padding keys: they would enter the softmax")
    rows = _row_index(plan, "cpu")[:, real]  # caller token of each real kernel row, per head
    n = plan.num_tokens
    mask = torch.zeros(allowed.shape[0], plan.num_heads, n, n, dtype=torch.bool)
    for h in range(plan.num_heads):
        mask[:, h, rows[h][:, None], rows[h][None, :]] = allowed[:, h][:, real][:, :, real]
    return mask


def fa4_outputs(plan: SparsePlan, res: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
    """FA4's kernel-order ``(B, M * tile, H, D)`` result into ``out`` ``(B, H, N, D)``, one row gather (no host sync);
    SKIP heads zeroed."""
    b, _, _, d = out.shape
    rows = res.reshape(b, -1, d).index_select(1, _scatter_rows(plan, out.device))  # (B, N * H, D), caller order
    out.transpose(1, 2).copy_(rows.view(b, plan.num_tokens, plan.num_heads, d))
    if plan.skip_heads:
        out[:, plan.skip_heads] = 0
    return out


# Running ------------------------------------------------------------------------------------
@functools.cache
def _key_mask_mod():
    """FA4 mask_mod on mask tiles: keep a key where ``aux_tensors[0][batch, key]`` is 1 (one object, so FA4 compiles it once)."""
    import cutlass
    import cutlass.cute as cute
    from flash_attn.cute import utils

    @cute.jit
    def real_key(batch, head, m_idx, n_idx, seqlen_info, aux_tensors):
        key_ok = aux_tensors[0]
        return utils.scalar_to_ssa(key_ok[batch[0], n_idx[0]], cutlass.Int32) != utils.scalar_to_ssa(0, cutlass.Int32)

    return real_key


def sparse_attention_fa4(q, k, v, plan: SparsePlan, *, scale: float, out: torch.Tensor, text_lengths=None):
    reason = fa4_unavailable_reason(q.device)
    if reason:
        raise RuntimeError(f"backend='fa4': {reason}. Use backend='auto' (our kernels) on this machine.")
    if q.dtype not in (torch.float16, torch.bfloat16):
        raise TypeError(f"backend='fa4' runs float16/bfloat16 inputs, got {q.dtype}")
    from flash_attn.cute.block_sparsity import BlockSparseTensorsTorch
    from flash_attn.cute.interface import _flash_attn_fwd

    t = fa4_tensors(plan, q.shape[0], q.device, text_lengths)
    qp, kp, vp = fa4_inputs(plan, q, k, v)
    blocks = BlockSparseTensorsTorch(
        mask_block_cnt=t.mask_block_cnt, mask_block_idx=t.mask_block_idx, full_block_cnt=t.full_block_cnt,
        full_block_idx=t.full_block_idx, block_size=(t.tile_size, t.tile_size),
    )
    has_mask_tiles = bool(plan.tile_lengths.min() < plan.tile_size) or text_lengths is not None
    res = _flash_attn_fwd(
        qp, kp, vp, softmax_scale=scale, block_sparse_tensors=blocks,
        mask_mod=_key_mask_mod() if has_mask_tiles else None, aux_tensors=[t.key_ok] if has_mask_tiles else None,
    )[0]
    return fa4_outputs(plan, res, out)
