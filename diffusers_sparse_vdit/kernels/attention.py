"""``sparse_attention``: input checks and backend dispatch."""

from __future__ import annotations

import logging
import math
import os

import torch

from ..logs import log_once
from ..plan import SparsePlan, plan_by_uid

__all__ = ["sparse_attention", "BACKENDS"]

BACKENDS = ("auto", "gluon", "triton", "torch", "flex", "fa4")
_DTYPES = (torch.float16, torch.bfloat16, torch.float32)


def _interpreting() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


def resolve_backend(backend: str, device: torch.device) -> str:
    """The backend a call on ``device`` takes: ``"auto"`` is Triton on CUDA, the torch reference elsewhere
    (:func:`sparse_attention` then picks the CUDA kernel with :func:`auto_cuda_kernel`)."""
    if backend not in BACKENDS:
        raise ValueError(f"unknown backend {backend!r}; choose one of {BACKENDS}")
    if backend == "auto":
        return "triton" if device.type == "cuda" else "torch"
    return backend


def gluon_supported(q, k, v, plan, out=None) -> bool:
    """Whether the warp-specialized Hopper kernel (:mod:`.gluon_sparse`) can run this call."""
    if q.device.type != "cuda":
        return False
    try:
        from .gluon_sparse import supported
    except ImportError:  # a Triton without Gluon's Hopper API
        return False
    return supported(q, k, v, plan, out)


def fa4_supported(q, plan) -> bool:
    """Whether FA4's block-sparse kernel (:mod:`.fa4`) can run this call: 16-bit, SM90/SM100, flash-attn-4 installed."""
    from .fa4 import fa4_unavailable_reason

    return q.dtype in (torch.float16, torch.bfloat16) and plan.tile_size == 128 and fa4_unavailable_reason(q.device) is None


def fp8_supported(q, k, v, plan, out=None) -> bool:
    """Whether the FP8 Hopper kernel (:mod:`.gluon_fp8`) can run this call's fp8 heads."""
    if q.device.type != "cuda":
        return False
    try:
        from .gluon_fp8 import supported
    except ImportError:
        return False
    return supported(q, k, v, plan, out)


def _route_fp8(requested: str, backend: str, q, k, v, plan, out):
    """The plan a call runs: its fp8 heads stay fp8 where they can run (the FP8 Hopper kernel on CUDA,
    the torch simulation with ``backend="torch"`` or on CPU); under ``"auto"`` elsewhere they run
    in 16 bits, with a warning; a backend asked for by name that cannot run them is an error."""
    if backend == "torch" or q.device.type == "cpu" or fp8_supported(q, k, v, plan, out):
        return plan
    why = (f"the FP8 kernel runs on Hopper GPUs (compute capability 9.x) with Triton >= 3.6, float16/bfloat16 "
           f"inputs, head_dim 64 or 128 and plans of 128-token tiles; this call is {q.dtype}, head_dim "
           f"{q.shape[-1]}, tile {plan.tile_size} on {q.device}")
    if requested != "auto":
        raise ValueError(f"the plan has fp8 heads but {why}; use backend='auto' (runs them in 16 bits) or "
                         "backend='torch' (simulates FP8 exactly, slowly), or build the plan with precision='native'")
    log_once(__name__, logging.WARNING, f"Sparse-vDiT: fp8 heads run in 16 bits: {why}")
    return plan.with_precision("native")


# Why "auto" keeps Hopper calls on ours: FA4's block-sparse kernel alone leads ours at Wan2.1 480p
# (head_dim 128, 32,760 tokens) by 6-17% on identical tile lists (kernel_h200_v10_fa4.json), but as a whole
# call, with the gather into kernel order and the output scatter it needs, it ran 1.34-1.44x slower there
# and 1.01-1.23x slower at every other shape (kernel_h200_v12_auto.json). FA4 runs only where ours cannot.
def auto_cuda_kernel(q, k, v, plan, out) -> str:
    """The kernel ``"auto"`` runs on a CUDA call (native-precision heads), the choice logged once per reason.

    On Hopper ours in Gluon where it runs (measured faster than FA4 as whole calls, see above); on Blackwell
    SM100 FA4 where it runs (the Gluon kernel is Hopper-only); else our portable Triton kernel.
    ``backend="gluon"`` or ``"fa4"`` forces one.
    """
    if gluon_supported(q, k, v, plan, out):
        return _chosen("gluon", "our Hopper kernel")
    if torch.cuda.get_device_capability(q.device)[0] == 10 and fa4_supported(q, plan):
        return _chosen("fa4", "Blackwell: our Gluon kernel is Hopper-only; its first call per shape compiles")
    return _chosen("triton", "our portable kernel (no Gluon or FA4 for this call)")


def _chosen(kernel: str, reason: str) -> str:
    log_once(__name__, logging.INFO, f"Sparse-vDiT sparse attention: {kernel} ({reason})")
    return kernel


