"""FP8 (float8 e4m3) quantization of attention inputs, as the FP8 kernel computes it.

Hopper's FP8 tensor cores do twice the 16-bit work per cycle; what it costs is rounding. The
scheme keeps that cost small where attention is sensitive to it:

* **Q**, per query row: ``q / s_q`` with ``s_q = max|q_row| / 448`` (448 is e4m3's largest value).
  The kernel quantizes Q itself, as it loads each row once.
* **K**, smoothed and per key tile: the mean key of the head is subtracted first (exact: it
  shifts every score of a query row by the same amount, and softmax ignores that), which
  removes the large shared component that would otherwise set the scale; then one scale per
  (head, kernel tile of 128 keys), folded into the score of the whole tile at no cost.
* **P**, the probabilities: ``exp(s - m)`` lies in ``(0, 1]``; stored as ``P * 256`` so the many
  small probabilities of a long row stay normal e4m3 numbers instead of flushing to zero.
  The row sum ``l`` adds the unrounded values in float32.
* **V**, per channel: ``v / s_v`` with ``s_v = max over keys |v[:, d]| / 448``, undone on the output.

Products accumulate in float32. :func:`kernel_kv` lays K and V out for the kernel (in each head's
kernel order, V transposed: FP8 matrix products read their second operand reduction-major);
:func:`simulated_inputs` and
:func:`fp8_probs` make the same roundings in PyTorch, so the torch backend computes FP8 heads
the way the GPU does and FP8 quality can be measured on any device.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

__all__ = ["FP8_DTYPE", "FP8_MAX", "P_SCALE", "fp8_attention_error", "fp8_probs", "kernel_kv", "kv_stats",
           "simulated_inputs"]

FP8_DTYPE = torch.float8_e4m3fn
FP8_MAX = 448.0
P_SCALE = 256.0
_TINY = 1e-12  # the scale of an all-zero row or tile: any positive number keeps it zero


def _to_fp8(x: torch.Tensor) -> torch.Tensor:
    # saturate: e4m3fn has no infinity, and an overflowing cast gives NaN
    return x.clamp(-FP8_MAX, FP8_MAX).to(FP8_DTYPE)


def row_scales(x: torch.Tensor) -> torch.Tensor:
    """``max |x|`` over the last dim, over 448: one scale per row, float32 ``x.shape[:-1]``."""
    return x.float().abs().amax(-1).clamp_(min=_TINY) / FP8_MAX


def smoothed_keys(k: torch.Tensor) -> torch.Tensor:
    """K minus each head's mean key, float32 ``(B, H, N, D)``."""
    k = k.float()
    return k - k.mean(dim=2, keepdim=True)


def tile_scales(rows: torch.Tensor, tiles: torch.Tensor, n_tiles: int) -> torch.Tensor:
    """Per-tile scales ``(B, H, n_tiles)`` of ``rows`` ``(B, H, R, D)``, row ``r`` in tile ``tiles[..., r]``
    (``tiles`` broadcasts to ``(B, H, R)``; a negative tile leaves the row out)."""
    amax = rows.abs().amax(-1)
    tiles = tiles.expand_as(amax)
    keep = tiles >= 0
    out = torch.zeros(*amax.shape[:2], n_tiles + 1, device=rows.device, dtype=torch.float32)
    out.scatter_reduce_(2, torch.where(keep, tiles, n_tiles), torch.where(keep, amax, 0.0), "amax")
    return out[..., :n_tiles].clamp_(min=_TINY) / FP8_MAX


def channel_scales(v: torch.Tensor) -> torch.Tensor:
    """``max over keys |v[..., d]|`` over 448: float32 ``(B, H, D)`` (a reduction over the tokens, no copy of V)."""
    low, high = torch.aminmax(v, dim=2)
    return torch.maximum(high.float(), -low.float()).clamp_(min=_TINY) / FP8_MAX


