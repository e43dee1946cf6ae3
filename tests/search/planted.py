"""Synthetic attention calls whose per-head structure is known, for the search tests.

Each head's queries and keys are one-hot codes of a token property (scaled so a match
gives a logit of ``BETA``), so the softmax of a query is, up to e^-BETA, uniform over the
keys that share its code:

0. band: codes are runs of 8 consecutive frame-major tokens (spatial neighbours in a frame)
   -> DIAGONAL;
1. temporal: codes are the spatial position, shared by the same pixel of every frame
   -> MULTI_DIAGONAL;
2. stripe: every query matches the keys of two global key tiles -> VERTICAL_STRIPE on them;
3. diffuse: zero queries (uniform attention) over values that vary strongly from key to
   key, so no subset of keys averages like all of them -> FULL;
4. negligible: tiny values, the head adds ~nothing to the layer -> SKIP.
"""

import torch

from diffusers_sparse_vdit import TokenLayout

BETA = 16.0
STRIPE_TILES = (9, 22)
EXPECTED = ["DIAGONAL", "MULTI_DIAGONAL", "VERTICAL_STRIPE", "FULL", "SKIP"]
TILE = 16
HEADS, DIM = 5, 64
LAYOUTS = [
    TokenLayout(8, 8, 8),  # Wan-like: 512 video tokens, 32 tiles of 16, frame = 4 tiles
    TokenLayout(8, 8, 8, text_tokens=20, text_position="after"),  # HunyuanVideo-like, padded text
]


def planted_call(layout: TokenLayout, batch: int = 1, generator=None):
    """q, k, v ``(batch, 5, N, 64)`` in caller order (text rows get zero codes), and W ``(320, 320)``."""
    n, nv, p = layout.num_tokens, layout.video_tokens, layout.frame_tokens
    video = torch.arange(nv) + layout.video_start
    q = torch.zeros(batch, HEADS, n, DIM)
    k = torch.zeros(batch, HEADS, n, DIM)
    eye = torch.eye(DIM)
    j = torch.arange(nv)
    codes = {0: j // 8, 1: j % p}
    for h, code in codes.items():
        q[:, h, video] = BETA * eye[code]
        k[:, h, video] = eye[code]
    in_stripe = torch.isin(j // TILE, torch.tensor(STRIPE_TILES))
    q[:, 2, video] = BETA * eye[0]
    k[:, 2, video[in_stripe]] = eye[0]
    q[:, 4] = torch.randn(batch, n, DIM, generator=generator)
    k[:, 4] = torch.randn(batch, n, DIM, generator=generator)
    v = torch.randn(batch, HEADS, n, DIM, generator=generator)
    v[:, 2] *= 2.0  # the stripe head averages 32 keys: keep its share of the layer like the others'
    v[:, 3] = 1.0 + 10.0 * torch.randn(batch, n, DIM, generator=generator)
    v[:, 4] *= 1e-3
    w = torch.randn(HEADS * DIM, HEADS * DIM, generator=generator) / (HEADS * DIM) ** 0.5
    return q, k, v, w
