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

Products accumulate in float32. :func:`kernel_kv` lays K and V out for the kernel (V transposed:
FP8 matrix products read their second operand reduction-major); :func:`simulated_inputs` and
:func:`fp8_probs` make the same roundings in PyTorch, so the torch backend computes FP8 heads
the way the GPU does and FP8 quality can be measured on any device.
"""

from __future__ import annotations

import torch

from ..layout import FRAME_MAJOR

__all__ = ["FP8_DTYPE", "FP8_MAX", "P_SCALE", "fp8_attention_error", "fp8_probs", "kernel_kv", "simulated_inputs"]

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
    """``max over keys |v[..., d]|`` over 448: float32 ``(B, H, D)``."""
    return v.float().abs().amax(2).clamp_(min=_TINY) / FP8_MAX


# For the kernel ---------------------------------------------------------------------------
def _transposed_fp8(x: torch.Tensor, scale: torch.Tensor, pad_to: int) -> torch.Tensor:
    """``(x / scale)`` in e4m3 as ``(B, H, D, R')``, keys contiguous and ``R'`` padded to ``pad_to`` (zeros)."""
    batch, heads, rows, dim = x.shape
    padded = -(-rows // pad_to) * pad_to
    out = torch.zeros(batch, heads, dim, padded, device=x.device, dtype=FP8_DTYPE)
    out[..., :rows] = _to_fp8(x.float() / scale[:, :, None, :]).transpose(-1, -2)
    return out


def kernel_kv(k, v, plan, kp=None, vp=None) -> dict[str, torch.Tensor]:
    """K and V quantized and laid out for the FP8 kernel.

    ``k8 (B, H, N, D)`` e4m3 with ``k_scale (B, H, T)`` per frame-major kernel tile; ``vt8 (B, H, D, N')``
    (transposed, N' a multiple of 16 for the bulk copy) with ``v_scale (B, H, D)``. With ``kp, vp``
    (the token-major heads' K/V in kernel order, :func:`.triton_sparse.gather_reordered_kv`), also
    ``kp8``, ``kp_scale`` (per 128-row tile, padding rows left out) and ``vpt8``.
    """
    layout, tile, n_tiles = plan.layout, plan.tile_size, plan.num_tiles
    mean = k.float().mean(dim=2, keepdim=True)
    k_s = k.float() - mean
    tiles = layout.tile_of_token(FRAME_MAJOR, tile).to(k.device)
    k_scale = tile_scales(k_s, tiles, n_tiles)
    out = {"k8": _to_fp8(k_s / k_scale.gather(2, tiles.expand(*k_scale.shape[:2], -1))[..., None]),
           "k_scale": k_scale, "v_scale": channel_scales(v)}
    out["vt8"] = _transposed_fp8(v, out["v_scale"], 16)
    if kp is not None and kp.shape[1]:
        heads = plan.device_tensors(k.device)["reordered_heads"]
        kp_s = kp.float() - mean[:, heads]
        rows = torch.arange(kp.shape[2], device=k.device)
        lengths = plan.tile_lengths.to(k.device).long()
        kp_tiles = torch.where(rows % tile < lengths[rows // tile], rows // tile, -1)  # padding rows: no tile
        kp_scale = tile_scales(kp_s, kp_tiles, n_tiles)
        out["kp8"] = _to_fp8(kp_s / kp_scale.repeat_interleave(tile, dim=2)[..., None])
        out["kp_scale"] = kp_scale
        out["vpt8"] = _transposed_fp8(vp, out["v_scale"][:, heads], tile)
    return out


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

    K tiles are runs of ``tile_size`` caller tokens (the frame-major tiles of a video without
    text); memory is ``B x chunk x N`` scores at a time.
    """
    batch, heads, n, dim = q.shape
    scale = dim**-0.5 if scale is None else scale
    qf = _fake(q.float(), row_scales(q)[..., None])
    k_s = smoothed_keys(k)
    tiles = torch.arange(n, device=k.device) // tile_size
    k_scale = tile_scales(k_s, tiles, -(-n // tile_size))
    kf = _fake(k_s, k_scale.repeat_interleave(tile_size, dim=2)[..., :n, None])
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