# For the kernel ---------------------------------------------------------------------------
def operand_key_order(n: int, device=None) -> torch.Tensor:
    """Where key ``c`` of a tile's ``n`` keys sits in the FP8 kernel's V: position ``4q + 2j + b`` of its
    16-key group for ``c = 8j + 2q + b``, the order in which the kernel's threads hold P's columns
    (:func:`.gluon_fp8._as_operand`). A permutation of the keys, so it leaves ``P @ V`` unchanged.
    """
    c = torch.arange(n, device=device)
    return (c & ~15) | (((c >> 1) & 3) << 2) | (((c >> 3) & 1) << 1) | (c & 1)


def kv_stats(k, v) -> tuple[torch.Tensor, torch.Tensor]:
    """Each head's mean key and V's channel scales, float32 ``(B, H, D)``: reductions over the tokens, no copies."""
    return k.mean(dim=2, dtype=torch.float32), channel_scales(v)


def kernel_kv(k, v, plan) -> dict[str, torch.Tensor]:
    """K and V quantized and laid out for the FP8 kernel, every head in its own kernel order.

    ``k8 (B, H, R, D)`` e4m3, row ``r`` holding caller token ``row_maps[head_order[h]][r]`` (R =
    tiles x tile size; padding rows zero), with ``k_scale (B, H, tiles)``; ``vt8 (B, H, D, R)``
    (transposed: FP8 products read V along the keys; key ``c`` of each tile at the tile's column
    ``operand_key_order(tile)[c]``) with ``v_scale (B, H, D)``. Only the heads
    with work in ``plan`` are quantized (a plan restricted to its FP8 heads pays for those alone, but
    for the statistics: a reduction over every head, 3x cheaper than copying some out first);
    the others' rows are left unwritten and their scales zero. On CUDA one Triton pass writes them
    (:func:`_quantize_kv_kernel`); elsewhere the same in PyTorch.
    """
    mean, v_scale = kv_stats(k, v)  # every head's: reductions over the tokens, cheaper than copies of some heads
    if len(plan.computed_heads) < k.shape[1]:  # the heads left out get zero scales
        index = plan.device_tensors(k.device)["computed_heads"].long()
        mean = torch.zeros_like(mean).index_copy_(1, index, mean.index_select(1, index))
        v_scale = torch.zeros_like(v_scale).index_copy_(1, index, v_scale.index_select(1, index))
    # the CPU interpreter rounds some values to float8 a binade low, so CPU runs take the PyTorch path
    return (_kernel_kv_triton if k.device.type == "cuda" else _kernel_kv_torch)(k, v, plan, mean, v_scale)


