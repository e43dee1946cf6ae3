"""The quality frontier: error against attention density, our search against the baselines.

For each reference pipeline (``--pipeline FOLDER``, loaded with
``diffusers_sparse_vdit.reference.load_reference``) or tiny random one (``--tiny FAMILY``),
every held-out caption is generated dense once, then with each method at each total
attention density (dense warm-up steps counted), from the same seed. Reported per method and
density: relative L2 of the final latents (``||x - x_dense|| / ||x_dense||``) and PSNR/SSIM of
the decoded frames, averaged over the captions.

Methods (``--methods``):

* ``ours``: ``search.calibrate`` on the calibration captions (once per pipeline; the scores
  are cached in ``--out``), then ``solve_budget`` at each density; ``ours_warmup`` the same
  with ``--warmup-steps`` dense steps; ``ours_ranges`` with scores per step range (the
  steps cut in ``--ranges`` equal ranges, two by default); ``ours_sens`` and
  ``ours_ranges_sens`` the same two after ``measure_sensitivity`` on the calibration captions
  (by layer, and by ``--sensitivity-groups``), so the solver weighs each entry's error by how much
  it moves the final latents;
* ``paper``: ``solve_paper`` at its defaults (one point, at the density it lands on);
* the baselines of :mod:`diffusers_sparse_vdit.baselines` (``diagonal``, ``multi_diagonal``,
  ``svg``, ``radial``, ``sliding_tile``), and each with ``_warmup`` appended.

The noise floor is dense against dense with another correct computation: SDPA's math
backend (``floor_backend``), and the pipeline in the other of float32 / bfloat16
(``floor_dtype``). Token-mask baselines are placed at the tile-level density a block-sparse
kernel would compute (their token-level density is in the JSON too).

    python benchmarks/bench_quality.py --pipeline wan cogvideox hunyuan_video --device cuda   # reference_models/
    python benchmarks/bench_quality.py --tiny wan --max-prompts 1 --densities 0.5   # seconds, CPU

Writes ``--out``/quality_<name>.json (every number, the settings, timings) and
``quality_<name>.png`` (a column per pipeline: relative L2 above, PSNR below).
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import os
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from diffusers_sparse_vdit.logs import get_logger  # noqa: E402
from tqdm.auto import tqdm  # noqa: E402

from diffusers_sparse_vdit import remove_sparse_vdit  # noqa: E402
from diffusers_sparse_vdit.baselines import BASELINES, apply_baseline, generation_layout  # noqa: E402
from diffusers_sparse_vdit.evaluate import _jsonable, as_video, compare_videos  # noqa: E402
from diffusers_sparse_vdit.processors import apply_sparse_vdit  # noqa: E402
from diffusers_sparse_vdit.search import (  # noqa: E402
    ScoreSet, calibrate, default_candidates, measure_sensitivity, solve_budget, solve_paper,
)

logger = get_logger("diffusers_sparse_vdit.bench_quality")  # diffusers.sparse_vdit.bench_quality

DENSITIES = (0.6, 0.45, 0.35, 0.25, 0.15)
OURS = ("ours", "ours_warmup", "ours_ranges", "ours_sens", "ours_ranges_sens", "paper")
METHODS = OURS + BASELINES + tuple(f"{b}_warmup" for b in BASELINES)
DEFAULT_METHODS = OURS + BASELINES
FLOORS = ("floor_backend", "floor_dtype")
_CALIBRATE_KEYS = ("height", "width", "num_frames", "num_inference_steps", "guidance_scale")


# Pipelines ----------------------------------------------------------------------------------
def tiny_reference(variant: str):
    """A tiny random pipeline with the info dict a reference folder holds (tile 16, 3 steps)."""
    from diffusers_sparse_vdit.testing import tiny_pipeline, tiny_pipeline_inputs

    generate = tiny_pipeline_inputs(variant, num_inference_steps=3)
    for key in ("prompt", "generator", "output_type"):
        generate.pop(key)
    generate.update(height=64, width=96)  # 4 x 6 tokens a frame, 3 latent frames: 5 tiles of 16
    info = {
        "family": variant,
        "generate": generate,
        "tile_size": 16,
        "calibration_prompts": ["a dog runs on the beach at sunset"],
        "heldout_prompts": ["a cat walks in the city at night", "a blue river in the forest"],
    }
    return tiny_pipeline(variant), info


def load_pipelines(args):
    if args.tiny:
        return [(f"tiny_{v}", *tiny_reference(v)) for v in args.tiny]
    from diffusers_sparse_vdit.reference import load_reference

    dtype = getattr(torch, args.dtype)
    return [(Path(folder).name, *load_reference(folder, torch_dtype=dtype)) for folder in args.pipeline]


# One generation -------------------------------------------------------------------------------
def generate(pipe, prompt: str, seed: int, call: dict) -> tuple[torch.Tensor, torch.Tensor, float]:
    """Final latents (float32, CPU), decoded frames (``as_video``) and wall seconds of one generation."""
    final = {}

    def keep_latents(pipeline, step, timestep, callback_kwargs):
        final["latents"] = callback_kwargs["latents"]
        return callback_kwargs

    cuda = pipe._execution_device.type == "cuda"
    if cuda:
        torch.cuda.synchronize()
    start = time.perf_counter()
    out = pipe(prompt=prompt, generator=torch.Generator("cpu").manual_seed(seed), output_type="pt",
               callback_on_step_end=keep_latents, callback_on_step_end_tensor_inputs=["latents"], **call)
    if cuda:
        torch.cuda.synchronize()
    return final["latents"].float().cpu(), as_video(out.frames[0]), time.perf_counter() - start


def compare(dense, run) -> dict:
    (x_dense, video_dense, _), (x, video, seconds) = dense, run
    metrics = compare_videos(video_dense, video, lpips=False)
    return {"rel_l2": float((x - x_dense).norm() / x_dense.norm()), "psnr": metrics["psnr"], "ssim": metrics["ssim"],
            "seconds": seconds}


# Methods ----------------------------------------------------------------------------------------
def cached_scores(cache: Path, settings: dict, compute) -> ScoreSet:
    """``compute()``'s scores, or the ones saved in ``cache`` for the same ``settings``."""
    stamp = cache / "settings.json"
    if stamp.exists() and json.loads(stamp.read_text()) == _jsonable(settings):
        return ScoreSet.load(cache)
    stamp.unlink(missing_ok=True)  # the scores below replace the cached ones
    scores = compute()
    scores.save(cache)
    write_atomic(stamp, json.dumps(_jsonable(settings), indent=2) + "\n")  # last: a half-written cache has none
    return scores


