"""End-to-end benchmark: one full transformer forward at real dims (random weights), dense vs sparse.

For each family, in one run (bf16, batch 1, ``torch.no_grad``):

* stock diffusers with PyTorch's default SDPA choice (FA2 first on Hopper; HunyuanVideo's
  masked text drops to the memory-efficient kernel): what a user has today;
* stock with the fastest dense kernel installed (FA3 or FA4 dense for unmasked calls, as
  ``backend="auto"`` picks; else cuDNN, then FLASH, EFFICIENT): the honest baseline;
* the same with the sparse self-attention replaced by a no-op: the attention share ``a``;
* our processors with a paper-like mixed map at the paper's attention FLOP reduction
  (1.7x Wan2.1, 2.1x CogVideoX1.5, 2.4x HunyuanVideo); dense paths under the same fast backend;
  with ``--frontier-psnr``, also at the lowest total density where the search's default recipe
  reached that PSNR on the quality frontier (``results/quality_h200.json``), one row per map;
* with ``--precision native,fp8``, every map also with its heads in FP8 (``apply_sparse_vdit(...,
  precision="fp8")``: our FP8 kernel, K/V quantization included), beside the same map in 16 bits.

It prints the measured speedups beside the Amdahl bound ``1 / ((1 - a) + a * density)`` and
writes JSON. ``--layers`` cuts the depth (same per-layer shapes); a correctness check runs
first (our all-FULL map through the Triton kernel against stock, same inputs).

    python benchmarks/bench_e2e.py --out benchmarks/results/e2e_h100.json
"""

from __future__ import annotations

import argparse
import contextlib
import json
import random
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_kernel import spec_for_tile_density, time_ms  # noqa: E402

from diffusers_sparse_vdit import Mode, ModeSpec, SparseVDiTConfig, TokenLayout, build_plan  # noqa: E402
from diffusers_sparse_vdit.kernels.dense import choose_dense_backend, dense_attention_fast  # noqa: E402
from diffusers_sparse_vdit.plan import spec_density  # noqa: E402
from diffusers_sparse_vdit.processors import apply_sparse_vdit, family_of, remove_sparse_vdit, sparse_targets  # noqa: E402
from diffusers_sparse_vdit.testing import tiny_transformer_inputs  # noqa: E402

MODELS = {
    # name: (diffusers class, real config, latent grid after patchify, text tokens, paper FLOP reduction)
    "wan2.1-1.3b-480p": (
        "WanTransformer3DModel",
        dict(patch_size=(1, 2, 2), num_attention_heads=12, attention_head_dim=128, in_channels=16, out_channels=16,
             text_dim=4096, freq_dim=256, ffn_dim=8960, num_layers=30, cross_attn_norm=True,
             qk_norm="rms_norm_across_heads", eps=1e-6, rope_max_seq_len=1024),
        (21, 30, 52), 512, 1.7,
    ),
    "cogvideox1.5-5b-768p": (
        "CogVideoXTransformer3DModel",
        dict(num_attention_heads=48, attention_head_dim=64, in_channels=16, out_channels=16, time_embed_dim=512,
             text_embed_dim=4096, num_layers=42, sample_width=300, sample_height=300, sample_frames=81, patch_size=2,
             patch_size_t=2, patch_bias=False, max_text_seq_length=226, use_rotary_positional_embeddings=True,
             use_learned_positional_embeddings=False),
        (11, 48, 85), 226, 2.1,
    ),
    "hunyuanvideo-720p": (
        "HunyuanVideoTransformer3DModel",
        dict(in_channels=16, out_channels=16, num_attention_heads=24, attention_head_dim=128, num_layers=20,
             num_single_layers=40, num_refiner_layers=2, mlp_ratio=4.0, patch_size=2, patch_size_t=1,
             qk_norm="rms_norm", guidance_embeds=True, text_embed_dim=4096, pooled_projection_dim=768,
             rope_theta=256.0, rope_axes_dim=(16, 56, 56)),
        (33, 45, 80), 256, 2.4,
    ),
}
# depth cut per model (--layers default): same per-layer shapes, proportionally fewer layers
DEFAULT_CUT = {"wan2.1-1.3b-480p": {}, "cogvideox1.5-5b-768p": {"num_layers": 6},
               "hunyuanvideo-720p": {"num_layers": 2, "num_single_layers": 4}}


