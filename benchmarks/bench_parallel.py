"""Several GPUs: a sparse map under diffusers' Ulysses context parallelism vs dense, per denoising step.

Launch with torchrun, one process per GPU (real dims, random weights, bf16, batch 1)::

    NCCL_NVLS_ENABLE=0 torchrun --nproc_per_node 8 benchmarks/bench_parallel.py --out benchmarks/results/parallel_h200x8.json

For each model, in one run:

* one GPU (rank 0 alone, before parallelism is enabled): dense (fastest SDPA backend first:
  cuDNN, FLASH, EFFICIENT) and our map, for the scaling efficiency;
* all GPUs under ``ContextParallelConfig(ulysses_degree=world)``: dense (diffusers' own
  Ulysses over the stock processors; HunyuanVideo: over our processors with an all-FULL map,
  since the stock ones do not run the text-whole plan), our map with heads balanced across
  ranks, and in model order.

Per-step time is one transformer forward (CFG off), median over repetitions, ranks synchronised.
The map is bench_e2e.py's paper-like mix at the paper's FLOP reduction. It prints a table and
writes JSON (speedup over dense at the same GPU count, scaling efficiency ``t1 / (W * tW)``,
each rank's share of the attention work).

CPU smoke check (tiny models, gloo, the PyTorch reference kernel)::

    torchrun --nproc_per_node 2 benchmarks/bench_parallel.py --tiny --out /tmp/parallel_tiny.json
"""

from __future__ import annotations

import argparse
import contextlib
import json
import statistics
import sys
import time
from pathlib import Path
from unittest import mock

import torch
import torch.distributed as dist

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from diffusers_sparse_vdit import ModeSpec, SparseVDiTConfig, apply_sparse_vdit, context_parallel_plan, rank_shares  # noqa: E402
from diffusers_sparse_vdit.processors import family_of, sparse_targets  # noqa: E402
from diffusers_sparse_vdit.testing import tiny_transformer, tiny_transformer_inputs  # noqa: E402

from bench_e2e import MODELS as E2E_MODELS  # noqa: E402

MODELS = {
    # name: (diffusers class, real config, latent grid after patchify, text tokens, paper FLOP reduction)
    "wan2.1-14b-720p": (
        "WanTransformer3DModel",
        dict(patch_size=(1, 2, 2), num_attention_heads=40, attention_head_dim=128, in_channels=16, out_channels=16,
             text_dim=4096, freq_dim=256, ffn_dim=13824, num_layers=40, cross_attn_norm=True,
             qk_norm="rms_norm_across_heads", eps=1e-6, rope_max_seq_len=1024),
        (21, 45, 80), 512, 1.7,
    ),
    "hunyuanvideo-720p": E2E_MODELS["hunyuanvideo-720p"],  # the single-GPU benchmark's model, as it is there
}
# --tiny: the test models at 4 heads (2 per rank at 2 processes), a 4 x 4 x 6 grid
TINY = {"wan": ((4, 4, 6), 7), "hunyuan_video": ((4, 4, 6), 7), "cogvideox": ((4, 4, 6), 7)}


def build(name: str, args, device):
    """(transformer, forward inputs, paper-like map) of one model."""
    if args.tiny:
        grid, text = TINY[name]
        model = tiny_transformer(name, num_attention_heads=4).to(device)
        inputs = tiny_transformer_inputs(model, grid=grid, text_tokens=text, device=device)
        layers = [[ModeSpec.full(), ModeSpec.full(), ModeSpec.skip(), ModeSpec.diagonal(0.5)]] * len(sparse_targets(model))
        config = SparseVDiTConfig.from_specs(layers, family=family_of(model).name, transformer_class=type(model).__name__,
                                             target_modules=sparse_targets(model), tile_size=16)
        return model, inputs, config
    import diffusers
    from bench_e2e import paper_like_map

    cls_name, config, grid, text, reduction = MODELS[name]
    cut = {"num_layers": args.layers} if args.layers else {}
    if args.layers and "num_single_layers" in config:
        cut["num_single_layers"] = 2 * args.layers
    with torch.device(device):
        torch.manual_seed(0)
        model = getattr(diffusers, cls_name)(**{**config, **cut}).to(torch.bfloat16).eval()
    inputs = tiny_transformer_inputs(model, grid=grid, text_tokens=text, device=device, dtype=torch.bfloat16)
    sparse_map, _ = paper_like_map(model, grid, text, reduction)
    return model, inputs, sparse_map


def step_ms(model, inputs, reps: int, group=None) -> float:
    """Median wall time of one forward, every rank of ``group`` (None: this process alone) in step."""

    def sync():
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        if group is not None:
            dist.barrier()

    times = []
    with torch.no_grad():
        for i in range(reps + 1):  # the first one warms up (and builds the plans)
            sync()
            t0 = time.perf_counter()
            model(**inputs)
            sync()
            if i:
                times.append((time.perf_counter() - t0) * 1e3)
    return statistics.median(times)


@contextlib.contextmanager
def fastest_dense():
    if not torch.cuda.is_available():
        yield
        return
    from torch.nn.attention import SDPBackend, sdpa_kernel

    order = [SDPBackend.CUDNN_ATTENTION, SDPBackend.FLASH_ATTENTION, SDPBackend.EFFICIENT_ATTENTION, SDPBackend.MATH]
    with sdpa_kernel(order, set_priority=True):
        yield


