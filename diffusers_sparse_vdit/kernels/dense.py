"""Dense attention on the fastest correct kernel installed.

Dense work (warm-up steps, all-FULL layers under ``backend="auto"``, calls before the grid is
known) runs on, in this order:

* ``"fa3"``: FlashAttention-3's forward (``fa3_fwd_interface``, Hopper SM90, 16-bit);
* ``"fa4"``: FlashAttention-4 dense (``flash_attn.cute``, SM90/SM100, 16-bit; compiles each new
  shape once, 10-30 s, so it comes after FA3, which is as fast within 1-3% on the H200);
* ``"stock"``: what the family's stock processor calls (diffusers' dispatcher or SDPA).

A padding mask that keeps a prefix of the keys (HunyuanVideo's padded prompts: text after video)
becomes per-item key counts (``seqused_k``: FA3's varlen call, FA4's own argument); other masks,
32-bit calls, CPU tensors and every call of a model whose attention backend was chosen with
diffusers' ``transformer.set_attention_backend(...)`` take the stock path, so diffusers' exact
numbers are one keyword away: ``transformer.set_attention_backend("native")``. The choice is
logged once per kernel and reason.
"""

from __future__ import annotations

import functools
import logging

import torch

from ..logs import log_once

__all__ = ["DENSE_BACKENDS", "choose_dense_backend", "dense_attention_fast"]

DENSE_BACKENDS = ("fa3", "fa4")


@functools.cache
def _importable(module: str) -> bool:
    import importlib

    try:
        importlib.import_module(module)
    except ImportError:
        return False
    return True


def fa3_available(device: torch.device) -> bool:
    return device.type == "cuda" and torch.cuda.get_device_capability(device)[0] == 9 and _importable("fa3_fwd_interface")


def fa4_available(device: torch.device) -> bool:
    return device.type == "cuda" and torch.cuda.get_device_capability(device)[0] in (9, 10) and _importable(
        "flash_attn.cute.interface"
    )


_AVAILABLE = {"fa3": fa3_available, "fa4": fa4_available}


def _on_gpu(query: torch.Tensor) -> bool:
    return query.device.type == "cuda"


def choose_dense_backend(
    query: torch.Tensor, attention_mask: torch.Tensor | None, *, key_lengths: torch.Tensor | None = None,
    stock_requested: bool = False,
) -> str:
    """``"fa3"``, ``"fa4"`` or ``"stock"`` for a dense ``(B, H, N, D)`` call (see the module docstring).

    ``key_lengths`` (int ``(B,)``): the mask keeps each item's first ``key_lengths[b]`` keys, so the
    fast kernels can take it.
    """
    if stock_requested:
        return _chosen("stock", "an attention backend was set with set_attention_backend()")
    if not _on_gpu(query):
        return "stock"  # exact on CPU: the stock path is all there is
    if attention_mask is not None and key_lengths is None:
        return _chosen("stock", "the call has a mask that is not a key prefix")
    if query.dtype not in (torch.float16, torch.bfloat16) or query.shape[-1] > 256 or query.shape[-1] % 8:
        return _chosen("stock", f"{query.dtype}, head_dim {query.shape[-1]}")
    for name in DENSE_BACKENDS:
        if _AVAILABLE[name](query.device):
            return _chosen(name, "the fastest dense kernel installed")
    return _chosen("stock", "neither fa3_fwd (FlashAttention-3) nor flash-attn-4 is installed for this GPU")


def _chosen(backend: str, reason: str) -> str:
    log_once(__name__, logging.INFO, f"Sparse-vDiT dense attention: {backend} ({reason})")
    return backend


def dense_attention_fast(
    backend: str, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, key_lengths: torch.Tensor | None = None
) -> torch.Tensor:
    """Dense attention of ``(B, H, N, D)`` views on FA3 or FA4; returns ``(B, H, N, D)`` (a view of ``(B, N, H, D)``).

    With ``key_lengths``, item ``b`` attends to its first ``key_lengths[b]`` keys only (every query row is computed).
    """
    q, k, v = (x.transpose(1, 2) for x in (query, key, value))  # the (B, N, H, D) both kernels take
    used = None if key_lengths is None else key_lengths.to(device=q.device, dtype=torch.int32).contiguous()
    if backend == "fa3" and used is None:
        from fa3_fwd_interface import flash_attn_func

        out = flash_attn_func(q, k, v)
    elif backend == "fa3":  # key counts go through the varlen call: batch items as equal-length sequences
        from fa3_fwd_interface import flash_attn_varlen_func

        batch, n = q.shape[:2]
        starts = torch.arange(0, (batch + 1) * n, n, device=q.device, dtype=torch.int32)
        flat = [x.reshape(batch * n, *x.shape[2:]) for x in (q, k, v)]
        out = flash_attn_varlen_func(*flat, starts, starts, n, n, seqused_k=used)
        out = (out[0] if isinstance(out, tuple) else out).view(q.shape)
    elif backend == "fa4":
        from flash_attn.cute.interface import _flash_attn_fwd

        out = _flash_attn_fwd(q, k, v, seqused_k=used)
    else:
        raise ValueError(f"unknown dense backend {backend!r}; choose one of {DENSE_BACKENDS}")
    out = out[0] if isinstance(out, tuple) else out
    return out.transpose(1, 2)
