"""Wan2.1 text-to-video with Sparse-vDiT: search a mode map, then generate with it.

python examples/wan.py --out wan-sparse                 # Wan2.1-T2V-1.3B, 480x832, 81 frames (one GPU)
python examples/wan.py --compare --out wan-sparse       # also dense from the same seed: quality and speedup
python examples/wan.py --model Wan-AI/Wan2.1-T2V-14B-Diffusers --height 720 --width 1280 --out wan14b-sparse
python examples/wan.py --tiny --out /tmp/wan-tiny       # a tiny random Wan: any CPU, seconds
"""

import torch
from _common import Example, run


def load(model_id: str, dtype: torch.dtype):
    # as diffusers' Wan docs load it: the VAE in float32, the scheduler's flow shift for the resolution
    from diffusers import AutoencoderKLWan, UniPCMultistepScheduler, WanPipeline

    vae = AutoencoderKLWan.from_pretrained(model_id, subfolder="vae", torch_dtype=torch.float32)
    pipe = WanPipeline.from_pretrained(model_id, vae=vae, torch_dtype=dtype)
    pipe.scheduler = UniPCMultistepScheduler.from_config(pipe.scheduler.config, flow_shift=3.0)  # 5.0 for 720p
    return pipe


WAN = Example(
    model="Wan-AI/Wan2.1-T2V-1.3B-Diffusers",
    tiny="wan",
    load=load,
    call=dict(height=480, width=832, num_frames=81, guidance_scale=5.0),
    prompt="A cat walks on the grass, realistic",
    fps=16,
)


def main(argv=None):
    return run(WAN, __doc__, argv)


if __name__ == "__main__":
    main()
