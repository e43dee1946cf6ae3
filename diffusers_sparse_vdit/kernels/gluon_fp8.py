"""The warp-specialized Hopper kernel of :mod:`.gluon_sparse` on FP8 tensor cores.

Same plans, same program structure (one producer warp streaming key/value sub-tiles by TMA
into a ring of shared-memory stages; two consumer warpgroups of 64 query rows), with both matrix products in float8
e4m3 and float32 accumulation, as :mod:`.quantize` describes:

* each consumer quantizes its own 64 Q rows as it loads them (per-row scales, no extra pass);
* the scores of the next sub-tile are computed while the softmax of this one runs (:func:`_attend`; at
  head_dim 128 ptxas serializes that loop, benchmarks/NOTES.md v16);
* K and V are quantized before the launch by one Triton pass (:func:`.quantize.kernel_kv`: a
  read of each, half the bytes written) into every head's kernel order, so token-major heads
  need no copy of their own: smoothed K with one scale per tile, which multiplies the row's
  score scale once per tile, and V per channel, undone on the output;
* V arrives transposed (keys contiguous): FP8 ``wgmma`` reads its shared-memory operand only in
  reduction-major order, which for PV means along the keys;
* P is rounded to e4m3 as ``P * 256`` in registers and fed to the PV product from there, its
  columns read in the order the threads already hold them (:func:`_as_operand`).

Shared memory per stage is half the 16-bit kernel's, so the ring holds more stages.
"""

from __future__ import annotations

import math

import torch
from triton.experimental import gluon
from triton.experimental.gluon import language as gl
from triton.experimental.gluon.language.nvidia.hopper import (
    fence_async_shared,
    mbarrier,
    tma,
    warpgroup_mma,
    warpgroup_mma_wait,
)

from . import gluon_sparse
from .gluon_sparse import _item, _load_queries, _order_and_text_len, _query_rows, _stage_barriers, _tma_load
from .quantize import FP8_MAX, P_SCALE, kernel_kv
from .triton_sparse import _LOG2E, _set_allocator

__all__ = ["fp8_config", "sparse_attention_gluon_fp8", "supported"]

_FP8_MAX = gl.constexpr(FP8_MAX)
_P_SCALE = gl.constexpr(P_SCALE)
_LOG2_P_SCALE = gl.constexpr(math.log2(P_SCALE))