def bench_model(name: str, args, device) -> dict:
    from diffusers import ContextParallelConfig

    world, rank = dist.get_world_size(), dist.get_rank()
    backend = "torch" if args.tiny else args.backend
    model, inputs, sparse_map = build(name, args, device)
    all_full = SparseVDiTConfig.from_specs(
        [[ModeSpec.full()] * sparse_map.num_heads] * sparse_map.num_layers, family=sparse_map.family,
        transformer_class=sparse_map.transformer_class, target_modules=sparse_map.target_modules,
        tile_size=sparse_map.tile_size,
    )
    row = dict(model=name, world_size=world, device=torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu")
    with fastest_dense():
        if args.single and rank == 0:  # one GPU, for the scaling efficiency
            row["dense_1gpu_ms"] = step_ms(model, inputs, args.reps)
            apply_sparse_vdit(model, sparse_map, backend=backend)
            row["sparse_1gpu_ms"] = step_ms(model, inputs, args.reps)
        dist.barrier()
        # the stock processors, or (text families: the stock ones cannot run the text-whole plan) an all-FULL map
        if family_of(model).name == "wan":
            from diffusers_sparse_vdit import remove_sparse_vdit

            if args.single and rank == 0:
                remove_sparse_vdit(model)
        else:
            apply_sparse_vdit(model, all_full, backend=backend)
        with mock.patch("torch.accelerator.device_count", return_value=max(torch.accelerator.device_count(), 1)):
            model.enable_parallelism(config=ContextParallelConfig(ulysses_degree=world),
                                     cp_plan=context_parallel_plan(model))
        row["dense_cp_ms"] = step_ms(model, inputs, args.reps, group=True)
        for balance, key in ((True, "sparse_cp_ms"), (False, "sparse_cp_model_order_ms")):
            apply_sparse_vdit(model, sparse_map, backend=backend, balance_heads=balance)
            row[key] = step_ms(model, inputs, args.reps, group=True)
    layout = model._diffusers_hook.get_hook("sparse_vdit").state.layout
    row["layout"] = str(layout)
    row["density"] = sparse_map.density(layout)
    for balance in (True, False):
        shares = rank_shares(sparse_map, layout, world, balance=balance)
        row[f"rank_shares_{'balanced' if balance else 'model_order'}"] = list(shares.shares)
    row["speedup_vs_dense_cp"] = row["dense_cp_ms"] / row["sparse_cp_ms"]
    row["speedup_model_order_vs_dense_cp"] = row["dense_cp_ms"] / row["sparse_cp_model_order_ms"]
    if "dense_1gpu_ms" in row:
        row["scaling_efficiency_dense"] = row["dense_1gpu_ms"] / (world * row["dense_cp_ms"])
        row["scaling_efficiency_sparse"] = row["sparse_1gpu_ms"] / (world * row["sparse_cp_ms"])
    del model
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
    return row


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--models", help="comma-separated (default: all real models, or all tiny ones with --tiny)")
    parser.add_argument("--tiny", action="store_true", help="CPU smoke check: tiny models, gloo, the torch reference kernel")
    parser.add_argument("--layers", type=int, help="cut depth to this many (dual-stream) layers; same per-layer shapes")
    parser.add_argument("--no-single", dest="single", action="store_false", help="skip the one-GPU baseline")
    parser.add_argument("--backend", default="auto", help="sparse kernel backend (default auto)")
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--out", default="benchmarks/results/parallel.json")
    args = parser.parse_args()

    on_gpu = torch.cuda.is_available() and not args.tiny
    dist.init_process_group("nccl" if on_gpu else "gloo")
    rank = dist.get_rank()
    device = torch.device("cuda", rank % torch.cuda.device_count()) if on_gpu else torch.device("cpu")
    if on_gpu:
        torch.cuda.set_device(device)
    else:
        torch.set_num_threads(1)
    names = args.models.split(",") if args.models else list(TINY if args.tiny else MODELS)
    rows = [bench_model(name, args, device) for name in names]
    if rank == 0:
        print(f"{'model':20} {'GPUs':>4} {'dense 1':>9} {'sparse 1':>9} {'dense CP':>9} {'ours CP':>9} "
              f"{'ours, model order':>17} {'speedup':>7} {'eff dense':>9} {'eff ours':>8}")
        for r in rows:
            cell = lambda key, fmt="9.1f": format(r[key], fmt) if key in r else " " * int(fmt.split(".")[0])  # noqa: E731
            print(f"{r['model']:20} {r['world_size']:>4} {cell('dense_1gpu_ms')} {cell('sparse_1gpu_ms')} "
                  f"{cell('dense_cp_ms')} {cell('sparse_cp_ms')} {cell('sparse_cp_model_order_ms', '17.1f')} "
                  f"{cell('speedup_vs_dense_cp', '6.2f')}x {cell('scaling_efficiency_dense', '9.2f')} "
                  f"{cell('scaling_efficiency_sparse', '8.2f')}")
        out = Path(args.out)
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp = out.with_suffix(".tmp")
        tmp.write_text(json.dumps({"args": vars(args), "rows": rows}, indent=2))
        tmp.replace(out)
        print(f"wrote {out}")
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
