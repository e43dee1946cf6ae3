"""Image-to-video: Wan2.1 I2V, CogVideoX/CogVideoX1.5 I2V, HunyuanVideo-I2V and SkyReels-V1 with a map.

Where the image goes, and so what the masks see: Wan's image context enters cross-attention only
(self-attention has video tokens only); CogVideoX and SkyReels concatenate image latents on channels
(no extra tokens); HunyuanVideo-I2V conditions frame 0 in place (``token_replace``: a video frame)
and puts LLaVA's image tokens into the text stream (text rows, after video).
"""

import pytest
import torch

from diffusers_sparse_vdit import TokenLayout
from diffusers_sparse_vdit.processors import apply_sparse_vdit, family_of, remove_sparse_vdit
from diffusers_sparse_vdit.testing import (
    I2V_VARIANTS,
    IMAGE_PATCH,
    IMAGE_SIZE,
    tiny_pipeline,
    tiny_pipeline_inputs,
    tiny_transformer_inputs,
)

from .common import ALL_FULL, forward, mode_map, twins, with_reference


@pytest.mark.parametrize("variant", I2V_VARIANTS)
def test_transformer_all_full_is_stock_and_mixed_matches_the_dense_mask_reference(variant):
    sparse, stock = twins(variant)
    inputs = tiny_transformer_inputs(stock, batch_size=2)
    expected = forward(stock, inputs)
    apply_sparse_vdit(sparse, mode_map(sparse, ALL_FULL))  # auto: all-FULL layers take the stock path
    assert torch.equal(forward(sparse, inputs), expected)
    apply_sparse_vdit(sparse, mode_map(sparse, ALL_FULL), backend="torch")
    torch.testing.assert_close(forward(sparse, inputs), expected, atol=1e-5, rtol=1e-5)

    apply_sparse_vdit(sparse, mode_map(sparse), backend="torch")
    apply_sparse_vdit(stock, mode_map(stock), backend="torch", processor_cls=with_reference(family_of(stock).processor_cls))
    out = forward(sparse, inputs)
    torch.testing.assert_close(out, forward(stock, inputs), atol=1e-5, rtol=1e-5)
    assert (out - expected).abs().max() > 1e-3


# the token layout of the tiny pipelines' 9 frames of 32x48: 3 latent frames of 2x3 tokens (CogVideoX1.5:
# padded to 4 latent frames, 2 token frames), and the text the self-attention sees
# HunyuanVideo-I2V: the picture's 16 CLIP patches, every 4th kept (every 2nd for the negative prompt: its
# pipeline encodes that one with the default interleave), then 12 prompt tokens
PATCHES = (IMAGE_SIZE // IMAGE_PATCH) ** 2
LAYOUTS = {
    "wan_i2v": {TokenLayout(3, 2, 3)},
    "cogvideox_i2v": {TokenLayout(3, 2, 3, text_tokens=16, text_position="before")},
    "cogvideox1.5_i2v": {TokenLayout(2, 2, 3, text_tokens=16, text_position="before")},
    "hunyuan_video_i2v": {TokenLayout(3, 2, 3, text_tokens=PATCHES // n + 12, text_position="after") for n in (4, 2)},
    "skyreels_i2v": {TokenLayout(3, 2, 3, text_tokens=16, text_position="after")},
}


class LayoutRecorder:
    def attend(self, query, key, value, plan, **kwargs):
        type(self).layouts.add(kwargs["layout"])
        return super().attend(query, key, value, plan, **kwargs)


def _generate(pipe, variant):
    with torch.no_grad():
        return pipe(**tiny_pipeline_inputs(variant)).frames


@pytest.mark.parametrize("variant", I2V_VARIANTS)
def test_pipeline_generates_with_a_map(variant):
    pipe = tiny_pipeline(variant)
    pipe.set_progress_bar_config(disable=True)
    stock = _generate(pipe, variant)

    apply_sparse_vdit(pipe, mode_map(pipe.transformer, ALL_FULL))
    assert torch.equal(_generate(pipe, variant), stock)

    recorder = type("Recorder", (LayoutRecorder, family_of(pipe.transformer).processor_cls), {"layouts": set()})
    apply_sparse_vdit(pipe, mode_map(pipe.transformer), backend="torch", processor_cls=recorder)
    frames = _generate(pipe, variant)
    remove_sparse_vdit(pipe)
    assert frames.shape == stock.shape == (1, 9, 3, 32, 48) and torch.isfinite(frames).all()
    assert (frames - stock).abs().max() > 1e-4
    assert recorder.layouts == LAYOUTS[variant]