def build(name: str, cut: dict):
    import diffusers

    cls_name, config, grid, text, _ = MODELS[name]
    with torch.device("cuda"):
        torch.manual_seed(0)
        model = getattr(diffusers, cls_name)(**{**config, **cut})
    return model.to(torch.bfloat16).eval()


def paper_like_map(model, grid, text_tokens, reduction: float, seed: int = 0) -> tuple[SparseVDiTConfig, TokenLayout]:
    """~30% FULL, 30% DIAGONAL, 20% MULTI_DIAGONAL, 15% VERTICAL_STRIPE, 5% SKIP heads per layer,
    the sparse modes' tile density chosen so the whole map computes 1/reduction of dense attention."""
    family = family_of(model)
    targets = sparse_targets(model)
    heads = model.config.num_attention_heads
    position = {"wan": "none", "cogvideox": "before", "hunyuan_video": "after"}[family.name]
    layout = TokenLayout(*grid, text_tokens=text_tokens if position != "none" else 0, text_position=position)
    n_skip = max(1, round(0.05 * heads))
    counts = {Mode.DIAGONAL: round(0.30 * heads), Mode.MULTI_DIAGONAL: round(0.20 * heads),
              Mode.VERTICAL_STRIPE: round(0.15 * heads)}
    n_full = heads - n_skip - sum(counts.values())

    def specs_for(x: float) -> list[ModeSpec]:
        specs = [ModeSpec.full()] * n_full + [ModeSpec.skip()] * n_skip
        for mode, n in counts.items():
            specs += [spec_for_tile_density(mode, x, layout, 128)] * n
        return specs

    def density(specs) -> float:
        return sum(spec_density(s, layout, 128)[0] for s in specs) / len(specs)

    lo, hi = 0.0, 1.0  # bisect the sparse heads' density to hit the target
    for _ in range(12):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if density(specs_for(mid)) < 1 / reduction else (lo, mid)
    base = specs_for(lo)
    rng = random.Random(seed)
    layers = [rng.sample(base, len(base)) for _ in targets]  # a different head order in every layer
    return SparseVDiTConfig.from_specs(layers, family=family.name, transformer_class=type(model).__name__,
                                       target_modules=targets), layout


QUALITY_FRONTIER = Path(__file__).resolve().parent / "results" / "quality_h200.json"
FRONTIER_METHOD = "ours_ranges_sens[default]"  # search() at its defaults (docs/search.md's "ours" column)


def frontier_density(family: str, min_psnr: float, path: Path = QUALITY_FRONTIER) -> float | None:
    """The lowest total attention density at which the default search recipe reached ``min_psnr`` dB for ``family``."""
    rows = json.loads(Path(path).read_text())["rows"]
    ok = [r["attention_density"] for r in rows
          if r["family"] == family and r["method"] == FRONTIER_METHOD and r["psnr"] >= min_psnr]
    return min(ok) if ok else None


def key_prefix_lengths(mask, batch: int, keys: int):
    """Per-item key counts of a boolean mask that keeps a prefix of the keys for every query, else None."""
    if mask is None or mask.dtype != torch.bool or mask.shape[-1] != keys or any(n != 1 for n in mask.shape[1:-1]):
        return None
    mask = mask.reshape(mask.shape[0], keys).expand(batch, keys)
    lengths = mask.sum(-1)
    prefix = torch.arange(keys, device=mask.device)[None, :] < lengths[:, None]
    return lengths if bool((prefix == mask).all()) else None


