"""Cases the GPU kernel tests share: a plan with every mode, and odd layouts of each family's shape."""

from diffusers_sparse_vdit import ModeSpec, TokenLayout

MIXED = [
    ModeSpec.full(),
    ModeSpec.skip(),
    ModeSpec.diagonal(0.5),
    ModeSpec.multi_diagonal(0.7),
    ModeSpec.vertical_stripe(3),
    ModeSpec.diagonal(1.5),
]
LAYOUTS = [
    TokenLayout(5, 15, 26),  # 1950 video tokens, no text (Wan-like, not a multiple of 128)
    TokenLayout(4, 12, 21, text_tokens=226, text_position="before"),  # CogVideoX-like
    TokenLayout(5, 9, 16, text_tokens=77, text_position="after"),  # HunyuanVideo-like
]


def rel_err(out, ref):
    return ((out.float() - ref).norm() / ref.norm()).item()
