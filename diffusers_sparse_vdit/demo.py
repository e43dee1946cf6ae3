"""``make demo``: the project end to end on whatever device is here.

1. Sparse attention on a realistic layout: a paper-like mixed layer (FULL, SKIP, DIAGONAL,
   MULTI_DIAGONAL, VERTICAL_STRIPE heads) on Wan2.1-1.3B's 480p grid (fewer frames on a CPU),
   checked against dense-mask SDPA on sampled query tiles, then timed against dense SDPA.
2. The search on a tiny random-weight Wan pipeline: calibrate on two prompts, solve for a
   speed target, save the map, load it back, generate with it, and report the map's density
   and how close the sparse video is to the dense one from the same seed.

    python -m diffusers_sparse_vdit.demo [--skip-search]
"""

from __future__ import annotations

import argparse
import os
import tempfile
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


def search_demo() -> None:
    import numpy as np

    from .config import SparseVDiTConfig
    from .processors import apply_sparse_vdit, remove_sparse_vdit
    from .search import search
    from .testing import tiny_pipeline, tiny_pipeline_inputs

    device = _device()
    pipe = tiny_pipeline("wan").to(device)
    pipe.set_progress_bar_config(disable=True)
    call = tiny_pipeline_inputs("wan")  # 9 frames of 32x48, CFG; the tiny text encoder's short prompts
    size = {k: call[k] for k in ("height", "width", "num_frames", "guidance_scale")}
    extra = {"negative_prompt": call["negative_prompt"], "max_sequence_length": call["max_sequence_length"]}
    prompts = ["a cat walks on a sunny beach", "a city street at night"]
    print(f"\n[2/2] search on a tiny random-weight Wan pipeline ({size}), 2 prompts x 4 steps:")
    # 16-token tiles: the toy latent grid (3 x 2 x 3) is smaller than one 128-token tile; in two
    # tiles the sparsest mask but SKIP keeps 0.80 of the pairs, so 1.2x is about what it can reach
    result = search(pipe, prompts, target_speedup=1.2, num_inference_steps=4, tile_size=16, sample_tiles=4,
                    backend="torch", progress=False, pipeline_kwargs=extra, **size)
    print("      " + result.summary().replace("\n", "\n      "))

    with tempfile.TemporaryDirectory() as folder:
        result.config.save_pretrained(folder)
        files = sorted(os.listdir(folder))
        config = SparseVDiTConfig.from_pretrained(folder)
    print(f"      saved and reloaded: {files}")

    prompt = "a dog runs in a green forest"

    def generate():
        frames = pipe(prompt, generator=torch.Generator().manual_seed(7), output_type="np", num_inference_steps=4,
                      **size, **extra).frames[0]
        return np.asarray(frames, dtype=np.float64)

    dense = generate()
    apply_sparse_vdit(pipe, config)
    sparse = generate()
    remove_sparse_vdit(pipe)
    mse = float(((dense - sparse) ** 2).mean())
    psnr = 10 * np.log10(1.0 / max(mse, 1e-12))
    print(f"      map: {config.mode_counts()}; attention FLOPs at the calibration size: "
          f"{result.attention_density:.2f} of dense ({result.attention_speedup:.2f}x fewer)")
    print(f"      sparse vs dense video, same seed: PSNR {psnr:.1f} dB over {dense.shape[0]} frames "
          "(random weights: the number shows agreement, not quality)")


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