@contextlib.contextmanager
def fastest_dense():
    """Dense attention on the fastest kernel installed: 16-bit calls without a mask or with a key-prefix
    mask (HunyuanVideo's padded text) on FA3 or FA4 dense where present (what backend="auto" picks,
    kernels/dense.py), every other call on SDPA with cuDNN first, then FLASH, EFFICIENT, MATH."""
    import torch.nn.functional as F
    from torch.nn.attention import SDPBackend, sdpa_kernel

    original = F.scaled_dot_product_attention

    def fast(query, key, value, attn_mask=None, dropout_p=0.0, is_causal=False, scale=None, enable_gqa=False,
             **kwargs):
        # diffusers' native backend passes enable_gqa=False explicitly: without it here, every call fell back
        if not is_causal and not dropout_p and scale is None and not enable_gqa and not kwargs and query.shape == key.shape:
            lengths = key_prefix_lengths(attn_mask, query.shape[0], key.shape[-2])
            if attn_mask is None or lengths is not None:
                backend = choose_dense_backend(query, attn_mask, key_lengths=lengths)
                if backend != "stock":
                    return dense_attention_fast(backend, query, key, value, lengths)
        return original(query, key, value, attn_mask=attn_mask, dropout_p=dropout_p, is_causal=is_causal, scale=scale,
                        enable_gqa=enable_gqa, **kwargs)

    order = [SDPBackend.CUDNN_ATTENTION, SDPBackend.FLASH_ATTENTION, SDPBackend.EFFICIENT_ATTENTION, SDPBackend.MATH]
    F.scaled_dot_product_attention = fast
    try:
        with sdpa_kernel(order, set_priority=True):
            yield
    finally:
        F.scaled_dot_product_attention = original


@contextlib.contextmanager
def no_self_attention(num_tokens: int):
    """SDPA calls over the whole joint sequence return their query: the rest of the forward, timed alone."""
    import torch.nn.functional as F

    original = F.scaled_dot_product_attention

    def fake(*args, **kwargs):
        names = ("query", "key", "value")
        q, k = (args[i] if len(args) > i else kwargs[names[i]] for i in range(2))
        if q.shape[-2] == k.shape[-2] == num_tokens:  # (B, H, N, D) over the whole joint sequence
            return q
        return original(*args, **kwargs)

    F.scaled_dot_product_attention = fake
    try:
        yield
    finally:
        F.scaled_dot_product_attention = original


def rel_err(a, b) -> float:
    a, b = a.float(), b.float()
    return ((a - b).norm() / b.norm()).item()


