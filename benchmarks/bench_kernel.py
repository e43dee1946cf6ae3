"""Kernel benchmark: our block-sparse kernels vs the fastest dense kernels, FA4 block-sparse and FlexAttention.

On the model shapes of DESIGN §5 (batch 1, bf16), for plans of tile density about 1, 0.5,
0.25 and 0.1 per mode and a mixed paper-like layer, in one run:

* checks bf16 results against fp32 dense-mask SDPA on sampled query tiles first;
* times dense cuDNN and FLASH SDPA, FA3 (``fa3_fwd_interface``) and FA4 dense (``flash_attn.cute``);
  FA4 block-sparse and FlexAttention (compiled) on our identical tile lists (inputs pre-gathered
  into the kernel order, so only their attention call is timed); ours (Gluon and Triton);
  a peer that is not importable gets a "not installed" row;
* prints a table (ms; TFLOP/s on computed tiles; speedup over the fastest dense kernel of the
  run; fraction of ideal = that speedup x FLOP density) and writes JSON.

Inputs live in diffusers' (B, N, H, D) memory layout and are passed as (B, H, N, D) views,
as the processors do.

    python benchmarks/bench_kernel.py --out benchmarks/results/kernel_h100.json
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import statistics
import sys
import time
from collections import Counter
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from diffusers_sparse_vdit import Mode, ModeSpec, TokenLayout, build_plan, sparse_attention  # noqa: E402
from diffusers_sparse_vdit.plan import spec_density  # noqa: E402
from diffusers_sparse_vdit.kernels.attention import gluon_supported  # noqa: E402
from diffusers_sparse_vdit.kernels.check import sampled_error  # noqa: E402
from diffusers_sparse_vdit.kernels.fa4 import fa4_inputs, fa4_tensors, fa4_unavailable_reason  # noqa: E402
from diffusers_sparse_vdit.kernels.flex import compiled_flex_attention, flex_block_mask, flex_inputs  # noqa: E402
from diffusers_sparse_vdit.kernels.triton_sparse import kernel_config, sparse_attention_triton  # noqa: E402

SHAPES = {
    # name: (heads, head_dim, layout) -- DESIGN §5
    "wan2.1-1.3b-480p": (12, 128, TokenLayout(21, 30, 52)),
    "cogvideox1.5-768p": (48, 64, TokenLayout(11, 48, 85, text_tokens=226, text_position="before")),
    "hunyuanvideo-720p": (24, 128, TokenLayout(33, 45, 80, text_tokens=256, text_position="after")),
    "wan2.1-14b-720p": (40, 128, TokenLayout(21, 45, 80)),
}
CONFIGS = {
    # launch configs swept with --sweep, by head_dim class. v2 swept warp specialization too (no gain
    # at hd 128, a Triton 3.6 compiler crash at hd 64); v6 swept query tiles split over 4-warp
    # programs (BLOCK_M 64: 25-85% slower at hd 128, 10-20% at hd 64), 32-key sub-tiles and tighter
    # register caps (all slower), v7 a lazy softmax rescale (10-17% slower; NOTES.md). maxnreg
    # caps registers so that 2 programs of 8 warps share a multiprocessor at hd 128. v8 swept packed
    # 16-bit exponentials (EXP2; f16x2 lost to bf16x2 everywhere, bf16x2 wins on long rows at hd 128),
    # every other wave of programs walking its key list backwards (+-1-2%) and warp specialization
    # again (no gain or a compiler failure); the last two were dropped.
    128: [
        {"BLOCK_M": 128, "BLOCK_N": 64, "num_warps": 8, "num_stages": 2, "USE_TMA": True, "maxnreg": 128, "EXP2": x}
        for x in ("f32", "bf16x2")
    ],
    64: [
        {"BLOCK_M": 128, "BLOCK_N": 128, "num_warps": 4, "num_stages": 2, "USE_TMA": True, "EXP2": x}
        for x in ("f32", "bf16x2")
    ],
}
SWEEP_PLANS = ("FULL@1.0", "DIAGONAL@0.1", "MULTI_DIAGONAL@0.25")


# GPU time is what a pipeline pays: its host thread enqueues layers ahead of the GPU. So each rep
# starts behind a short GPU sleep that covers the host's launch work, and the host time of a
# call is recorded beside it (it matters only if it exceeds the GPU time).
_SLEEP_CYCLES = 4_000_000  # ~2 ms at H100/H200 clocks, more than any call's host work


BUDGET_MS = 1500.0  # per timing; --budget-ms lowers it for a quick run


def time_ms(fn, min_reps=5, budget_ms=None, host=None) -> float:
    """Median GPU time (CUDA events) of ``fn`` after warm-up, host launch work hidden.

    With ``host`` (a list), the median host time per call in ms is appended to it.
    """
    fn()
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    fn()
    torch.cuda.synchronize()
    est = (time.perf_counter() - t0) * 1e3
    reps = int(max(min_reps, min(100, (budget_ms or BUDGET_MS) / max(est, 1e-3))))
    times, host_ms = [], []
    for _ in range(reps):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        torch.cuda._sleep(_SLEEP_CYCLES)
        start.record()
        t0 = time.perf_counter()
        fn()
        host_ms.append((time.perf_counter() - t0) * 1e3)
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end))
    if host is not None:
        host.append(statistics.median(host_ms))
    return statistics.median(times)


def spec_for_tile_density(mode: Mode, target: float, layout: TokenLayout, tile: int) -> ModeSpec:
    """The knob of ``mode`` whose tile density is closest to ``target`` (bisection; density grows with the knob)."""
    nvt = layout.video_tiles(tile)

    def make(x: int) -> ModeSpec:
        if mode in (Mode.DIAGONAL, Mode.MULTI_DIAGONAL):
            return ModeSpec(mode, width=x * tile / layout.frame_tokens)
        return ModeSpec.vertical_stripe(x) if x else ModeSpec(mode, stripes=())

    def density(x: int) -> float:
        return spec_density(make(x), layout, tile)[1]

    lo, hi = 0, nvt
    while hi - lo > 1:
        mid = (lo + hi) // 2
        lo, hi = (mid, hi) if density(mid) < target else (lo, mid)
    return make(min((lo, hi), key=lambda x: abs(density(x) - target)))


def mixed_specs(heads: int, layout: TokenLayout, tile: int, density: float = 0.25) -> list[ModeSpec]:
    """A paper-like layer: ~30% FULL, 30% DIAGONAL, 20% MULTI_DIAGONAL, 15% VERTICAL_STRIPE, 5% SKIP."""
    n_skip = max(1, round(0.05 * heads))
    counts = {Mode.DIAGONAL: round(0.30 * heads), Mode.MULTI_DIAGONAL: round(0.20 * heads), Mode.VERTICAL_STRIPE: round(0.15 * heads)}
    specs = [ModeSpec.full()] * (heads - n_skip - sum(counts.values())) + [ModeSpec.skip()] * n_skip
    for mode, n in counts.items():
        specs += [spec_for_tile_density(mode, 0.1 if mode is Mode.VERTICAL_STRIPE else density, layout, tile)] * n
    # interleave so heads of one mode are not neighbours (as in a real map)
    return [specs[(i * 7) % heads] for i in range(heads)] if math.gcd(7, heads) == 1 else specs


def run_ours(q, k, v, plan, out, config=None):
    """The public entry point (what the processors call); a launch config bypasses its checks."""
    if config is None:
        return sparse_attention(q, k, v, plan, out=out)
    return sparse_attention_triton(q, k, v, plan, scale=q.shape[-1] ** -0.5, out=out, config=config)


def mixed_parts(q, k, v, plan, t_fused, config) -> dict:
    """The mixed layer's fused launch against its heads run mode by mode (one launch per mode).

    Each mode's heads are copied out of q/k/v (index_select) and get a plan of their own; the sum
    of those times is what the layer would cost without head fusion.
    """
    parts = {}
    for mode in Mode:
        heads = [h for h, s in enumerate(plan.specs) if s.mode is mode]
        if not heads or mode is Mode.SKIP:
            continue
        idx = torch.tensor(heads, device=q.device)
        qs, ks, vs = (x.index_select(1, idx) for x in (q, k, v))
        sub = build_plan([plan.specs[h] for h in heads], plan.layout, plan.tile_size)
        o = torch.empty_like(qs)
        parts[mode.name] = time_ms(lambda: run_ours(qs, ks, vs, sub, o, config))
    total = sum(parts.values())
    print(f"  MIXED fused {t_fused:.2f} ms vs mode by mode {total:.2f} ms ({parts})", flush=True)
    return {"ms": total, "parts_ms": parts, "fused_ms": t_fused, "fused_over_parts": t_fused / total}


def dense_peers(q, k, v) -> dict:
    """The dense peers beyond SDPA, as zero-argument calls on pre-laid-out inputs; None where not installed."""
    peers = {}
    qb, kb, vb = (x.transpose(1, 2).contiguous() for x in (q, k, v))  # the (B, N, H, D) both take
    try:
        from fa3_fwd_interface import flash_attn_func as fa3

        peers["fa3"] = lambda: fa3(qb, kb, vb)
    except ImportError:
        peers["fa3"] = None
    if fa4_unavailable_reason(q.device) is None:
        from flash_attn.cute.interface import _flash_attn_fwd

        peers["fa4-dense"] = lambda: _flash_attn_fwd(qb, kb, vb)
    else:
        peers["fa4-dense"] = None
    return peers


def fa4_sparse_call(q, k, v, plan):
    """FA4's block-sparse kernel on the plan's own tile lists, inputs pre-gathered: the attention call alone."""
    from flash_attn.cute.block_sparsity import BlockSparseTensorsTorch
    from flash_attn.cute.interface import _flash_attn_fwd

    from diffusers_sparse_vdit.kernels.fa4 import _key_mask_mod

    t = fa4_tensors(plan, q.shape[0], q.device)
    qp, kp, vp = fa4_inputs(plan, q, k, v)
    blocks = BlockSparseTensorsTorch(mask_block_cnt=t.mask_block_cnt, mask_block_idx=t.mask_block_idx,
                                     full_block_cnt=t.full_block_cnt, full_block_idx=t.full_block_idx,
                                     block_size=(plan.tile_size, plan.tile_size))
    masked = bool(plan.tile_lengths.min() < plan.tile_size)
    kwargs = {"mask_mod": _key_mask_mod(), "aux_tensors": [t.key_ok]} if masked else {}
    return lambda: _flash_attn_fwd(qp, kp, vp, block_sparse_tensors=blocks, **kwargs)


def bench_shape(name, heads, head_dim, layout, densities, args, rows):
    from torch.nn.attention import SDPBackend, sdpa_kernel
    tile = 128
    n = layout.num_tokens
    dev = torch.device("cuda")

    def fresh():
        return torch.randn(1, n, heads, head_dim, device=dev, dtype=torch.bfloat16).transpose(1, 2)

    q, k, v = fresh(), fresh(), fresh()
    dense_flops = 4 * heads * n * n * head_dim
    base = {"shape": name, "heads": heads, "head_dim": head_dim, "tokens": n, "layout": str(layout)}

    dense, dense_host = {}, {}
    for backend in ("CUDNN_ATTENTION", "FLASH_ATTENTION"):
        try:
            with sdpa_kernel(getattr(SDPBackend, backend)):
                host = []
                dense[backend] = time_ms(lambda: F.scaled_dot_product_attention(q, k, v), host=host)
                dense_host[backend] = host[0]
        except RuntimeError as e:
            print(f"  {backend} unavailable: {e}", flush=True)
    dense_impl = {backend: f"sdpa-{backend.split('_')[0].lower()}" for backend in dense}
    for name, fn in dense_peers(q, k, v).items():
        if fn is None:
            rows.append({**base, "impl": name, "plan": "dense", "status": "not installed"})
            print(f"  {name}: not installed", flush=True)
            continue
        host = []
        dense[name] = time_ms(fn, host=host)
        dense_host[name], dense_impl[name] = host[0], name
    # every speedup and fraction of ideal is against the fastest dense kernel of this run
    best_dense = min(dense, key=dense.get)
    t_best = dense[best_dense]
    base = {**base, "baseline": dense_impl[best_dense], "baseline_ms": t_best}
    for backend, t in dense.items():
        rows.append({**base, "impl": dense_impl[backend], "plan": "dense", "density": 1.0,
                     "tile_density": 1.0, "ms": t, "host_ms": dense_host[backend], "tflops": dense_flops / t / 1e9,
                     "speedup": t_best / t, "fraction_of_ideal": t_best / t})
        print(f"  dense {dense_impl[backend]}: {t:.2f} ms ({dense_flops / t / 1e9:.0f} TFLOP/s)", flush=True)
    print(f"  baseline (fastest dense): {dense_impl[best_dense]}", flush=True)

    # cuDNN on the same work per query row as a plan of density d: all N queries against d x N
    # keys. How its own efficiency holds up on short rows bounds what "0.9 / density" can mean.
    if "CUDNN_ATTENTION" in dense:
        for d in densities:
            if d < 1:
                n_kv = round(d * n)
                ks, vs = k[:, :, :n_kv], v[:, :, :n_kv]
                with sdpa_kernel(SDPBackend.CUDNN_ATTENTION):
                    t = time_ms(lambda: F.scaled_dot_product_attention(q, ks, vs))
                share = n_kv / n
                fraction = t_best / t * share
                rows.append({**base, "impl": "sdpa-cudnn-equal-work", "plan": f"kv={n_kv}", "density": share,
                             "tile_density": share, "ms": t, "tflops": dense_flops * share / t / 1e9,
                             "speedup": t_best / t, "fraction_of_ideal": fraction})
                print(f"  cuDNN on {n_kv} keys (density {share:.2f}): {t:.2f} ms, {fraction:.2f} of ideal", flush=True)

    plans = {"FULL@1.0": build_plan([ModeSpec.full()] * heads, layout, tile)}
    for mode in (Mode.DIAGONAL, Mode.MULTI_DIAGONAL, Mode.VERTICAL_STRIPE):
        for d in densities:
            if d < 1:
                plans[f"{mode.name}@{d}"] = build_plan([spec_for_tile_density(mode, d, layout, tile)] * heads, layout, tile)
    plans["MIXED"] = build_plan(mixed_specs(heads, layout, tile), layout, tile)

    # correctness first: bf16 against fp32 on a sample, and all-FULL against cuDNN
    out = torch.full_like(q, float("nan"))
    sparse_attention(q, k, v, plans["MIXED"], out=out)
    err_mixed = sampled_error(q, k, v, plans["MIXED"], out)
    with sdpa_kernel(SDPBackend.CUDNN_ATTENTION if "CUDNN_ATTENTION" in dense else SDPBackend.FLASH_ATTENTION):
        ref = F.scaled_dot_product_attention(q, k, v).float()
    ours_full = sparse_attention(q, k, v, plans["FULL@1.0"]).float()
    err_full = ((ours_full - ref).norm() / ref.norm()).item()
    print(f"  check: mixed vs fp32 reference rel err {err_mixed:.2e}; all-FULL vs dense SDPA {err_full:.2e}", flush=True)
    assert err_mixed < 1e-2 and err_full < 1e-2, "bf16 results off: not timing a wrong kernel"
    base_checks = {"check_mixed_rel_err": err_mixed, "check_full_rel_err": err_full}

    # launch-config sweep on a few plans; the best (least mean time relative to each plan's
    # fastest config) is used for the rest
    best = None
    if args.sweep:
        sweep = {}
        keys = [key for key in SWEEP_PLANS if key in plans]
        for config in CONFIGS[128 if head_dim > 64 else 64]:
            try:
                o = torch.full_like(q, float("nan"))
                run_ours(q, k, v, plans["MIXED"], o, config)
                err = sampled_error(q, k, v, plans["MIXED"], o)
                if not err < 1e-2:
                    raise AssertionError(f"mixed plan rel err {err:.2e}: wrong results")
                ts = []
                for key in keys:
                    o = torch.empty_like(q)
                    ts.append(time_ms(lambda: run_ours(q, k, v, plans[key], o, config), budget_ms=600))
                sweep[json.dumps(config)] = ts
                print(f"  config {config}: " + ", ".join(f"{key} {t:.2f} ms" for key, t in zip(keys, ts)), flush=True)
            except Exception as e:  # out of shared memory, registers etc.
                print(f"  config {config} failed: {type(e).__name__}: {str(e)[:160]}", flush=True)
        fastest = [min(ts[i] for ts in sweep.values()) for i in range(len(keys))]
        best_key = min(sweep, key=lambda c: sum(t / f for t, f in zip(sweep[c], fastest)))
        best = json.loads(best_key)
        rows.append({**base, "impl": "sweep", "plan": "config-sweep", "plans": keys, "results": sweep,
                     "best": best, "default": kernel_config(head_dim, tile, dev, n)})
        print(f"  best config: {best}", flush=True)

    compiled_flex = compiled_flex_attention("cuda")
    fa4_ready = fa4_unavailable_reason(dev)
    if fa4_ready is None:  # correctness of the FA4 path on our lists before timing it
        out = torch.full_like(q, float("nan"))
        sparse_attention(q, k, v, plans["MIXED"], backend="fa4", out=out)
        err_fa4 = sampled_error(q, k, v, plans["MIXED"], out)
        print(f"  check: FA4 block-sparse mixed plan vs fp32 reference rel err {err_fa4:.2e}", flush=True)
        assert err_fa4 < 1e-2, "FA4 block-sparse results off: not timing a wrong call"
    for key, plan in plans.items():
        density = plan.flops(head_dim) / dense_flops
        o = torch.empty_like(q)
        host = []
        t_ours = time_ms(lambda: run_ours(q, k, v, plan, o, best), host=host)
        entry = {**base, **base_checks, "plan": key, "density": density, "tile_density": plan.tile_density,
                 "modes": plan.summary()}
        kernel = "gluon" if best is None and gluon_supported(q, k, v, plan) else "triton"
        rows.append({**entry, "impl": "ours", "kernel": kernel, "ms": t_ours, "host_ms": host[0],
                     "tflops": plan.flops(head_dim) / t_ours / 1e9, "speedup": t_best / t_ours,
                     "fraction_of_ideal": t_best / t_ours * density, "config": best})
        if best is None:  # the single-loop Triton kernel too, where "auto" takes the Gluon one
            o_t = torch.empty_like(q)
            t_triton = time_ms(lambda: sparse_attention(q, k, v, plan, backend="triton", out=o_t))
            rows.append({**entry, "impl": "ours-triton", "ms": t_triton, "tflops": plan.flops(head_dim) / t_triton / 1e9,
                         "speedup": t_best / t_triton, "fraction_of_ideal": t_best / t_triton * density})
            print(f"  {key:24s} single-loop Triton kernel {t_triton:.2f} ms, {t_best / t_triton * density:.2f} of ideal",
                  flush=True)
        if key == "MIXED":
            parts = mixed_parts(q, k, v, plan, t_ours, best)
            rows.append({**entry, **parts, "impl": "ours-by-mode", "tflops": plan.flops(head_dim) / parts["ms"] / 1e9,
                         "speedup": t_best / parts["ms"], "fraction_of_ideal": t_best / parts["ms"] * density})
        t_flex = None
        if not args.no_flex:
            try:
                qf, kf, vf = flex_inputs(plan, q, k, v)
                mask = flex_block_mask(plan, 1, dev)
                t_flex = time_ms(lambda: compiled_flex(qf, kf, vf, block_mask=mask))
                rows.append({**entry, "impl": "flex", "ms": t_flex, "tflops": plan.flops(head_dim) / t_flex / 1e9,
                             "speedup": t_best / t_flex, "fraction_of_ideal": t_best / t_flex * density})
                del qf, kf, vf, mask
            except Exception as e:
                print(f"  flex failed on {key}: {type(e).__name__}: {str(e)[:200]}", flush=True)
        t_fa4 = None
        if fa4_ready is None:
            try:
                t_fa4 = time_ms(fa4_sparse_call(q, k, v, plan))
                rows.append({**entry, "impl": "fa4-sparse", "ms": t_fa4, "tflops": plan.flops(head_dim) / t_fa4 / 1e9,
                             "speedup": t_best / t_fa4, "fraction_of_ideal": t_best / t_fa4 * density,
                             "ours_over_fa4": t_fa4 / t_ours})
            except Exception as e:
                print(f"  fa4 block-sparse failed on {key}: {type(e).__name__}: {str(e)[:200]}", flush=True)
        elif key == "FULL@1.0":
            rows.append({**entry, "impl": "fa4-sparse", "status": f"not installed ({fa4_ready})"})
        flex_txt = f", flex {t_flex:.2f} ms ({t_flex / t_ours:.2f}x ours)" if t_flex else ""
        flex_txt += f", fa4 block-sparse {t_fa4:.2f} ms (ours {t_fa4 / t_ours:.2f}x as fast)" if t_fa4 else ""
        print(f"  {key:24s} density {density:.3f}: ours ({kernel}) {t_ours:.2f} ms, {t_best / t_ours * density:.2f} of ideal{flex_txt}", flush=True)


AUTO_PLANS = ("DIAGONAL@0.25", "MIXED")
AUTO_TOLERANCE = 1.02  # "auto" within 2% of the faster of ours and FA4 counts as the right pick (timing noise)


def bench_auto(name, heads, head_dim, layout, rows):
    """What ``backend="auto"`` runs on this shape, timed as whole ``sparse_attention`` calls (FA4's gather into
    kernel order and output scatter included) beside ``backend="gluon"`` and ``backend="fa4"``."""
    from diffusers_sparse_vdit.kernels.attention import auto_cuda_kernel
    from diffusers_sparse_vdit.kernels.dense import choose_dense_backend

    dev, tile = torch.device("cuda"), 128
    q, k, v = (torch.randn(1, layout.num_tokens, heads, head_dim, device=dev, dtype=torch.bfloat16).transpose(1, 2)
               for _ in range(3))
    # HunyuanVideo's prompts are padded (text after video): half the text valid, as bench_e2e runs it
    text_lengths = torch.tensor([layout.text_tokens // 2], device=dev) if layout.text_position == "after" else None
    plans = {"DIAGONAL@0.25": build_plan([spec_for_tile_density(Mode.DIAGONAL, 0.25, layout, tile)] * heads, layout, tile),
             "MIXED": build_plan(mixed_specs(heads, layout, tile), layout, tile)}
    for key in AUTO_PLANS:
        plan, out = plans[key], torch.empty_like(q)
        times = {}
        for backend in ("auto", "gluon", "fa4"):
            try:
                times[backend] = time_ms(lambda: sparse_attention(q, k, v, plan, backend=backend, out=out,
                                                                  text_lengths=text_lengths))
            except Exception as e:  # FA4 not installed, or a call it cannot take
                print(f"  {key} backend={backend} failed: {type(e).__name__}: {str(e)[:160]}", flush=True)
        row = auto_row(name, key, plan.tile_density, auto_cuda_kernel(q, k, v, plan, out), times)
        row["dense_kernel"] = choose_dense_backend(q, None)
        rows.append(row)
        print(f"  {key}: auto runs {row['auto_kernel']} " + ", ".join(f"{b} {t:.2f} ms" for b, t in times.items()), flush=True)


def auto_row(shape: str, plan: str, tile_density: float, auto_kernel: str, times: dict) -> dict:
    """One ``--auto`` result: "auto"'s time over the fastest of the forced backends that ran."""
    forced = {b: t for b, t in times.items() if b != "auto"}
    row = {"shape": shape, "plan": plan, "tile_density": tile_density, "auto_kernel": auto_kernel, "ms": times}
    if "auto" in times and forced:
        fastest = min(forced, key=forced.get)
        row.update(fastest=fastest, auto_over_fastest=times["auto"] / forced[fastest])
    return row


