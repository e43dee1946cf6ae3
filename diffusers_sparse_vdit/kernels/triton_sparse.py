"""Fused block-sparse attention forward in Triton: every head of a call in one launch.

One program computes ``BLOCK_M`` rows (at most 128: a whole query tile of the default size)
of one query tile of one head of one batch item, with an online (flash) softmax over exactly
the key tiles its plan lists: no loop over all tiles with a branch. Two programs share a
multiprocessor (:func:`kernel_config`), so its warp schedulers overlap one program's softmax
with the other's matrix products. Programs come heaviest first (the plan sorts its work list),
so dense text rows and FULL heads start early instead of forming a tail. A SKIP head's programs load nothing
and store zeros.

Rows are found through the plan's kernel order (:mod:`..layout`): tiles of video tokens,
then tiles of text tokens. With MULTI_DIAGONAL heads in the plan (``GATHER``), query rows are
gathered and output rows scattered through the plan's row maps (once per program). Their keys
and values, read once per query tile, come in whole tiles by TMA from a copy of those heads'
K/V in kernel order (:func:`gather_reordered_kv`, one extra pass over 4 x N x D per head:
Hopper's TMA cannot gather rows, and a pointer gather in the key loop cost 8-12%). Without TMA
(the CPU interpreter, unaligned strides) the key loop gathers rows in place instead.

Each query tile's key list has the full video tiles first (no masking in that loop), then
the partial video tile and the text tiles (masked by tile length and by the per-batch
valid text length).
"""

from __future__ import annotations


import torch
import triton
import triton.language as tl

__all__ = ["gather_reordered_kv", "kernel_config", "sparse_attention_triton"]

_LOG2E = 1.4426950408889634


@triton.jit
def _tile_rows(tile, offs, order, row_maps, rows_per_order, n_video_tiles, n_tokens, video_start, text_start,
               TILE: tl.constexpr, GATHER: tl.constexpr):
    """Caller token index of the kernel rows ``offs`` of kernel tile ``tile``."""
    if GATHER:
        rows = tl.load(row_maps + order * rows_per_order + tile * TILE + offs)
    else:
        base = tl.where(tile < n_video_tiles, video_start + tile * TILE, text_start + (tile - n_video_tiles) * TILE)
        rows = tl.minimum(base + offs, n_tokens - 1)  # padding rows of a partial tile read a valid row
    return rows


@triton.jit
def _exp2(x, EXP2: tl.constexpr):
    """2**x for x <= 0 (or -inf) as the probabilities P the PV product takes.

    ``"f32"``: float32 exponentials, P rounded to the inputs' dtype after. ``"bf16x2"``: the
    exponent rounded to bf16 first, then one ``ex2.approx.ftz.bf16x2`` per two scores, whose
    result is already the 16-bit P of the PV product. ptxas still issues one MUFU.EX2.BF16 per
    score (SASS counted in v8), so this saves conversions and registers, not special-function
    throughput; it pays only on long rows (:func:`kernel_config`).
    """
    if EXP2 == "bf16x2":
        p = tl.inline_asm_elementwise("ex2.approx.ftz.bf16x2 $0, $1;", "=r,r", [x.to(tl.bfloat16)],
                                      dtype=tl.bfloat16, is_pure=True, pack=2)
    else:
        p = tl.math.exp2(x)
    return p


