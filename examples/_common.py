"""What the three example scripts share: arguments, and search -> save -> apply -> generate.

Each script (``wan.py``, ``hunyuan_video.py``, ``cogvideox.py``) holds only what differs per
model family: the checkpoint, how diffusers' docs load it, and the video settings it was
trained for. ``--tiny`` swaps the checkpoint for a tiny random pipeline of the same family, so
every script runs end to end on any CPU in seconds (the videos are noise, of course).
"""

from __future__ import annotations

import argparse
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import torch

from diffusers_sparse_vdit import apply_sparse_vdit
from diffusers_sparse_vdit.evaluate import evaluate_map, save_video
from diffusers_sparse_vdit.loading import (
    DTYPES,
    TINY_TILE_SIZE,
    calibrate_arguments,
    call_arguments,
    call_defaults,
    default_device,
    default_dtype,
    load_pipeline,
)
from diffusers_sparse_vdit.search import runner


@dataclass
class Example:
    """One model family's example."""

    model: str  # Hub id of the real checkpoint
    tiny: str  # diffusers_sparse_vdit.testing variant for --tiny
    load: Callable[[str, torch.dtype], Any]  # (model id or folder, dtype) -> pipeline on the CPU
    call: dict[str, Any]  # pipeline call arguments the checkpoint is meant for (size, frames, guidance...)
    prompt: str
    fps: int
    steps: int = 50
    tiny_steps: int = 4


def parse_args(example: Example, doc: str, argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=example.model, help="Hub id or local folder (default: %(default)s)")
    parser.add_argument("--tiny", action="store_true", help=f"a tiny random {example.tiny} pipeline instead (any CPU)")
    parser.add_argument("--prompts", metavar="FILE", help="calibration prompts, one a line (default: a built-in set)")
    parser.add_argument("--prompt", default=example.prompt, help="what to generate with the map")
    parser.add_argument(
        "--target-speedup",
        type=float,
        help="attention FLOPs cut (default: 2; with --tiny the paper's per-head rule, as a tiny video has too few "
        "tiles for a FLOP target)",
    )
    parser.add_argument("--dense-warmup-steps", type=int, default=0, help="first steps kept dense (default: 0)")
    parser.add_argument(
        "--steps", type=int, help=f"denoising steps (default: {example.steps}; {example.tiny_steps} with --tiny)"
    )
    parser.add_argument("--height", type=int)
    parser.add_argument("--width", type=int)
    parser.add_argument("--frames", type=int)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", help="default: cuda if there is one")
    parser.add_argument("--dtype", choices=sorted(DTYPES), help="default: bfloat16 on CUDA, float32 on CPU")
    parser.add_argument("--backend", default="auto", help="sparse kernels: auto, gluon, triton, torch, flex")
    parser.add_argument(
        "--compare", action="store_true", help="also generate dense from the same seed: PSNR/SSIM/LPIPS and speedup"
    )
    parser.add_argument("--out", default="sparse-vdit-example", help="output folder (default: %(default)s)")
    return parser.parse_args(argv)


def run(example: Example, doc: str, argv=None) -> Path:
    """Search a mode map for the example's pipeline, save it, and generate a video with it."""
    args = parse_args(example, doc, argv)
    out = Path(args.out)
    device = args.device or default_device()
    if args.tiny:
        pipe = load_pipeline(tiny=example.tiny, device=device, dtype=args.dtype)
        call, steps = call_defaults(example.tiny), args.steps or example.tiny_steps
    else:
        pipe = example.load(args.model, DTYPES[args.dtype or default_dtype(device)]).to(device)
        call, steps = dict(example.call), args.steps or example.steps
    call = call_arguments(call, height=args.height, width=args.width, num_frames=args.frames)

    # 1. Search: calibrate on the prompts, then the least-error map that cuts attention FLOPs
    #    by the target. `sparse-vdit search` does the same from the shell.
    prompts = runner.load_prompts(args.prompts)
    result = runner.search(
        pipe,
        prompts,
        target_speedup=args.target_speedup or (None if args.tiny else 2.0),
        tile_size=TINY_TILE_SIZE if args.tiny else 128,  # a tiny grid is smaller than one 128-token tile
        dense_warmup_steps=args.dense_warmup_steps,
        num_inference_steps=steps,
        seed=args.seed,
        backend=args.backend,
        **calibrate_arguments(call),
    )
    print(result.summary())
    result.config.save_pretrained(out / "map")  # load it back with apply_sparse_vdit(pipe, "<out>/map")
    print(f"map saved to {out / 'map'}")

    if args.compare:
        # 2'. Dense and sparse from the same seed, compared and timed (the map is removed after).
        report = evaluate_map(
            pipe, result.config, args.prompt, seed=args.seed, num_inference_steps=steps, backend=args.backend, **call
        )
        print(report.summary())
        paths = report.save(out / "compare", fps=example.fps)
        print(f"wrote {', '.join(str(p) for p in paths.values())}")
        return out

    # 2. Generate with the map: one line makes the transformer sparse.
    apply_sparse_vdit(pipe, result.config, backend=args.backend)
    start = time.perf_counter()
    video = pipe(
        prompt=args.prompt,
        num_inference_steps=steps,
        generator=torch.Generator().manual_seed(args.seed),
        output_type="pt",
        **call,
    ).frames[0]
    print(f"generated {video.shape[0]} frames in {time.perf_counter() - start:.1f} s")
    print(f"wrote {save_video(video, out / 'sparse', fps=example.fps)}")
    return out