def print_auto_table(rows):
    print(f"\n{'shape':20s} {'plan':14s} {'dens':>5s} {'auto runs':9s} {'dense':6s} {'auto ms':>9s} {'gluon ms':>9s} "
          f"{'fa4 ms':>9s} {'auto/best':>9s}   (whole sparse_attention calls, FA4's gather and scatter included)")
    for r in rows:
        ms = {b: f"{r['ms'][b]:9.2f}" if b in r["ms"] else f"{'-':>9s}" for b in ("auto", "gluon", "fa4")}
        ratio = r.get("auto_over_fastest")
        verdict = "" if ratio is None else f"{ratio:9.3f}" + ("" if ratio <= AUTO_TOLERANCE else f"  SLOWER than {r['fastest']}")
        print(f"{r['shape']:20s} {r['plan']:14s} {r['tile_density']:5.3f} {r['auto_kernel']:9s} {r.get('dense_kernel', ''):6s} "
              f"{ms['auto']} {ms['gluon']} {ms['fa4']} {verdict}")


def mufu_counts(compiled) -> dict:
    """Special-function (MUFU) instructions in a compiled kernel's SASS, by opcode (needs cuobjdump)."""
    try:
        return dict(Counter(word.rstrip(";") for word in compiled.asm["sass"].split() if word.startswith("MUFU.")))
    except Exception as e:
        return {"error": f"{type(e).__name__}: {str(e)[:80]}"}