@triton.jit
def _attend(acc, m_i, l_i, q, k_src, v_src, stride_kn, stride_kd, stride_vn, stride_vd,
            kv_tiles, first, count, order, row_maps, rows_per_order, tile_lengths, text_len,
            n_video_tiles, n_tokens, video_start, text_start, qk_scale,
            offs_d, d_ok,
            TILE: tl.constexpr, BLOCK_N: tl.constexpr, EVEN_D: tl.constexpr, GATHER: tl.constexpr,
            MASKED: tl.constexpr, IEEE: tl.constexpr, USE_TMA: tl.constexpr, EXP2: tl.constexpr):
    """Online-softmax update over ``count`` key tiles of the list starting at ``first``.

    ``k_src``/``v_src`` are TMA descriptors with ``USE_TMA`` (contiguous tiles of
    frame-major heads), base pointers otherwise.
    """
    SUB: tl.constexpr = TILE // BLOCK_N
    offs_n = tl.arange(0, BLOCK_N)
    for i in range(0, count * SUB):
        tile = tl.load(kv_tiles + first + i // SUB)
        offs = (i % SUB) * BLOCK_N + offs_n
        if USE_TMA:
            # rows past the tensor's end read as zeros and are masked below with the padding
            row0 = tl.where(tile < n_video_tiles, video_start + tile * TILE, text_start + (tile - n_video_tiles) * TILE)
            k = tl.trans(k_src.load([row0 + (i % SUB) * BLOCK_N, 0]))
            v = v_src.load([row0 + (i % SUB) * BLOCK_N, 0])
        else:
            rows = _tile_rows(tile, offs, order, row_maps, rows_per_order, n_video_tiles, n_tokens,
                              video_start, text_start, TILE, GATHER)
            k_ptrs = k_src + rows[None, :] * stride_kn + offs_d[:, None] * stride_kd
            v_ptrs = v_src + rows[:, None] * stride_vn + offs_d[None, :] * stride_vd
            if EVEN_D:
                k = tl.load(k_ptrs)
                v = tl.load(v_ptrs)
            else:
                k = tl.load(k_ptrs, mask=d_ok[:, None], other=0.0)
                v = tl.load(v_ptrs, mask=d_ok[None, :], other=0.0)
        if IEEE:
            qk = tl.dot(q, k, input_precision="ieee")
        else:
            qk = tl.dot(q, k)
        if MASKED:
            valid = tl.load(tile_lengths + tile)
            valid = tl.where(tile >= n_video_tiles, tl.minimum(valid, text_len - (tile - n_video_tiles) * TILE), valid)
            qk = tl.where((offs < valid)[None, :], qk, float("-inf"))
            m_new = tl.maximum(m_i, tl.max(qk, 1) * qk_scale)
            m_new = tl.where(m_new == float("-inf"), 0.0, m_new)  # a tile with no valid key leaves the row as it was
        else:
            m_new = tl.maximum(m_i, tl.max(qk, 1) * qk_scale)
        p = _exp2(qk * qk_scale - m_new[:, None], EXP2)
        alpha = tl.math.exp2(m_i - m_new)
        l_i = l_i * alpha + tl.sum(p.to(tl.float32), 1)
        acc = acc * alpha[:, None]
        if IEEE:
            acc = tl.dot(p.to(v.dtype), v, acc, input_precision="ieee")
        else:
            acc = tl.dot(p.to(v.dtype), v, acc)
        m_i = m_new
    return acc, m_i, l_i


@triton.jit
def _attend_row(q, k_base, v_base, stride_kn, stride_kd, stride_vn, stride_vd,
                kv_tiles, first, n_full, n_total, order, row_maps, rows_per_order, tile_lengths, text_len,
                n_video_tiles, n_tokens, video_start, text_start, qk_scale, offs_d, d_ok,
                HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr, TILE: tl.constexpr, BLOCK_M: tl.constexpr,
                BLOCK_N: tl.constexpr, GATHER: tl.constexpr, IEEE: tl.constexpr, USE_TMA: tl.constexpr,
                EXP2: tl.constexpr):
    """One query tile's whole key list: the full tiles unmasked, then the partial and text tiles masked."""
    EVEN_D: tl.constexpr = HEAD_DIM == BLOCK_D
    m_i = tl.full([BLOCK_M], float("-inf"), tl.float32)
    l_i = tl.zeros([BLOCK_M], tl.float32)
    acc = tl.zeros([BLOCK_M, BLOCK_D], tl.float32)
    k_src = k_base
    v_src = v_base
    if USE_TMA:
        # one descriptor per program, built outside the key loop
        k_src = tl.make_tensor_descriptor(k_base, [n_tokens, HEAD_DIM], [stride_kn, 1], [BLOCK_N, HEAD_DIM])
        v_src = tl.make_tensor_descriptor(v_base, [n_tokens, HEAD_DIM], [stride_vn, 1], [BLOCK_N, HEAD_DIM])
    acc, m_i, l_i = _attend(acc, m_i, l_i, q, k_src, v_src, stride_kn, stride_kd, stride_vn, stride_vd,
                            kv_tiles, first, n_full, order, row_maps, rows_per_order, tile_lengths, text_len,
                            n_video_tiles, n_tokens, video_start, text_start, qk_scale, offs_d, d_ok,
                            TILE, BLOCK_N, EVEN_D, GATHER, False, IEEE, USE_TMA, EXP2)
    acc, m_i, l_i = _attend(acc, m_i, l_i, q, k_src, v_src, stride_kn, stride_kd, stride_vn, stride_vd,
                            kv_tiles, first + n_full, n_total - n_full, order, row_maps, rows_per_order,
                            tile_lengths, text_len, n_video_tiles, n_tokens, video_start, text_start, qk_scale,
                            offs_d, d_ok, TILE, BLOCK_N, EVEN_D, GATHER, True, IEEE, USE_TMA, EXP2)
    return acc, m_i, l_i


@triton.jit
def _sparse_attention_fwd(
    Q, K, V, O, KP, VP,
    stride_qb, stride_qh, stride_qn, stride_qd,
    stride_kb, stride_kh, stride_kn, stride_kd,
    stride_vb, stride_vh, stride_vn, stride_vd,
    stride_ob, stride_oh, stride_on, stride_od,
    stride_pb, stride_ph, stride_pn,
    work, kv_tiles, row_maps, head_order, head_slot, tile_lengths, text_lengths,
    n_work, n_tokens, n_video_tiles, rows_per_order, video_start, text_start, text_tokens, qk_scale,
    HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr, TILE: tl.constexpr, BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr, GATHER: tl.constexpr, HAS_TEXT_LENGTHS: tl.constexpr, IEEE: tl.constexpr,
    USE_TMA: tl.constexpr, EXP2: tl.constexpr,
):
    SPLIT: tl.constexpr = TILE // BLOCK_M
    pid = tl.program_id(0)
    # batch outermost: programs in flight share one batch item's K/V in L2; the parts of one
    # query tile are neighbours, so they run together and read each key tile once from HBM
    b = pid // (n_work * SPLIT)
    item = (pid // SPLIT) % n_work
    part = pid % SPLIT
    head = tl.load(work + item * 5)
    q_tile = tl.load(work + item * 5 + 1)
    first = tl.load(work + item * 5 + 2)
    n_full = tl.load(work + item * 5 + 3)
    n_total = tl.load(work + item * 5 + 4)
    if GATHER:
        order = tl.load(head_order + head)
    else:
        order = 0
    if HAS_TEXT_LENGTHS:
        text_len = tl.load(text_lengths + b)
    else:
        text_len = text_tokens

    offs_m = part * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_d = tl.arange(0, BLOCK_D)
    d_ok = offs_d < HEAD_DIM
    rows_q = _tile_rows(q_tile, offs_m, order, row_maps, rows_per_order, n_video_tiles, n_tokens,
                        video_start, text_start, TILE, GATHER)
    row_ok = offs_m < tl.load(tile_lengths + q_tile)

    # A SKIP head has no key tiles: its Q load is masked off entirely and it stores zeros.
    q_mask = (row_ok & (offs_m < n_total * TILE))[:, None] & d_ok[None, :]
    q = tl.load(Q + b * stride_qb + head * stride_qh + rows_q[:, None] * stride_qn + offs_d[None, :] * stride_qd,
                mask=q_mask, other=0.0)

    k_base = K + b * stride_kb + head * stride_kh
    v_base = V + b * stride_vb + head * stride_vh
    kv_rows = n_tokens
    kv_video_start = video_start
    kv_text_start = text_start
    if USE_TMA and GATHER:
        # a token-major head reads its K/V copy in kernel order: tile t is rows t*TILE.. of it
        token_major = order != 0
        if token_major:
            slot = tl.load(head_slot + head)
            k_base = KP + b * stride_pb + slot * stride_ph
            v_base = VP + b * stride_pb + slot * stride_ph
        kv_rows = tl.where(token_major, rows_per_order, n_tokens)
        kv_video_start = tl.where(token_major, 0, video_start)
        kv_text_start = tl.where(token_major, n_video_tiles * TILE, text_start)
        stride_kn = tl.where(token_major, stride_pn, stride_kn)
        stride_vn = tl.where(token_major, stride_pn, stride_vn)
    acc, m_i, l_i = _attend_row(q, k_base, v_base, stride_kn, stride_kd, stride_vn, stride_vd,
                                kv_tiles, first, n_full, n_total, order, row_maps, rows_per_order,
                                tile_lengths, text_len, n_video_tiles, kv_rows, kv_video_start, kv_text_start,
                                qk_scale, offs_d, d_ok, HEAD_DIM, BLOCK_D, TILE, BLOCK_M, BLOCK_N,
                                GATHER and not USE_TMA, IEEE, USE_TMA, EXP2)
    l_i = tl.where(l_i == 0.0, 1.0, l_i)  # SKIP rows: acc is 0, so the output is 0
    out = acc / l_i[:, None]
    o_ptrs = O + b * stride_ob + head * stride_oh + rows_q[:, None] * stride_on + offs_d[None, :] * stride_od
    tl.store(o_ptrs, out.to(O.dtype.element_ty), mask=row_ok[:, None] & d_ok[None, :])


@triton.jit
def _gather_rows_kernel(K, V, KP, VP, heads, rows,
                        stride_kb, stride_kh, stride_kn, stride_kd, stride_vb, stride_vh, stride_vn, stride_vd,
                        stride_pb, stride_ph, stride_pn, n_rows,
                        HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_R: tl.constexpr):
    pid = tl.program_id(0)
    slot = tl.program_id(1)
    b = tl.program_id(2)
    head = tl.load(heads + slot)
    offs_r = pid * BLOCK_R + tl.arange(0, BLOCK_R)
    offs_d = tl.arange(0, BLOCK_D)
    mask = (offs_r < n_rows)[:, None] & (offs_d < HEAD_DIM)[None, :]
    src = tl.load(rows + offs_r, mask=offs_r < n_rows, other=0)
    dst = b * stride_pb + slot * stride_ph + offs_r[:, None] * stride_pn + offs_d[None, :]
    k = tl.load(K + b * stride_kb + head * stride_kh + src[:, None] * stride_kn + offs_d[None, :] * stride_kd, mask=mask)
    tl.store(KP + dst, k, mask=mask)
    v = tl.load(V + b * stride_vb + head * stride_vh + src[:, None] * stride_vn + offs_d[None, :] * stride_vd, mask=mask)
    tl.store(VP + dst, v, mask=mask)


def gather_reordered_kv(k, v, plan, tensors=None):
    """K and V of the plan's token-major heads in kernel order: two ``(B, H_r, R, D)`` tensors.

    Row ``r`` of slot ``i`` is caller token ``row_maps[1][r]`` of head ``reordered_heads[i]``
    (padding rows of a partial tile repeat a valid row; the kernel masks them).
    """
    tensors = tensors or plan.device_tensors(k.device)
    heads, rows = tensors["reordered_heads"], tensors["row_maps"][1]
    batch, _, _, head_dim = k.shape
    kp = torch.empty(batch, len(heads), rows.numel(), head_dim, device=k.device, dtype=k.dtype)
    vp = torch.empty_like(kp)
    if len(heads):
        block_r = 64
        grid = (triton.cdiv(rows.numel(), block_r), len(heads), batch)
        _gather_rows_kernel[grid](k, v, kp, vp, heads, rows, *k.stride(), *v.stride(), *kp.stride()[:3], rows.numel(),
                                  HEAD_DIM=head_dim, BLOCK_D=triton.next_power_of_2(head_dim), BLOCK_R=block_r)
    return kp, vp


# From this many tokens on, head_dim-128 programs compute P with packed bf16 exponentials (v8)
LONG_SEQUENCE_TOKENS = 65536


def kernel_config(head_dim: int, tile_size: int, device: torch.device, n_tokens: int = 0) -> dict:
    """Launch configuration: query rows per program, key sub-tile, warps, pipeline stages, TMA loads
    and the exponential's form (:func:`_exp2`).

    The winners of the H200 sweeps in ``benchmarks/results/`` (notes in ``benchmarks/NOTES.md``).
    At head_dim 128, 64-key sub-tiles, 2 stages and at most 128 registers a thread fit two
    8-warp programs on one multiprocessor, so one's softmax overlaps the other's matrix
    products (v6: 9-18% faster than one program of 128-key sub-tiles and 3 stages); at
    head_dim 64 two fit by shared memory alone. At head_dim 128 and ``n_tokens`` of at least
    :data:`LONG_SEQUENCE_TOKENS`, packed bf16 exponentials made all-FULL plans 4-6% faster
    (Wan-14B 720p, HunyuanVideo 720p; the L2 hit rate of those long K/V rows rose from 95% to
    99.5%), but short rows (Wan-1.3B 480p, sparse plans) 1-2% slower. Under the CPU interpreter
    a whole tile is one step.
    """
    if device.type != "cuda":
        return {"BLOCK_M": tile_size, "BLOCK_N": tile_size, "num_warps": 4, "num_stages": 1, "USE_TMA": False}
    # larger plan tiles are split over programs of 128 rows (more would not fit the registers)
    block_m = min(tile_size, 128)
    if head_dim <= 64:
        return {"BLOCK_M": block_m, "BLOCK_N": min(tile_size, 128), "num_warps": 4, "num_stages": 2, "USE_TMA": True}
    return {"BLOCK_M": block_m, "BLOCK_N": min(tile_size, 64), "num_warps": 8, "num_stages": 2, "USE_TMA": True,
            "maxnreg": 128, "EXP2": "bf16x2" if n_tokens >= LONG_SEQUENCE_TOKENS else "f32"}


def _tma_ok(*tensors) -> bool:
    """TMA needs 16-byte aligned bases and row strides, a contiguous last dim and no head_dim padding."""
    for x in tensors:
        if x.stride(-1) != 1 or x.data_ptr() % 16 or any(st * x.element_size() % 16 for st in x.stride()[:-1]):
            return False
        if x.shape[-1] not in (16, 32, 64, 128, 256):
            return False
    return True


_allocator_device = None


def _set_allocator(device: torch.device):
    # device-side TMA descriptors need scratch memory from the caller's allocator
    global _allocator_device
    if _allocator_device != device.type:
        triton.set_allocator(lambda size, align, stream: torch.empty(size, dtype=torch.int8, device=device.type))
        _allocator_device = device.type


def sparse_attention_triton(q, k, v, plan, *, scale: float, out: torch.Tensor, text_lengths=None, config=None):
    """Launch the kernel; ``q, k, v, out`` are validated (B, H, N, D) tensors, any strides."""
    batch, heads, n_tokens, head_dim = q.shape
    tensors = plan.device_tensors(q.device)
    # a given config replaces the default whole (merging would leak e.g. the default's maxnreg into it)
    cfg = dict(config) if config is not None else kernel_config(head_dim, plan.tile_size, q.device, n_tokens)
    cfg.setdefault("USE_TMA", False)
    cfg.setdefault("EXP2", "f32")
    if cfg["EXP2"] not in ("f32", "bf16x2"):
        raise ValueError(f"EXP2={cfg['EXP2']!r} must be 'f32' or 'bf16x2'")
    if q.dtype == torch.float32 or q.device.type != "cuda":
        cfg["EXP2"] = "f32"  # packed bf16 exponentials: PTX for the GPU, and too coarse for float32
    block_m = cfg.pop("BLOCK_M", plan.tile_size)
    block_n = cfg.pop("BLOCK_N", plan.tile_size)
    for name, block in (("BLOCK_M", block_m), ("BLOCK_N", block_n)):
        if plan.tile_size % block or block < 16:
            raise ValueError(f"{name}={block} must be at least 16 and divide the plan's tile size {plan.tile_size}")
    # TMA loads whole key tiles; token-major heads read theirs from a K/V copy in kernel order
    cfg["USE_TMA"] = bool(cfg["USE_TMA"]) and _tma_ok(k, v)
    kp = vp = k  # read only by token-major heads on the TMA path
    if cfg["USE_TMA"]:
        _set_allocator(q.device)
        if plan.has_reordered_heads:
            kp, vp = gather_reordered_kv(k, v, plan, tensors)
    layout = plan.layout
    has_text_lengths = text_lengths is not None
    n_work = tensors["work"].shape[0]
    grid = (n_work * (plan.tile_size // block_m) * batch,)
    _sparse_attention_fwd[grid](
        q, k, v, out, kp, vp,
        *q.stride(), *k.stride(), *v.stride(), *out.stride(), *kp.stride()[:3],
        tensors["work"], tensors["kv_tiles"], tensors["row_maps"], tensors["head_order"], tensors["head_slot"],
        tensors["tile_lengths"],
        text_lengths if has_text_lengths else tensors["tile_lengths"],
        n_work, n_tokens, plan.video_tiles, tensors["row_maps"].shape[1], layout.video_start, layout.text_start,
        layout.text_tokens, scale * _LOG2E,
        HEAD_DIM=head_dim, BLOCK_D=max(16, triton.next_power_of_2(head_dim)), TILE=plan.tile_size,
        BLOCK_M=block_m, BLOCK_N=block_n,
        GATHER=plan.has_reordered_heads, HAS_TEXT_LENGTHS=has_text_lengths, IEEE=q.dtype == torch.float32,
        **cfg,
    )
    return out
