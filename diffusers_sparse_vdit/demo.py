"""``make demo``: the project end to end on whatever device is here.

1. Sparse attention on a realistic layout: a paper-like mixed layer (FULL, SKIP, DIAGONAL,
   MULTI_DIAGONAL, VERTICAL_STRIPE heads) on Wan2.1-1.3B's 480p grid (fewer frames on a CPU),
   checked against dense-mask SDPA on sampled query tiles, then timed against dense SDPA.
2. The search on the trained Wan reference pipeline (``reference_models/wan``): calibrate on
   two captions, solve for an attention-FLOP target, save and reload the map, draw it, and
   generate a held-out caption dense and sparse from one seed: a side-by-side PNG of the
   decoded frames, PSNR and SSIM, and the predicted speedup (``out/demo/``).

    python -m diffusers_sparse_vdit.demo [--skip-search]
"""

from __future__ import annotations

import argparse
import os
import time

import torch


def _device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def _time_ms(fn, reps: int) -> float:
    fn()
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(reps):
        fn()
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    return (time.perf_counter() - start) / reps * 1e3


def attention_demo() -> None:
    import torch.nn.functional as F

    from . import ModeSpec, TokenLayout, build_plan, sparse_attention
    from .kernels.check import sampled_error

    device = _device()
    gpu = device.type == "cuda"
    # Wan2.1-1.3B at 480p: 21 latent frames of 30 x 52 tokens; 3 frames on a CPU keep it quick
    layout = TokenLayout(21 if gpu else 3, 30, 52)
    dtype = torch.bfloat16 if gpu else torch.float32
    specs = [ModeSpec.full()] * 3 + [ModeSpec.skip()] + [ModeSpec.diagonal(1.0)] * 4 + [ModeSpec.multi_diagonal(1.0)] * 2
    specs += [ModeSpec.vertical_stripe(max(1, layout.video_tiles(128) // 10))] * 2
    plan = build_plan(specs, layout)
    print(f"[1/2] sparse attention on {layout}, {device} ({dtype}):\n      {plan}")

    q, k, v = (torch.randn(1, layout.num_tokens, len(specs), 128, device=device, dtype=dtype).transpose(1, 2)
               for _ in range(3))
    out = sparse_attention(q, k, v, plan)  # Triton on CUDA, the PyTorch reference elsewhere

    # check against fp32 dense-mask SDPA on sampled query tiles (the full N x N mask is too big)
    err = sampled_error(q, k, v, plan, out)
    print(f"      check vs fp32 dense-mask SDPA on sampled query tiles: relative error {err:.1e}"
          f" ({'ok' if err < 2e-2 else 'FAILED'})")

    reps = 20 if gpu else 1
    if gpu:
        from torch.nn.attention import SDPBackend, sdpa_kernel

        with sdpa_kernel([SDPBackend.CUDNN_ATTENTION, SDPBackend.FLASH_ATTENTION], set_priority=True):
            t_dense = _time_ms(lambda: F.scaled_dot_product_attention(q, k, v), reps)
    else:
        t_dense = _time_ms(lambda: F.scaled_dot_product_attention(q, k, v), reps)
    t_sparse = _time_ms(lambda: sparse_attention(q, k, v, plan), reps)
    print(f"      {'what':34s} {'ms':>9s} {'speedup':>8s}")
    print(f"      {'dense SDPA (fastest backend)':34s} {t_dense:9.2f} {1.0:8.2f}")
    name = "sparse, Triton kernel" if gpu else "sparse, PyTorch reference (CPU)"
    print(f"      {name:34s} {t_sparse:9.2f} {t_dense / t_sparse:8.2f}   density {plan.density:.2f}")
    if not gpu:
        print("      (on a CPU the reference loops over tiles in Python: the speedup needs the GPU kernel)")
    if err >= 2e-2:
        raise SystemExit("sparse attention disagrees with the reference")


def search_demo(out: str = "out/demo", target_density: float = 0.35) -> None:
    """Search the trained Wan reference pipeline, then compare dense and sparse frames of a held-out caption."""
    import numpy as np
    from PIL import Image

    from .config import SparseVDiTConfig
    from .evaluate import as_video, compare_videos
    from .plots import plot_mode_map
    from .processors import apply_sparse_vdit, remove_sparse_vdit
    from .reference import load_reference
    from .search import search

    device = _device()
    pipe, info = load_reference("wan", device=device)
    call = dict(info["generate"])
    size = {k: call.pop(k) for k in ("height", "width", "num_frames", "num_inference_steps", "guidance_scale")}
    prompts = info["calibration_prompts"][:2]
    print(f"\n[2/2] search on the trained Wan reference pipeline (reference_models/wan: 6 layers x 6 heads, "
          f"{info['video_tokens']} video tokens), {len(prompts)} calibration captions x {size['num_inference_steps']} steps:")
    # the default recipe, smaller so a CPU finishes in minutes: 4 step ranges, sensitivity on one caption
    result = search(pipe, prompts, target_density=target_density, step_ranges=4, sensitivity_prompts=1,
                    tile_size=info["tile_size"], sample_tiles=16, progress=True,
                    backend="torch" if device.type == "cpu" else "auto", pipeline_kwargs=call, **size)
    print("      " + result.summary().replace("\n", "\n      "))

    folder = os.path.abspath(out)
    os.makedirs(folder, exist_ok=True)
    result.config.save_pretrained(os.path.join(folder, "wan-map"))
    config = SparseVDiTConfig.from_pretrained(os.path.join(folder, "wan-map"))  # what a user would load
    plot_mode_map(config, os.path.join(folder, "mode_map.png"))

    prompt = info["heldout_prompts"][0]  # a colour-shape pair neither training nor calibration saw

    def generate():
        frames = pipe(prompt, generator=torch.Generator().manual_seed(7), output_type="np", **size, **call).frames[0]
        return as_video(frames)

    dense = generate()
    apply_sparse_vdit(pipe, config)
    sparse = generate()
    remove_sparse_vdit(pipe)
    metrics = compare_videos(dense, sparse, lpips=False)
    rows = [torch.cat(list(v), dim=2) for v in (dense, sparse)]  # (3, H, frames * W) each
    strip = (torch.cat(rows, dim=1).permute(1, 2, 0).numpy() * 255).astype(np.uint8)
    picture = os.path.join(folder, "dense_vs_sparse.png")
    Image.fromarray(strip).resize((strip.shape[1] * 2, strip.shape[0] * 2), Image.NEAREST).save(picture)
    print(f"      held-out caption: {prompt!r}")
    print(f"      map: {config.mode_counts()}; attention FLOPs {result.attention_density:.2f} of dense "
          f"({result.attention_speedup:.2f}x fewer; predicted end to end {result.end_to_end_speedup:.2f}x at "
          "the family's measured attention share)")
    print(f"      sparse vs dense, same seed: PSNR {metrics['psnr']:.1f} dB, SSIM {metrics['ssim']:.3f}")
    print(f"      wrote {picture} (top: dense, bottom: sparse), {os.path.join(folder, 'mode_map.png')} "
          f"and the map in {os.path.join(folder, 'wan-map')}")


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--skip-search", action="store_true", help="only the attention part")
    args = parser.parse_args(argv)
    if not torch.cuda.is_available():
        os.environ.setdefault("TRITON_INTERPRET", "1")
    attention_demo()
    if not args.skip_search:
        search_demo()


if __name__ == "__main__":
    main()
