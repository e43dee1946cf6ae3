"""Search on a real-size random-weight Wan2.1-1.3B transformer (a few layers): time and peak memory.

The pipeline is Wan's, with a tiny random text encoder and VAE (no weights can be downloaded)
and the real transformer widths (12 heads x 128, dim 1536, FFN 8960) cut to ``--layers``
layers. The search calibrates on ``--prompts`` prompts x ``--steps`` steps at 480x832, 81
frames (32,760 tokens per attention call, CFG as two calls), stops before the VAE, then solves
for a 2x attention-FLOP target. Reported: search wall time, a plain dense generation's time for
scale, and peak GPU memory of both (the search must stay bounded: no N x N anywhere).

    python benchmarks/bench_search.py --out benchmarks/results/search_h100.json
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from diffusers_sparse_vdit.search import search  # noqa: E402
from diffusers_sparse_vdit.search.runner import DEFAULT_PROMPTS  # noqa: E402
from diffusers_sparse_vdit.testing import TEXT_DIM, tiny_pipeline  # noqa: E402


def real_size_pipeline(layers: int):
    import diffusers

    tiny = tiny_pipeline("wan")
    with torch.device("cuda"):
        torch.manual_seed(0)
        transformer = diffusers.WanTransformer3DModel(
            patch_size=(1, 2, 2), num_attention_heads=12, attention_head_dim=128, in_channels=16, out_channels=16,
            text_dim=TEXT_DIM, freq_dim=256, ffn_dim=8960, num_layers=layers, cross_attn_norm=True,
            qk_norm="rms_norm_across_heads", eps=1e-6, rope_max_seq_len=1024,
        )
    pipe = diffusers.WanPipeline(**{**tiny.components, "transformer": transformer.eval()})
    return pipe.to("cuda", torch.bfloat16)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--prompts", type=int, default=2)
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--out", default="benchmarks/results/search.json")
    args = parser.parse_args()
    if not torch.cuda.is_available():
        sys.exit("this benchmark needs a CUDA GPU")
    pipe = real_size_pipeline(args.layers)
    size = dict(height=480, width=832, num_frames=81, num_inference_steps=args.steps)
    prompts = list(DEFAULT_PROMPTS[: args.prompts])
    latent = {"output_type": "latent"}

    torch.cuda.reset_peak_memory_stats()
    start = time.perf_counter()
    pipe(prompts[0], generator=torch.Generator("cuda").manual_seed(0), **size, **latent)
    torch.cuda.synchronize()
    t_dense = time.perf_counter() - start
    peak_dense = torch.cuda.max_memory_allocated() / 2**30

    torch.cuda.reset_peak_memory_stats()
    start = time.perf_counter()
    result = search(pipe, prompts, target_speedup=2.0, pipeline_kwargs=latent, **size)
    torch.cuda.synchronize()
    t_search = time.perf_counter() - start
    peak_search = torch.cuda.max_memory_allocated() / 2**30
    print(result.summary())
    row = {
        "device": torch.cuda.get_device_name(), "torch": torch.__version__, "layers": args.layers,
        "prompts": len(prompts), "steps": args.steps, **size, "tokens": 21 * 30 * 52,
        "s_dense_generation_one_prompt": t_dense, "s_search": t_search,
        "search_over_dense_per_prompt": t_search / len(prompts) / t_dense,
        "peak_gib_dense": peak_dense, "peak_gib_search": peak_search,
        "predicted_attention_speedup": result.attention_speedup, "predicted_end_to_end": result.end_to_end_speedup,
        "mode_counts": result.config.mode_counts(),
    }
    print(json.dumps(row, indent=1))
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(row, indent=1))


if __name__ == "__main__":
    main()
