"""Plan building on the CPU: the first call of a mode map at a new layout, and the cached calls after it.

A searched map is modelled by drawing every head's mode from the layout's default candidates
(:func:`~diffusers_sparse_vdit.search.default_candidates`), with VERTICAL_STRIPE heads given
their own stripe tiles (as the search chooses them per head, so nearly every such head is a
distinct spec). ``first`` builds every layer's plan with all plan caches cleared, as the
processors' hook does at the first call at a new resolution; ``cached`` builds them again.

    python benchmarks/bench_plan.py --out benchmarks/results/plan_cpu.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from diffusers_sparse_vdit import Mode, ModeSpec, TokenLayout, build_plan  # noqa: E402
from diffusers_sparse_vdit import plan as plan_module  # noqa: E402
from diffusers_sparse_vdit.search import default_candidates  # noqa: E402
from diffusers_sparse_vdit.search.stripes import selectable_tiles, tile_positions  # noqa: E402

TILE = 128
CASES = {  # name: (layout, layers, heads)
    "hunyuanvideo-720p": (TokenLayout(33, 45, 80, 256, "after"), 60, 24),
    "wan2.1-1.3b-480p": (TokenLayout(21, 30, 52), 30, 12),
    "cogvideox1.5-768p": (TokenLayout(11, 48, 85, 226, "before"), 42, 48),
}


def searched_map(layout: TokenLayout, layers: int, heads: int, seed: int = 0) -> list[list[ModeSpec]]:
    rng = random.Random(seed)
    candidates = default_candidates(layout, TILE)
    nvt = layout.video_tiles(TILE)
    out = []
    for _ in range(layers):
        specs = []
        for _ in range(heads):
            cand = rng.choice(candidates)
            if cand.mode is Mode.VERTICAL_STRIPE:
                free = selectable_tiles(layout, TILE, cand.sink_frames).nonzero().flatten().tolist()
                specs.append(cand.spec(tile_positions(sorted(rng.sample(free, cand.stripes)), nvt)))
            else:
                specs.append(cand.spec())
        out.append(specs)
    return out


def clear_plan_caches() -> None:
    for value in vars(plan_module).values():
        if hasattr(value, "cache_clear"):
            value.cache_clear()


def build_all(specs_per_layer, layout) -> tuple[float, float]:
    """Wall and CPU seconds (CPU time is the fair figure on a shared machine)."""
    wall, cpu = time.perf_counter(), time.process_time()
    plans = [build_plan(specs, layout, TILE) for specs in specs_per_layer]
    sum(p.density for p in plans)  # what config.density() and the CLI report read
    return time.perf_counter() - wall, time.process_time() - cpu


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    parser.add_argument("--out", default="benchmarks/results/plan_cpu.json")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    rows = []
    print(f"{'case':<20} {'layers x heads':>14} {'distinct specs':>14} {'first wall (s)':>14} {'first CPU (s)':>13} "
          f"{'cached (ms)':>11}")
    for name, (layout, layers, heads) in CASES.items():
        specs = searched_map(layout, layers, heads)
        first, cached = [], []
        for _ in range(args.repeats):
            clear_plan_caches()
            first.append(build_all(specs, layout))
            cached.append(build_all(specs, layout))
        distinct = len({s for layer in specs for s in layer})
        row = dict(case=name, layout=str(layout), layers=layers, heads=heads, distinct_specs=distinct,
                   first_wall_s=min(w for w, _ in first), first_cpu_s=min(c for _, c in first),
                   cached_ms=min(w for w, _ in cached) * 1e3)
        rows.append(row)
        print(f"{name:<20} {f'{layers} x {heads}':>14} {distinct:>14} {row['first_wall_s']:>14.3f} "
              f"{row['first_cpu_s']:>13.3f} {row['cached_ms']:>11.2f}")
    result = dict(tile_size=TILE, repeats=args.repeats, load_average=os.getloadavg()[0], torch=torch.__version__, threads=torch.get_num_threads(),
                  machine=platform.processor() or platform.machine(), results=rows)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=1) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
