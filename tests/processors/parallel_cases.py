"""The cases the Ulysses test runs on one process and on two (see _ulysses_worker.py)."""

from diffusers_sparse_vdit import ModeSpec
from diffusers_sparse_vdit.testing import tiny_mode_map, tiny_transformer, tiny_transformer_inputs

HEADS = 4  # two per rank at ulysses_degree 2

# Uneven in model order: layer 0's first two heads (rank 0's) are FULL, the other two cheap.
UNEVEN = [
    [ModeSpec.full(), ModeSpec.full(), ModeSpec.skip(), ModeSpec.diagonal(0.5)],
    [ModeSpec.vertical_stripe((0.8,), sink_frames=1), ModeSpec.multi_diagonal(0.5), ModeSpec.skip(), ModeSpec.diagonal(1.0)],
]

CASES = {
    f"{variant}-{'balanced' if balance else 'model-order'}": dict(variant=variant, balance=balance)
    for variant in ("wan", "hunyuan_video", "cogvideox")
    for balance in (True, False)
}
CASES["hunyuan_video-map-after-parallelism"] = dict(variant="hunyuan_video", balance=True, map_after=True)
CASES["wan-stock"] = dict(variant="wan", balance=False, map=False)  # diffusers' own Ulysses, for reference


def case_transformer(case):
    return tiny_transformer(case["variant"], num_attention_heads=HEADS)


def case_map(transformer, case):
    # step 0 is the dense warm-up (the stock path under Ulysses), step 1 runs the map
    return tiny_mode_map(transformer, UNEVEN, dense_warmup_steps=1)


def case_inputs(transformer, case):
    # 3 x 4 x 5 video tokens (30 per rank); 7 text tokens, which do not split in two;
    # HunyuanVideo: a batch of two prompts, one padded
    extra = dict(batch_size=2, text_lengths=[7, 4]) if case["variant"] == "hunyuan_video" else {}
    return [tiny_transformer_inputs(transformer, timestep=t, **extra) for t in (900.0, 500.0)]
