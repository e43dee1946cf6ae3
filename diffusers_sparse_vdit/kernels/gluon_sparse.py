"""Warp-specialized block-sparse attention forward for Hopper, in Gluon (Triton's explicit dialect).

The same plan and the same math as :mod:`.triton_sparse`, laid out the way a Hopper attention
kernel wants it. One producer warp streams the program's key/value sub-tiles into a ring of
shared-memory stages by TMA, each stage guarded by a pair of mbarriers ("ready": filled, "empty":
both consumers done with it). Two consumer warpgroups each own 64 of the program's 128 query
rows and walk the same key list: neither waits on the other or on a CTA-wide barrier (the
largest stall of the single-loop kernel, ``benchmarks/NOTES.md`` v8), so the warp schedulers
overlap one warpgroup's softmax with the other's matrix products; and within a warpgroup the
softmax of sub-tile ``i`` runs while the tensor cores do the PV product of sub-tile ``i - 1``
(:func:`_attend`; at head_dim 128, where it was measured faster, see :func:`_softmax`). One program per multiprocessor: 3-4 stages of 128 keys fill its shared memory.

Scope: CUDA devices of compute capability 9.x, 16-bit inputs, head_dim 64 or 128, plan tiles of
128 tokens and TMA-able strides; :func:`supported` says whether a call qualifies. Everything
else stays on :func:`.triton_sparse.sparse_attention_triton`.
"""

from __future__ import annotations

import torch
import triton
from triton.experimental import gluon
from triton.experimental.gluon import language as gl
from triton.experimental.gluon.language.nvidia.hopper import (
    fence_async_shared,
    mbarrier,
    tma,
    warpgroup_mma,
    warpgroup_mma_wait,
)

from .triton_sparse import _LOG2E, _set_allocator, gather_reordered_kv

__all__ = ["gluon_config", "sparse_attention_gluon", "supported"]

# Gluon's warp_specialize takes (function, args) pairs from Triton 3.6 on
_TRITON_OK = tuple(int(x) for x in triton.__version__.split(".")[:2]) >= (3, 6)
# Triton 3.6 (the GPU machines) names the TMA load async_copy_global_to_shared; later versions, async_load
_tma_load = getattr(tma, "async_load", None) or tma.async_copy_global_to_shared


@gluon.jit
def _item(work, n_work):
    pid = gl.program_id(0)
    item = pid % n_work
    return pid // n_work, gl.load(work + item * 5), gl.load(work + item * 5 + 1), gl.load(work + item * 5 + 2), \
        gl.load(work + item * 5 + 3), gl.load(work + item * 5 + 4)


@gluon.jit
def _query_rows(q_tile, order, row_maps, rows_per_order, tile_lengths, n_video_tiles, n_tokens, video_start,
                text_start, first_row: gl.constexpr, ROWS: gl.constexpr, TILE: gl.constexpr, GATHER: gl.constexpr,
                layout: gl.constexpr):
    """Caller token index of rows ``first_row ..`` of query tile ``q_tile``, and which of them exist."""
    offs = gl.arange(0, ROWS, layout=layout) + first_row
    if GATHER:
        rows = gl.load(row_maps + order * rows_per_order + q_tile * TILE + offs)
    else:
        if q_tile < n_video_tiles:
            base = video_start + q_tile * TILE
        else:
            base = text_start + (q_tile - n_video_tiles) * TILE
        rows = gl.minimum(base + offs, n_tokens - 1)  # padding rows of a partial tile read a valid row
    return rows, offs < gl.load(tile_lengths + q_tile)


@gluon.jit
def _order_and_text_len(head_order, head, text_lengths, b, text_tokens, GATHER: gl.constexpr,
                        HAS_TEXT_LENGTHS: gl.constexpr):
    """The head's kernel order (0: frame-major) and batch item ``b``'s valid text tokens."""
    if GATHER:
        order = gl.load(head_order + head)
    else:
        order = 0
    if HAS_TEXT_LENGTHS:
        text_len = gl.load(text_lengths + b)
    else:
        text_len = text_tokens
    return order, text_len


