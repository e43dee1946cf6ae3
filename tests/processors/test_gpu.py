"""bfloat16 on the GPU: one layer per family at real widths (random weights), fewer frames.

An all-FULL map through the Triton kernel reproduces stock attention, and a mixed map through
the Triton kernel reproduces the same map through the PyTorch reference backend.
"""

import pytest
import torch

from diffusers_sparse_vdit import ModeSpec
from diffusers_sparse_vdit.processors import apply_sparse_vdit, remove_sparse_vdit, sparse_targets
from diffusers_sparse_vdit.testing import tiny_mode_map, tiny_transformer_inputs

pytestmark = pytest.mark.gpu

REAL = {
    # one layer (HunyuanVideo: one dual + one single block) at the real widths; grid: (frames, height, width)
    "wan": ("WanTransformer3DModel", dict(
        patch_size=(1, 2, 2), num_attention_heads=12, attention_head_dim=128, in_channels=16, out_channels=16,
        text_dim=4096, freq_dim=256, ffn_dim=8960, num_layers=1, cross_attn_norm=True,
        qk_norm="rms_norm_across_heads", eps=1e-6, rope_max_seq_len=1024), (5, 30, 52), 512),
    "hunyuan_video": ("HunyuanVideoTransformer3DModel", dict(
        num_layers=1, num_single_layers=1, num_refiner_layers=1), (3, 45, 80), 256),
    "cogvideox1.5": ("CogVideoXTransformer3DModel", dict(
        num_attention_heads=48, attention_head_dim=64, in_channels=16, out_channels=16, time_embed_dim=512,
        text_embed_dim=4096, num_layers=1, sample_width=300, sample_height=300, sample_frames=81, patch_size=2,
        patch_size_t=2, patch_bias=False, max_text_seq_length=226, use_rotary_positional_embeddings=True,
        use_learned_positional_embeddings=False), (3, 48, 85), 226),
}
MIXED = [ModeSpec.full(), ModeSpec.skip(), ModeSpec.diagonal(0.5), ModeSpec.multi_diagonal(0.5),
         ModeSpec.vertical_stripe(12), ModeSpec.diagonal(1.0)]


def rel_err(a, b):
    a, b = a.float(), b.float()
    return ((a - b).norm() / b.norm()).item()


@pytest.fixture(scope="module", params=list(REAL))
def model_and_inputs(request):
    import diffusers

    cls_name, config, grid, text = REAL[request.param]
    with torch.device("cuda"):
        torch.manual_seed(0)
        model = getattr(diffusers, cls_name)(**config).to(torch.bfloat16).eval()
    lengths = [text // 3] if request.param == "hunyuan_video" else None
    inputs = tiny_transformer_inputs(model, grid=grid, text_tokens=text, text_lengths=lengths, device="cuda",
                                     dtype=torch.bfloat16)
    return model, inputs


@torch.no_grad()
def test_all_full_map_matches_stock(model_and_inputs):
    model, inputs = model_and_inputs
    stock = model(**inputs)[0]
    heads, layers = model.config.num_attention_heads, len(sparse_targets(model))
    apply_sparse_vdit(model, tiny_mode_map(model, [[ModeSpec.full()] * heads] * layers, tile_size=128), backend="triton")
    try:
        assert rel_err(model(**inputs)[0], stock) < 1e-2
    finally:
        remove_sparse_vdit(model)


@torch.no_grad()
def test_mixed_map_triton_matches_reference(model_and_inputs):
    model, inputs = model_and_inputs
    heads, layers = model.config.num_attention_heads, len(sparse_targets(model))
    specs = (MIXED * heads)[:heads]
    config = tiny_mode_map(model, [specs] * layers, tile_size=128)
    outs = {}
    for backend in ("triton", "torch"):
        apply_sparse_vdit(model, config, backend=backend)
        outs[backend] = model(**inputs)[0]
        remove_sparse_vdit(model)
    assert not outs["triton"].isnan().any()
    assert rel_err(outs["triton"], outs["torch"]) < 1e-2