def _pipeline_kwargs(info: dict) -> dict:
    return {k: v for k, v in info["generate"].items() if k not in _CALIBRATE_KEYS}


def calibrated_scores(pipe, info: dict, cache: Path, args, layout, step_ranges=None) -> ScoreSet:
    """``calibrate`` on the calibration captions, or its cached result for the same settings."""
    gen = info["generate"]
    settings = {"prompts": info["calibration_prompts"], "generate": gen, "tile_size": info["tile_size"],
                "step_ranges": step_ranges, "seed": args.seed, "dtype": args.dtype, "device": args.device,
                "backend": args.backend, "band_densities": args.band_densities}

    def compute():
        candidates = None if args.band_densities is None else default_candidates(
            layout, info["tile_size"], band_densities=args.band_densities)
        return calibrate(pipe, info["calibration_prompts"], seed=args.seed, tile_size=info["tile_size"],
                         step_ranges=step_ranges, backend=args.backend, candidates=candidates,
                         pipeline_kwargs=_pipeline_kwargs(info), **{k: gen[k] for k in _CALIBRATE_KEYS if k in gen})

    return cached_scores(cache, settings, compute)


def sensitive_scores(pipe, info: dict, scores: ScoreSet, cache: Path, args, groups: str) -> ScoreSet:
    """``measure_sensitivity`` of ``scores`` on the calibration captions, or its cached result."""
    prompts = info["calibration_prompts"][: args.sensitivity_prompts]
    settings = {"scores": scores.to_dict(), "groups": groups, "density": args.sensitivity_density,
                "prompts": prompts, "seed": args.seed, "backend": args.backend}
    return cached_scores(cache, settings, lambda: measure_sensitivity(
        pipe, scores, prompts, target_density=args.sensitivity_density, groups=groups, seed=args.seed,
        backend=args.backend, pipeline_kwargs=_pipeline_kwargs(info)))


