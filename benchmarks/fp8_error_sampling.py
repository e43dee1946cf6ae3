"""Calibration's sampled FP8 error against the all-rows error, on the trained reference pipelines (CPU).

Since the calibration measures each head's FP8 attention error on at most ``FP8_SAMPLE_ROWS`` evenly spaced
query rows (``search/scoring.py``), this runs the calibration of ``benchmarks/NOTES.md``'s quality
frontier (2 captions, 8 step ranges) and, for every measured (call, head), also the error on all rows:
how far the two are apart and whether the 0.05 threshold of ``--precision fp8`` keeps the same heads
native. Prints and writes JSON.

    python benchmarks/fp8_error_sampling.py wan cogvideox hunyuan_video --out benchmarks/results/fp8_error_sampling_cpu.json
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from diffusers_sparse_vdit.kernels.quantize import fp8_attention_error  # noqa: E402
from diffusers_sparse_vdit.reference import load_reference  # noqa: E402
from diffusers_sparse_vdit.search import scoring  # noqa: E402
from diffusers_sparse_vdit.search.runner import calibrate, equal_step_ranges  # noqa: E402

THRESHOLD = 0.05  # the default --fp8-max-error


def compare(family: str) -> dict:
    pairs = []
    measure = scoring.HeadScorer._measure_fp8

    def both(self, r, layer, q, k, v, scale):
        step = max(1, -(-q.shape[2] // scoring.FP8_SAMPLE_ROWS))
        pairs.append((fp8_attention_error(q[:1], k[:1], v[:1], scale=scale, tile_size=self.tile_size),
                      fp8_attention_error(q[:1, :, ::step], k[:1], v[:1], scale=scale, tile_size=self.tile_size)))
        return measure(self, r, layer, q, k, v, scale)

    pipe, info = load_reference(family, device="cpu")
    call = dict(info["generate"])
    size = {k: call.pop(k) for k in ("height", "width", "num_frames", "num_inference_steps", "guidance_scale")}
    scoring.HeadScorer._measure_fp8 = both
    try:
        calibrate(pipe, info["calibration_prompts"][:2], step_ranges=equal_step_ranges(size["num_inference_steps"], 8),
                  tile_size=info["tile_size"], sample_tiles=16, backend="torch", pipeline_kwargs=call, progress=False,
                  **size)
    finally:
        scoring.HeadScorer._measure_fp8 = measure
    full, sampled = (torch.stack(x) for x in zip(*pairs))
    rel = (sampled - full).abs() / full
    flip = (full <= THRESHOLD) != (sampled <= THRESHOLD)
    return {"family": family, "calls": len(pairs), "entries": full.numel(), "median_rel_diff": rel.median().item(),
            "max_rel_diff": rel.max().item(), "native_all_rows": (full > THRESHOLD).float().mean().item(),
            "native_sampled": (sampled > THRESHOLD).float().mean().item(), "threshold_flips": int(flip.sum()),
            "flipped_errors_all_rows_sampled": [list(p) for p in zip(full[flip].tolist(), sampled[flip].tolist())]}


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("families", nargs="+", choices=("wan", "cogvideox", "hunyuan_video"))
    parser.add_argument("--out", default="benchmarks/results/fp8_error_sampling_cpu.json")
    args = parser.parse_args()
    rows = []
    for family in args.families:
        rows.append(compare(family))
        print(json.dumps(rows[-1]), flush=True)
        Path(args.out).write_text(json.dumps({"threshold": THRESHOLD, "sample_rows": scoring.FP8_SAMPLE_ROWS,
                                              "rows": rows}, indent=1))


if __name__ == "__main__":
    main()
