"""Search on the CPU at CI size: calibration wall time per prompt against the pipeline's own.

The stand-in is the shape of the small trained reference pipelines the CI searches: diffusers'
``WanPipeline`` with a random-weight ``WanTransformer3DModel`` of 6 layers, 4 heads x 64
(dim 256, FFN 512), 33 frames at 256x256 -> a 9 x 32 x 32 latent -> 9 x 16 x 16 = 2,304
video tokens per attention call, classifier-free guidance on (two transformer calls a step).
Reported per prompt: a plain dense generation (the floor: the pipeline's own forward time)
and a whole calibration at each tile size, with the scorer's share (calibration minus plain).

    python benchmarks/bench_search_cpu.py --out benchmarks/results/search_cpu.json
    python benchmarks/bench_search_cpu.py --profile   # cProfile of one calibration, top 25 entries
"""

from __future__ import annotations

import argparse
import cProfile
import json
import os
import platform
import pstats
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from diffusers_sparse_vdit.search import calibrate  # noqa: E402
from diffusers_sparse_vdit.search.runner import DEFAULT_PROMPTS  # noqa: E402
from diffusers_sparse_vdit.testing import tiny_pipeline, tiny_transformer  # noqa: E402

SIZE = dict(height=256, width=256, num_frames=33)  # latent 9 x 32 x 32, 2,304 tokens after patch (1, 2, 2)
CALL = dict(negative_prompt="blurry low quality", guidance_scale=5.0, max_sequence_length=64)


def ci_pipeline():
    import diffusers

    tiny = tiny_pipeline("wan")
    transformer = tiny_transformer("wan", num_layers=6, num_attention_heads=4, attention_head_dim=64, ffn_dim=512,
                                   in_channels=16, out_channels=16)
    return diffusers.WanPipeline(**{**tiny.components, "transformer": transformer})


def timed(fn, *args) -> tuple[float, float]:
    """(wall, CPU) seconds of ``fn(*args)``: CPU time (all threads) stays honest on a shared machine."""
    wall, cpu = time.perf_counter(), time.process_time()
    fn(*args)
    return time.perf_counter() - wall, time.process_time() - cpu


def plain_generation(pipe, prompt: str, steps: int) -> None:
    pipe.set_progress_bar_config(disable=True)
    pipe(prompt, generator=torch.Generator().manual_seed(0), num_inference_steps=steps, output_type="latent",
         **SIZE, **CALL)


def calibration(pipe, prompts, steps: int, tile_size: int, sample_tiles: int) -> None:
    calibrate(pipe, prompts, num_inference_steps=steps, tile_size=tile_size, sample_tiles=sample_tiles,
              backend="torch", progress=False, pipeline_kwargs=CALL, **SIZE)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--prompts", type=int, default=2)
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--tile-sizes", type=int, nargs="+", default=[64, 128])
    parser.add_argument("--sample-tiles", type=int, default=32)
    parser.add_argument("--profile", action="store_true", help="cProfile one calibration at the first tile size")
    parser.add_argument("--label", default="", help="a name for this code version in the JSON")
    parser.add_argument("--out", default="benchmarks/results/search_cpu.json")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    pipe = ci_pipeline()
    prompts = list(DEFAULT_PROMPTS[: args.prompts])

    if args.profile:
        profiler = cProfile.Profile()
        profiler.runcall(calibration, pipe, prompts[:1], args.steps, args.tile_sizes[0], args.sample_tiles)
        pstats.Stats(profiler).sort_stats("cumulative").print_stats(25)
        pstats.Stats(profiler).sort_stats("tottime").print_stats(25)
        return

    plain_generation(pipe, prompts[0], 1)  # warm-up: first calls allocate and build caches
    plain = timed(plain_generation, pipe, prompts[0], args.steps)
    rows = []
    for tile in args.tile_sizes:
        wall, cpu = (t / len(prompts) for t in timed(calibration, pipe, prompts, args.steps, tile, args.sample_tiles))
        rows.append({"tile_size": tile, "s_plain_per_prompt": plain[0], "s_calibration_per_prompt": wall,
                     "cpu_s_plain_per_prompt": plain[1], "cpu_s_calibration_per_prompt": cpu,
                     "calibration_over_plain_cpu": cpu / plain[1]})

    print(f"{args.prompts} prompts x {args.steps} steps, CFG, 6 layers, 2,304 tokens, {args.threads} threads "
          "(per prompt; CPU = all threads)")
    print(f"{'tile':>5} {'plain wall s':>13} {'plain CPU s':>12} {'calibrate wall s':>17} {'calibrate CPU s':>16} "
          f"{'CPU x plain':>12}")
    for r in rows:
        print(f"{r['tile_size']:>5} {r['s_plain_per_prompt']:>13.1f} {r['cpu_s_plain_per_prompt']:>12.1f} "
              f"{r['s_calibration_per_prompt']:>17.1f} {r['cpu_s_calibration_per_prompt']:>16.1f} "
              f"{r['calibration_over_plain_cpu']:>12.2f}")
    meta = {"label": args.label, "torch": torch.__version__, "cpu": platform.processor() or platform.machine(),
            "threads": args.threads, "prompts": args.prompts, "steps": args.steps, "sample_tiles": args.sample_tiles,
            "layers": 6, "heads": 4, "head_dim": 64, "tokens": 2304, "cfg": True, **SIZE}
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    runs = json.loads(out.read_text())["runs"] if out.exists() else []
    runs = [r for r in runs if r["meta"].get("label") != args.label] + [{"meta": meta, "rows": rows}]
    aside = out.with_suffix(".json.tmp")
    aside.write_text(json.dumps({"runs": runs}, indent=2) + "\n")
    os.replace(aside, out)


if __name__ == "__main__":
    main()