# --precision: how our maps' heads compute; "fp8" keeps the heads whose measured FP8 error passes
# the solver's threshold (DEFAULT_FP8_MAX_ERROR) native, "fp8-all" runs every head in FP8
PRECISIONS = {"native": ("native", None), "fp8": ("fp8", None), "fp8-all": ("fp8", 1e9)}


def install(pipe, method: str, density: float | None, ctx: dict, precision: str = "native") -> dict:
    """Install ``method`` at total ``density``; returns what it computes (raises ValueError when out of reach)."""
    steps, warmup = ctx["steps"], ctx["warmup"]
    if method in OURS:
        scores = ctx["scores_" + method.removeprefix("ours_")] if method not in ("ours", "ours_warmup", "paper") \
            else ctx["scores"]
        w = warmup if method == "ours_warmup" else 0
        kind, threshold = PRECISIONS[precision]
        fp8 = {"precision": kind, **({} if threshold is None else {"fp8_max_error": threshold})}
        result = (solve_paper(scores, **fp8) if method == "paper"
                  else solve_budget(scores, target_density=density, dense_warmup_steps=w, **fp8))
        apply_sparse_vdit(pipe, result.config, backend=ctx["backend"])
        return {"attention_density": result.attention_density, "dense_warmup_steps": w,
                "mode_counts": result.config.mode_counts(), "predicted_error": result.error,
                "precision": precision, "fp8_heads": result.config.fp8_count(),
                "sensitivity": None if scores.sensitivity is None else scores.sensitivity.tolist()}
    base, w = (method.removesuffix("_warmup"), warmup) if method.endswith("_warmup") else (method, 0)
    info = apply_baseline(pipe, base, density, layout=ctx["layout"], num_inference_steps=steps, dense_warmup_steps=w,
                          tile_size=ctx["tile_size"], backend=ctx["backend"], seed=ctx["seed"])
    return info.to_dict()


def floor_run(pipe, floor: str, prompts, ctx):
    """Dense generations computed another correct way, and how."""
    from torch.nn.attention import SDPBackend, sdpa_kernel

    if floor == "floor_backend":
        with sdpa_kernel([SDPBackend.MATH]):
            return [ctx["generate"](pipe, p, i) for i, p in enumerate(prompts)], {"sdpa_backend": "math"}
    other = torch.bfloat16 if pipe.transformer.dtype == torch.float32 else torch.float32
    twin = copy.deepcopy(pipe).to(dtype=other)  # a copy: casting the pipeline there and back could round its weights
    return [ctx["generate"](twin, p, i) for i, p in enumerate(prompts)], {"dtype": str(other).removeprefix("torch.")}