def compiled_kernels() -> list[dict]:
    """Registers, spills and MUFU instructions of every compiled variant of our kernel (Triton's JIT cache)."""
    from diffusers_sparse_vdit.kernels.triton_sparse import _sparse_attention_fwd

    found = []
    try:
        for entry in _sparse_attention_fwd.device_caches.values():
            for compiled in entry[0].values():
                meta = compiled.metadata
                found.append({"regs": compiled.n_regs, "spills": compiled.n_spills, "warps": meta.num_warps,
                              "stages": meta.num_stages, "shared_bytes": meta.shared,
                              "mufu": mufu_counts(compiled),
                              "constants": {k: v for k, v in dict(getattr(meta, "constants", {}) or {}).items()
                                            if isinstance(v, (int, bool, float, str))}})
    except Exception as e:  # the cache layout is Triton-internal
        print(f"  (no compiled-kernel stats: {type(e).__name__}: {e})", flush=True)
    return found


def print_table(rows):
    print(f"\n{'shape':20s} {'plan':22s} {'dens':>5s} {'impl':12s} {'ms':>9s} {'host ms':>8s} {'TFLOP/s':>8s} "
          f"{'x best':>8s} {'of ideal':>8s}   (x best, of ideal: against the fastest dense kernel of the run)")
    for r in rows:
        if r["impl"] == "sweep":
            continue
        if "status" in r:
            print(f"{r['shape']:20s} {r['plan']:22s} {'':5s} {r['impl']:12s} {r['status']}")
            continue
        host = f"{r['host_ms']:8.3f}" if "host_ms" in r else f"{'':8s}"
        print(f"{r['shape']:20s} {r['plan']:22s} {r['density']:5.3f} {r['impl']:12s} {r['ms']:9.2f} {host} "
              f"{r['tflops']:8.0f} {r['speedup']:8.2f} {r['fraction_of_ideal']:8.2f}")


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--shapes", default="wan2.1-1.3b-480p,cogvideox1.5-768p,hunyuanvideo-720p")
    parser.add_argument("--densities", default="1,0.5,0.25,0.1")
    parser.add_argument("--sweep", action="store_true", help="sweep the portable Triton kernel's launch configs first and time it with the best "
                        "(the Gluon kernel's sweep: bench_gluon.py)")
    parser.add_argument("--no-flex", action="store_true")
    parser.add_argument("--budget-ms", type=float, default=1500.0, help="GPU time spent per timing (median of the reps)")
    parser.add_argument("--auto", action="store_true", help='only time what backend="auto" picks per shape against '
                        'backend="gluon" and "fa4" (whole calls, on a DIAGONAL@0.25 and a mixed plan)')
    parser.add_argument("--out", default="benchmarks/results/kernel.json")
    args = parser.parse_args()
    if not torch.cuda.is_available():
        sys.exit("this benchmark needs a CUDA GPU")
    if args.auto:
        return main_auto(args)
    import triton

    global BUDGET_MS
    BUDGET_MS = args.budget_ms
    densities = [float(x) for x in args.densities.split(",")]
    rows = []
    meta = {
        "device": torch.cuda.get_device_name(),
        "torch": torch.__version__,
        "triton": triton.__version__,
        "cuda": torch.version.cuda,
        "cudnn": torch.backends.cudnn.version(),
        "python": platform.python_version(),
        "date": time.strftime("%Y-%m-%d %H:%M:%S"),
        "dtype": "bfloat16",
        "batch": 1,
    }
    print(json.dumps(meta), flush=True)
    for name in args.shapes.split(","):
        heads, head_dim, layout = SHAPES[name]
        print(f"{name}: {heads} heads x {head_dim}, {layout}", flush=True)
        try:
            bench_shape(name, heads, head_dim, layout, densities, args, rows)
        except Exception as e:
            print(f"  {name} failed: {type(e).__name__}: {e}", flush=True)
            rows.append({"shape": name, "impl": "error", "error": f"{type(e).__name__}: {e}"})
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps({"meta": meta, "rows": rows}, indent=1))
        torch.cuda.empty_cache()
    print_table([r for r in rows if r["impl"] not in ("error",)])
    meta["compiled"] = compiled_kernels()
    for c in meta["compiled"]:
        print(f"compiled: {c['regs']} regs, {c['spills']} spills, {c['warps']} warps, {c['stages']} stages, "
              f"{c['shared_bytes']} B shared, MUFU {c['mufu']}", flush=True)
    Path(args.out).write_text(json.dumps({"meta": meta, "rows": rows}, indent=1))


def main_auto(args):
    global BUDGET_MS
    BUDGET_MS = args.budget_ms
    meta = {"device": torch.cuda.get_device_name(), "torch": torch.__version__, "date": time.strftime("%Y-%m-%d %H:%M:%S"),
            "dtype": "bfloat16", "batch": 1}
    rows = []
    for name in args.shapes.split(","):
        heads, head_dim, layout = SHAPES[name]
        print(f"{name}: {heads} heads x {head_dim}, {layout}", flush=True)
        try:
            bench_auto(name, heads, head_dim, layout, rows)
        except Exception as e:
            print(f"  {name} failed: {type(e).__name__}: {e}", flush=True)
        torch.cuda.empty_cache()
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps({"meta": meta, "rows": rows}, indent=1))
    print_auto_table(rows)


if __name__ == "__main__":
    main()