@gluon.jit
def _loader(K8, VT8, stride_kb, stride_kh, stride_vb, stride_vh, work, kv_tiles, n_work, n_rows,
            k_bufs, v_bufs, ready, empty,
            HEAD_DIM: gl.constexpr, TILE: gl.constexpr, BLOCK_N: gl.constexpr, STAGES: gl.constexpr):
    """Producer warp: TMA loads of K sub-tiles ``(keys, D)`` and V^T sub-tiles ``(D, keys)``, both in kernel order."""
    b, head, q_tile, first, n_full, n_total = _item(work, n_work)
    k_desc = tma.make_tensor_descriptor(K8 + b * stride_kb + head * stride_kh, [n_rows, HEAD_DIM], [HEAD_DIM, 1],
                                        [BLOCK_N, HEAD_DIM], k_bufs.type.layout)
    v_desc = tma.make_tensor_descriptor(VT8 + b * stride_vb + head * stride_vh, [HEAD_DIM, n_rows], [n_rows, 1],
                                        [HEAD_DIM, BLOCK_N], v_bufs.type.layout)
    SUB: gl.constexpr = TILE // BLOCK_N
    for i in range(n_total * SUB):
        row0 = gl.load(kv_tiles + first + i // SUB) * TILE + (i % SUB) * BLOCK_N
        stage = i % STAGES
        mbarrier.wait(empty.index(stage), ((i // STAGES) & 1) ^ 1)
        mbarrier.expect(ready.index(stage), k_desc.block_type.nbytes + v_desc.block_type.nbytes)
        _tma_load(k_desc, [row0, 0], ready.index(stage), k_bufs.index(stage))
        _tma_load(v_desc, [0, row0], ready.index(stage), v_bufs.index(stage))


@gluon.jit
def _row_max(x, CHAINS: gl.constexpr):
    """Each row's max. With ``CHAINS`` > 1 a thread first reduces that many runs of its columns side by side:
    independent dependency chains where ``gl.max`` alone compiles to one chain of ``FMNMX`` per row."""
    if CHAINS == 1:
        return gl.max(x, 1)
    else:
        return gl.max(gl.max(gl.reshape(x, [x.shape[0], CHAINS, x.shape[1] // CHAINS]), 1), 1)


@gluon.jit
def _row_sum(x, CHAINS: gl.constexpr):
    """Each row's sum, as :func:`_row_max` orders it."""
    if CHAINS == 1:
        return gl.sum(x, 1)
    else:
        return gl.sum(gl.sum(gl.reshape(x, [x.shape[0], CHAINS, x.shape[1] // CHAINS]), 1), 1)


@gluon.jit
def _softmax(qk, m_i, l_i, i, mask_from, kv_tiles, first, k_scale, row_scale, tile_lengths, text_len,
             n_video_tiles, TILE: gl.constexpr, BLOCK_N: gl.constexpr, CHAINS: gl.constexpr, s_layout: gl.constexpr,
             p_layout: gl.constexpr):
    """Scores of sub-tile ``i`` (still in units of the Q and K scales) to e4m3 ``P * 256``."""
    SUB: gl.constexpr = TILE // BLOCK_N
    if i >= mask_from:
        tile = gl.load(kv_tiles + first + i // SUB)
        valid = gl.load(tile_lengths + tile)
        if tile >= n_video_tiles:
            valid = gl.minimum(valid, text_len - (tile - n_video_tiles) * TILE)
        offs_n = gl.arange(0, BLOCK_N, layout=gl.SliceLayout(0, s_layout)) + (i % SUB) * BLOCK_N
        qk = gl.where((offs_n < valid)[None, :], qk, float("-inf"))
    scale = row_scale * k_scale  # log2-domain score per unit, this row and tile
    m_new = gl.maximum(m_i, gl.convert_layout(_row_max(qk, CHAINS), m_i.type.layout) * scale)
    m_new = gl.where(m_new == float("-inf"), 0.0, m_new)  # a tile with no valid key leaves the row as it was
    alpha = gl.exp2(m_i - m_new)
    # 2^(s - m + 8) = P * 256 straight from the exponential: no multiply per probability
    p = gl.exp2(qk * scale[:, None] - (m_new - _LOG2_P_SCALE)[:, None])
    l_i = l_i * alpha + gl.convert_layout(_row_sum(p, CHAINS), l_i.type.layout) * (1.0 / _P_SCALE)
    return _as_operand(p.to(gl.float8e4nv), p_layout), alpha, m_new, l_i


@gluon.jit
def _as_operand(p, p_layout: gl.constexpr):
    """P as the PV product's register operand, with no data moved between threads.

    In each 16 columns a thread holds score columns ``8j + 2q + {0, 1}`` (``j < 2``; ``q`` its lane mod 4)
    but feeds e4m3 operand columns ``4q + {0..3}``. Read as column ``4q + 2j + b``, score column
    ``8j + 2q + b`` already sits in the right thread, so the conversion below only renames registers;
    the quantizer stores V's keys in that same order (:func:`.quantize.operand_key_order`), which leaves
    the product unchanged. A plain conversion costs 16 shuffles and 16 byte permutes per sub-tile on the softmax's path.
    """
    ROWS: gl.constexpr = p.shape[0]
    N: gl.constexpr = p.shape[1]
    p = gl.reshape(p, [ROWS, N // 16, 2, 4, 2])  # (row, group, j, q, b)
    p = gl.reshape(gl.permute(p, (0, 1, 3, 2, 4)), [ROWS, N])  # (row, group, q, j, b)
    return gl.convert_layout(p, p_layout)


@gluon.jit
def _step(acc, qk, ks, m_i, l_i, i, DRAIN: gl.constexpr, q_smem, k_bufs, v_bufs, ready, empty, zero, mask_from,
          kv_tiles, first, k_scales, row_scale, tile_lengths, text_len, n_video_tiles,
          TILE: gl.constexpr, BLOCK_N: gl.constexpr, STAGES: gl.constexpr, CHAINS: gl.constexpr,
          s_layout: gl.constexpr, p_layout: gl.constexpr):
    """Step ``i`` of :func:`_attend`'s loop, QK(i) done: issue QK(i + 1), softmax(i), retire PV(i - 1), issue PV(i).

    Returns with QK(i + 1) done and PV(i) in flight, or, with ``DRAIN``, done too.
    """
    SUB: gl.constexpr = TILE // BLOCK_N
    nxt = (i + 1) % STAGES
    mbarrier.wait(ready.index(nxt), ((i + 1) // STAGES) & 1)
    qk_next = warpgroup_mma(q_smem, k_bufs.index(nxt).permute((1, 0)), zero, use_acc=False, is_async=True)
    ks_next = gl.load(k_scales + gl.load(kv_tiles + first + (i + 1) // SUB))
    p, alpha, m_i, l_i = _softmax(qk, m_i, l_i, i, mask_from, kv_tiles, first, ks, row_scale, tile_lengths,
                                  text_len, n_video_tiles, TILE, BLOCK_N, CHAINS, s_layout, p_layout)
    # PV(i - 1) was issued before QK(i + 1): waiting down to one group in flight completes it
    acc = warpgroup_mma_wait(1, deps=(acc,))
    mbarrier.arrive(empty.index((i - 1) % STAGES), count=1)
    acc = acc * gl.convert_layout(alpha, gl.SliceLayout(1, acc.type.layout))[:, None]
    acc = warpgroup_mma(p, v_bufs.index(i % STAGES).permute((1, 0)), acc, is_async=True)
    if DRAIN:
        acc, qk_next = warpgroup_mma_wait(0, deps=(acc, qk_next))
    else:
        qk_next = warpgroup_mma_wait(1, deps=(qk_next,))  # QK(i + 1) done; PV(i) may still run
    return acc, qk_next, ks_next, m_i, l_i


@gluon.jit
def _attend(acc, m_i, l_i, q_smem, k_bufs, v_bufs, ready, empty, n, mask_from, kv_tiles, first, k_scales,
            row_scale, tile_lengths, text_len, n_video_tiles,
            TILE: gl.constexpr, BLOCK_N: gl.constexpr, STAGES: gl.constexpr, PAIRS: gl.constexpr,
            CHAINS: gl.constexpr, s_layout: gl.constexpr, p_layout: gl.constexpr):
    """The key loop, with the scores of sub-tile ``i + 1`` on the tensor cores while sub-tile ``i``'s softmax runs.

    The 16-bit kernel overlaps softmax(i) with PV(i - 1) only, which leaves FP8's twice faster
    products waiting on a longer softmax (P's e4m3 rounding). Here each step (:func:`_step`) issues
    QK(i + 1), computes P(i) meanwhile, waits for PV(i - 1), rescales and issues PV(i): one more score
    tile of registers, nothing else serialized behind the softmax.

    A product still in flight at the loop's back-edge makes ptxas serialize every product of the
    loop (note C7514: it waits for each ``wgmma`` as soon as it is issued). ``PAIRS`` runs the steps
    two per iteration, the second waiting for its PV product too, so that nothing is in flight there
    and the overlap above is real; the pairs' score tiles alternate between two sets of registers.
    At head_dim 128 the three 64 x 128 float32 tiles in flight leave ptxas too few registers for it
    (C7512, a stack frame), so only head_dim 64 runs in pairs (benchmarks/NOTES.md v16).
    """
    ROWS: gl.constexpr = 64
    SUB: gl.constexpr = TILE // BLOCK_N
    zero = gl.zeros([ROWS, BLOCK_N], gl.float32, s_layout)
    if n > 0:
        # each sub-tile's K scale is loaded a step ahead: two dependent loads would stall the softmax
        ks = gl.load(k_scales + gl.load(kv_tiles + first))
        mbarrier.wait(ready.index(0), 0)
        qk = warpgroup_mma(q_smem, k_bufs.index(0).permute((1, 0)), zero, use_acc=False, is_async=True)
        qk = warpgroup_mma_wait(0, deps=(qk,))
        if n == 1:
            p, alpha, m_i, l_i = _softmax(qk, m_i, l_i, 0, mask_from, kv_tiles, first, ks, row_scale,
                                          tile_lengths, text_len, n_video_tiles, TILE, BLOCK_N, CHAINS, s_layout,
                                          p_layout)
            acc = warpgroup_mma(p, v_bufs.index(0).permute((1, 0)), acc, is_async=True)
            acc = warpgroup_mma_wait(0, deps=(acc,))
            mbarrier.arrive(empty.index(0), count=1)
        else:
            # step 0, peeled so that PV is in flight at every step's start (acc is still zero: no rescale)
            mbarrier.wait(ready.index(1 % STAGES), (1 // STAGES) & 1)
            qk_next = warpgroup_mma(q_smem, k_bufs.index(1 % STAGES).permute((1, 0)), zero, use_acc=False,
                                    is_async=True)
            ks_next = gl.load(k_scales + gl.load(kv_tiles + first + 1 // SUB))
            p, alpha, m_i, l_i = _softmax(qk, m_i, l_i, 0, mask_from, kv_tiles, first, ks, row_scale,
                                          tile_lengths, text_len, n_video_tiles, TILE, BLOCK_N, CHAINS, s_layout,
                                          p_layout)
            acc = warpgroup_mma(p, v_bufs.index(0).permute((1, 0)), acc, is_async=True)
            if PAIRS:  # the pairs' loop starts, as it ends, with nothing in flight
                acc, qk = warpgroup_mma_wait(0, deps=(acc, qk_next))
            else:
                qk = warpgroup_mma_wait(1, deps=(qk_next,))
            ks = ks_next
            if PAIRS:
                for j in range(0, (n - 2) // 2):
                    acc, qk, ks, m_i, l_i = _step(acc, qk, ks, m_i, l_i, 1 + 2 * j, False,
                        q_smem, k_bufs, v_bufs, ready, empty, zero, mask_from, kv_tiles, first, k_scales, row_scale,
                        tile_lengths, text_len, n_video_tiles, TILE, BLOCK_N, STAGES, CHAINS, s_layout, p_layout)
                    acc, qk, ks, m_i, l_i = _step(acc, qk, ks, m_i, l_i, 2 + 2 * j, True,
                        q_smem, k_bufs, v_bufs, ready, empty, zero, mask_from, kv_tiles, first, k_scales, row_scale,
                        tile_lengths, text_len, n_video_tiles, TILE, BLOCK_N, STAGES, CHAINS, s_layout, p_layout)
                if n % 2 == 1:
                    acc, qk, ks, m_i, l_i = _step(acc, qk, ks, m_i, l_i, n - 2, True,
                        q_smem, k_bufs, v_bufs, ready, empty, zero, mask_from, kv_tiles, first, k_scales, row_scale,
                        tile_lengths, text_len, n_video_tiles, TILE, BLOCK_N, STAGES, CHAINS, s_layout, p_layout)
            else:
                for i in range(1, n - 1):
                    acc, qk, ks, m_i, l_i = _step(acc, qk, ks, m_i, l_i, i, False,
                        q_smem, k_bufs, v_bufs, ready, empty, zero, mask_from, kv_tiles, first, k_scales, row_scale,
                        tile_lengths, text_len, n_video_tiles, TILE, BLOCK_N, STAGES, CHAINS, s_layout, p_layout)
            last = (n - 1) % STAGES
            p, alpha, m_i, l_i = _softmax(qk, m_i, l_i, n - 1, mask_from, kv_tiles, first, ks, row_scale,
                                          tile_lengths, text_len, n_video_tiles, TILE, BLOCK_N, CHAINS, s_layout,
                                          p_layout)
            acc = warpgroup_mma_wait(0, deps=(acc,))
            mbarrier.arrive(empty.index((n - 2) % STAGES), count=1)
            acc = acc * gl.convert_layout(alpha, gl.SliceLayout(1, acc.type.layout))[:, None]
            acc = warpgroup_mma(p, v_bufs.index(last).permute((1, 0)), acc, is_async=True)
            acc = warpgroup_mma_wait(0, deps=(acc,))
            mbarrier.arrive(empty.index(last), count=1)
    return acc, m_i, l_i


@gluon.jit
def _consumer(Q, O, KS, VS, stride_qb, stride_qh, stride_qn, stride_ob, stride_oh, stride_on,
              work, kv_tiles, row_maps, head_order, tile_lengths, text_lengths, n_work, n_heads,
              n_tokens, n_tiles, n_video_tiles, rows_per_order, video_start, text_start, text_tokens,
              qk_scale, q_smem, k_bufs, v_bufs, ready, empty,
              HALF: gl.constexpr, HEAD_DIM: gl.constexpr, TILE: gl.constexpr, BLOCK_N: gl.constexpr,
              STAGES: gl.constexpr, PAIRS: gl.constexpr, CHAINS: gl.constexpr, GATHER: gl.constexpr,
              HAS_TEXT_LENGTHS: gl.constexpr):
    """One warpgroup: query rows ``HALF * 64 ..`` of the program's tile, quantized here, against its key list."""
    ROWS: gl.constexpr = 64
    s_layout: gl.constexpr = gl.NVMMADistributedLayout(version=[3, 0], warps_per_cta=[4, 1],
                                                       instr_shape=[16, BLOCK_N, 32])
    o_layout: gl.constexpr = gl.NVMMADistributedLayout(version=[3, 0], warps_per_cta=[4, 1],
                                                       instr_shape=[16, HEAD_DIM, 32])
    p_layout: gl.constexpr = gl.DotOperandLayout(operand_index=0, parent=o_layout, k_width=4)
    io_layout: gl.constexpr = gl.BlockedLayout([1, 8], [4, 8], [4, 1], [1, 0])
    b, head, q_tile, first, n_full, n_total = _item(work, n_work)
    k_scales = KS + (b * n_heads + head) * n_tiles
    order, text_len = _order_and_text_len(head_order, head, text_lengths, b, text_tokens, GATHER, HAS_TEXT_LENGTHS)
    q = _load_queries(Q, stride_qb, stride_qh, stride_qn, b, head, q_tile, n_total, order, row_maps, rows_per_order,
                      tile_lengths, n_video_tiles, n_tokens, video_start, text_start, HALF * ROWS, ROWS, HEAD_DIM,
                      TILE, GATHER, io_layout).to(gl.float32)
    q_scale = gl.maximum(gl.max(gl.abs(q), 1), 1e-12) / _FP8_MAX
    q_smem.store((q / q_scale[:, None]).to(gl.float8e4nv))
    fence_async_shared()
    row_scale = gl.convert_layout(q_scale * qk_scale, gl.SliceLayout(1, s_layout))

    m_i = gl.full([ROWS], float("-inf"), gl.float32, gl.SliceLayout(1, s_layout))
    l_i = gl.zeros([ROWS], gl.float32, gl.SliceLayout(1, s_layout))
    acc = gl.zeros([ROWS, HEAD_DIM], gl.float32, o_layout)
    acc, m_i, l_i = _attend(acc, m_i, l_i, q_smem, k_bufs, v_bufs, ready, empty, n_total * (TILE // BLOCK_N),
                            n_full * (TILE // BLOCK_N), kv_tiles, first, k_scales, row_scale, tile_lengths,
                            text_len, n_video_tiles, TILE, BLOCK_N, STAGES, PAIRS, CHAINS, s_layout, p_layout)
    l_i = gl.where(l_i == 0.0, 1.0, l_i)
    offs_d = gl.arange(0, HEAD_DIM, layout=gl.SliceLayout(0, o_layout))
    v_scale = gl.load(VS + (b * n_heads + head) * HEAD_DIM + offs_d) / _P_SCALE
    out = acc * v_scale[None, :] / gl.convert_layout(l_i, gl.SliceLayout(1, o_layout))[:, None]
    rows, row_ok = _query_rows(q_tile, order, row_maps, rows_per_order, tile_lengths, n_video_tiles, n_tokens,
                               video_start, text_start, HALF * ROWS, ROWS, TILE, GATHER, gl.SliceLayout(1, o_layout))
    gl.store(O + b * stride_ob + head * stride_oh + rows[:, None] * stride_on + offs_d[None, :],
             out.to(O.dtype.element_ty), mask=row_ok[:, None])


@gluon.jit
def _sparse_attention_fp8_fwd(
    Q, O, K8, VT8, KS, VS,
    stride_qb, stride_qh, stride_qn, stride_ob, stride_oh, stride_on, stride_kb, stride_kh, stride_vb, stride_vh,
    work, kv_tiles, row_maps, head_order, tile_lengths, text_lengths,
    n_work, n_heads, n_tokens, n_rows, n_tiles, n_video_tiles, video_start, text_start, text_tokens, qk_scale,
    HEAD_DIM: gl.constexpr, TILE: gl.constexpr, BLOCK_N: gl.constexpr, STAGES: gl.constexpr, PAIRS: gl.constexpr,
    CHAINS: gl.constexpr, GATHER: gl.constexpr, HAS_TEXT_LENGTHS: gl.constexpr, CONSUMER_REGS: gl.constexpr,
):
    ROWS: gl.constexpr = 64
    fp8: gl.constexpr = gl.float8e4nv
    k_layout: gl.constexpr = gl.NVMMASharedLayout.get_default_for([BLOCK_N, HEAD_DIM], fp8)
    v_layout: gl.constexpr = gl.NVMMASharedLayout.get_default_for([HEAD_DIM, BLOCK_N], fp8)
    q_layout: gl.constexpr = gl.NVMMASharedLayout.get_default_for([ROWS, HEAD_DIM], fp8)
    k_bufs = gl.allocate_shared_memory(fp8, [STAGES, BLOCK_N, HEAD_DIM], k_layout)
    v_bufs = gl.allocate_shared_memory(fp8, [STAGES, HEAD_DIM, BLOCK_N], v_layout)
    q0 = gl.allocate_shared_memory(fp8, [ROWS, HEAD_DIM], q_layout)
    q1 = gl.allocate_shared_memory(fp8, [ROWS, HEAD_DIM], q_layout)
    ready, empty = _stage_barriers(STAGES)

    LOWER: gl.constexpr = 0
    UPPER: gl.constexpr = 1
    gl.warp_specialize([
        (_consumer, (Q, O, KS, VS, stride_qb, stride_qh, stride_qn, stride_ob, stride_oh, stride_on, work, kv_tiles,
                     row_maps, head_order, tile_lengths, text_lengths, n_work, n_heads, n_tokens, n_tiles,
                     n_video_tiles, n_rows, video_start, text_start, text_tokens, qk_scale, q0, k_bufs, v_bufs,
                     ready, empty, LOWER, HEAD_DIM, TILE, BLOCK_N, STAGES, PAIRS, CHAINS, GATHER,
                     HAS_TEXT_LENGTHS)),
        (_consumer, (Q, O, KS, VS, stride_qb, stride_qh, stride_qn, stride_ob, stride_oh, stride_on, work, kv_tiles,
                     row_maps, head_order, tile_lengths, text_lengths, n_work, n_heads, n_tokens, n_tiles,
                     n_video_tiles, n_rows, video_start, text_start, text_tokens, qk_scale, q1, k_bufs, v_bufs,
                     ready, empty, UPPER, HEAD_DIM, TILE, BLOCK_N, STAGES, PAIRS, CHAINS, GATHER,
                     HAS_TEXT_LENGTHS)),
        (_loader, (K8, VT8, stride_kb, stride_kh, stride_vb, stride_vh, work, kv_tiles, n_work, n_rows,
                   k_bufs, v_bufs, ready, empty, HEAD_DIM, TILE, BLOCK_N, STAGES)),
    ], [4, 1], [CONSUMER_REGS, 24])


def supported(q, k, v, plan, out=None) -> bool:
    """Where the 16-bit Gluon kernel runs, this one does (K and V are copied, so their strides are free)."""
    if q.device.type != "cuda" or torch.cuda.get_device_capability(q.device)[0] != 9 or not gluon_sparse._TRITON_OK:
        return False
    if q.dtype not in (torch.float16, torch.bfloat16) or q.shape[-1] not in (64, 128) or plan.tile_size != 128:
        return False
    return all(x.stride(-1) == 1 for x in (q,) + ((out,) if out is not None else ()))


def fp8_config(head_dim: int) -> dict:
    """Key sub-tile, stages, the paired key loop (:func:`_attend`), the row reductions' chains (:func:`_row_max`)
    and register budgets (the 16-bit kernel's split; stages take half the bytes). Each choice per head_dim is
    the faster one measured on the H200 (benchmarks/NOTES.md v16)."""
    return {"BLOCK_N": 128, "STAGES": 5, "PAIRS": head_dim == 64, "CHAINS": 4 if head_dim == 128 else 1,
            "CONSUMER_REGS": 240, "maxnreg": 168}


def sparse_attention_gluon_fp8(q, k, v, plan, *, scale: float, out: torch.Tensor, text_lengths=None, config=None,
                               quantized=None):
    """Quantize K and V (:func:`.quantize.kernel_kv`) and launch; the call must satisfy :func:`supported`.

    ``quantized``: :func:`.quantize.kernel_kv` of these ``k, v`` already (benchmarks time the kernel
    with and without the quantization).
    """
    batch, heads, n_tokens, head_dim = q.shape
    tensors = plan.device_tensors(q.device)
    cfg = dict(config) if config is not None else fp8_config(head_dim)
    _set_allocator(q.device)
    kq = kernel_kv(k, v, plan) if quantized is None else quantized
    k8, vt8 = kq["k8"], kq["vt8"]
    layout = plan.layout
    has_text_lengths = text_lengths is not None
    n_work = tensors["work"].shape[0]
    _sparse_attention_fp8_fwd[(n_work * batch,)](
        q, out, k8, vt8, kq["k_scale"], kq["v_scale"],
        *q.stride()[:3], *out.stride()[:3], *k8.stride()[:2], *vt8.stride()[:2],
        tensors["work"], tensors["kv_tiles"], tensors["row_maps"], tensors["head_order"], tensors["tile_lengths"],
        text_lengths if has_text_lengths else tensors["tile_lengths"],
        n_work, heads, n_tokens, k8.shape[2], plan.num_tiles, plan.video_tiles, layout.video_start, layout.text_start,
        layout.text_tokens, scale * _LOG2E,
        HEAD_DIM=head_dim, TILE=plan.tile_size, GATHER=plan.has_reordered_heads, HAS_TEXT_LENGTHS=has_text_lengths,
        num_warps=4, **cfg,
    )
    return out