def _kernel_kv_torch(k, v, plan, mean, v_scale):
    batch, n_heads, _, dim = k.shape
    heads = plan.computed_heads
    tile, n_tiles = plan.tile_size, plan.num_tiles
    index_h = plan.device_tensors(k.device)["computed_heads"].long()
    rows = plan.row_maps().long()[plan.head_order.long()].to(k.device)[index_h]  # (h, R)
    lengths = plan.tile_lengths.to(k.device).long()
    r = torch.arange(rows.shape[1], device=k.device)
    valid = (r % tile < lengths[r // tile])[None, None, :, None]
    index = rows[None, :, :, None].expand(batch, -1, -1, dim)
    ks, vs = k.index_select(1, index_h), v.index_select(1, index_h)
    mean_h, v_scale_h = mean[:, index_h], v_scale[:, index_h]
    kr = torch.where(valid, (ks.float() - mean_h[:, :, None]).gather(2, index), 0.0)
    k_scale_h = kr.abs().amax(-1).view(batch, len(heads), n_tiles, tile).amax(-1).clamp_(min=_TINY) / FP8_MAX
    vr = torch.where(valid, vs.float().gather(2, index) / v_scale_h[:, :, None], 0.0)
    k8 = torch.zeros(batch, n_heads, rows.shape[1], dim, device=k.device, dtype=FP8_DTYPE)
    vt8 = torch.zeros(batch, n_heads, dim, rows.shape[1], device=k.device, dtype=FP8_DTYPE)
    k_scale = torch.zeros(batch, n_heads, n_tiles, device=k.device, dtype=torch.float32)
    k8[:, index_h] = _to_fp8(kr / k_scale_h.repeat_interleave(tile, dim=2)[..., None])
    at = (r // tile) * tile + operand_key_order(tile, k.device)[r % tile]  # where each row's value goes
    vt8[:, index_h] = _to_fp8(vr).transpose(-1, -2)[..., torch.argsort(at)]
    k_scale[:, index_h] = k_scale_h
    return {"k8": k8, "k_scale": k_scale, "vt8": vt8, "v_scale": v_scale}


@triton.jit
def _quantize_kv_kernel(K, V, K8, VT8, KS, mean, v_scale, row_maps, head_order, tile_lengths, heads,
                        stride_kb, stride_kh, stride_kn, stride_vb, stride_vh, stride_vn, n_heads, n_rows,
                        HEAD_DIM: tl.constexpr, TILE: tl.constexpr, FP8_MAX: tl.constexpr):
    """One (tile, quantized head, batch item): gather the tile's K/V rows in the head's order, quantize, write in
    kernel order."""
    t = tl.program_id(0)
    h = tl.load(heads + tl.program_id(1))
    b = tl.program_id(2)
    offs_r = tl.arange(0, TILE)
    offs_d = tl.arange(0, HEAD_DIM)
    valid = offs_r < tl.load(tile_lengths + t)
    rows = tl.load(row_maps + tl.load(head_order + h) * n_rows + t * TILE + offs_r)
    stats = (b * n_heads + h) * HEAD_DIM + offs_d
    k = tl.load(K + b * stride_kb + h * stride_kh + rows[:, None] * stride_kn + offs_d[None, :],
                mask=valid[:, None], other=0.0).to(tl.float32)
    k = tl.where(valid[:, None], k - tl.load(mean + stats)[None, :], 0.0)
    scale = tl.maximum(tl.max(tl.max(tl.abs(k), 1), 0), 1e-12) / FP8_MAX
    tl.store(KS + (b * n_heads + h) * tl.num_programs(0) + t, scale)
    out = (b * n_heads + h) * n_rows * HEAD_DIM
    tl.store(K8 + out + (t * TILE + offs_r)[:, None] * HEAD_DIM + offs_d[None, :], (k / scale).to(tl.float8e4nv))
    # V^T: column c of the tile holds the key at kernel row src(c), the inverse of operand_key_order, so the
    # stores run along contiguous columns (whole 16-byte vectors) and the transpose is one layout change of
    # the e4m3 bytes; loads read whole channel runs of each key row
    src = (offs_r & ~15) | (((offs_r >> 1) & 1) << 3) | (((offs_r >> 2) & 3) << 1) | (offs_r & 1)
    v_rows = tl.load(row_maps + tl.load(head_order + h) * n_rows + t * TILE + src)
    v_ok = src < tl.load(tile_lengths + t)
    vt = tl.load(V + b * stride_vb + h * stride_vh + v_rows[None, :] * stride_vn + offs_d[:, None],
                 mask=v_ok[None, :], other=0.0).to(tl.float32) / tl.load(v_scale + stats)[:, None]
    tl.store(VT8 + out + offs_d[:, None] * n_rows + (t * TILE + offs_r)[None, :], vt.to(tl.float8e4nv))


def _kernel_kv_triton(k, v, plan, mean, v_scale):
    batch, n_heads, _, dim = k.shape
    tensors = plan.device_tensors(k.device)
    heads = plan.computed_heads
    n_rows = plan.num_tiles * plan.tile_size
    k8 = torch.empty(batch, n_heads, n_rows, dim, device=k.device, dtype=FP8_DTYPE)
    vt8 = torch.empty(batch, n_heads, dim, n_rows, device=k.device, dtype=FP8_DTYPE)
    k_scale = torch.zeros(batch, n_heads, plan.num_tiles, device=k.device, dtype=torch.float32)
    if heads:
        _quantize_kv_kernel[(plan.num_tiles, len(heads), batch)](
            k, v, k8, vt8, k_scale, mean.contiguous(), v_scale.contiguous(), tensors["row_maps"],
            tensors["head_order"], tensors["tile_lengths"], tensors["computed_heads"],
            *k.stride()[:3], *v.stride()[:3], n_heads, n_rows,
            HEAD_DIM=dim, TILE=plan.tile_size, FP8_MAX=FP8_MAX, num_warps=4,
        )
    return {"k8": k8, "k_scale": k_scale, "vt8": vt8, "v_scale": v_scale}


# The same roundings in PyTorch ------------------------------------------------------------
def _fake(x: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """``x`` rounded to e4m3 at ``scale`` and back, float32."""
    return _to_fp8(x / scale).float() * scale


def simulated_inputs(q, k, v, plan) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """float32 ``(q, k, v)`` carrying the FP8 kernel's roundings: per-row Q, smoothed per-tile K
    (tiles of each head's own order, as the kernel reads them), per-channel V."""
    qf = _fake(q.float(), row_scales(q)[..., None])
    k_s = smoothed_keys(k)
    orders = plan.head_order.tolist()
    tiles = torch.stack([plan.layout.tile_of_token(o, plan.tile_size) for o in orders]).to(k.device)  # (H, N)
    k_scale = tile_scales(k_s, tiles[None], plan.num_tiles)
    kf = _fake(k_s, k_scale.gather(2, tiles[None].expand(k.shape[0], -1, -1))[..., None])
    vf = _fake(v.float(), channel_scales(v)[:, :, None, :])
    return qf, kf, vf


def fp8_probs(scores: torch.Tensor) -> torch.Tensor:
    """Softmax over the last dim with the numerators rounded as the kernel rounds P (float32 sums)."""
    m = scores.amax(-1, keepdim=True)
    m = torch.where(torch.isinf(m), 0.0, m)  # a row with no valid key stays zero
    e = torch.exp(scores - m)
    p = _to_fp8(e * P_SCALE).float() / P_SCALE
    return p / e.sum(-1, keepdim=True).clamp_(min=torch.finfo(torch.float32).tiny)


def fp8_attention_error(q, k, v, scale: float | None = None, *, tile_size: int = 128, chunk: int = 1024) -> torch.Tensor:
    """Relative L2 error ``(H,)`` of dense FP8 attention against exact float32 attention of ``(B, H, N, D)`` inputs.

    ``q`` may be a sample of the query rows (its N need not be K's). K tiles are runs of
    ``tile_size`` caller tokens (the frame-major tiles of a video without text); memory is
    ``B x chunk x N_keys`` scores at a time.
    """
    batch, heads, n, dim = q.shape
    keys = k.shape[2]
    scale = dim**-0.5 if scale is None else scale
    qf = _fake(q.float(), row_scales(q)[..., None])
    k_s = smoothed_keys(k)
    tiles = torch.arange(keys, device=k.device) // tile_size
    k_scale = tile_scales(k_s, tiles, -(-keys // tile_size))
    kf = _fake(k_s, k_scale.repeat_interleave(tile_size, dim=2)[..., :keys, None])
    vf = _fake(v.float(), channel_scales(v)[:, :, None, :])
    err = torch.zeros(heads, dtype=torch.float64, device=q.device)
    ref = torch.zeros_like(err)
    for start in range(0, n, chunk):
        rows = slice(start, start + chunk)
        exact = torch.softmax(q[:, :, rows].float() @ k.float().transpose(-1, -2) * scale, -1) @ v.float()
        approx = fp8_probs(qf[:, :, rows] @ kf.transpose(-1, -2) * scale) @ vf
        err += (approx - exact).double().square().sum((0, 2, 3))
        ref += exact.double().square().sum((0, 2, 3))
    return (err / ref.clamp(min=1e-30)).sqrt().float()