def _check(q, k, v, plan, text_lengths, backend):
    if not isinstance(plan, SparsePlan):
        raise TypeError(f"plan must be a SparsePlan (see build_plan), got {type(plan).__name__}")
    for name, x in (("q", q), ("k", k), ("v", v)):
        if not isinstance(x, torch.Tensor) or x.dim() != 4:
            raise ValueError(f"{name} must be a 4-D tensor (batch, heads, tokens, head_dim) as for SDPA")
    if not (q.shape == k.shape == v.shape):
        raise ValueError(f"q, k, v must have the same shape (B, H, N, D); got {tuple(q.shape)}, {tuple(k.shape)}, {tuple(v.shape)}")
    if not (q.dtype == k.dtype == v.dtype) or q.dtype not in _DTYPES:
        raise TypeError(f"q, k, v must share one dtype among float16, bfloat16, float32; got {q.dtype}, {k.dtype}, {v.dtype}")
    if not (q.device == k.device == v.device):
        raise ValueError(f"q, k, v must be on one device; got {q.device}, {k.device}, {v.device}")
    _, heads, n_tokens, head_dim = q.shape
    if heads != plan.num_heads:
        raise ValueError(f"the plan has {plan.num_heads} heads but q has {heads}: build the plan with one spec per head")
    if n_tokens != plan.num_tokens:
        raise ValueError(
            f"the plan is for {plan.layout} but q has N={n_tokens} tokens: build the plan for this call's layout"
        )
    if not 1 <= head_dim <= 256:
        raise ValueError(f"head_dim from 1 to 256 is supported, got {head_dim} (q, k, v are (B, H, N, head_dim))")
    if text_lengths is not None:
        text = plan.layout.text_tokens
        if text == 0:
            raise ValueError("text_lengths given but the plan's layout has no text tokens")
        if text_lengths.shape != (q.shape[0],):
            raise ValueError(f"text_lengths must have shape (batch,) = ({q.shape[0]},), got {tuple(text_lengths.shape)}")
        # one host sync per call; under torch.compile the check is left to eager runs
        if not torch.compiler.is_compiling() and bool(((text_lengths < 0) | (text_lengths > text)).any()):
            raise ValueError(f"text_lengths must be in 0..{text} (the layout's text tokens), got {text_lengths.tolist()}")
    if torch.is_grad_enabled() and any(x.requires_grad for x in (q, k, v)):
        raise RuntimeError(
            "sparse_attention computes the forward pass only (inference): run it under torch.no_grad() or "
            "torch.inference_mode(), as diffusers pipelines do. To train or fine-tune the transformer, remove the "
            "map first with remove_sparse_vdit(pipe), which restores the stock attention (under backend='auto' "
            "all-FULL layers and dense warm-up steps also take the stock path)"
        )
    if backend == "triton":
        if q.device.type != "cuda" and not _interpreting():
            raise RuntimeError(
                f"the triton backend runs on CUDA tensors (or on CPU with TRITON_INTERPRET=1); got {q.device}. "
                "Use backend='torch' or 'auto' on this device."
            )
        if q.device.type != "cuda" and q.dtype == torch.bfloat16:
            raise TypeError("bfloat16 is not supported under the Triton CPU interpreter; use float16 or float32 on CPU")


def sparse_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    plan: SparsePlan,
    *,
    scale: float | None = None,
    backend: str = "auto",
    text_lengths: torch.Tensor | None = None,
    out: torch.Tensor | None = None,
) -> torch.Tensor:
    """Attention of each head restricted to its plan's tiles.

    ``q, k, v``: ``(B, H, N, D)`` as for :func:`torch.nn.functional.scaled_dot_product_attention`;
    strided views (e.g. ``x.transpose(1, 2)`` of a ``(B, N, H, D)`` tensor) are read in place.
    Head ``h`` equals ``F.scaled_dot_product_attention(q, k, v, attn_mask=plan.dense_mask()[h])``;
    SKIP heads give zeros. ``text_lengths`` (int ``(B,)``) masks text keys past each batch
    item's valid text tokens (HunyuanVideo's padded prompts). The output has ``q``'s strides
    unless ``out`` is given.

    Without ``out``, the Triton and torch backends run as the custom op
    ``diffusers_sparse_vdit::sparse_attention``, so ``torch.compile`` keeps the call in its
    graph (no graph break); with ``out`` the kernel writes into it directly, eagerly.
    """
    requested, backend = backend, resolve_backend(backend, q.device)
    if text_lengths is not None:
        text_lengths = torch.as_tensor(text_lengths, device=q.device)
        if text_lengths.is_floating_point() or text_lengths.is_complex():
            raise TypeError(f"text_lengths must be whole numbers of text tokens, got {text_lengths.dtype}")
        text_lengths = text_lengths.to(torch.int32).reshape(-1)
    _check(q, k, v, plan, text_lengths, backend)
    if backend == "gluon" and not gluon_supported(q, k, v, plan, out):
        raise ValueError(
            "the gluon backend runs on Hopper GPUs (compute capability 9.x) with Triton >= 3.6, float16/bfloat16 "
            "inputs, head_dim 64 or 128, plans of 128-token tiles and a contiguous last dim (out's too); use "
            "backend='auto' or 'triton' for this call"
        )
    if requested == "auto" and backend == "triton":
        backend = auto_cuda_kernel(q, k, v, plan, out)
    if plan.fp8_heads:
        plan = _route_fp8(requested, backend, q, k, v, plan, out)
    scale = 1.0 / math.sqrt(q.shape[-1]) if scale is None else float(scale)
    if out is None:
        if backend == "flex":
            return _run(backend, q, k, v, plan, scale, torch.empty_like(q), text_lengths)
        return _sparse_attention_op(q, k, v, text_lengths, plan.uid, scale, backend)
    if out.shape != q.shape or out.dtype != q.dtype or out.device != q.device:
        raise ValueError(f"out must match q: {tuple(q.shape)} {q.dtype} {q.device}")
    return _run(backend, q, k, v, plan, scale, out, text_lengths)