def run_pipeline(name: str, pipe, info: dict, args, bar, on_row=lambda rows: None) -> list[dict]:
    """Every method on one pipeline; ``on_row(rows)`` after each result (the caller saves progress)."""
    gen = dict(info["generate"])
    steps = int(gen["num_inference_steps"])
    warmup = args.warmup_steps if args.warmup_steps is not None else max(1, round(0.2 * steps))
    prompts = info["heldout_prompts"][: args.max_prompts]

    def run(p, prompt, i):
        out = generate(p, prompt, args.seed + i, gen)
        bar.update(1)
        return out

    layout = generation_layout(pipe, prompt=prompts[0], generator=torch.Generator("cpu").manual_seed(0), **gen)
    ctx = {"steps": steps, "warmup": warmup, "layout": layout, "tile_size": int(info["tile_size"]),
           "backend": args.backend, "seed": args.seed, "generate": run}
    cache = Path(args.out) / f"quality_{name}_scores"
    if {"ours", "ours_warmup", "ours_sens", "paper"} & set(args.methods):
        ctx["scores"] = calibrated_scores(pipe, info, cache / "single", args, layout)
    if {"ours_ranges", "ours_ranges_sens"} & set(args.methods):
        cuts = [round(i * steps / args.ranges) for i in range(args.ranges)] + [-1]
        ranges = [[a, b] for a, b in zip(cuts[:-1], cuts[1:])]
        ctx["scores_ranges"] = calibrated_scores(pipe, info, cache / f"ranges{args.ranges}", args, layout, ranges)
    if "ours_sens" in args.methods:
        ctx["scores_sens"] = sensitive_scores(pipe, info, ctx["scores"], cache / "single_sens_layers", args, "layers")
    if "ours_ranges_sens" in args.methods:
        groups = args.sensitivity_groups
        ctx["scores_ranges_sens"] = sensitive_scores(pipe, info, ctx["scores_ranges"],
                                                     cache / f"ranges{args.ranges}_sens_{groups}", args, groups)

    dense = [run(pipe, p, i) for i, p in enumerate(prompts)]
    rows = []

    def row(method, density, runs, details):
        per_prompt = [{"prompt": p, **compare(d, r)} for p, d, r in zip(prompts, dense, runs, strict=True)]
        means = {k: _mean([r[k] for r in per_prompt]) for k in ("rel_l2", "psnr", "ssim", "seconds")}
        rows.append({"pipeline": name, "family": info["family"], "method": method, "target_density": density,
                     **{k: details.get(k) for k in ("attention_density", "token_density", "dense_warmup_steps")},
                     **means, "per_prompt": per_prompt, "details": details})
        on_row(rows)

    for floor in args.floors:
        runs, details = floor_run(pipe, floor, prompts, ctx)
        row(floor, 1.0, runs, {"attention_density": 1.0, "dense_warmup_steps": 0, **details})
    for base in args.methods:
        for precision in args.precision if base in OURS else ["native"]:
            method = base if precision == "native" else f"{base}+{precision}"
            for density in ([None] if base == "paper" else args.densities):
                try:
                    details = install(pipe, base, density, ctx, precision)
                except ValueError as e:  # e.g. the warm-up alone costs more than the target
                    logger.warning(f"{name}: {method} at density {density} skipped: {e}")
                    rows.append({"pipeline": name, "family": info["family"], "method": method,
                                 "target_density": density, "skipped": str(e)})
                    bar.update(len(prompts))
                    continue
                try:
                    runs = [run(pipe, p, i) for i, p in enumerate(prompts)]
                finally:
                    remove_sparse_vdit(pipe)
                row(method, density, runs, details)
    return rows


def _mean(values):
    values = [v for v in values if v is not None]
    return sum(values) / len(values) if values else None


# Report ------------------------------------------------------------------------------------------
def print_table(rows) -> None:
    print(f"{'pipeline':<18} {'method':<22} {'target':>7} {'density':>8} {'rel-L2':>9} {'PSNR':>7} {'SSIM':>7}")
    for r in rows:
        target = "-" if r["target_density"] is None else f"{r['target_density']:.2f}"
        if "skipped" in r:
            print(f"{r['pipeline']:<18} {r['method']:<22} {target:>7} {'skipped: ' + r['skipped'][:60]}")
            continue
        psnr = f"{r['psnr']:.2f}" if math.isfinite(r["psnr"]) else "inf"
        ssim = f"{r['ssim']:.4f}" if r["ssim"] is not None else "-"
        print(f"{r['pipeline']:<18} {r['method']:<22} {target:>7} {r['attention_density']:>8.3f} {r['rel_l2']:>9.2e} "
              f"{psnr:>7} {ssim:>7}")


