"""A/B timing of versions of a Gluon kernel module on identical plans, in one run.

Loads the ``--a`` file and each ``--b`` file (a copy of ``kernels/gluon_sparse.py``, ``kernels/gluon_fp8.py`` or,
with ``--kind quantize``, ``kernels/quantize.py``) as a module of the package, checks its output against the fp32
dense-mask reference on sampled rows (quantize: the fraction of FP8 entries that differ from A's), and times the
kernel alone (FP8: K/V quantized beforehand; quantize: the K/V quantization pass) on the model shapes of
``bench_kernel.py``: all-FULL, DIAGONAL at tile density 0.25 and 0.1, and the paper-like mixed layer. Prints a
table (ms, each B over A) and writes JSON. Several ``--b`` files share one timing of A; their columns are ``b1``,
``b2``, ... (one file: ``b``).

    python benchmarks/ab_kernels.py --kind bf16 --a old_gluon_sparse.py --b diffusers_sparse_vdit/kernels/gluon_sparse.py
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import statistics
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
    if kind == "quantize":
        return lambda: module.kernel_kv(k, v, fp8)
    quantized = module.kernel_kv(k, v, fp8)  # each version's own layout of K and V
    return lambda: module.sparse_attention_gluon_fp8(q, k, v, fp8, scale=scale, out=out, quantized=quantized)


def differing_fp8(got: dict, want: dict, heads: list[int]) -> float:
    """The fraction of the quantized heads' FP8 entries of K and V^T that differ between two quantizer outputs."""
    differ = sum((got[key][:, heads].float() != want[key][:, heads].float()).sum().item() for key in ("k8", "vt8"))
    return differ / sum(want[key][:, heads].numel() for key in ("k8", "vt8"))


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--kind", choices=("bf16", "fp8", "quantize"), required=True)
    parser.add_argument("--a", required=True, help="the baseline module file")
    parser.add_argument("--b", required=True, nargs="+", help="the candidate module file(s)")
    parser.add_argument("--shapes", default="wan2.1-1.3b-480p,cogvideox1.5-768p,hunyuanvideo-720p")
    parser.add_argument("--budget-ms", type=float, default=150.0)
    parser.add_argument("--rounds", type=int, default=1,
                        help="time every variant this many times, the order reversed each round (the first kernel "
                        "timed after an idle spell runs at higher clocks); each time is the median over rounds")
    parser.add_argument("--out", default="benchmarks/results/ab.json")
    args = parser.parse_args()
    if not torch.cuda.is_available():
        sys.exit("this benchmark needs a CUDA GPU")
    import bench_kernel

    bench_kernel.BUDGET_MS = args.budget_ms
    tags = ["b"] if len(args.b) == 1 else [f"b{i}" for i in range(1, len(args.b) + 1)]
    variants = {"a": load_variant(args.a, "a")}
    variants.update({tag: load_variant(path, tag) for tag, path in zip(tags, args.b)})
    rows, tile = [], 128
    header = "".join(f" {tag.upper() + ' ms':>8s} {tag.upper() + '/A':>6s}" for tag in tags)
    print(f"{'shape':20s} {'plan':15s} {'A ms':>8s}{header}  (B/A: A's time over B's; err: sampled error, worst)")
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
            runs, times = {}, {tag: [] for tag in variants}
            for tag, module in variants.items():
                out = torch.full_like(q, float("nan"))
                runs[tag] = (runner(module, args.kind, q, k, v, plan, head_dim ** -0.5, out), out)
            for turn in range(args.rounds):
                for tag in (list(variants) if turn % 2 == 0 else list(variants)[::-1]):
                    times[tag].append(time_ms(runs[tag][0]))
            for tag, (run, out) in runs.items():
                row[f"ms_{tag}"] = statistics.median(times[tag])
                if args.kind == "quantize":
                    quantized = run()
                    if tag == "a":
                        reference = quantized
                    row[f"err_{tag}"] = differing_fp8(quantized, reference, plan.computed_heads)
                else:
                    row[f"err_{tag}"] = sampled_error(q, k, v, plan.with_precision("fp8") if args.kind == "fp8" else plan,
                                                      out)
            for tag in tags:
                row[f"{tag}_over_a"] = row["ms_a"] / row[f"ms_{tag}"]
            cells = "".join(f" {row[f'ms_{tag}']:8.3f} {row[f'{tag}_over_a']:6.3f}" for tag in tags)
            worst = max(row[f"err_{tag}"] for tag in variants)
            print(f"{name:20s} {label:15s} {row['ms_a']:8.3f}{cells}  err {worst:.4f}", flush=True)
            rows.append(row)
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps({"kind": args.kind, "a": args.a, **dict(zip(tags, args.b)), "rows": rows}, indent=1))
        torch.cuda.empty_cache()


if __name__ == "__main__":
    main()
