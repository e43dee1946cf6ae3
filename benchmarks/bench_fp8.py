"""FP8 kernel benchmark: our FP8 Gluon kernel against our 16-bit one on identical plans, and FA3 (16-bit and FP8).

On the model shapes of DESIGN §5 (batch 1, bf16 inputs), for DIAGONAL plans of tile density
about 1, 0.5, 0.25 and 0.1 and the paper-like mixed layer, in one run:

* checks the FP8 output against the fp32 dense-mask reference on sampled query tiles (the FP8
  error) and the 16-bit kernel's the same way;
* times ours in 16 bits, ours in FP8 with K/V already quantized (the kernel alone), the K/V
  quantization alone, and ours in FP8 as a call of ``sparse_attention`` (both, as a pipeline pays);
* times the dense peers of ``bench_kernel.py`` in bf16 (FA3, FA4) and FA3's FP8 forward (e4m3 inputs)
  where installed;
* prints a table (ms, TFLOP/s on computed tiles, FP8 speedup over our 16-bit kernel at equal
  tiles, speedup over the fastest 16-bit dense peer of the run) and writes JSON.

    python benchmarks/bench_fp8.py --out benchmarks/results/fp8_h200.json
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench_kernel import SHAPES, dense_peers, mixed_specs, spec_for_tile_density, time_ms  # noqa: E402

from diffusers_sparse_vdit import Mode, ModeSpec, build_plan, sparse_attention  # noqa: E402
from diffusers_sparse_vdit.kernels.check import sampled_error  # noqa: E402
from diffusers_sparse_vdit.kernels.gluon_fp8 import fp8_config, sparse_attention_gluon_fp8  # noqa: E402
from diffusers_sparse_vdit.kernels.quantize import kernel_kv  # noqa: E402
from diffusers_sparse_vdit.kernels.gluon_sparse import sparse_attention_gluon  # noqa: E402


# FP8 kernel variants that --variants may time beside the default (fp8_config), kernel alone
# (v2-v5: packed f16x2 exponentials 3-15% slower, and dropped: on sm_90 ptxas makes two MUFU ops of each;
# 5 stages, once a variant, is now the default)
VARIANTS = {"4-stages": {"STAGES": 4}, "3-stages": {"STAGES": 3},
            # the key-loop choices fp8_config makes per head_dim (benchmarks/NOTES.md v16), flipped
            "pairs": {"PAIRS": True}, "no-pairs": {"PAIRS": False}, "one-chain": {"CHAINS": 1}, "four-chains": {"CHAINS": 4}}


def peer_calls(q, k, v) -> dict:
    """bench_kernel's dense peers in bf16 (FA3, FA4 dense) and FA3's FP8 forward; None where not installed or
    not built for FP8."""
    calls = dense_peers(q, k, v)
    calls["fa3-fp8"] = None
    if calls["fa3"] is None:
        return calls
    from fa3_fwd_interface import flash_attn_func

    q8, k8, v8 = (x.transpose(1, 2).contiguous().to(torch.float8_e4m3fn) for x in (q, k, v))
    ones = torch.ones(q.shape[0], q.shape[1], device=q.device, dtype=torch.float32)
    try:
        flash_attn_func(q8, k8, v8, q_descale=ones, k_descale=ones, v_descale=ones)
        calls["fa3-fp8"] = lambda: flash_attn_func(q8, k8, v8, q_descale=ones, k_descale=ones, v_descale=ones)
    except Exception as e:  # a build without the FP8 forward
        print(f"  fa3 fp8 not available: {type(e).__name__}: {str(e)[:120]}", flush=True)
    return calls


def bench_shape(name, heads, head_dim, layout, densities, rows, variants=()):
    tile, dev = 128, torch.device("cuda")
    n = layout.num_tokens
    torch.manual_seed(0)
    # diffusers' (B, N, H, D) memory, read as (B, H, N, D) views
    q, k, v = (torch.randn(1, n, heads, head_dim, device=dev, dtype=torch.bfloat16).transpose(1, 2) for _ in range(3))
    scale = head_dim ** -0.5
    dense_flops = 4 * heads * n * n * head_dim
    best_dense = None  # the fastest 16-bit dense peer of the run
    for impl, call in peer_calls(q, k, v).items():
        if call is None:
            rows.append({"shape": name, "plan": "dense", "impl": impl, "status": "not installed"})
            continue
        ms = time_ms(call)
        rows.append({"shape": name, "plan": "dense", "impl": impl, "density": 1.0, "ms": ms,
                     "tflops": dense_flops / ms / 1e9})
        if impl != "fa3-fp8":
            best_dense = ms if best_dense is None else min(best_dense, ms)
    plans = [("FULL@1.0", [ModeSpec.full()] * heads)]
    plans += [(f"DIAGONAL@{d}", [spec_for_tile_density(Mode.DIAGONAL, d, layout, tile)] * heads)
              for d in densities if d < 1]
    plans.append(("MIXED@0.25", mixed_specs(heads, layout, tile)))
    for label, specs in plans:
        native = build_plan(specs, layout, tile)
        fp8 = native.with_precision("fp8")
        flops = native.flops(head_dim)
        out16, out8 = torch.full_like(q, float("nan")), torch.full_like(q, float("nan"))
        t16 = time_ms(lambda: sparse_attention_gluon(q, k, v, native, scale=scale, out=out16))
        quantized = kernel_kv(k, v, fp8)
        t8 = time_ms(lambda: sparse_attention_gluon_fp8(q, k, v, fp8, scale=scale, out=out8, quantized=quantized))
        timed = {}
        for tag in variants:
            cfg = {**fp8_config(head_dim), **VARIANTS[tag]}
            o = torch.full_like(q, float("nan"))
            run = lambda: sparse_attention_gluon_fp8(q, k, v, fp8, scale=scale, out=o, quantized=quantized, config=cfg)  # noqa: E731
            timed[tag] = (time_ms(run), sampled_error(q, k, v, fp8, o))
        tq = time_ms(lambda: kernel_kv(k, v, fp8))
        tcall = time_ms(lambda: sparse_attention(q, k, v, fp8, out=out8))
        err16 = sampled_error(q, k, v, native, out16)
        err8 = sampled_error(q, k, v, fp8, out8)
        common = {"shape": name, "plan": label, "density": native.density, "tile_density": native.tile_density}
        for impl, ms, err in (("ours-bf16", t16, err16), ("ours-fp8-kernel", t8, err8), ("fp8-quantize", tq, None),
                              ("ours-fp8", tcall, err8),
                              *((f"fp8-kernel-{tag}", ms, err) for tag, (ms, err) in timed.items())):
            row = {**common, "impl": impl, "ms": ms, "tflops": flops / ms / 1e9, "over_ours_bf16": t16 / ms}
            if best_dense is not None:
                row["speedup_vs_fastest_dense"] = best_dense / ms
            if err is not None:
                row["rel_err"] = err
            rows.append(row)
        print(f"  {label:16s} bf16 {t16:7.3f} ms  fp8 kernel {t8:7.3f} ms ({t16 / t8:4.2f}x)  quantize {tq:6.3f} ms  "
              f"fp8 call {tcall:7.3f} ms ({t16 / tcall:4.2f}x)  err bf16 {err16:.4f} fp8 {err8:.4f}  " +
              "  ".join(f"{tag} {ms:.3f} ms ({t16 / ms:4.2f}x, err {err:.4f})" for tag, (ms, err) in timed.items()),
              flush=True)


def print_table(rows):
    print(f"\n{'shape':20s} {'plan':16s} {'dens':>5s} {'impl':28s} {'ms':>8s} {'TFLOP/s':>8s} {'x bf16':>7s} "
          f"{'x FA':>6s} {'err':>7s}   (x bf16: over our 16-bit kernel, same tiles; x FA: over the fastest 16-bit dense peer of the run)")
    for r in rows:
        if "status" in r:
            print(f"{r['shape']:20s} {r['plan']:16s} {'':5s} {r['impl']:28s} {r['status']}")
            continue
        fmt = lambda key, spec: format(r[key], spec) if key in r else ""  # noqa: E731
        print(f"{r['shape']:20s} {r['plan']:16s} {r['density']:5.3f} {r['impl']:28s} {r['ms']:8.3f} {r['tflops']:8.0f} "
              f"{fmt('over_ours_bf16', '7.2f'):>7s} {fmt('speedup_vs_fastest_dense', '6.2f'):>6s} {fmt('rel_err', '7.4f'):>7s}")


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--shapes", default="wan2.1-1.3b-480p,cogvideox1.5-768p,hunyuanvideo-720p")
    parser.add_argument("--densities", default="1,0.5,0.25,0.1")
    parser.add_argument("--budget-ms", type=float, default=600.0, help="GPU time spent per timing (median of the reps)")
    parser.add_argument("--variants", default="", help=f"comma-separated kernel variants to time too, of {sorted(VARIANTS)}")
    parser.add_argument("--out", default="benchmarks/results/fp8.json")
    args = parser.parse_args()
    variants = [tag for tag in args.variants.split(",") if tag]
    unknown = sorted(set(variants) - set(VARIANTS))
    if unknown:
        parser.error(f"unknown --variants {unknown}; choose from {sorted(VARIANTS)}")
    if not torch.cuda.is_available():
        sys.exit("this benchmark needs a CUDA GPU")
    import triton

    import bench_kernel

    bench_kernel.BUDGET_MS = args.budget_ms
    meta = {"device": torch.cuda.get_device_name(), "torch": torch.__version__, "triton": triton.__version__,
            "cuda": torch.version.cuda, "python": platform.python_version(), "date": time.strftime("%Y-%m-%d %H:%M:%S"),
            "dtype": "bfloat16 inputs", "batch": 1}
    print(json.dumps(meta), flush=True)
    rows = []
    for name in args.shapes.split(","):
        heads, head_dim, layout = SHAPES[name]
        print(f"{name}: {heads} heads x {head_dim}, {layout}", flush=True)
        try:
            bench_shape(name, heads, head_dim, layout, [float(x) for x in args.densities.split(",")], rows, variants)
        except Exception as e:
            print(f"  {name} failed: {type(e).__name__}: {e}", flush=True)
            rows.append({"shape": name, "plan": "-", "impl": "error", "status": f"{type(e).__name__}: {e}"})
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps({"meta": meta, "rows": rows}, indent=1))
        torch.cuda.empty_cache()
    print_table(rows)


if __name__ == "__main__":
    main()
