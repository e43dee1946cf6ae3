"""CogVideoX1.5 text-to-video with Sparse-vDiT: search a mode map, then generate with it.

python examples/cogvideox.py --out cogvideox-sparse             # CogVideoX1.5-5B, 768x1360, 81 frames
python examples/cogvideox.py --compare --out cogvideox-sparse   # also dense from the same seed
python examples/cogvideox.py --model THUDM/CogVideoX-5b --height 480 --width 720 --frames 49 --out cog5b
python examples/cogvideox.py --tiny --out /tmp/cogvideox-tiny   # a tiny random CogVideoX1.5: any CPU, seconds
"""

import torch
from _common import Example, run


def load(model_id: str, dtype: torch.dtype):
    # as diffusers' CogVideoX docs load it, with a tiled and sliced VAE so 81 frames decode in memory
    from diffusers import CogVideoXPipeline

    pipe = CogVideoXPipeline.from_pretrained(model_id, torch_dtype=dtype)
    pipe.vae.enable_tiling()
    pipe.vae.enable_slicing()
    return pipe


COGVIDEOX = Example(
    model="THUDM/CogVideoX1.5-5B",
    tiny="cogvideox1.5",
    load=load,
    call=dict(height=768, width=1360, num_frames=81, guidance_scale=6.0, use_dynamic_cfg=True),
    prompt="A panda in a red jacket plays a tiny guitar in a bamboo forest, realistic",
    fps=16,
)


def main(argv=None):
    return run(COGVIDEOX, __doc__, argv)


if __name__ == "__main__":
    main()
