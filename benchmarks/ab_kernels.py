"""A/B timing of two versions of a Gluon kernel module on identical plans, in one run.

Loads each ``--a`` / ``--b`` file (a copy of ``kernels/gluon_sparse.py`` or ``kernels/gluon_fp8.py``) as a module
of the package, checks its output against the fp32 dense-mask reference on sampled rows, and times the kernel
alone (FP8: K/V quantized beforehand) on the model shapes of ``bench_kernel.py``: all-FULL, DIAGONAL at tile
density 0.25 and 0.1, and the paper-like mixed layer. Prints a table (ms, B over A) and writes JSON.

    python benchmarks/ab_kernels.py --kind bf16 --a old_gluon_sparse.py --b diffusers_sparse_vdit/kernels/gluon_sparse.py
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench_kernel import SHAPES, mixed_specs, spec_for_tile_density, time_ms  # noqa: E402

from diffusers_sparse_vdit import Mode, ModeSpec, build_plan  # noqa: E402
from diffusers_sparse_vdit.kernels.check import sampled_error  # noqa: E402


def load_variant(path: str, tag: str):
    """``path`` imported as ``diffusers_sparse_vdit.kernels._ab_<tag>`` (its relative imports resolve in the package)."""
    name = f"diffusers_sparse_vdit.kernels._ab_{tag}"
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


def runner(module, kind, q, k, v, plan, scale, out):
    if kind == "bf16":
        return lambda: module.sparse_attention_gluon(q, k, v, plan, scale=scale, out=out)
    fp8 = plan.with_precision("fp8")
    quantized = module.kernel_kv(k, v, fp8)  # each version's own layout of K and V
    return lambda: module.sparse_attention_gluon_fp8(q, k, v, fp8, scale=scale, out=out, quantized=quantized)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--kind", choices=("bf16", "fp8"), required=True)
    parser.add_argument("--a", required=True, help="the baseline module file")
    parser.add_argument("--b", required=True, help="the candidate module file")
    parser.add_argument("--shapes", default="wan2.1-1.3b-480p,cogvideox1.5-768p,hunyuanvideo-720p")
    parser.add_argument("--budget-ms", type=float, default=150.0)
    parser.add_argument("--out", default="benchmarks/results/ab.json")
    args = parser.parse_args()
    if not torch.cuda.is_available():
        sys.exit("this benchmark needs a CUDA GPU")
    import bench_kernel

    bench_kernel.BUDGET_MS = args.budget_ms
    variants = {"a": load_variant(args.a, "a"), "b": load_variant(args.b, "b")}
    rows, tile = [], 128
    print(f"{'shape':20s} {'plan':15s} {'A ms':>8s} {'B ms':>8s} {'B/A':>6s} {'err A':>8s} {'err B':>8s}  (B/A: A's time over B's)")
    for name in args.shapes.split(","):
        heads, head_dim, layout = SHAPES[name]
        torch.manual_seed(0)
        q, k, v = (torch.randn(1, layout.num_tokens, heads, head_dim, device="cuda", dtype=torch.bfloat16)
                   .transpose(1, 2) for _ in range(3))
        plans = [("FULL", [ModeSpec.full()] * heads)]
        plans += [(f"DIAGONAL@{d}", [spec_for_tile_density(Mode.DIAGONAL, d, layout, tile)] * heads) for d in (0.25, 0.1)]
        plans.append(("MIXED@0.25", mixed_specs(heads, layout, tile)))
        for label, specs in plans:
            plan = build_plan(specs, layout, tile)
            row = {"shape": name, "plan": label, "density": plan.density}
            for tag, module in variants.items():
                out = torch.full_like(q, float("nan"))
                run = runner(module, args.kind, q, k, v, plan, head_dim ** -0.5, out)
                row[f"ms_{tag}"] = time_ms(run)
                row[f"err_{tag}"] = sampled_error(q, k, v, plan.with_precision("fp8") if args.kind == "fp8" else plan, out)
            row["b_over_a"] = row["ms_a"] / row["ms_b"]
            rows.append(row)
            print(f"{name:20s} {label:15s} {row['ms_a']:8.3f} {row['ms_b']:8.3f} {row['b_over_a']:6.3f} "
                  f"{row['err_a']:8.4f} {row['err_b']:8.4f}", flush=True)
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps({"kind": args.kind, "a": args.a, "b": args.b, "rows": rows}, indent=1))
        torch.cuda.empty_cache()


if __name__ == "__main__":
    main()
