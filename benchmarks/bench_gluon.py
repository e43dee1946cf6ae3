"""Launch-config sweep of the warp-specialized Gluon kernel, beside the Triton kernel and cuDNN.

For each shape: checks the Gluon kernel (NaN-prefilled output, bf16 against fp32 dense-mask SDPA on
sampled tiles, fp16 and text lengths too), then times cuDNN dense, the Triton kernel (default launch
config) and the Gluon kernel under each config on a few plans; prints a table and writes JSON.

    python benchmarks/bench_gluon.py --out benchmarks/results/gluon_h200.json
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench_kernel import SHAPES, mixed_specs, spec_for_tile_density, time_ms  # noqa: E402

from diffusers_sparse_vdit import Mode, ModeSpec, build_plan  # noqa: E402
from diffusers_sparse_vdit.kernels.check import sampled_error  # noqa: E402
from diffusers_sparse_vdit.kernels.gluon_sparse import sparse_attention_gluon  # noqa: E402
from diffusers_sparse_vdit.kernels.triton_sparse import sparse_attention_triton  # noqa: E402

_BASE = {"CONSUMER_REGS": 240, "maxnreg": 168}
# v9 swept these on the H200 (results/gluon_h200_v9b.json). v9a/v9b also timed a loop without the
# softmax/PV overlap ("OVERLAP": false, since removed): at its best (128 keys x 2 stages) 3-11% slower
# than the overlapped loop with 3-4 stages
CONFIGS = {
    128: [{**_BASE, "BLOCK_N": 128, "STAGES": 2}, {**_BASE, "BLOCK_N": 128, "STAGES": 3},
          {**_BASE, "BLOCK_N": 64, "STAGES": 4}],
    64: [{**_BASE, "BLOCK_N": 128, "STAGES": 2}, {**_BASE, "BLOCK_N": 128, "STAGES": 4}],
}
PLANS = ("FULL@1.0", "DIAGONAL@0.1", "MULTI_DIAGONAL@0.25", "VERTICAL_STRIPE@0.1", "MIXED")


def plans_for(heads, layout, tile=128):
    out = {"FULL@1.0": build_plan([ModeSpec.full()] * heads, layout, tile)}
    for key in PLANS[1:-1]:
        mode, d = key.split("@")
        out[key] = build_plan([spec_for_tile_density(Mode[mode], float(d), layout, tile)] * heads, layout, tile)
    out["MIXED"] = build_plan(mixed_specs(heads, layout, tile), layout, tile)
    return out


def check(q, k, v, plan, config, text_lengths=None):
    out = torch.full_like(q, float("nan"))
    sparse_attention_gluon(q, k, v, plan, scale=q.shape[-1] ** -0.5, out=out, config=config,
                           text_lengths=text_lengths)
    torch.cuda.synchronize()
    return sampled_error(q, k, v, plan, out, text_lengths=text_lengths)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--shapes", default="wan2.1-1.3b-480p,hunyuanvideo-720p,cogvideox1.5-768p")
    parser.add_argument("--out", default="benchmarks/results/gluon.json")
    args = parser.parse_args()
    from torch.nn.attention import SDPBackend, sdpa_kernel

    dev = torch.device("cuda")
    rows = []
    for name in args.shapes.split(","):
        heads, head_dim, layout = SHAPES[name]
        n = layout.num_tokens
        print(f"== {name}: {heads} heads x {n} tokens x head_dim {head_dim}", flush=True)
        fresh = lambda dtype=torch.bfloat16: torch.randn(1, n, heads, head_dim, device=dev, dtype=dtype).transpose(1, 2)  # noqa: E731
        q, k, v = fresh(), fresh(), fresh()
        plans = plans_for(heads, layout)
        with sdpa_kernel(SDPBackend.CUDNN_ATTENTION):
            t_cudnn = time_ms(lambda: F.scaled_dot_product_attention(q, k, v))
        print(f"  cuDNN dense {t_cudnn:.2f} ms", flush=True)
        configs = []
        for config in CONFIGS[head_dim]:
            try:
                errs = {key: check(q, k, v, plans[key], config) for key in ("MIXED", "FULL@1.0")}
                if layout.text_tokens:
                    lengths = torch.tensor([layout.text_tokens // 3], device=dev, dtype=torch.int32)
                    errs["MIXED+text_lengths"] = check(q, k, v, plans["MIXED"], config, lengths)
                h16 = [fresh(torch.float16) for _ in range(3)]
                errs["MIXED fp16"] = check(*h16, plans["MIXED"], config)
                del h16
                print(f"  config {config}: errors {errs}", flush=True)
                assert all(e < 1e-2 for e in errs.values()), "wrong results: not timing this config"
                configs.append(config)
                rows.append({"shape": name, "config": config, "errors": errs})
            except Exception as e:  # out of registers or shared memory, or wrong
                print(f"  config {config} failed: {type(e).__name__}: {str(e)[:300]}", flush=True)
                rows.append({"shape": name, "config": config, "failed": f"{type(e).__name__}: {str(e)[:300]}"})
        for key in PLANS:
            plan = plans[key]
            density = plan.flops(head_dim) / (4 * heads * n * n * head_dim)
            o = torch.empty_like(q)
            t_triton = time_ms(lambda: sparse_attention_triton(q, k, v, plan, scale=head_dim ** -0.5, out=o))
            line = f"  {key:22s} ideal {t_cudnn * density:7.2f} ms | triton {t_triton:7.2f} ({t_cudnn * density / t_triton:.3f})"
            entry = {"shape": name, "plan": key, "density": density, "cudnn_ms": t_cudnn, "triton_ms": t_triton,
                     "triton_fraction": t_cudnn * density / t_triton, "gluon": []}
            for config in configs:
                t = time_ms(lambda: sparse_attention_gluon(q, k, v, plan, scale=head_dim ** -0.5, out=o, config=config))
                entry["gluon"].append({"config": config, "ms": t, "fraction": t_cudnn * density / t})
                line += f" | {config['BLOCK_N']}x{config['STAGES']} {t:7.2f} ({t_cudnn * density / t:.3f})"
            print(line, flush=True)
            rows.append(entry)
    meta = {"gpu": torch.cuda.get_device_name(), "torch": torch.__version__, "python": platform.python_version()}
    import triton
    meta["triton"] = triton.__version__
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps({"meta": meta, "rows": rows}, indent=1))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