def plot(rows, path: Path) -> Path | None:
    try:
        from matplotlib.figure import Figure
    except ImportError:
        logger.warning("no plot: matplotlib is not installed (pip install matplotlib)")
        return None
    pipelines = list(dict.fromkeys(r["pipeline"] for r in rows))
    fig = Figure(figsize=(4.5 * len(pipelines), 7), layout="constrained")
    axes = fig.subplots(2, len(pipelines), squeeze=False)
    for col, name in enumerate(pipelines):
        done = [r for r in rows if r["pipeline"] == name and "skipped" not in r]
        for ax, metric, label in ((axes[0, col], "rel_l2", "relative L2 of final latents"),
                                  (axes[1, col], "psnr", "PSNR of decoded frames (dB)")):
            shown = []
            for method in dict.fromkeys(r["method"] for r in done):
                points = sorted((r["attention_density"], r[metric]) for r in done if r["method"] == method
                                and r[metric] is not None and math.isfinite(r[metric]))
                if not points:
                    continue
                if method in FLOORS:
                    ax.axhline(points[0][1], linestyle=":", color="grey" if method == "floor_dtype" else "black",
                               label=f"{method} ({points[0][1]:.3g})")
                    continue
                shown += [y for _, y in points]
                xs, ys = zip(*points)
                ax.plot(xs, ys, marker="*" if method == "paper" else "o", markersize=10 if method == "paper" else 4,
                        linestyle="none" if len(xs) == 1 else "-", label=method)
            ax.set_xlabel("total attention density (tile-level, warm-up counted)")
            ax.set_ylabel(label)
            if metric == "psnr" and shown:  # a near-identical floor (150 dB) would flatten the methods
                ax.set_ylim(min(shown) - 3, max(shown) + 3)
            if metric == "rel_l2":
                ax.set_yscale("log")
                if shown:  # the backend floor (~1e-6) would squash the methods into one line
                    ax.set_ylim(min(min(shown) / 2, _floor(done, "floor_dtype") or 1), max(shown) * 1.5)
                ax.set_title(f"{name} ({done[0]['family']})" if done else name)
            ax.grid(alpha=0.3)
        axes[0, col].legend(fontsize=7)
    fig.savefig(path, dpi=120)
    return path


def _floor(rows, name: str):
    return next((r["rel_l2"] for r in rows if r["method"] == name), None)


