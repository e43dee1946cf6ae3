"""Run one of our kernels (or FA4's block-sparse kernel on the plan's lists) on one benchmark shape and plan, a few
launches: the program to put under a profiler.

    ncu --clock-control none -k regex:_sparse_attention -s 2 -c 1 --section ComputeWorkloadAnalysis \\
        python benchmarks/one_launch.py --shape cogvideox1.5-768p --plan FULL@1.0 --kernel triton --exp2 bf16x2
"""

from __future__ import annotations

import argparse
import ast
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench_kernel import SHAPES, fa4_sparse_call, mixed_specs, spec_for_tile_density  # noqa: E402
from diffusers_sparse_vdit import Mode, ModeSpec, build_plan  # noqa: E402
from diffusers_sparse_vdit.kernels.gluon_sparse import gluon_config, sparse_attention_gluon  # noqa: E402
from diffusers_sparse_vdit.kernels.triton_sparse import kernel_config, sparse_attention_triton  # noqa: E402


def parse_overrides(text: str) -> dict:
    """``"STAGES=4,PERSISTENT=True"`` as ``{"STAGES": 4, "PERSISTENT": True}``."""
    overrides = {}
    for item in filter(None, text.split(",")):
        key, sep, value = item.partition("=")
        if not sep:
            raise SystemExit(f"--config wants KEY=VALUE items, got {item!r}")
        overrides[key.strip()] = ast.literal_eval(value.strip())
    return overrides


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--shape", default="wan2.1-1.3b-480p", choices=sorted(SHAPES))
    parser.add_argument("--plan", default="FULL@1.0", help="MODE@tile_density, or MIXED")
    parser.add_argument("--kernel", default="gluon", choices=("gluon", "fp8", "triton", "fa4"),
                        help="fa4: FA4 block-sparse on pre-gathered inputs, as bench_kernel times it; "
                        "fp8: our FP8 kernel on K/V quantized once before the launches")
    parser.add_argument("--exp2", default=None, help="override the Triton launch config's EXP2")
    parser.add_argument("--launches", type=int, default=3)
    parser.add_argument("--config", default="", help="launch-config overrides, KEY=VALUE,... (values as Python literals)")
    args = parser.parse_args()
    heads, head_dim, layout = SHAPES[args.shape]
    if args.plan == "MIXED":
        specs = mixed_specs(heads, layout, 128)
    else:
        mode, density = args.plan.split("@")
        mode = Mode[mode]
        specs = [ModeSpec.full() if mode is Mode.FULL else spec_for_tile_density(mode, float(density), layout, 128)] * heads
    plan = build_plan(specs, layout, 128)
    q, k, v = (torch.randn(1, layout.num_tokens, heads, head_dim, device="cuda", dtype=torch.bfloat16).transpose(1, 2)
               for _ in range(3))
    out = torch.empty_like(q)
    if args.kernel == "fa4":
        call = fa4_sparse_call(q, k, v, plan)
        for _ in range(args.launches):
            call()
        torch.cuda.synchronize()
        print(f"{args.shape} {args.plan} fa4 block-sparse: ok")
        return
    if args.kernel == "fp8":
        from diffusers_sparse_vdit.kernels.gluon_fp8 import fp8_config, sparse_attention_gluon_fp8
        from diffusers_sparse_vdit.kernels.quantize import kernel_kv

        quantized = kernel_kv(k, v, plan)
        config = fp8_config(head_dim)

        def run(*a, **kw):
            return sparse_attention_gluon_fp8(*a, quantized=quantized, **kw)
    elif args.kernel == "gluon":
        run, config = sparse_attention_gluon, gluon_config(head_dim)
    else:
        run, config = sparse_attention_triton, kernel_config(head_dim, 128, q.device, layout.num_tokens)
        if args.exp2:
            config["EXP2"] = args.exp2
    config.update(parse_overrides(args.config))
    for _ in range(args.launches):
        run(q, k, v, plan, scale=head_dim ** -0.5, out=out, config=config)
    torch.cuda.synchronize()
    print(f"{args.shape} {args.plan} {args.kernel} {config}: ok")


if __name__ == "__main__":
    main()