# Our kernels compute element offsets in int32: a batch whose tensors span more elements (e.g.
# HunyuanVideo 720p from batch 6, 365M elements per item) runs as several launches.
_INT32_LIMIT = 2**31 - 1


def _items_per_launch(*tensors) -> int:
    """How many batch items one kernel launch may take with every element offset in int32."""
    per_item = max(sum((n - 1) * s for n, s in zip(x.shape[1:], x.stride()[1:])) for x in tensors)
    if per_item > _INT32_LIMIT:
        raise ValueError(f"one batch item spans {per_item + 1:,} elements, more than our kernels index (2**31); "
                         "use backend='torch' or 'flex'")
    stride_b = max(x.stride(0) for x in tensors) or 1
    return (_INT32_LIMIT - per_item) // stride_b + 1


def _run(backend, q, k, v, plan, scale, out, text_lengths):
    fp8 = plan.fp8_heads
    if not fp8:
        return _run_native(backend, q, k, v, plan, scale, out, text_lengths)
    # one launch per precision, each writing only its heads (SKIP heads write zeros in the first)
    native = sorted(set(range(plan.num_heads)) - set(fp8))
    if native:
        _run_native(backend, q, k, v, plan.restrict_heads(native), scale, out, text_lengths)
    fp8_plan = plan.restrict_heads(fp8)
    if backend == "torch" or q.device.type != "cuda":
        from .reference import sparse_attention_torch

        return sparse_attention_torch(q, k, v, fp8_plan, scale=scale, out=out, text_lengths=text_lengths, fp8=True)
    from .gluon_fp8 import sparse_attention_gluon_fp8

    return _batched(sparse_attention_gluon_fp8, q, k, v, fp8_plan, scale, out, text_lengths)


def _batched(kernel, q, k, v, plan, scale, out, text_lengths):
    """``kernel`` over the batch, as many items a launch as int32 offsets allow."""
    step = _items_per_launch(q, k, v, out)
    for b in range(0, q.shape[0], step):
        items = slice(b, b + step)
        kernel(q[items], k[items], v[items], plan, scale=scale, out=out[items],
               text_lengths=text_lengths[items] if text_lengths is not None else None)
    return out


def _run_native(backend, q, k, v, plan, scale, out, text_lengths):
    if backend in ("gluon", "triton"):
        if backend == "gluon":
            from .gluon_sparse import sparse_attention_gluon as kernel
        else:
            from .triton_sparse import sparse_attention_triton as kernel
        return _batched(kernel, q, k, v, plan, scale, out, text_lengths)
    if backend == "fa4":
        from .fa4 import sparse_attention_fa4

        return sparse_attention_fa4(q, k, v, plan, scale=scale, out=out, text_lengths=text_lengths)
    if backend == "flex":
        from .flex import sparse_attention_flex

        return sparse_attention_flex(q, k, v, plan, scale=scale, out=out, text_lengths=text_lengths)
    from .reference import sparse_attention_torch

    return sparse_attention_torch(q, k, v, plan, scale=scale, out=out, text_lengths=text_lengths)


# The plan travels through the graph as its integer uid: custom ops take tensors and scalars only.
@torch.library.custom_op("diffusers_sparse_vdit::sparse_attention", mutates_args=())
def _sparse_attention_op(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    text_lengths: torch.Tensor | None,
    plan_uid: int,
    scale: float,
    backend: str,
) -> torch.Tensor:
    return _run(backend, q, k, v, plan_by_uid(plan_uid), scale, torch.empty_like(q), text_lengths)


@_sparse_attention_op.register_fake
def _(q, k, v, text_lengths, plan_uid, scale, backend):
    return torch.empty_like(q)