@gluon.jit
def _load_queries(Q, stride_qb, stride_qh, stride_qn, b, head, q_tile, n_total, order, row_maps, rows_per_order,
                  tile_lengths, n_video_tiles, n_tokens, video_start, text_start, first_row: gl.constexpr,
                  ROWS: gl.constexpr, HEAD_DIM: gl.constexpr, TILE: gl.constexpr, GATHER: gl.constexpr,
                  layout: gl.constexpr):
    """Rows ``first_row ..`` of query tile ``q_tile`` of ``head``, zeros for missing rows.

    A SKIP head has no key tiles: its Q is never read and its output is zero.
    """
    rows, row_ok = _query_rows(q_tile, order, row_maps, rows_per_order, tile_lengths, n_video_tiles, n_tokens,
                               video_start, text_start, first_row, ROWS, TILE, GATHER, gl.SliceLayout(1, layout))
    offs_d = gl.arange(0, HEAD_DIM, layout=gl.SliceLayout(0, layout))
    return gl.load(Q + b * stride_qb + head * stride_qh + rows[:, None] * stride_qn + offs_d[None, :],
                   mask=(row_ok & (n_total > 0))[:, None], other=0.0)


@gluon.jit
def _stage_barriers(STAGES: gl.constexpr):
    """The ring's mbarriers: ``ready`` (the producer's loads landed) and ``empty`` (both consumers are done)."""
    ready = gl.allocate_shared_memory(gl.int64, [STAGES, 1], mbarrier.MBarrierLayout())
    empty = gl.allocate_shared_memory(gl.int64, [STAGES, 1], mbarrier.MBarrierLayout())
    for s in gl.static_range(STAGES):
        mbarrier.init(ready.index(s), count=1)
        mbarrier.init(empty.index(s), count=2)  # both consumer warpgroups release a stage
    return ready, empty