def write_atomic(path: Path, text: str) -> None:
    aside = path.with_name(path.name + ".tmp")
    aside.write_text(text)
    os.replace(aside, path)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--pipeline", nargs="+", metavar="FOLDER",
                        help="reference pipeline folders, or family names under reference_models/")
    source.add_argument("--tiny", nargs="+", metavar="FAMILY", choices=("wan", "cogvideox", "hunyuan_video"),
                        help="tiny random pipelines instead (for testing the benchmark)")
    parser.add_argument("--densities", nargs="+", type=float, default=list(DENSITIES))
    parser.add_argument("--methods", nargs="+", default=list(DEFAULT_METHODS), choices=METHODS, metavar="METHOD",
                        help=f"any of {', '.join(METHODS)} (default: {' '.join(DEFAULT_METHODS)})")
    parser.add_argument("--floors", nargs="*", default=list(FLOORS), choices=FLOORS)
    parser.add_argument("--warmup-steps", type=int, default=None,
                        help="dense warm-up steps of the *_warmup methods (default: a fifth of the steps, at least 1)")
    parser.add_argument("--ranges", type=int, default=2, help="step ranges of ours_ranges (equal parts of the steps)")
    parser.add_argument("--sensitivity-groups", default="ranges", choices=("ranges", "layers"),
                        help="what ours_ranges_sens measures a sensitivity for (ours_sens: layers)")
    parser.add_argument("--sensitivity-density", type=float, default=0.25,
                        help="total density of the probe map of the *_sens methods")
    parser.add_argument("--sensitivity-prompts", type=int, default=None,
                        help="measure the *_sens sensitivity on only the first N calibration captions")
    parser.add_argument("--band-densities", nargs="+", type=float, default=None,
                        help="tile densities of the DIAGONAL / MULTI_DIAGONAL candidates (default: the search's)")
    parser.add_argument("--calibration-prompts", type=int, default=None,
                        help="calibrate on only the first N calibration captions")
    parser.add_argument("--max-prompts", type=int, default=None, help="use only the first N held-out captions")
    parser.add_argument("--seed", type=int, default=0, help="caption i is generated from seed + i")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--dtype", default=None, choices=("float32", "bfloat16", "float16"),
                        help="default: bfloat16 on CUDA, float32 on the CPU")
    parser.add_argument("--backend", default="auto", help="sparse kernel backend (see apply_sparse_vdit)")
    parser.add_argument("--precision", nargs="+", default=["native"], choices=sorted(PRECISIONS),
                        help="our maps' precisions, each evaluated (fp8: heads over the solver's FP8 error threshold "
                        "stay native; fp8-all: every head). FP8 runs the Hopper kernel at tile 128 on CUDA, the "
                        "torch backend's simulation of the same roundings elsewhere (the reference models use "
                        "tile 64: pass --backend torch)")
    parser.add_argument("--name", default=None, help="output name (default: tiny, or the folders' names)")
    parser.add_argument("--out", default=str(Path(__file__).resolve().parent / "results"))
    args = parser.parse_args(argv)
    args.dtype = args.dtype or ("bfloat16" if args.device.startswith("cuda") else "float32")
    if args.max_prompts is not None and args.max_prompts < 1:
        parser.error(f"--max-prompts must be at least 1, got {args.max_prompts}")
    if not all(0 < d <= 1 for d in args.densities):
        parser.error(f"--densities are fractions of dense attention in (0, 1], got {args.densities}")
    name = args.name or ("tiny" if args.tiny else "_".join(Path(p).name for p in args.pipeline))
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)

    pipelines = load_pipelines(args)

    def save(rows, partial):
        report = _report(args, pipelines, rows, started, partial)
        write_atomic(out / f"quality_{name}.json", json.dumps(_jsonable(report), indent=2) + "\n")
    per_pipeline = len(args.floors) + 1 + sum(1 if m == "paper" else len(args.densities) for m in args.methods)
    rows, started = [], time.perf_counter()
    with tqdm(total=0, desc="Sparse-vDiT quality", unit="video") as bar:
        for pipe_name, pipe, info in pipelines:
            prompts = info["heldout_prompts"][: args.max_prompts]
            bar.total += per_pipeline * len(prompts)
            bar.refresh()
            if args.calibration_prompts is not None:
                info["calibration_prompts"] = info["calibration_prompts"][: args.calibration_prompts]
            pipe.to(args.device, dtype=getattr(torch, args.dtype))
            pipe.set_progress_bar_config(disable=True)
            done = list(rows)
            rows += run_pipeline(pipe_name, pipe, info, args, bar,
                                 on_row=lambda new: save(done + new, partial=True))
    save(rows, partial=False)
    png = plot(rows, out / f"quality_{name}.png")
    print_table(rows)
    print(f"wrote {out / f'quality_{name}.json'}" + (f" and {png}" if png else ""))
    return 0


def _report(args, pipelines, rows, started, partial: bool) -> dict:
    return {
        "settings": {k: v for k, v in vars(args).items()},
        "pipelines": {n: {"family": i["family"], "generate": i["generate"], "tile_size": i["tile_size"]}
                      for n, _, i in pipelines},
        "seconds": time.perf_counter() - started,
        "versions": {"torch": torch.__version__, "diffusers": __import__("diffusers").__version__},
        "partial": partial,  # True while the run is still going (or was cut short)
        "rows": rows,
    }


if __name__ == "__main__":
    raise SystemExit(main())
