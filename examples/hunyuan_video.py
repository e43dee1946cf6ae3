"""HunyuanVideo text-to-video with Sparse-vDiT: search a mode map, then generate with it.

    python examples/hunyuan_video.py --out hunyuan-sparse            # 544x960, 129 frames (one 80 GB GPU)
    python examples/hunyuan_video.py --height 720 --width 1280 --out hunyuan-sparse-720p
    python examples/hunyuan_video.py --compare --out hunyuan-sparse  # also dense from the same seed
    python examples/hunyuan_video.py --tiny --out /tmp/hunyuan-tiny  # a tiny random HunyuanVideo: any CPU, seconds

HunyuanVideo spends most of its time in attention (85% of a 720p transformer forward with
cuDNN on an H100), so it gains the most of the three from sparse heads.
"""

import torch
from _common import Example, run


def load(model_id: str, dtype: torch.dtype):
    # as diffusers' HunyuanVideo docs load it: the transformer in bfloat16, the rest in float16,
    # and a tiled VAE so that decoding 129 frames fits in memory
    from diffusers import HunyuanVideoPipeline, HunyuanVideoTransformer3DModel

    transformer = HunyuanVideoTransformer3DModel.from_pretrained(model_id, subfolder="transformer", torch_dtype=dtype)
    other = torch.float16 if dtype == torch.bfloat16 else dtype
    pipe = HunyuanVideoPipeline.from_pretrained(model_id, transformer=transformer, torch_dtype=other)
    pipe.vae.enable_tiling()
    return pipe


HUNYUAN_VIDEO = Example(
    model="hunyuanvideo-community/HunyuanVideo",
    tiny="hunyuan_video",
    load=load,
    call=dict(height=544, width=960, num_frames=129, guidance_scale=6.0),  # embedded guidance
    prompt="A cat walks on the grass, realistic",
    fps=15,
    steps=30,
)


def main(argv=None):
    return run(HUNYUAN_VIDEO, __doc__, argv)


if __name__ == "__main__":
    main()