def bench_model(name: str, args, rows: list):
    cls_name, config, grid, text_tokens, reduction = MODELS[name]
    cut = {} if args.full_depth else dict(DEFAULT_CUT[name])
    if args.layers is not None:
        cut = {"num_layers": args.layers, **({"num_single_layers": 2 * args.layers} if name.startswith("hunyuan") else {})}
    model = build(name, cut)
    inputs = tiny_transformer_inputs(model, grid=grid, text_tokens=text_tokens, device="cuda", dtype=torch.bfloat16,
                                     text_lengths=[text_tokens // 2] if name.startswith("hunyuan") else None)
    maps = {"paper": paper_like_map(model, grid, text_tokens, reduction)}
    if args.frontier_psnr is not None:
        target = frontier_density(family_of(model).name, args.frontier_psnr)
        if target is None:
            print(f"  no density on the quality frontier reaches {args.frontier_psnr} dB for {name}", flush=True)
        else:
            maps[f"frontier>={args.frontier_psnr:g}dB"] = paper_like_map(model, grid, text_tokens, 1 / target)
    sparse_map, layout = maps["paper"]

    def map_density(config) -> float:
        return sum(build_plan(config.head_specs(i), layout).density for i in range(config.num_layers)) / config.num_layers

    densities = {key: map_density(config) for key, (config, _) in maps.items()}
    print(f"{name}: {cls_name} {cut or '(full depth)'}, {layout}, map densities "
          + ", ".join(f"{key} {d:.3f} ({1 / d:.2f}x fewer attention FLOPs)" for key, d in densities.items()), flush=True)

    @torch.no_grad()
    def forward():
        return model(**inputs)[0]

    # correctness first: our all-FULL map through the kernel "auto" takes here (all-FULL layers would
    # go to stock attention under "auto") equals stock attention
    kernel = "gluon" if torch.cuda.get_device_capability()[0] == 9 else "triton"
    with fastest_dense():
        stock = forward()
        full_map = SparseVDiTConfig.from_specs([[ModeSpec.full()] * sparse_map.num_heads] * sparse_map.num_layers,
                                               family=sparse_map.family, transformer_class=cls_name,
                                               target_modules=sparse_map.target_modules)
        apply_sparse_vdit(model, full_map, backend=kernel)
        err_full = rel_err(forward(), stock)
        apply_sparse_vdit(model, sparse_map)
        sparse_out = forward()
        err_sparse = rel_err(sparse_out, stock)
        remove_sparse_vdit(model)
        err_fp8 = None
        if "fp8" in args.precision:
            apply_sparse_vdit(model, sparse_map, precision="fp8")
            fp8_out = forward()
            err_fp8 = rel_err(fp8_out, sparse_out)
            remove_sparse_vdit(model)
            assert not fp8_out.isnan().any()
    print(f"  check: all-FULL map via the {kernel} kernel vs stock rel err {err_full:.2e}; mixed map vs stock {err_sparse:.2e}"
          + ("" if err_fp8 is None else f"; the mixed map in FP8 vs in 16 bits {err_fp8:.2e}"), flush=True)
    assert err_full < 2e-2 and not sparse_out.isnan().any()

    t_default = time_ms(forward, min_reps=3)
    with fastest_dense():
        t_fast = time_ms(forward, min_reps=3)
        with no_self_attention(layout.num_tokens):
            t_rest = time_ms(forward, min_reps=3)
        t_sparse = {}
        for key, (config, _) in maps.items():
            for precision in args.precision:
                apply_sparse_vdit(model, config, precision=precision)
                t_sparse[key, precision] = time_ms(forward, min_reps=3)
                remove_sparse_vdit(model)
    compiled = {}
    if args.compile:
        # torch.compile of the whole transformer, dense (same fast SDPA order) and sparse: the
        # sparse kernel is a registered custom op and the hook resolves plans outside the graph,
        # so the sparse model compiles to one graph too (tests/processors/test_compile.py)
        with fastest_dense(), torch.no_grad():
            graph = torch.compile(model)
            compiled["ms_fastest_dense_compiled"] = time_ms(lambda: graph(**inputs)[0], min_reps=3)
            apply_sparse_vdit(model, sparse_map)
            compiled["ms_sparse_compiled"] = time_ms(lambda: graph(**inputs)[0], min_reps=3)
            remove_sparse_vdit(model)
        compiled["speedup_compiled"] = compiled["ms_fastest_dense_compiled"] / compiled["ms_sparse_compiled"]
        print(f"  compiled: fastest dense {compiled['ms_fastest_dense_compiled']:.1f} ms | sparse "
              f"{compiled['ms_sparse_compiled']:.1f} ms ({compiled['speedup_compiled']:.2f}x)", flush=True)
    share = (t_fast - t_rest) / t_fast
    common = {
        "model": name, "class": cls_name, "depth_cut": cut, "layout": str(layout), "ms_stock_default": t_default,
        "ms_fastest_dense": t_fast,
        "fastest_dense_kernel": choose_dense_backend(torch.empty(1, 1, 1, 128, device="cuda", dtype=torch.bfloat16), None),
        "ms_without_attention": t_rest, "attention_share": share, "check_full_rel_err": err_full,
        "mixed_vs_dense_rel_err": err_sparse, "fp8_vs_native_rel_err": err_fp8, **compiled,
    }
    print(f"  stock default {t_default:.1f} ms | fastest dense {t_fast:.1f} ms | without attention {t_rest:.1f} ms "
          f"(share {share:.2f})", flush=True)
    for key, (config, _) in maps.items():
        for precision in args.precision:
            rows.append(sparse_row(common, key, config, densities[key], t_sparse[key, precision], precision,
                                   t_sparse.get((key, "native"))))


def sparse_row(common: dict, key: str, config, density: float, t_ours: float, precision: str = "native",
               t_native: float | None = None) -> dict:
    """One map's result row: its speedups against the dense timings of the same run (``common``) and, for
    FP8, against the same map in 16 bits (``t_native``)."""
    t_fast, t_default, share = common["ms_fastest_dense"], common["ms_stock_default"], common["attention_share"]
    bound = 1 / ((1 - share) + share * density)
    over_native = None if t_native is None else t_native / t_ours
    print(f"  {key} map (density {density:.3f}, {precision}): sparse {t_ours:.1f} ms, {t_fast / t_ours:.2f}x vs fastest "
          f"dense (Amdahl bound {bound:.2f}x, {t_fast / t_ours / bound:.0%} of it), {t_default / t_ours:.2f}x vs stock default"
          + ("" if precision == "native" or over_native is None else f", {over_native:.2f}x vs the map in 16 bits"),
          flush=True)
    return {
        **common, "map": key, "precision": precision, "map_density": density, "flop_reduction": 1 / density,
        "ms_sparse": t_ours, "amdahl_bound": bound, "speedup_vs_fastest_dense": t_fast / t_ours,
        "fraction_of_amdahl": t_fast / t_ours / bound, "speedup_vs_stock_default": t_default / t_ours,
        "speedup_vs_native": over_native, "mode_counts": config.mode_counts(),
    }


def precisions(text: str) -> list[str]:
    """``--precision``: comma-separated ``native`` / ``fp8``, refused before any GPU work."""
    got = [p.strip() for p in text.split(",") if p.strip()]
    bad = sorted(set(got) - {"native", "fp8"})
    if bad or not got:
        raise argparse.ArgumentTypeError(f"unknown precision {', '.join(bad) or '(none)'}: use native, fp8 or native,fp8")
    return list(dict.fromkeys(got))


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--models", default=",".join(MODELS))
    parser.add_argument("--full-depth", action="store_true", help="all layers (default: the depth cut in DEFAULT_CUT)")
    parser.add_argument("--layers", type=int, help="cut every model to this many (dual-stream) layers")
    parser.add_argument("--compile", action="store_true", help="also time torch.compile'd dense and sparse forwards")
    parser.add_argument("--frontier-psnr", type=float, help="also time a map at the lowest density where the default "
                        "search recipe reached this PSNR (dB) on the committed quality frontier (quality_h200.json)")
    parser.add_argument("--precision", type=precisions, default=["native"],
                        help="comma-separated precisions to time every map in: native, fp8 (FP8 heads on our FP8 kernel)")
    parser.add_argument("--out", default="benchmarks/results/e2e.json")
    args = parser.parse_args()
    if not torch.cuda.is_available():
        sys.exit("this benchmark needs a CUDA GPU")
    import diffusers
    import triton

    meta = {"device": torch.cuda.get_device_name(), "torch": torch.__version__, "triton": triton.__version__,
            "diffusers": diffusers.__version__, "cudnn": torch.backends.cudnn.version(),
            "date": time.strftime("%Y-%m-%d %H:%M:%S"), "dtype": "bfloat16", "batch": 1}
    print(json.dumps(meta), flush=True)
    rows = []
    for name in args.models.split(","):
        try:
            bench_model(name, args, rows)
        except Exception as e:
            print(f"  {name} failed: {type(e).__name__}: {e}", flush=True)
            rows.append({"model": name, "error": f"{type(e).__name__}: {e}"})
        torch.cuda.empty_cache()
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps({"meta": meta, "rows": rows}, indent=1))
    print(f"\n{'model':22s} {'map':14s} {'prec':6s} {'density':>7s} {'default':>9s} {'fastest':>9s} {'no-attn':>9s} {'share':>6s} "
          f"{'sparse':>9s} {'x fast':>7s} {'bound':>6s} {'of bnd':>6s} {'x dflt':>7s} {'x 16b':>6s}")
    for r in rows:
        if "error" in r:
            continue
        over = r.get("speedup_vs_native")
        print(f"{r['model']:22s} {r.get('map', 'paper'):14s} {r.get('precision', 'native'):6s} {r['map_density']:7.3f} {r['ms_stock_default']:9.1f} {r['ms_fastest_dense']:9.1f} "
              f"{r['ms_without_attention']:9.1f} {r['attention_share']:6.2f} {r['ms_sparse']:9.1f} "
              f"{r['speedup_vs_fastest_dense']:7.2f} {r['amdahl_bound']:6.2f} {r['fraction_of_amdahl']:6.0%} "
              f"{r['speedup_vs_stock_default']:7.2f} " + ("" if over is None or r["precision"] == "native" else f"{over:6.2f}"))


if __name__ == "__main__":
    main()