@gluon.jit
def _loader(K, V, KP, VP, stride_kb, stride_kh, stride_kn, stride_vb, stride_vh, stride_vn, stride_pb, stride_ph,
            stride_pn, work, kv_tiles, head_order, head_slot, n_work, n_tokens, n_video_tiles, rows_per_order,
            video_start, text_start, k_bufs, v_bufs, ready, empty,
            HEAD_DIM: gl.constexpr, TILE: gl.constexpr, BLOCK_N: gl.constexpr, STAGES: gl.constexpr,
            GATHER: gl.constexpr):
    """Producer warp: TMA loads of the program's key/value sub-tiles into the stage ring."""
    b, head, q_tile, first, n_full, n_total = _item(work, n_work)
    k_base = K + b * stride_kb + head * stride_kh
    v_base = V + b * stride_vb + head * stride_vh
    kv_rows = n_tokens
    kv_video_start = video_start
    kv_text_start = text_start
    if GATHER:
        # a token-major head reads the K/V copy in kernel order (gather_reordered_kv)
        if gl.load(head_order + head) != 0:
            slot = gl.load(head_slot + head)
            k_base = KP + b * stride_pb + slot * stride_ph
            v_base = VP + b * stride_pb + slot * stride_ph
            kv_rows = rows_per_order
            kv_video_start = 0
            kv_text_start = n_video_tiles * TILE
            stride_kn = stride_pn
            stride_vn = stride_pn
    layout: gl.constexpr = k_bufs.type.layout
    k_desc = tma.make_tensor_descriptor(k_base, [kv_rows, HEAD_DIM], [stride_kn, 1], [BLOCK_N, HEAD_DIM], layout)
    v_desc = tma.make_tensor_descriptor(v_base, [kv_rows, HEAD_DIM], [stride_vn, 1], [BLOCK_N, HEAD_DIM], layout)
    SUB: gl.constexpr = TILE // BLOCK_N
    for i in range(n_total * SUB):
        tile = gl.load(kv_tiles + first + i // SUB)
        if tile < n_video_tiles:
            row0 = kv_video_start + tile * TILE
        else:
            row0 = kv_text_start + (tile - n_video_tiles) * TILE
        row0 += (i % SUB) * BLOCK_N
        stage = i % STAGES
        mbarrier.wait(empty.index(stage), ((i // STAGES) & 1) ^ 1)
        mbarrier.expect(ready.index(stage), 2 * k_desc.block_type.nbytes)
        # rows past the tensor's end arrive as zeros; the consumers mask them
        _tma_load(k_desc, [row0, 0], ready.index(stage), k_bufs.index(stage))
        _tma_load(v_desc, [row0, 0], ready.index(stage), v_bufs.index(stage))


@gluon.jit
def _probs(qk, m_i, l_i, qk_scale, dtype, p_layout: gl.constexpr):
    """Online-softmax step: 16-bit probabilities P of scores ``qk``, the rescale ``alpha`` and the new row stats."""
    m_new = gl.maximum(m_i, gl.max(qk, 1) * qk_scale)
    m_new = gl.where(m_new == float("-inf"), 0.0, m_new)  # a tile with no valid key leaves the row as it was
    p = gl.exp2(qk * qk_scale - m_new[:, None])
    alpha = gl.exp2(m_i - m_new)
    return gl.convert_layout(p.to(dtype), p_layout), alpha, m_new, l_i * alpha + gl.sum(p, 1)


@gluon.jit
def _mask_scores(qk, i, kv_tiles, first, tile_lengths, text_len, n_video_tiles, TILE: gl.constexpr,
                 BLOCK_N: gl.constexpr, s_layout: gl.constexpr):
    """Scores of sub-tile ``i`` with keys past the tile's valid length (padding, unused text) at -inf."""
    SUB: gl.constexpr = TILE // BLOCK_N
    tile = gl.load(kv_tiles + first + i // SUB)
    valid = gl.load(tile_lengths + tile)
    if tile >= n_video_tiles:
        valid = gl.minimum(valid, text_len - (tile - n_video_tiles) * TILE)
    offs_n = gl.arange(0, BLOCK_N, layout=gl.SliceLayout(0, s_layout)) + (i % SUB) * BLOCK_N
    return gl.where((offs_n < valid)[None, :], qk, float("-inf"))


@gluon.jit
def _softmax(qk, m_i, l_i, i, mask_from, kv_tiles, first, tile_lengths, text_len, n_video_tiles, qk_scale, dtype,
             TILE: gl.constexpr, BLOCK_N: gl.constexpr, IN_BRANCHES: gl.constexpr, s_layout: gl.constexpr,
             p_layout: gl.constexpr):
    """Scores of sub-tile ``i`` to 16-bit probabilities P (masked from sub-tile ``mask_from`` on).

    With ``IN_BRANCHES`` each side of the mask branch computes the whole step: ptxas hoists the
    caller's wait for PV(i - 1) to the top of the block after the branch, so exponentials placed
    there run after that product instead of beside it (``benchmarks/NOTES.md`` v12;
    ``tests/kernels/test_gluon_build.py`` checks the schedule).
    """
    if IN_BRANCHES:
        if i >= mask_from:
            qk = _mask_scores(qk, i, kv_tiles, first, tile_lengths, text_len, n_video_tiles, TILE, BLOCK_N, s_layout)
            p, alpha, m_new, l_new = _probs(qk, m_i, l_i, qk_scale, dtype, p_layout)
        else:
            p, alpha, m_new, l_new = _probs(qk, m_i, l_i, qk_scale, dtype, p_layout)
    else:
        if i >= mask_from:
            qk = _mask_scores(qk, i, kv_tiles, first, tile_lengths, text_len, n_video_tiles, TILE, BLOCK_N, s_layout)
        p, alpha, m_new, l_new = _probs(qk, m_i, l_i, qk_scale, dtype, p_layout)
    return p, alpha, m_new, l_new


@gluon.jit
def _attend(acc, m_i, l_i, q_smem, k_bufs, v_bufs, ready, empty, n, mask_from, kv_tiles, first,
            tile_lengths, text_len, n_video_tiles, qk_scale,
            TILE: gl.constexpr, BLOCK_N: gl.constexpr, STAGES: gl.constexpr, IN_BRANCHES: gl.constexpr,
            s_layout: gl.constexpr, p_layout: gl.constexpr, o_layout: gl.constexpr):
    """The key loop with sub-tile ``i``'s softmax overlapping sub-tile ``i - 1``'s PV product.

    Each step issues QK(i) and PV(i - 1) back to back, waits for QK(i) only, computes P(i) while the
    tensor cores run PV(i - 1), then waits for that and rescales.
    """
    ROWS: gl.constexpr = 64
    zero = gl.zeros([ROWS, BLOCK_N], gl.float32, s_layout)
    dtype = k_bufs.dtype
    if n > 0:
        mbarrier.wait(ready.index(0), 0)
        qk = warpgroup_mma(q_smem, k_bufs.index(0).permute((1, 0)), zero, use_acc=False, is_async=True)
        qk = warpgroup_mma_wait(0, deps=(qk,))
        p, alpha, m_i, l_i = _softmax(qk, m_i, l_i, 0, mask_from, kv_tiles, first, tile_lengths, text_len,
                                      n_video_tiles, qk_scale, dtype, TILE, BLOCK_N, IN_BRANCHES, s_layout, p_layout)
        for i in range(1, n):
            stage = i % STAGES
            prev = (i - 1) % STAGES
            mbarrier.wait(ready.index(stage), (i // STAGES) & 1)
            qk = warpgroup_mma(q_smem, k_bufs.index(stage).permute((1, 0)), zero, use_acc=False, is_async=True)
            acc = warpgroup_mma(p, v_bufs.index(prev), acc, is_async=True)
            qk = warpgroup_mma_wait(1, deps=(qk,))
            p, alpha, m_i, l_i = _softmax(qk, m_i, l_i, i, mask_from, kv_tiles, first, tile_lengths, text_len,
                                          n_video_tiles, qk_scale, dtype, TILE, BLOCK_N, IN_BRANCHES, s_layout,
                                          p_layout)
            acc = warpgroup_mma_wait(0, deps=(acc,))
            mbarrier.arrive(empty.index(prev), count=1)
            acc = acc * gl.convert_layout(alpha, gl.SliceLayout(1, o_layout))[:, None]
        last = (n - 1) % STAGES
        acc = warpgroup_mma(p, v_bufs.index(last), acc, is_async=True)
        acc = warpgroup_mma_wait(0, deps=(acc,))
        mbarrier.arrive(empty.index(last), count=1)
    return acc, m_i, l_i


@gluon.jit
def _consumer(Q, O, stride_qb, stride_qh, stride_qn, stride_ob, stride_oh, stride_on,
              work, kv_tiles, row_maps, head_order, tile_lengths, text_lengths, n_work, n_tokens, n_video_tiles,
              rows_per_order, video_start, text_start, text_tokens, qk_scale,
              q_smem, k_bufs, v_bufs, ready, empty,
              HALF: gl.constexpr, HEAD_DIM: gl.constexpr, TILE: gl.constexpr, BLOCK_N: gl.constexpr,
              STAGES: gl.constexpr, GATHER: gl.constexpr, HAS_TEXT_LENGTHS: gl.constexpr, IN_BRANCHES: gl.constexpr):
    """One warpgroup: query rows ``HALF * 64 ..`` of the program's tile against its whole key list."""
    ROWS: gl.constexpr = 64  # one wgmma M extent of 4 warps
    s_layout: gl.constexpr = gl.NVMMADistributedLayout(version=[3, 0], warps_per_cta=[4, 1],
                                                       instr_shape=[16, BLOCK_N, 16])
    o_layout: gl.constexpr = gl.NVMMADistributedLayout(version=[3, 0], warps_per_cta=[4, 1],
                                                       instr_shape=[16, HEAD_DIM, 16])
    p_layout: gl.constexpr = gl.DotOperandLayout(operand_index=0, parent=o_layout, k_width=2)
    io_layout: gl.constexpr = gl.BlockedLayout([1, 8], [4, 8], [4, 1], [1, 0])
    b, head, q_tile, first, n_full, n_total = _item(work, n_work)
    order, text_len = _order_and_text_len(head_order, head, text_lengths, b, text_tokens, GATHER, HAS_TEXT_LENGTHS)
    q = _load_queries(Q, stride_qb, stride_qh, stride_qn, b, head, q_tile, n_total, order, row_maps, rows_per_order,
                      tile_lengths, n_video_tiles, n_tokens, video_start, text_start, HALF * ROWS, ROWS, HEAD_DIM,
                      TILE, GATHER, io_layout)
    q_smem.store(q)
    fence_async_shared()

    m_i = gl.full([ROWS], float("-inf"), gl.float32, gl.SliceLayout(1, s_layout))
    l_i = gl.zeros([ROWS], gl.float32, gl.SliceLayout(1, s_layout))
    acc = gl.zeros([ROWS, HEAD_DIM], gl.float32, o_layout)
    acc, m_i, l_i = _attend(acc, m_i, l_i, q_smem, k_bufs, v_bufs, ready, empty, n_total * (TILE // BLOCK_N),
                            n_full * (TILE // BLOCK_N), kv_tiles, first, tile_lengths, text_len, n_video_tiles,
                            qk_scale, TILE, BLOCK_N, STAGES, IN_BRANCHES, s_layout, p_layout, o_layout)
    l_i = gl.where(l_i == 0.0, 1.0, l_i)  # SKIP rows: acc is 0, so the output is 0
    out = acc / gl.convert_layout(l_i, gl.SliceLayout(1, o_layout))[:, None]
    # stored straight from the accumulator's layout: a layout conversion would need 16 KB of shared memory
    rows, row_ok = _query_rows(q_tile, order, row_maps, rows_per_order, tile_lengths, n_video_tiles, n_tokens,
                               video_start, text_start, HALF * ROWS, ROWS, TILE, GATHER, gl.SliceLayout(1, o_layout))
    offs_d = gl.arange(0, HEAD_DIM, layout=gl.SliceLayout(0, o_layout))
    gl.store(O + b * stride_ob + head * stride_oh + rows[:, None] * stride_on + offs_d[None, :],
             out.to(O.dtype.element_ty), mask=row_ok[:, None])


@gluon.jit
def _sparse_attention_ws_fwd(
    Q, K, V, O, KP, VP,
    stride_qb, stride_qh, stride_qn, stride_kb, stride_kh, stride_kn, stride_vb, stride_vh, stride_vn,
    stride_ob, stride_oh, stride_on, stride_pb, stride_ph, stride_pn,
    work, kv_tiles, row_maps, head_order, head_slot, tile_lengths, text_lengths,
    n_work, n_tokens, n_video_tiles, rows_per_order, video_start, text_start, text_tokens, qk_scale,
    HEAD_DIM: gl.constexpr, TILE: gl.constexpr, BLOCK_N: gl.constexpr, STAGES: gl.constexpr,
    GATHER: gl.constexpr, HAS_TEXT_LENGTHS: gl.constexpr, CONSUMER_REGS: gl.constexpr,
    SOFTMAX_IN_BRANCHES: gl.constexpr,
):
    dtype: gl.constexpr = Q.dtype.element_ty
    ROWS: gl.constexpr = 64  # query rows per consumer warpgroup
    kv_layout: gl.constexpr = gl.NVMMASharedLayout.get_default_for([BLOCK_N, HEAD_DIM], dtype)
    q_layout: gl.constexpr = gl.NVMMASharedLayout.get_default_for([ROWS, HEAD_DIM], dtype)
    k_bufs = gl.allocate_shared_memory(dtype, [STAGES, BLOCK_N, HEAD_DIM], kv_layout)
    v_bufs = gl.allocate_shared_memory(dtype, [STAGES, BLOCK_N, HEAD_DIM], kv_layout)
    q0 = gl.allocate_shared_memory(dtype, [ROWS, HEAD_DIM], q_layout)
    q1 = gl.allocate_shared_memory(dtype, [ROWS, HEAD_DIM], q_layout)
    ready, empty = _stage_barriers(STAGES)

    # constexprs go in by name, in literal tuples: a bare literal, or a tuple bound to a name or
    # concatenated, would not stay constexpr
    LOWER: gl.constexpr = 0
    UPPER: gl.constexpr = 1
    gl.warp_specialize([
        (_consumer, (Q, O, stride_qb, stride_qh, stride_qn, stride_ob, stride_oh, stride_on, work, kv_tiles, row_maps,
                     head_order, tile_lengths, text_lengths, n_work, n_tokens, n_video_tiles, rows_per_order,
                     video_start, text_start, text_tokens, qk_scale, q0, k_bufs, v_bufs, ready, empty,
                     LOWER, HEAD_DIM, TILE, BLOCK_N, STAGES, GATHER, HAS_TEXT_LENGTHS, SOFTMAX_IN_BRANCHES)),
        (_consumer, (Q, O, stride_qb, stride_qh, stride_qn, stride_ob, stride_oh, stride_on, work, kv_tiles, row_maps,
                     head_order, tile_lengths, text_lengths, n_work, n_tokens, n_video_tiles, rows_per_order,
                     video_start, text_start, text_tokens, qk_scale, q1, k_bufs, v_bufs, ready, empty,
                     UPPER, HEAD_DIM, TILE, BLOCK_N, STAGES, GATHER, HAS_TEXT_LENGTHS, SOFTMAX_IN_BRANCHES)),
        (_loader, (K, V, KP, VP, stride_kb, stride_kh, stride_kn, stride_vb, stride_vh, stride_vn, stride_pb,
                   stride_ph, stride_pn, work, kv_tiles, head_order, head_slot, n_work, n_tokens, n_video_tiles,
                   rows_per_order, video_start, text_start, k_bufs, v_bufs, ready, empty,
                   HEAD_DIM, TILE, BLOCK_N, STAGES, GATHER)),
    ], [4, 1], [CONSUMER_REGS, 24])


def supported(q, k, v, plan, out=None) -> bool:
    """Whether this kernel can run the call: a Hopper GPU, Triton >= 3.6, 16-bit inputs, head_dim 64
    or 128, plan tiles of 128 tokens, contiguous head_dim and 16-byte aligned K/V rows (TMA)."""
    if q.device.type != "cuda" or torch.cuda.get_device_capability(q.device)[0] != 9:
        return False  # wgmma and this TMA path are Hopper's (Blackwell has neither in this form)
    if not _TRITON_OK:
        return False
    if q.dtype not in (torch.float16, torch.bfloat16) or q.shape[-1] not in (64, 128) or plan.tile_size != 128:
        return False
    if any(x.stride(-1) != 1 for x in (q, k, v) + ((out,) if out is not None else ())):
        return False
    return all(x.data_ptr() % 16 == 0 and all(s * x.element_size() % 16 == 0 for s in x.stride()[:-1]) for x in (k, v))


def gluon_config(head_dim: int) -> dict:
    """Key sub-tile, stage count, register budgets and softmax placement: the H200 sweeps' winners
    (``benchmarks/NOTES.md`` v9, v12).

    128-key sub-tiles; 3 stages at head_dim 128 (the most that fit 227 KB of shared memory beside
    Q), 4 at head_dim 64. With 2 stages the overlapped loop waits on its loads (20% slower than
    3). ``maxnreg`` 168 for the 12 warps of one program per multiprocessor, of which the
    consumers take 240 each and the producer warpgroup 24. The softmax in both mask branches
    (so it runs beside PV, :func:`_softmax`) at head_dim 128: 2-7% faster there, 2-3% slower at 64.
    """
    return {"BLOCK_N": 128, "STAGES": 3 if head_dim > 64 else 4, "CONSUMER_REGS": 240, "maxnreg": 168,
            "SOFTMAX_IN_BRANCHES": head_dim > 64}


def sparse_attention_gluon(q, k, v, plan, *, scale: float, out: torch.Tensor, text_lengths=None, config=None):
    """Launch the warp-specialized kernel; the call must satisfy :func:`supported`."""
    batch, heads, n_tokens, head_dim = q.shape
    tensors = plan.device_tensors(q.device)
    cfg = {**gluon_config(head_dim), **(config or {})}  # a config overrides the defaults it names
    _set_allocator(q.device)  # device-side TMA descriptors take scratch from the caller's allocator
    kp, vp = gather_reordered_kv(k, v, plan, tensors) if plan.has_reordered_heads else (k, v)
    layout = plan.layout
    has_text_lengths = text_lengths is not None
    n_work = tensors["work"].shape[0]
    _sparse_attention_ws_fwd[(n_work * batch,)](
        q, k, v, out, kp, vp,
        *q.stride()[:3], *k.stride()[:3], *v.stride()[:3], *out.stride()[:3], *kp.stride()[:3],
        tensors["work"], tensors["kv_tiles"], tensors["row_maps"], tensors["head_order"], tensors["head_slot"],
        tensors["tile_lengths"], text_lengths if has_text_lengths else tensors["tile_lengths"],
        n_work, n_tokens, plan.video_tiles, tensors["row_maps"].shape[1], layout.video_start, layout.text_start,
        layout.text_tokens, scale * _LOG2E,
        HEAD_DIM=head_dim, TILE=plan.tile_size, GATHER=plan.has_reordered_heads, HAS_TEXT_LENGTHS=has_text_lengths,
        num_warps=4, **cfg,
    )
    return out
